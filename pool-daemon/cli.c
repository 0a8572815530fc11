/*
 * Parse one stream-json line from the claude CLI.  Input is hostile in
 * principle (a CLI of another version, a truncated line): every field is
 * type-checked and bounded, and unknown shapes are CLI_OTHER, not errors.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "util.h"

#define CLI_INT_MAX	1000000000000LL	/* 10^12 */

/* Copy a JSON string member into a bounded buffer. */
static void
cli_copy(char *dst, size_t len, json_t *obj, const char *key)
{
	const char	*s = json_string_value(json_object_get(obj, key));

	if (s != NULL)
		snprintf(dst, len, "%s", s);
}

/* Read a non-negative integer member, or 0. */
static long long
cli_int(json_t *obj, const char *key)
{
	json_t	*v = json_object_get(obj, key);

	/* Token counts: bounded, so that their sums cannot overflow. */
	if (json_is_integer(v) && json_integer_value(v) >= 0)
		return (json_integer_value(v) > CLI_INT_MAX ? CLI_INT_MAX :
		    (long long)json_integer_value(v));
	return (0);
}

/*
 * The tool_use blocks of an assistant line (the CLI prints one a block,
 * with its whole input) as [{id, name, input}]: CLI_TOOL_USE.
 */
static int
cli_tool_uses(json_t *obj, struct cli_msg *m)
{
	json_t		*b, *calls = NULL;
	const char	*type;
	size_t		 i;

	json_array_foreach(json_object_get(json_object_get(obj, "message"),
	    "content"), i, b) {
		type = json_string_value(json_object_get(b, "type"));
		/* Ids a client can send back as they are. */
		if (type == NULL || strcmp(type, "tool_use") != 0 ||
		    !util_valid_word(json_string_value(json_object_get(b, "id")),
		    128) ||
		    !json_is_string(json_object_get(b, "name")))
			continue;
		if ((calls == NULL && (calls = json_array()) == NULL) ||
		    json_array_append_new(calls, json_pack("{s:O, s:O, s:o}",
		    "id", json_object_get(b, "id"), "name", json_object_get(b,
		    "name"), "input", json_is_object(json_object_get(b,
		    "input")) ? json_incref(json_object_get(b, "input")) :
		    json_object())) != 0) {
			json_decref(calls);
			return (-1);
		}
	}
	if (calls != NULL) {
		m->kind = CLI_TOOL_USE;
		m->json = calls;
	}
	return (0);
}

/* Free what a parsed message holds and zero it. */
void
cli_msg_clear(struct cli_msg *m)
{
	free(m->text);
	free(m->request_id);
	json_decref(m->json);
	memset(m, 0, sizeof *m);
}

/* Duplicate a string member into m->text. */
static int
cli_set_text(struct cli_msg *m, json_t *v)
{
	const char	*s = json_string_value(v);

	if (s == NULL)
		return (0);
	if ((m->text = strndup(s, json_string_length(v))) == NULL)
		return (-1);
	return (0);
}

/*
 * Parse line (len bytes, no newline) into m, which the caller clears
 * with cli_msg_clear.  Returns 0, or -1 with *cause set if the line is
 * not a JSON object.
 */
int
cli_parse_line(const char *line, size_t len, struct cli_msg *m, char **cause)
{
	json_error_t	 err;
	json_t		*obj, *ev, *delta, *usage, *tools;
	const char	*type, *subtype;
	int		 rc = 0;

	memset(m, 0, sizeof *m);
	if (len > CLI_MAX_LINE) {
		if (cause != NULL)
			*cause = strdup("line too long");
		return (-1);
	}
	obj = json_loadb(line, len, 0, &err);
	if (obj == NULL || !json_is_object(obj)) {
		util_cause(cause, "bad CLI line: %s",
		    obj == NULL ? err.text : "not an object");
		json_decref(obj);
		return (-1);
	}
	type = json_string_value(json_object_get(obj, "type"));
	subtype = json_string_value(json_object_get(obj, "subtype"));
	if (subtype != NULL)
		snprintf(m->subtype, sizeof m->subtype, "%s", subtype);
	if (json_string_length(json_object_get(obj, "session_id")) ==
	    sizeof m->session_id - 1)
		cli_copy(m->session_id, sizeof m->session_id, obj,
		    "session_id");
	if (type == NULL)
		goto out;

	if (strcmp(type, "system") == 0 && subtype != NULL &&
	    strcmp(subtype, "init") == 0) {
		m->kind = CLI_INIT;
		cli_copy(m->model, sizeof m->model, obj, "model");
		tools = json_object_get(obj, "tools");
		m->ntools = json_is_array(tools) ? (int)json_array_size(tools) :
		    0;
	} else if (strcmp(type, "system") == 0 && subtype != NULL &&
	    strcmp(subtype, "api_retry") == 0) {
		m->kind = CLI_RETRY;
		m->error_status = (int)cli_int(obj, "error_status");
		if (json_is_number(json_object_get(obj, "retry_delay_ms")) &&
		    json_number_value(json_object_get(obj, "retry_delay_ms")) >
		    0 && json_number_value(json_object_get(obj,
		    "retry_delay_ms")) < 1e9)
			m->retry_ms = (long long)json_number_value(
			    json_object_get(obj, "retry_delay_ms"));
	} else if (strcmp(type, "rate_limit_event") == 0) {
		/*
		 * What the CLI read from the upstream's
		 * anthropic-ratelimit-unified-* headers (never the model's
		 * text): a plan's limit and when it resets.
		 */
		ev = json_object_get(obj, "rate_limit_info");
		if (!json_is_object(ev))
			goto out;
		m->kind = CLI_RATE_LIMIT;
		m->rejected = json_is_string(json_object_get(ev, "status")) &&
		    strcmp(json_string_value(json_object_get(ev, "status")),
		    "rejected") == 0;
		m->resets_at = cli_int(ev, "resetsAt");
	} else if (strcmp(type, "stream_event") == 0) {
		ev = json_object_get(obj, "event");
		if (!json_is_object(ev))
			goto out;
		type = json_string_value(json_object_get(ev, "type"));
		if (type != NULL && strcmp(type, "message_start") == 0) {
			usage = json_object_get(json_object_get(ev, "message"),
			    "usage");
			m->kind = CLI_MESSAGE_START;
			m->input_tokens = cli_int(usage, "input_tokens");
			m->cache_read_tokens = cli_int(usage,
			    "cache_read_input_tokens");
			m->cache_creation_tokens = cli_int(usage,
			    "cache_creation_input_tokens");
			goto out;
		}
		if (type != NULL && strcmp(type, "message_delta") == 0) {
			cli_copy(m->stop_reason, sizeof m->stop_reason,
			    json_object_get(ev, "delta"), "stop_reason");
			if (m->stop_reason[0] != '\0')
				m->kind = CLI_STOP;
			m->output_tokens = cli_int(json_object_get(ev, "usage"),
			    "output_tokens");
			goto out;
		}
		if (type != NULL && strcmp(type, "content_block_start") == 0) {
			type = json_string_value(json_object_get(
			    json_object_get(ev, "content_block"), "type"));
			if (type != NULL && strcmp(type, "text") == 0)
				m->kind = CLI_TEXT_START;
			goto out;
		}
		if (type == NULL || strcmp(type, "content_block_delta") != 0)
			goto out;
		delta = json_object_get(ev, "delta");
		type = json_string_value(json_object_get(delta, "type"));
		if (type == NULL || strcmp(type, "text_delta") != 0)
			goto out;
		if (cli_set_text(m, json_object_get(delta, "text")) != 0)
			rc = -1;
		else if (m->text != NULL)
			m->kind = CLI_DELTA;
	} else if (strcmp(type, "control_request") == 0) {
		/* MCP for the "sdk" server ccgate-poold plays (pool_mcp). */
		ev = json_object_get(obj, "request");
		subtype = json_string_value(json_object_get(ev, "subtype"));
		if (subtype == NULL || strcmp(subtype, "mcp_message") != 0 ||
		    !json_is_string(json_object_get(obj, "request_id")) ||
		    !json_is_object(json_object_get(ev, "message")))
			goto out;
		m->kind = CLI_CONTROL;
		m->json = json_incref(json_object_get(ev, "message"));
		if ((m->request_id = strdup(json_string_value(json_object_get(
		    obj, "request_id")))) == NULL)
			rc = -1;
	} else if (strcmp(type, "assistant") == 0) {
		rc = cli_tool_uses(obj, m);
	} else if (strcmp(type, "result") == 0) {
		m->kind = CLI_RESULT;
		m->is_error = json_is_true(json_object_get(obj, "is_error"));
		m->error_status = (int)cli_int(obj, "api_error_status");
		m->duration_ms = cli_int(obj, "duration_ms");
		cli_copy(m->stop_reason, sizeof m->stop_reason, obj,
		    "stop_reason");
		if (json_object_get(obj, "structured_output") != NULL &&
		    !json_is_null(json_object_get(obj, "structured_output")))
			m->json = json_incref(json_object_get(obj,
			    "structured_output"));
		if (json_is_number(json_object_get(obj, "total_cost_usd")))
			m->cost_usd = json_number_value(json_object_get(obj,
			    "total_cost_usd"));
		usage = json_object_get(obj, "usage");
		if (json_is_object(usage)) {
			m->input_tokens = cli_int(usage, "input_tokens");
			m->output_tokens = cli_int(usage, "output_tokens");
			m->cache_read_tokens = cli_int(usage,
			    "cache_read_input_tokens");
			m->cache_creation_tokens = cli_int(usage,
			    "cache_creation_input_tokens");
		}
		if (cli_set_text(m, json_object_get(obj, "result")) != 0)
			rc = -1;
	}
out:
	if (rc != 0 && cause != NULL)
		*cause = strdup("out of memory");
	json_decref(obj);
	return (rc);
}
