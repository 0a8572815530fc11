/*
 * The Anthropic-compatible dialect: POST /v1/messages, as a message
 * object or as the Messages API's event stream (message_start,
 * content_block_start, content_block_delta..., content_block_stop,
 * message_delta with usage, message_stop).  Errors are
 * {"type":"error","error":{"type","message"}}.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "log.h"
#include "proto.h"

/* Send one named event (takes data). */
static int
anthropic_event(struct turn *t, const char *name, json_t *data)
{
	int	rc;

	if (data == NULL)
		return (-1);
	rc = req_sse_event(t->r, name, data);
	json_decref(data);
	return (rc);
}

/* The message id. */
static void
anthropic_id(struct turn *t, char *buf, size_t len)
{
	snprintf(buf, len, "msg_%s", req_id(t->r));
}

/* message_start and the text block's start. */
static int
anthropic_start(struct turn *t)
{
	char	id[96];

	anthropic_id(t, id, sizeof id);
	/* The usage the upstream's own message_start gave, as it gave it. */
	if (anthropic_event(t, "message_start", json_pack("{s:s, s:{s:s, s:s, "
	    "s:s, s:s, s:[], s:n, s:n, s:{s:I, s:I, s:I, s:i}}}", "type",
	    "message_start", "message", "id", id, "type", "message", "role",
	    "assistant", "model", t->conv->model, "content", "stop_reason",
	    "stop_sequence", "usage", "input_tokens", (json_int_t)t->start_in,
	    "cache_read_input_tokens", (json_int_t)t->start_cache_read,
	    "cache_creation_input_tokens", (json_int_t)t->start_cache_creation,
	    "output_tokens", t->have_start_usage ? 1 : 0)) != 0)
		return (-1);
	return (anthropic_event(t, "content_block_start", json_pack("{s:s, s:i, "
	    "s:{s:s, s:s}}", "type", "content_block_start", "index", 0,
	    "content_block", "type", "text", "text", "")));
}

/* One text delta. */
static int
anthropic_delta(struct turn *t, const char *text)
{
	return (anthropic_event(t, "content_block_delta", json_pack("{s:s, s:i, "
	    "s:{s:s, s:s}}", "type", "content_block_delta", "index", 0, "delta",
	    "type", "text_delta", "text", text)));
}

/* The usage object. */
static json_t *
anthropic_usage(struct turn *t)
{
	return (json_pack("{s:I, s:I, s:I, s:I}", "input_tokens",
	    (json_int_t)t->in, "output_tokens", (json_int_t)t->out,
	    "cache_read_input_tokens", (json_int_t)t->cache_read,
	    "cache_creation_input_tokens", (json_int_t)t->cache_creation));
}

/* The tool calls' blocks: {type: tool_use, id, name, input}. */
static json_t *
anthropic_calls(const struct turn *t, json_t *content)
{
	json_t	*c;
	size_t	 i;

	json_array_foreach(t->tool_calls, i, c) {
		if (json_array_append_new(content, json_pack("{s:s, s:O, s:O, "
		    "s:O}", "type", "tool_use", "id", json_object_get(c, "id"),
		    "name", json_object_get(c, "name"), "input",
		    json_object_get(c, "input"))) != 0) {
			json_decref(content);
			return (NULL);
		}
	}
	return (content);
}

/* A stream's tool_use blocks, after its text block (index 0). */
static int
anthropic_stream_calls(struct turn *t)
{
	json_t	*c;
	char	*js;
	size_t	 i;
	int	 rc;

	json_array_foreach(t->tool_calls, i, c) {
		if (anthropic_event(t, "content_block_start", json_pack("{s:s, "
		    "s:I, s:{s:s, s:O, s:O, s:{}}}", "type",
		    "content_block_start", "index", (json_int_t)i + 1,
		    "content_block", "type", "tool_use", "id", json_object_get(c,
		    "id"), "name", json_object_get(c, "name"), "input")) != 0)
			return (-1);
		if ((js = json_dumps(json_object_get(c, "input"), JSON_COMPACT |
		    JSON_ENCODE_ANY)) == NULL)
			return (-1);
		rc = anthropic_event(t, "content_block_delta", json_pack("{s:s, "
		    "s:I, s:{s:s, s:s}}", "type", "content_block_delta", "index",
		    (json_int_t)i + 1, "delta", "type", "input_json_delta",
		    "partial_json", js));
		free(js);
		if (rc != 0 || anthropic_event(t, "content_block_stop",
		    json_pack("{s:s, s:I}", "type", "content_block_stop",
		    "index", (json_int_t)i + 1)) != 0)
			return (-1);
	}
	return (0);
}

/* The message, or the stream's closing events. */
static void
anthropic_done(struct turn *t)
{
	json_t	*content, *ans;
	char	 id[96];

	if (!t->stream) {
		anthropic_id(t, id, sizeof id);
		content = json_array();
		if (content != NULL && (*t->text != '\0' ||
		    json_array_size(t->tool_calls) == 0))
			json_array_append_new(content, json_pack("{s:s, s:s}",
			    "type", "text", "text", t->text));
		if (content != NULL)
			content = anthropic_calls(t, content);
		ans = content == NULL ? NULL : json_pack(
		    "{s:s, s:s, s:s, s:s, s:o, s:s, s:s?, s:o}", "id", id,
		    "type", "message", "role", "assistant", "model",
		    t->conv->model, "content", content, "stop_reason",
		    t->stop_reason, "stop_sequence", t->stop_sequence, "usage",
		    anthropic_usage(t));
		/* ccgate's extension: the files a tools turn changed. */
		if (ans != NULL && t->files != NULL)
			json_object_set_new(ans, "ccgate", json_pack("{s:O, s:O?}",
			    "files", t->files, "workspace", t->workspace));
		req_send_json(t->r, 200, ans);
		return;
	}
	/* message_delta carries ccgate's extension, as the message does. */
	ans = json_pack("{s:s, s:{s:s, s:s?}, s:o}", "type", "message_delta",
	    "delta", "stop_reason", t->stop_reason, "stop_sequence",
	    t->stop_sequence, "usage", anthropic_usage(t));
	if (ans != NULL && t->files != NULL)
		json_object_set_new(ans, "ccgate", json_pack("{s:O, s:O?}",
		    "files", t->files, "workspace", t->workspace));
	if (anthropic_event(t, "content_block_stop", json_pack("{s:s, s:i}",
	    "type", "content_block_stop", "index", 0)) != 0 ||
	    anthropic_stream_calls(t) != 0) {
		json_decref(ans);
		return;
	}
	if (anthropic_event(t, "message_delta", ans) != 0)
		return;
	(void)anthropic_event(t, "message_stop", json_pack("{s:s}", "type",
	    "message_stop"));
}

/* An error event after the stream began. */
static void
anthropic_stream_error(struct turn *t, int status, const char *type,
    const char *msg)
{
	(void)anthropic_event(t, "error", dialect_error(DIALECT_ANTHROPIC, type,
	    msg));
}

static const struct turn_ops anthropic_ops = {
	anthropic_start, anthropic_delta, anthropic_done, anthropic_stream_error
};

/* POST /v1/messages */
void
anthropic_messages_handle(struct request *r)
{
	struct compat_msgs	 m;
	struct conversation	 conv;
	struct turn		 t;
	const char		*model;
	json_t			*body, *sys, *stops = NULL, *tools = NULL;
	json_t			*schema = NULL;
	char			 must[72] = "";
	long long		 max_tokens = 0;
	int			 stream = 0, prime;
	char			*system = NULL;
	struct compat_err	 err;

	memset(&m, 0, sizeof m);
	if ((body = req_json_body(r, 1)) == NULL)
		return;
	if (compat_model(r, body, &model) != 0 ||
	    compat_tools(r, body, 0, &tools, must, sizeof must) != 0 ||
	    compat_schema(r, body, 0, &schema) != 0 ||
	    input_bool(r, body, "stream", &stream) != 0 ||
	    input_int(r, body, "max_tokens", 1, 1000000, &max_tokens) != 0)
		goto out;
	if (max_tokens == 0) {
		req_error(r, 400, NULL, "max_tokens: required");
		goto out;
	}
	if (perm_check(r, model, stream, &max_tokens) != 0 ||
	    compat_stops(r, body, "stop_sequences", 0, &stops) != 0)
		goto out;
	if ((sys = req_field(r, body, "system")) != NULL &&
	    !json_is_null(sys) && (system = compat_text(sys, "system",
	    (size_t)appconf->max_message, NULL, &err)) == NULL) {
		compat_refuse(r, &err);
		goto out;
	}
	if (compat_parse(req_field(r, body, "messages"), 0,
	    (size_t)appconf->max_message, &m, &err) != 0) {
		compat_refuse(r, &err);
		free(system);
		goto out;
	}
	m.system = system;
	compat_ignored(r);
	if (compat_conversation(r, model, &m, &conv, &prime) != 0)
		goto out;
	req_add_header(r, "X-Ccgate-Conversation-Id", conv.id);
	turn_init(&t, r, &anthropic_ops, &conv, m.texts[m.n - 1], max_tokens,
	    stream);
	t.prime = prime;
	t.stops = stops;
	t.content = m.content;
	t.tools = tools;
	t.must_call = must;
	t.output_schema = schema;
	t.tool_results = m.tool_results;
	turn_run(&t);
	conv_clear(&conv);
out:
	compat_free(&m);
	json_decref(stops);
	json_decref(tools);
	json_decref(schema);
}

/*
 * POST /v1/messages/count_tokens: the upstream's own count, asked by
 * ccgate-poold through the egress (so under the tenant's name, with the
 * credential only nginx holds).  What goes is the members a count reads;
 * a daemon without the egress answers 501.
 */
void
anthropic_count_handle(struct request *r)
{
	static const char *const members[] = { "model", "messages", "system",
	    "tools", "tool_choice", "thinking", NULL };
	json_t		*body, *fwd, *msg, *ans = NULL, *v;
	const char	*model, *type;
	char		*cause = NULL;
	int		 i, status;

	if ((body = req_json_body(r, 1)) == NULL ||
	    compat_model(r, body, &model) != 0)
		return;
	if (!auth_model_allowed(req_key(r), model)) {
		req_error(r, 403, NULL, "model: this key may not use \"%s\"",
		    model);
		return;
	}
	v = req_field(r, body, "messages");
	if (!json_is_array(v) || json_array_size(v) == 0) {
		req_error(r, 400, NULL, "messages: must be a non-empty array");
		return;
	}
	if ((fwd = json_object()) == NULL)
		goto nomem;
	for (i = 0; members[i] != NULL; i++) {
		if ((v = req_field(r, body, members[i])) != NULL &&
		    json_object_set(fwd, members[i], v) != 0) {
			json_decref(fwd);
			goto nomem;
		}
	}
	msg = json_pack("{s:i, s:s, s:s, s:o}", "v", PROTO_VERSION, "type",
	    PROTO_COUNT_TOKENS, "tenant", req_key(r)->tenant, "body", fwd);
	if (msg == NULL)
		goto nomem;
	compat_ignored(r);
	ans = poolc_call(appconf->poold_socket, msg, 60000, &cause);
	json_decref(msg);
	type = ans != NULL ? proto_type(ans) : "";
	req_usage(r, model, 0, 0, 0, 0, 0.0, -1, NULL);
	if (strcmp(type, PROTO_COUNT) == 0) {
		status = (int)json_integer_value(json_object_get(ans, "status"));
		v = json_object_get(ans, "body");
		if (status == 200 && json_is_integer(json_object_get(v,
		    "input_tokens")))
			req_send_json(r, 200, json_pack("{s:O}", "input_tokens",
			    json_object_get(v, "input_tokens")));
		else if (status >= 400 && status <= 599 && json_is_string(
		    json_object_get(json_object_get(v, "error"), "type"))) {
			/*
			 * The upstream's refusal, by its status and type: its
			 * words may speak of the shared account, not this key.
			 */
			if (status == 429 || status >= 500)
				req_add_header(r, "Retry-After", "5");
			req_error(r, status, json_string_value(json_object_get(
			    json_object_get(v, "error"), "type")), "the upstream "
			    "refused the count (%d)", status);
		}
		else
			req_error(r, 502, NULL, "the upstream answered the "
			    "count with status %d", status);
	} else if (strcmp(type, PROTO_ERROR) == 0 && strcmp(json_string_value(
	    json_object_get(ans, "code")) != NULL ? json_string_value(
	    json_object_get(ans, "code")) : "", PROTO_E_UNAVAILABLE) == 0)
		req_error(r, 501, "api_error", "token counting needs "
		    "ccgate-poold's egress, which this gateway does not run");
	else {
		log_warnx("count_tokens: %s", cause != NULL ? cause :
		    json_string_value(json_object_get(ans, "message")) ?
		    json_string_value(json_object_get(ans, "message")) :
		    "refused");
		req_add_header(r, "Retry-After", "5");
		req_error(r, 503, NULL, "the token count is unavailable; retry "
		    "shortly");
	}
	free(cause);
	json_decref(ans);
	return;
nomem:
	req_error(r, 500, NULL, "out of memory");
}
