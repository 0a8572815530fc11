/*
 * Chat turns.  A turn stores the user's message, hands the job to
 * ccgate-poold, relays its events (as SSE when streaming), and stores the
 * answer, its usage and the CLI session that now holds the conversation.
 * If the CLI session cannot be resumed (its transcript is gone), a new
 * session is primed with the messages kept in MariaDB.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app.h"
#include "log.h"
#include "poolc.h"
#include "proto.h"
#include "request.h"
#include "turn.h"

#define CHAT_STORE_RETRY_MS	500
#define CHAT_PRIME_MAX		(512 * 1024)
/* POST /api/chat's answer for a conversation_id the tenant does not have. */
#define CHAT_MISSING		"conversation_id: no such conversation"

/* Whether a turn may stream: never (a batch item), on request, always. */
enum chat_stream {
	STREAM_NEVER,
	STREAM_ASKED,
	STREAM_ALWAYS
};

enum turn_end {
	TURN_DONE,
	TURN_ERROR,
	TURN_GONE
};

/* Map a pool error code to an HTTP status. */
static int
chat_status(const char *code)
{
	if (strcmp(code, PROTO_E_BUSY) == 0 ||
	    strcmp(code, PROTO_E_SHUTTING_DOWN) == 0 ||
	    strcmp(code, "unavailable") == 0)
		return (503);
	if (strcmp(code, PROTO_E_TIMEOUT) == 0)
		return (504);
	if (strcmp(code, PROTO_E_BAD_REQUEST) == 0)
		return (400);
	if (strcmp(code, PROTO_E_INTERNAL) == 0)
		return (500);
	return (502);
}

/* Set the turn's error. */
static void
chat_set_error(struct turn *t, const char *code, const char *msg)
{
	snprintf(t->code, sizeof t->code, "%s", code);
	snprintf(t->error, sizeof t->error, "%s", msg);
}

/*
 * Say where the time to the first text went (Server-Timing, in ms): app is
 * ccgate-fcgi from the request to the job's hand-over, pool is
 * ccgate-poold and the CLI from there to the first text, cli the CLI's
 * own part of pool (ccgate-poold's first event says it).  What a client
 * measures beyond app and pool is nginx and the network; beyond cli, what
 * the gateway added to the CLI's time.
 */
static void
chat_timing(struct turn *t, json_t *event)
{
	json_t		*cli = json_object_get(event, "cli_us");
	uint64_t	 now = util_now_us();
	char		 v[128];
	int		 n;

	n = snprintf(v, sizeof v, "app;dur=%.2f, pool;dur=%.2f",
	    (double)(t->job_us - req_started_us(t->r)) / 1000.0,
	    (double)(now - t->job_us) / 1000.0);
	if (json_is_integer(cli) && n > 0 && (size_t)n < sizeof v)
		snprintf(v + n, sizeof v - (size_t)n, ", cli;dur=%.2f",
		    (double)json_integer_value(cli) / 1000.0);
	req_add_header(t->r, "Server-Timing", v);
}

/* Build the job message for the turn. */
static json_t *
chat_job(struct turn *t)
{
	json_t	*job = proto_new(PROTO_JOB);

	if (job == NULL)
		return (NULL);
	if (json_object_set_new(job, "id", json_string(req_id(t->r))) ||
	    json_object_set_new(job, "tenant",
	    json_string(t->conv->tenant)) ||
	    json_object_set_new(job, "key", json_string(req_key(t->r)->id)) ||
	    json_object_set_new(job, "conversation", json_string(t->conv->id)) ||
	    json_object_set_new(job, "model", json_string(t->conv->model)) ||
	    json_object_set_new(job, "message", json_string(t->send)) ||
	    json_object_set_new(job, "timeout_ms",
	    json_integer(appconf->job_timeout_ms))) {
		json_decref(job);
		return (NULL);
	}
	if (t->resume && t->conv->cli_session_id[0] != '\0')
		json_object_set_new(job, "resume",
		    json_string(t->conv->cli_session_id));
	if (t->conv->system_prompt != NULL)
		json_object_set_new(job, "system_prompt",
		    json_string(t->conv->system_prompt));
	if (t->max_tokens > 0)
		json_object_set_new(job, "max_tokens",
		    json_integer(t->max_tokens));
	/* The CLI's own tools, in the tenant's sandboxed workspace. */
	if (req_key(t->r)->allow_tools)
		json_object_set_new(job, "tools", json_true());
	return (job);
}

/*
 * Open the stream: its headers and the dialect's opening events, held so
 * that they go out with the event the caller sends next (the first delta,
 * a heartbeat, the final events).
 */
static int
chat_stream_open(struct turn *t)
{
	int	rc = 0;

	req_sse_hold(t->r, 1);
	if (req_sse_start(t->r) != 0)
		rc = -1;
	else if (!t->started) {
		t->started = 1;
		if (t->ops->start != NULL && t->ops->start(t) != 0)
			rc = -1;
	}
	req_sse_hold(t->r, 0);
	return (rc);
}

/* Send one delta to a streaming client, opening the stream first. */
static int
chat_send_delta(struct turn *t, const char *text)
{
	if (chat_stream_open(t) != 0)
		return (-1);
	return (t->ops->delta(t, text));
}

/* Keep the partial text of a job that failed. */
static void
chat_keep_partial(struct turn *t, json_t *f)
{
	const char	*text = json_string_value(json_object_get(f, "text"));

	free(t->partial);
	t->partial = text != NULL && *text != '\0' ? strdup(text) : NULL;
}

/*
 * Run one job on the pool and relay its events.  Returns how it ended;
 * on TURN_DONE t->done holds the done frame.  The thread's database
 * connection goes back to the pool first: a turn may take minutes.
 */
static enum turn_end
chat_run(struct turn *t)
{
	struct poolc	*pc;
	json_t		*job, *f;
	const char	*type, *text;
	char		*cause = NULL;
	uint64_t	 deadline;
	int		 why, wait;
	enum turn_end	 end = TURN_ERROR;

	db_release();
	if ((job = chat_job(t)) == NULL) {
		chat_set_error(t, PROTO_E_INTERNAL, "out of memory");
		return (TURN_ERROR);
	}
	/* Before the send: ccgate-poold may run the job before we run on. */
	t->job_us = util_now_us();
	if ((pc = poolc_open(appconf->poold_socket, &cause)) == NULL ||
	    poolc_send(pc, job, &cause) != 0) {
		log_warnx("request %s: %s", req_id(t->r), cause);
		chat_set_error(t, "unavailable",
		    "the CLI pool is unavailable; retry shortly");
		free(cause);
		json_decref(job);
		poolc_close(pc);
		return (TURN_ERROR);
	}
	json_decref(job);
	deadline = util_now_ms() + (uint64_t)appconf->job_timeout_ms + 30000;

	for (;;) {
		wait = (int)appconf->sse_heartbeat_ms;
		if (util_now_ms() >= deadline) {
			chat_set_error(t, PROTO_E_TIMEOUT,
			    "the job passed its time limit");
			break;
		}
		f = poolc_next(pc, req_fd(t->r), wait, &why, &cause);
		if (f == NULL) {
			if (why == POOLC_GONE) {
				end = TURN_GONE;
				break;
			}
			if (why == POOLC_TIMEOUT) {
				if (!t->stream)
					continue;
				if (chat_stream_open(t) != 0 ||
				    req_sse_data(t->r, ": keep-alive") != 0) {
					end = TURN_GONE;
					break;
				}
				continue;
			}
			log_warnx("request %s: pool: %s", req_id(t->r), cause);
			free(cause);
			cause = NULL;
			chat_set_error(t, "unavailable",
			    "lost the connection to the CLI pool");
			break;
		}
		type = proto_type(f);
		if (strcmp(type, PROTO_EVENT) == 0) {
			text = json_string_value(json_object_get(f, "text"));
			if (text != NULL && t->ttft_ms < 0) {
				t->ttft_ms = (long long)(util_now_ms() -
				    t->started_ms);
				chat_timing(t, f);
			}
			if (text != NULL && t->stream &&
			    chat_send_delta(t, text) != 0) {
				json_decref(f);
				end = TURN_GONE;
				break;
			}
			json_decref(f);
			continue;
		}
		if (strcmp(type, PROTO_DONE) == 0) {
			t->done = f;
			end = TURN_DONE;
			break;
		}
		if (strcmp(type, PROTO_ERROR) == 0) {
			chat_set_error(t, json_string_value(json_object_get(f,
			    "code")) ? json_string_value(json_object_get(f,
			    "code")) : PROTO_E_INTERNAL,
			    json_string_value(json_object_get(f, "message")) ?
			    json_string_value(json_object_get(f, "message")) :
			    "the CLI pool failed");
			chat_keep_partial(t, f);
		} else
			chat_set_error(t, PROTO_E_INTERNAL,
			    "unexpected message from the CLI pool");
		json_decref(f);
		break;
	}
	poolc_close(pc);
	return (end);
}

/*
 * The message that primes a new CLI session with a conversation's stored
 * history (all messages but the last, which is the new turn), or NULL if
 * there is none.  Keeps the most recent turns that fit in CHAT_PRIME_MAX.
 */
static char *
chat_prime(struct db *db, struct turn *t)
{
	struct db_res	*res;
	char		*out = NULL, *hist = NULL;
	size_t		 i, start, total = 0;
	FILE		*f;
	size_t		 len;

	if (db_run(db, &res, NULL, "SELECT role, content FROM messages WHERE "
	    "conversation_id = ? ORDER BY id", "s", t->conv->id) != 0)
		return (NULL);
	if (res->nrows < 2) {		/* nothing before the new message */
		db_res_free(res);
		return (NULL);
	}
	start = res->nrows - 1;
	while (start > 0 && total + res->lens[(start - 1) * 2 + 1] + 32 <
	    CHAT_PRIME_MAX) {
		start--;
		total += res->lens[start * 2 + 1] + 32;
	}
	if ((f = open_memstream(&hist, &len)) == NULL) {
		db_res_free(res);
		return (NULL);
	}
	fprintf(f, "This conversation continues from earlier turns, quoted "
	    "below. Answer the new message as the assistant would, with "
	    "that context.\n\n");
	for (i = start; i < res->nrows - 1; i++)
		fprintf(f, "[%s]\n%s\n\n", db_cell(res, i, 0),
		    db_cell(res, i, 1) ? db_cell(res, i, 1) : "");
	fprintf(f, "[new message from the user]\n%s", t->message);
	if (fclose(f) != 0) {
		free(hist);
		hist = NULL;
	}
	out = hist;
	db_res_free(res);
	return (out);
}

/* The native answer, shared by the JSON body and the done event. */
static json_t *
chat_answer(struct turn *t, const char *type)
{
	return (json_pack("{s:s?, s:b, s:s, s:s, s:s, s:s, s:{s:I, s:I, s:I, "
	    "s:f}, s:I}", "type", type, "success", 1, "conversation_id",
	    t->conv->id, "session_id", t->session_id, "response", t->text,
	    "model", t->conv->model, "usage", "input_tokens",
	    (json_int_t)t->in, "output_tokens", (json_int_t)t->out,
	    "total_tokens", (json_int_t)(t->in + t->out), "cost_usd", t->cost,
	    "duration_ms", (json_int_t)(util_now_ms() - t->started_ms)));
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
 * Store the answer: the conversation's CLI session and history hash, and
 * the assistant's message.  While the database does not answer, try again
 * every CHAT_STORE_RETRY_MS for db_retry_ms, so that an outage shorter
 * than that loses no answer (the client waits; a stream gets its
 * heartbeats meanwhile).  Returns 0, or -1 when the answer is lost.
 */
static int
chat_store_answer(struct turn *t, const char *hash)
{
	struct db	*db;
	struct timespec	 pause = { 0, CHAT_STORE_RETRY_MS * 1000000L };
	uint64_t	 deadline = util_now_ms() +
			     (uint64_t)appconf->db_retry_ms;
	int		 session_done;

	session_done = t->session_id == NULL ||
	    !util_valid_uuid(t->session_id);
	for (;;) {
		db = db_thread();
		if (!session_done && conv_set_session(db, t->conv->id,
		    t->session_id, hash) == 0)
			session_done = 1;
		if (session_done && conv_add_message(db, t->conv->id,
		    "assistant", t->text, req_id(t->r), t->in, t->out,
		    t->cost) == 0)
			return (0);
		if (util_now_ms() >= deadline)
			return (-1);
		db_release();	/* for a connection that works, next time */
		if (t->stream && t->started)
			(void)req_sse_data(t->r, ": keep-alive");
		(void)nanosleep(&pause, NULL);
	}
}

/* Store the answer, extend the history hash, and send the answer. */
static void
chat_finish_done(struct turn *t)
{
	json_t	*u = json_object_get(t->done, "usage");
	char	 h1[65], h2[65];

	t->session_id = json_string_value(json_object_get(t->done,
	    "session_id"));
	t->text = json_string_value(json_object_get(t->done, "text"));
	if (t->text == NULL)
		t->text = "";
	t->in = json_integer_value(json_object_get(u, "input_tokens"));
	t->out = json_integer_value(json_object_get(u, "output_tokens"));
	t->cache_read = json_integer_value(json_object_get(u,
	    "cache_read_input_tokens"));
	t->cache_creation = json_integer_value(json_object_get(u,
	    "cache_creation_input_tokens"));
	t->cost = json_number_value(json_object_get(t->done, "cost_usd"));
	quota_charge(req_key(t->r), t->in + t->out);
	req_usage(t->r, t->conv->model, t->in, t->out, t->cache_read,
	    t->cache_creation, t->cost, t->ttft_ms, NULL);
	conv_chain(t->conv->history_hash, "user", t->message, h1);
	conv_chain(h1, "assistant", t->text, h2);
	if (chat_store_answer(t, h2) != 0)
		log_warnx("request %s: the answer could not be stored: the "
		    "database did not answer for %ld ms", req_id(t->r),
		    appconf->db_retry_ms);
	db_release();	/* a slow reader must not hold it */
	snprintf(t->conv->history_hash, sizeof t->conv->history_hash, "%s", h2);
	if (t->stream && chat_stream_open(t) != 0) {
		log_info("request %s: client left before the end",
		    req_id(t->r));
		return;
	}
	t->ops->done(t);
}

/* Store what a failed turn produced and answer with the error. */
static void
chat_finish_error(struct turn *t, enum turn_end end)
{
	struct db	*db = db_thread();
	int		 status = end == TURN_GONE ? 499 : chat_status(t->code);

	if (end == TURN_GONE)
		chat_set_error(t, "cancelled", "the client closed the "
		    "connection");
	req_usage(t->r, t->conv->model, 0, 0, 0, 0, 0.0, t->ttft_ms, t->error);
	if (t->partial != NULL && conv_add_message(db, t->conv->id,
	    "assistant", t->partial, req_id(t->r), 0, 0, 0.0) != 0)
		log_warnx("request %s: partial answer not stored",
		    req_id(t->r));
	if (conv_forget_session(db, t->conv) != 0)
		log_warnx("request %s: conversation %s keeps its CLI session",
		    req_id(t->r), t->conv->id);
	db_release();
	if (end == TURN_GONE) {
		/* A WebSocket is still there after a cancel: tell it. */
		if (req_sent(t->r))
			t->ops->stream_error(t, 499, "cancelled", t->error);
		req_error(t->r, 499, "cancelled", "%s", t->error);
		return;
	}
	if (status == 503)
		req_add_header(t->r, "Retry-After", "2");
	if (req_sent(t->r))
		t->ops->stream_error(t, status, dialect_error_type(
		    req_route(t->r)->dialect, status), t->error);
	req_error(t->r, status, NULL, "%s", t->error);
}

/* Prepare a turn of conv (the caller keeps conv and message alive). */
void
turn_init(struct turn *t, struct request *r, const struct turn_ops *ops,
    struct conversation *conv, const char *message, long long max_tokens,
    int stream)
{
	memset(t, 0, sizeof *t);
	t->r = r;
	t->ops = ops;
	t->conv = conv;
	t->message = t->send = message;
	t->max_tokens = max_tokens;
	t->stream = stream;
	t->resume = 1;
	t->ttft_ms = -1;
	t->missing = CONV_MISSING;
	t->started_ms = util_now_ms();
	t->created = (long long)time(NULL);
}

/*
 * Run a turn: store the user's message, run the job (priming a new session
 * from the stored history if asked to, or if the old session cannot be
 * resumed), store and send the answer.
 */
void
chat_turn_run(struct turn *t)
{
	struct request	*r = t->r;
	enum turn_end	 end;
	char		*primed = NULL;

	/* chat_run gives the connection back: take it afresh each time. */
	switch (conv_add_user_message(db_thread(), t->conv, t->message,
	    req_id(r))) {
	case 0:
		break;
	case 1:		/* deleted since this process last saw it */
		req_error(r, 404, NULL, "%s", t->missing);
		return;
	default:
		req_db_down(r);
		return;
	}
	/*
	 * A new session (or none to resume after a failed turn) for a
	 * conversation with stored messages starts from those messages.
	 */
	if ((t->prime || (!t->conv->fresh &&
	    t->conv->cli_session_id[0] == '\0')) &&
	    (primed = chat_prime(db_thread(), t)) != NULL) {
		t->send = primed;
		t->resume = 0;
	}
	end = chat_run(t);
	if (end == TURN_ERROR && strcmp(t->code, PROTO_E_RESUME_FAILED) == 0 &&
	    !req_sent(r) && primed == NULL &&
	    (primed = chat_prime(db_thread(), t)) != NULL) {
		log_info("request %s: session %s is gone; priming a new one",
		    req_id(r), t->conv->cli_session_id);
		t->send = primed;
		t->resume = 0;
		end = chat_run(t);
	}
	if (end == TURN_DONE)
		chat_finish_done(t);
	else
		chat_finish_error(t, end);
	json_decref(t->done);
	free(t->partial);
	free(primed);
}

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
	chat_turn_run(&t);
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

	if (req_authenticate(r) != 0 || (body = req_json_body(r, 1)) == NULL)
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
	else
		chat_body(it->sub, it->body, STREAM_NEVER);
	db_release();
	return (NULL);
}

/*
 * POST /api/chat/batch: {"messages":[{...a chat body...}, ...]}, at most
 * batch_max items, run at once; the answer keeps their order, each item a
 * native answer or error with its "status".
 */
void
chat_batch_handle(struct request *r)
{
	struct batch_item	*items;
	json_t			*body, *list, *results;
	long long		 in = 0, out = 0;
	double			 cost = 0;
	size_t			 i, n;

	if (req_authenticate(r) != 0 || (body = req_json_body(r, 1)) == NULL)
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
		if ((items[i].sub = req_sub(r, (int)i)) == NULL)
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
