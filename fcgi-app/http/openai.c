/*
 * The OpenAI-compatible dialect: POST /v1/chat/completions (JSON, or
 * chat.completion.chunk events ending in [DONE], with
 * stream_options.include_usage) and GET /v1/models.  Errors are
 * {"error":{"message","type","param","code"}}.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "http.h"
#include "log.h"

/* A chunk with one choice whose delta is delta (stolen). */
static json_t *
openai_chunk(struct turn *t, json_t *delta, const char *finish)
{
	char	id[96];

	snprintf(id, sizeof id, "chatcmpl-%s", req_id(t->r));
	return (json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:s?}]}", "id",
	    id, "object", "chat.completion.chunk", "created",
	    (json_int_t)t->created, "model", t->conv->model, "choices", "index",
	    0, "delta", delta, "finish_reason", finish));
}

/* Send a chunk and free it. */
static int
openai_send(struct turn *t, json_t *chunk)
{
	int	rc;

	if (chunk == NULL)
		return (-1);
	rc = req_sse_json(t->r, chunk);
	json_decref(chunk);
	return (rc);
}

/* The stream opens with the assistant's role. */
static int
openai_start(struct turn *t)
{
	return (openai_send(t, openai_chunk(t, json_pack("{s:s, s:s}", "role",
	    "assistant", "content", ""), NULL)));
}

/* One content delta. */
static int
openai_delta(struct turn *t, const char *text)
{
	return (openai_send(t, openai_chunk(t, json_pack("{s:s}", "content",
	    text), NULL)));
}

/* Why the answer ended, as OpenAI says it. */
static const char *
openai_finish(const struct turn *t)
{
	if (json_array_size(t->tool_calls) > 0)
		return ("tool_calls");
	if (strcmp(t->stop_reason, "max_tokens") == 0)
		return ("length");
	if (strcmp(t->stop_reason, "refusal") == 0)
		return ("content_filter");
	return ("stop");
}

/*
 * The answer's tool calls as OpenAI writes them (with index for a
 * stream's delta): {id, type, function: {name, arguments}}.
 */
static json_t *
openai_calls(const struct turn *t, int indexed)
{
	json_t	*out, *c;
	char	*args;
	size_t	 i;

	if ((out = json_array()) == NULL)
		return (NULL);
	json_array_foreach(t->tool_calls, i, c) {
		args = json_dumps(json_object_get(c, "input"), JSON_COMPACT |
		    JSON_ENCODE_ANY);
		if (args == NULL || json_array_append_new(out, json_pack(
		    "{s:O, s:s, s:{s:O, s:s}}", "id", json_object_get(c, "id"),
		    "type", "function", "function", "name", json_object_get(c,
		    "name"), "arguments", args)) != 0) {
			free(args);
			json_decref(out);
			return (NULL);
		}
		free(args);
		if (indexed)
			json_object_set_new(json_array_get(out, i), "index",
			    json_integer((json_int_t)i));
	}
	return (out);
}

/* The usage object. */
static json_t *
openai_usage(struct turn *t)
{
	return (json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens",
	    (json_int_t)t->in, "completion_tokens", (json_int_t)t->out,
	    "total_tokens", (json_int_t)(t->in + t->out),
	    "prompt_tokens_details", "cached_tokens",
	    (json_int_t)t->cache_read));
}

/* The completion, or the stream's last chunks. */
static void
openai_done(struct turn *t)
{
	json_t	*usage, *msg, *ans, *last;
	char	 id[96];

	if (!t->stream) {
		snprintf(id, sizeof id, "chatcmpl-%s", req_id(t->r));
		msg = json_pack("{s:s, s:s}", "role", "assistant", "content",
		    t->text);
		if (msg != NULL && json_array_size(t->tool_calls) > 0) {
			if (*t->text == '\0')
				json_object_set_new(msg, "content", json_null());
			json_object_set_new(msg, "tool_calls",
			    openai_calls(t, 0));
		}
		ans = msg == NULL ? NULL : json_pack(
		    "{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:s}], s:o}", "id", id,
		    "object", "chat.completion", "created",
		    (json_int_t)t->created, "model", t->conv->model, "choices",
		    "index", 0, "message", msg, "finish_reason",
		    openai_finish(t), "usage", openai_usage(t));
		/* ccgate's extension: the files a tools turn changed. */
		if (ans != NULL && t->files != NULL)
			json_object_set_new(ans, "ccgate", json_pack("{s:O, s:O?}",
			    "files", t->files, "workspace", t->workspace));
		req_send_json(t->r, 200, ans);
		return;
	}
	if (json_array_size(t->tool_calls) > 0 && openai_send(t,
	    openai_chunk(t, json_pack("{s:o}", "tool_calls", openai_calls(t,
	    1)), NULL)) != 0)
		return;
	/* The finishing chunk carries ccgate's extension, as the answer. */
	last = openai_chunk(t, json_object(), openai_finish(t));
	if (last != NULL && t->files != NULL)
		json_object_set_new(last, "ccgate", json_pack("{s:O, s:O?}",
		    "files", t->files, "workspace", t->workspace));
	if (openai_send(t, last) != 0)
		return;
	if (t->include_usage) {
		snprintf(id, sizeof id, "chatcmpl-%s", req_id(t->r));
		usage = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", id,
		    "object", "chat.completion.chunk", "created",
		    (json_int_t)t->created, "model", t->conv->model, "choices",
		    "usage", openai_usage(t));
		if (openai_send(t, usage) != 0)
			return;
	}
	(void)req_sse_data(t->r, "[DONE]");
}

/* An error after the stream began. */
static void
openai_stream_error(struct turn *t, int status, const char *type,
    const char *msg)
{
	if (openai_send(t, dialect_error(DIALECT_OPENAI, type, msg)) == 0)
		(void)req_sse_data(t->r, "[DONE]");
}

static const struct turn_ops openai_ops = {
	openai_start, openai_delta, openai_done, openai_stream_error
};

/* Refuse audio output (400): the answer is text. */
static int
openai_text_only(struct request *r, json_t *body)
{
	json_t	*v, *m;
	size_t	 i;

	if ((v = req_field(r, body, "audio")) != NULL && !json_is_null(v)) {
		req_error(r, 400, NULL, "audio: audio output is not supported; "
		    "answers are text");
		return (-1);
	}
	if ((v = req_field(r, body, "modalities")) == NULL || json_is_null(v))
		return (0);
	if (!json_is_array(v)) {
		req_error(r, 400, NULL, "modalities: must be an array");
		return (-1);
	}
	json_array_foreach(v, i, m) {
		if (!json_is_string(m) || strcmp(json_string_value(m),
		    "text") != 0) {
			req_error(r, 400, NULL, "modalities[%zu]: only \"text\" "
			    "is supported", i);
			return (-1);
		}
	}
	return (0);
}

/* POST /v1/chat/completions */
void
openai_chat_handle(struct request *r)
{
	struct compat_msgs	 m;
	struct compat_err	 err;
	struct conversation	 conv;
	struct turn		 t;
	const char		*model;
	json_t			*body, *so, *stops = NULL, *tools = NULL;
	json_t			*schema = NULL;
	char			 must[72] = "";
	long long		 max_tokens = 0, n = 1;
	int			 stream = 0, include_usage = 0, prime;

	memset(&m, 0, sizeof m);
	if ((body = req_json_body(r, 1)) == NULL)
		return;
	if (compat_model(r, body, &model) != 0 ||
	    compat_tools(r, body, 1, &tools, must, sizeof must) != 0 ||
	    compat_schema(r, body, 1, &schema) != 0 ||
	    input_bool(r, body, "stream", &stream) != 0 ||
	    input_int(r, body, "max_tokens", 1, 1000000, &max_tokens) != 0 ||
	    input_int(r, body, "max_completion_tokens", 1, 1000000,
	    &max_tokens) != 0 ||
	    input_int(r, body, "n", 1, 1, &n) != 0)
		goto out;
	if ((so = req_field(r, body, "stream_options")) != NULL &&
	    !json_is_null(so)) {
		if (!json_is_object(so) ||
		    input_bool(r, so, "include_usage", &include_usage) != 0) {
			if (!req_sent(r))
				req_error(r, 400, NULL, "stream_options: must be "
				    "an object");
			goto out;
		}
	}
	if (openai_text_only(r, body) != 0 ||
	    perm_check(r, model, stream, &max_tokens) != 0 ||
	    compat_stops(r, body, "stop", 4, &stops) != 0)
		goto out;
	if (compat_parse(req_field(r, body, "messages"), 1,
	    (size_t)appconf->max_message, &m, &err) != 0) {
		compat_refuse(r, &err);
		goto out;
	}
	compat_ignored(r);
	if (compat_conversation(r, model, &m, &conv, &prime) != 0)
		goto out;
	req_add_header(r, "X-Ccgate-Conversation-Id", conv.id);
	turn_init(&t, r, &openai_ops, &conv, m.texts[m.n - 1], max_tokens,
	    stream);
	t.prime = prime;
	t.include_usage = include_usage;
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
 * A model as the client's SDK expects it: Anthropic's shape for a request
 * that says anthropic-version (its SDKs always do), OpenAI's otherwise.
 */
static json_t *
openai_model(struct request *r, const char *id)
{
	if (req_header(r, "HTTP_ANTHROPIC_VERSION") != NULL)
		return (json_pack("{s:s, s:s, s:s, s:s}", "type", "model", "id",
		    id, "display_name", id, "created_at",
		    "1970-01-01T00:00:00Z"));
	return (json_pack("{s:s, s:s, s:i, s:s}", "id", id, "object", "model",
	    "created", 0, "owned_by", "anthropic"));
}

/*
 * GET /v1/models: the models the key may use, in the shape of the
 * client's SDK (openai_model): OpenAI's list, or Anthropic's page.
 */
void
openai_models_handle(struct request *r)
{
	json_t		*data;
	const char	*first = NULL, *last = NULL;
	int		 i;

	if ((data = json_array()) == NULL) {
		req_error(r, 500, NULL, "out of memory");
		return;
	}
	for (i = 0; i < appconf->nmodels; i++) {
		if (!auth_model_allowed(req_key(r), appconf->models[i]))
			continue;
		if (first == NULL)
			first = appconf->models[i];
		last = appconf->models[i];
		json_array_append_new(data, openai_model(r,
		    appconf->models[i]));
	}
	if (req_header(r, "HTTP_ANTHROPIC_VERSION") != NULL)
		req_send_json(r, 200, json_pack("{s:o, s:b, s:s?, s:s?}",
		    "data", data, "has_more", 0, "first_id", first, "last_id",
		    last));
	else
		req_send_json(r, 200, json_pack("{s:s, s:o}", "object", "list",
		    "data", data));
}

/* GET /v1/models/:id: one model the key may use, or 404. */
void
openai_model_handle(struct request *r)
{
	const char	*id = req_route(r)->param;
	int		 i;

	for (i = 0; i < appconf->nmodels; i++) {
		if (strcmp(appconf->models[i], id) == 0 &&
		    auth_model_allowed(req_key(r), id)) {
			req_send_json(r, 200, openai_model(r, id));
			return;
		}
	}
	req_error(r, 404, NULL, "model: no model \"%.64s\" for this key", id);
}
