/*
 * The native dialect: POST /api/chat (and its batch), a WebSocket turn,
 * and the answers and events of a native turn (turn.c runs it).
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "log.h"

/* POST /api/chat's answer for a conversation_id the tenant does not have. */
#define CHAT_MISSING		"conversation_id: no such conversation"

/* Whether a turn may stream: never (a batch item), on request, always. */
enum chat_stream {
	STREAM_NEVER,
	STREAM_ASKED,
	STREAM_ALWAYS
};

/* The native answer, shared by the JSON body and the done event. */
static json_t *
chat_answer(struct turn *t, const char *type)
{
	json_t	*ans;

	ans = json_pack("{s:s?, s:b, s:s, s:s, s:s, s:s, s:s, s:{s:I, s:I, "
	    "s:I, s:f}, s:I}", "type", type, "success", 1, "conversation_id",
	    t->conv->id, "session_id", t->session_id, "response", t->text,
	    "model", t->conv->model, "stop_reason", t->stop_reason, "usage",
	    "input_tokens",
	    (json_int_t)t->in, "output_tokens", (json_int_t)t->out,
	    "total_tokens", (json_int_t)(t->in + t->out), "cost_usd", t->cost,
	    "duration_ms", (json_int_t)(util_now_ms() - t->started_ms));
	if (ans != NULL && t->files != NULL)
		json_object_set(ans, "files", t->files);
	if (ans != NULL && t->workspace != NULL)
		json_object_set(ans, "workspace", t->workspace);
	return (ans);
}

/* Native: one delta event. */
static int
native_delta(struct turn *t, const char *text)
{
	json_t	*ev;
	int	 rc;

	if ((ev = json_pack("{s:s, s:s}", "type", "delta", "text", text)) ==
	    NULL)
		return (-1);
	rc = req_sse_json(t->r, ev);
	json_decref(ev);
	return (rc);
}

/* Native: the answer, or the done event and [DONE]. */
static void
native_done(struct turn *t)
{
	json_t	*ans;

	if (!t->stream) {
		req_send_json(t->r, 200, chat_answer(t, NULL));
		return;
	}
	ans = chat_answer(t, "done");
	if (ans == NULL || req_sse_json(t->r, ans) != 0 ||
	    req_sse_data(t->r, "[DONE]") != 0)
		log_info("request %s: client left before the end",
		    req_id(t->r));
	json_decref(ans);
}

/* Native: an error event and [DONE]. */
static void
native_stream_error(struct turn *t, int status, const char *type,
    const char *msg)
{
	json_t	*ev;

	ev = json_pack("{s:s, s:{s:s, s:s}, s:i}", "type", "error", "error",
	    "type", type, "message", msg, "status", status);
	if (ev != NULL && req_sse_json(t->r, ev) == 0)
		(void)req_sse_data(t->r, "[DONE]");
	json_decref(ev);
}

static const struct turn_ops native_ops = {
	NULL, native_delta, native_done, native_stream_error
};

/*
 * A native turn of conv.  missing: what to answer if conv turns out to be
 * deleted (the route's own 404 text).
 */
void
chat_turn(struct request *r, struct conversation *conv, const char *message,
    long long max_tokens, int stream, const char *missing)
{
	struct turn	t;

	turn_init(&t, r, &native_ops, conv, message, max_tokens, stream);
	t.missing = missing;
	turn_run(&t);
}

/*
 * One native chat turn described by body (a request's, or a batch item's):
 * validate, find or create the conversation, run the turn.
 */
static void
chat_body(struct request *r, json_t *body, enum chat_stream mode)
{
	struct conversation	 conv;
	struct db		*db;
	const char		*message, *conv_id, *model, *sp;
	long long		 max_tokens = 0;
	double			 temperature = 0;
	int			 stream = 0, rc;

	if (input_str(r, body, "message", 1, (size_t)appconf->max_message,
	    &message) != 0 ||
	    input_str(r, body, "conversation_id", 0, 64, &conv_id) != 0 ||
	    input_model(r, body, &model) != 0 ||
	    input_str(r, body, "system_prompt", 0,
	    (size_t)appconf->max_message, &sp) != 0 ||
	    input_int(r, body, "max_tokens", 1, 1000000, &max_tokens) != 0 ||
	    input_number(r, body, "temperature", 0.0, 2.0, &temperature) != 0 ||
	    input_bool(r, body, "stream", &stream) != 0)
		return;
	if (stream && mode == STREAM_NEVER) {
		req_error(r, 400, NULL, "stream: not available in a batch");
		return;
	}
	if (mode == STREAM_ALWAYS)
		stream = 1;
	if (json_object_get(body, "temperature") != NULL)
		req_add_header(r, "X-Ccgate-Ignored", "temperature");
	db = db_thread();
	if (conv_id != NULL) {
		rc = conv_lookup(db, req_key(r)->tenant, conv_id, &conv);
		if (rc == 1) {
			req_error(r, 404, NULL, "%s", CHAT_MISSING);
			return;
		}
		if (rc == 0 && perm_check(r, model != NULL ? model : conv.model,
		    stream, &max_tokens) != 0) {
			conv_clear(&conv);
			return;
		}
		if (rc == 0 && sp != NULL && (conv.system_prompt == NULL ||
		    strcmp(sp, conv.system_prompt) != 0)) {
			conv_clear(&conv);
			req_error(r, 400, NULL, "system_prompt: a conversation "
			    "keeps the system prompt it was created with");
			return;
		}
		if (rc == 0 && model != NULL && strcmp(model, conv.model) != 0) {
			free(conv.model);
			if ((conv.model = strdup(model)) == NULL)
				rc = -1;
		}
	} else {
		char	*title;

		if (perm_check(r, model != NULL ? model : appconf->default_model,
		    stream, &max_tokens) != 0)
			return;
		title = conv_title_from_message(message);

		rc = title == NULL ? -1 : conv_insert(db, req_key(r), model, sp,
		    title, &conv);
		free(title);
	}
	if (rc != 0) {
		conv_clear(&conv);	/* a model that could not be copied */
		req_db_down(r);
		return;
	}
	/* A front nginx routes the next turns by it (docs/scaling.md). */
	req_add_header(r, "X-Ccgate-Conversation-Id", conv.id);
	chat_turn(r, &conv, message, max_tokens, stream, CHAT_MISSING);
	conv_clear(&conv);
}

/* POST /api/chat */
void
chat_handle(struct request *r)
{
	json_t	*body;

	if ((body = req_json_body(r, 1)) == NULL)
		return;
	chat_body(r, body, STREAM_ASKED);
}

/* A chat frame on a WebSocket (authenticated): a turn that streams. */
void
chat_frame(struct request *r, json_t *body)
{
	chat_body(r, body, STREAM_ALWAYS);
}

struct batch_item {
	struct request	*sub;
	json_t		*body;
	pthread_t	 thread;
	int		 started;
};

/* A batch item's thread: one turn. */
static void *
chat_batch_item(void *arg)
{
	struct batch_item	*it = arg;

	if (!json_is_object(it->body))
		req_error(it->sub, 400, NULL, "messages[]: each item must be "
		    "an object");
	else if (req_admit(it->sub) == 0)
		chat_body(it->sub, it->body, STREAM_NEVER);
	db_release();
	return (NULL);
}

/*
 * POST /api/chat/batch: {"messages":[{...a chat body...}, ...]}, at most
 * batch_max items, run at once; the answer keeps their order, each item a
 * native answer or error with its "status".  Each item is admitted by the
 * key's quotas as if it had been sent alone: one refused carries its 429
 * and "retry_after", and the others run.
 */
void
chat_batch_handle(struct request *r)
{
	struct batch_item	*items;
	json_t			*body, *list, *results;
	long long		 in = 0, out = 0;
	double			 cost = 0;
	size_t			 i, n;

	if ((body = req_json_body(r, 1)) == NULL)
		return;
	list = json_object_get(body, "messages");
	if (!json_is_array(list) || (n = json_array_size(list)) == 0) {
		req_error(r, 400, NULL, "messages: must be a non-empty array");
		return;
	}
	if (n > (size_t)appconf->batch_max) {
		req_error(r, 400, NULL, "messages: at most %ld items in a batch",
		    appconf->batch_max);
		return;
	}
	if ((items = calloc(n, sizeof *items)) == NULL ||
	    (results = json_array()) == NULL) {
		free(items);
		req_error(r, 500, NULL, "out of memory");
		return;
	}
	/* Each item takes a connection of its own; ours waits meanwhile. */
	db_release();
	for (i = 0; i < n; i++) {
		items[i].body = json_array_get(list, i);
		if ((items[i].sub = req_sub(r, (int)i, json_dumpb(
		    items[i].body, NULL, 0, JSON_COMPACT))) == NULL)
			continue;
		items[i].started = pthread_create(&items[i].thread, NULL,
		    chat_batch_item, &items[i]) == 0;
		if (!items[i].started)
			req_error(items[i].sub, 503, NULL, "no thread for this "
			    "item; retry");
	}
	for (i = 0; i < n; i++) {
		if (items[i].started && pthread_join(items[i].thread, NULL) != 0)
			log_warnx("batch item %zu: join failed", i);
		if (items[i].sub != NULL)
			json_array_append_new(results, req_sub_take(items[i].sub,
			    &in, &out, &cost));
		else
			json_array_append_new(results, dialect_error(
			    DIALECT_NATIVE, "api_error", "out of memory"));
	}
	free(items);
	req_usage(r, NULL, in, out, 0, 0, cost, -1, NULL);
	req_send_json(r, 200, json_pack("{s:b, s:o}", "success", 1, "results",
	    results));
}
