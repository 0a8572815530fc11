/*
 * What the OpenAI and Anthropic dialects share.  Their clients resend the
 * whole history each turn; compat_conversation hashes that history (a
 * chain over the system prompt and every message, see conv_chain) and
 * continues the tenant's conversation that has the same history, sending
 * the CLI only the new turn.  A history ccgate does not hold becomes a new
 * conversation: its messages are stored and a new CLI session is primed
 * with them.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "http.h"

#define COMPAT_MAX_MESSAGES	1000
/* As ccgate-poold takes them (POOLD_MAX_STOPS, POOLD_MAX_STOP_LEN). */
#define COMPAT_MAX_STOPS	8
#define COMPAT_STOP_LEN		256
/* An image's decoded bytes at most, as the Messages API takes them. */
#define COMPAT_IMAGE_MAX	(5 * 1024 * 1024)
#define COMPAT_MAX_TOOLS	128
#define COMPAT_TOOL_NAME	64	/* util_valid_tool_name's */

/* Free parsed messages. */
void
compat_free(struct compat_msgs *m)
{
	size_t	i;

	for (i = 0; i < m->n; i++)
		free(m->texts[i]);
	free(m->texts);
	free(m->roles);
	free(m->system);
	json_decref(m->content);
	json_decref(m->tool_results);
	memset(m, 0, sizeof *m);
}

/* Set err: a status and a message. */
static void __attribute__((format(printf, 3, 4)))
compat_fail(struct compat_err *err, int status, const char *fmt, ...)
{
	va_list	ap;

	err->status = status;
	va_start(ap, fmt);
	(void)vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
}

/* Answer the client with why its history was refused. */
void
compat_refuse(struct request *r, const struct compat_err *err)
{
	req_error(r, err->status, NULL, "%s", err->msg);
}

/* Return 1 if s (len bytes) is base64 that decodes to at most max bytes. */
static int
compat_base64_ok(const char *s, size_t len, size_t max)
{
	size_t	n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789+/");

	if (len == 0 || len % 4 != 0 || (len - n > 2) ||
	    strspn(s + n, "=") != len - n)
		return (0);
	return (len / 4 * 3 - (len - n) <= max);
}

/*
 * An image part of a user message, OpenAI's ({"type":"image_url",
 * "image_url":{"url":"data:<type>;base64,<data>"}}) or Anthropic's
 * ({"type":"image","source":{"type":"base64","media_type","data"}}):
 * appends the image block for the CLI to blocks and its placeholder (the
 * media type, size and a digest: what is stored and hashed instead of
 * the bytes) to *text.  Returns -1 with err set.
 */
static int
compat_image(json_t *part, const char *type, const char *where,
    json_t *blocks, char **text, struct compat_err *err)
{
	static const char *const types[] = { "image/png", "image/jpeg",
	    "image/gif", "image/webp", NULL };
	json_t		*src, *url;
	const char	*media = NULL, *data = NULL, *u, *comma;
	char		 mbuf[32], *nt;
	unsigned char	 digest[16];
	char		 hex[sizeof digest * 2 + 1];
	size_t		 dlen = 0, i;

	if (strcmp(type, "image_url") == 0) {
		url = json_object_get(part, "image_url");
		u = json_string_value(json_is_object(url) ?
		    json_object_get(url, "url") : url);
		if (u == NULL) {
			compat_fail(err, 400, "%s.image_url.url: required", where);
			return (-1);
		}
		if (strncmp(u, "data:", 5) != 0 ||
		    (comma = strchr(u, ',')) == NULL || comma - u < 12 ||
		    strncmp(comma - 7, ";base64", 7) != 0 ||
		    (size_t)(comma - 7 - (u + 5)) >= sizeof mbuf) {
			compat_fail(err, 400, "%s.image_url: only data: URLs "
			    "of base64 images are accepted (ccgate fetches "
			    "nothing on a client's behalf)", where);
			return (-1);
		}
		snprintf(mbuf, sizeof mbuf, "%.*s", (int)(comma - 7 - (u + 5)),
		    u + 5);
		media = mbuf;
		data = comma + 1;
		dlen = strlen(data);
	} else {
		src = json_object_get(part, "source");
		if (!json_is_string(json_object_get(src, "type")) ||
		    strcmp(json_string_value(json_object_get(src, "type")),
		    "base64") != 0) {
			compat_fail(err, 400, "%s.source: only base64 images are "
			    "accepted (ccgate fetches nothing on a client's "
			    "behalf)", where);
			return (-1);
		}
		media = json_string_value(json_object_get(src, "media_type"));
		data = json_string_value(json_object_get(src, "data"));
		dlen = json_string_length(json_object_get(src, "data"));
		if (media == NULL || data == NULL) {
			compat_fail(err, 400, "%s.source: media_type and data "
			    "are required", where);
			return (-1);
		}
	}
	for (i = 0; types[i] != NULL && strcmp(types[i], media) != 0; i++)
		;
	if (types[i] == NULL) {
		compat_fail(err, 400, "%s: media type \"%.32s\" is not one of "
		    "image/png, image/jpeg, image/gif, image/webp", where, media);
		return (-1);
	}
	if (!compat_base64_ok(data, dlen, COMPAT_IMAGE_MAX)) {
		compat_fail(err, 400, "%s: the image must be base64 of at most "
		    "%d bytes", where, COMPAT_IMAGE_MAX);
		return (-1);
	}
	if (blocks != NULL && json_array_append_new(blocks, json_pack(
	    "{s:s, s:{s:s, s:s, s:s%}}", "type", "image", "source", "type",
	    "base64", "media_type", types[i], "data", data, dlen)) != 0) {
		compat_fail(err, 500, "out of memory");
		return (-1);
	}
	crypto_generichash(digest, sizeof digest, (const unsigned char *)data,
	    dlen, NULL, 0);
	sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
	if (asprintf(&nt, "%s%s[image %s, %zu bytes, %s]", *text,
	    **text != '\0' ? "\n" : "", types[i], dlen / 4 * 3, hex) == -1) {
		compat_fail(err, 500, "out of memory");
		return (-1);
	}
	free(*text);
	*text = nt;
	return (0);
}

/*
 * The text of a content value: a string, or an array of {"type":"text",
 * "text":...} parts joined by newlines, at most max bytes.  With blocks
 * (a user message), image parts are accepted too: each is a placeholder
 * in the text, and *blocks gets the message as the CLI is to see it
 * (text and image blocks, in order), or NULL when it is one text.
 * Anything else returns NULL with err naming where.
 */
char *
compat_text(json_t *content, const char *where, size_t max, json_t **blocks,
    struct compat_err *err)
{
	json_t	*part, *all = NULL;
	char	*out = NULL, *nb, pw[96];
	size_t	 i, len = 0, add;
	int	 images = 0;

	if (blocks != NULL)
		*blocks = NULL;
	if (json_is_string(content)) {
		if (json_string_length(content) > max) {
			compat_fail(err, 400, "%s: longer than %zu bytes",
			    where, max);
			return (NULL);
		}
		if ((out = strdup(json_string_value(content))) == NULL)
			compat_fail(err, 500, "out of memory");
		return (out);
	}
	if (!json_is_array(content)) {
		compat_fail(err, 400, "%s: must be a string or an array of "
		    "text parts", where);
		return (NULL);
	}
	if ((out = strdup("")) == NULL ||
	    (blocks != NULL && (all = json_array()) == NULL)) {
		compat_fail(err, 500, "out of memory");
		goto fail;
	}
	json_array_foreach(content, i, part) {
		const char	*type = json_string_value(json_object_get(part,
		    "type"));
		json_t		*text = json_object_get(part, "text");

		snprintf(pw, sizeof pw, "%s[%zu]", where, i);
		if (blocks != NULL && type != NULL &&
		    (strcmp(type, "image_url") == 0 ||
		    strcmp(type, "image") == 0)) {
			if (compat_image(part, type, pw, all, &out, err) != 0)
				goto fail;
			if ((len = strlen(out)) > max) {
				compat_fail(err, 400, "%s: longer than %zu bytes",
				    where, max);
				goto fail;
			}
			images++;
			continue;
		}
		if (type == NULL || strcmp(type, "text") != 0 ||
		    !json_is_string(text)) {
			compat_fail(err, 400, "%s: only text%s parts are "
			    "supported", pw, blocks != NULL ? " and image" : "");
			goto fail;
		}
		add = json_string_length(text) + (len > 0);
		if (len + add > max) {
			compat_fail(err, 400, "%s: longer than %zu bytes",
			    where, max);
			goto fail;
		}
		if ((nb = realloc(out, len + add + 1)) == NULL) {
			compat_fail(err, 500, "out of memory");
			goto fail;
		}
		out = nb;
		if (len > 0)
			out[len++] = '\n';
		memcpy(out + len, json_string_value(text),
		    json_string_length(text));
		len += json_string_length(text);
		out[len] = '\0';
		if (strlen(out) != len) {
			compat_fail(err, 400, "%s: contains a NUL character",
			    where);
			goto fail;
		}
		if (all != NULL && json_array_append_new(all, json_pack(
		    "{s:s, s:O}", "type", "text", "text", text)) != 0) {
			compat_fail(err, 500, "out of memory");
			goto fail;
		}
	}
	/* Several parts stay several blocks, as the client wrote them. */
	if (images > 0 || json_array_size(all) > 1)
		*blocks = all;
	else
		json_decref(all);
	return (out);
fail:
	json_decref(all);
	free(out);
	return (NULL);
}

/* Append a system text (several system messages are joined). */
static int
compat_add_system(struct compat_msgs *m, char *text)
{
	char	*nb;

	if (m->system == NULL) {
		m->system = text;
		return (0);
	}
	if (asprintf(&nb, "%s\n\n%s", m->system, text) == -1) {
		free(text);
		return (-1);
	}
	free(m->system);
	free(text);
	m->system = nb;
	return (0);
}

/*
 * The tool calls of an assistant message (OpenAI "tool_calls", Anthropic
 * "tool_use" blocks) onto its text.  Returns -1 with err set.
 */
static int
compat_calls(json_t *msg, const char *where, char **text,
    struct compat_err *err)
{
	json_t		*calls = json_object_get(msg, "tool_calls"), *c, *input;
	json_t		*content = json_object_get(msg, "content");
	const char	*id, *name, *args, *type;
	size_t		 i;
	int		 rc;

	json_array_foreach(json_is_array(calls) ? calls : NULL, i, c) {
		id = json_string_value(json_object_get(c, "id"));
		name = json_string_value(json_object_get(json_object_get(c,
		    "function"), "name"));
		args = json_string_value(json_object_get(json_object_get(c,
		    "function"), "arguments"));
		input = args != NULL ? json_loads(args, 0, NULL) : NULL;
		if (id == NULL || strchr(id, ' ') != NULL ||
		    !util_valid_tool_name(name) || !json_is_object(input)) {
			json_decref(input);
			compat_fail(err, 400, "%s.tool_calls[%zu]: an id, a "
			    "function name and JSON object arguments are "
			    "required", where, i);
			return (-1);
		}
		rc = turn_mark_call(text, id, name, input);
		json_decref(input);
		if (rc != 0)
			goto nomem;
	}
	json_array_foreach(json_is_array(content) ? content : NULL, i, c) {
		type = json_string_value(json_object_get(c, "type"));
		if (type == NULL || strcmp(type, "tool_use") != 0)
			continue;
		id = json_string_value(json_object_get(c, "id"));
		name = json_string_value(json_object_get(c, "name"));
		if (id == NULL || strchr(id, ' ') != NULL ||
		    !util_valid_tool_name(name) ||
		    !json_is_object(json_object_get(c, "input"))) {
			compat_fail(err, 400, "%s.content[%zu]: a tool_use needs "
			    "an id, a name and an object input", where, i);
			return (-1);
		}
		if (turn_mark_call(text, id, name, json_object_get(c,
		    "input")) != 0)
			goto nomem;
	}
	return (0);
nomem:
	compat_fail(err, 500, "out of memory");
	return (-1);
}

/*
 * A message's content without its tool blocks and the blocks a model's
 * reasoning leaves (thinking), for compat_text: a new reference.
 */
static json_t *
compat_plain(json_t *content)
{
	json_t		*out, *b;
	const char	*type;
	size_t		 i;

	if (!json_is_array(content))
		return (json_incref(content));
	if ((out = json_array()) == NULL)
		return (NULL);
	json_array_foreach(content, i, b) {
		type = json_string_value(json_object_get(b, "type"));
		if (type != NULL && (strcmp(type, "tool_use") == 0 ||
		    strcmp(type, "tool_result") == 0 ||
		    strcmp(type, "thinking") == 0 ||
		    strcmp(type, "redacted_thinking") == 0))
			continue;
		json_array_append(out, b);
	}
	return (out);
}

/*
 * One tool result: its marker onto *text and {id, content, is_error}
 * onto results.  content: a string or text and image blocks.
 */
static int
compat_result(const char *id, json_t *content, int is_error,
    const char *where, size_t max, char **text, json_t *results,
    struct compat_err *err)
{
	json_t	*blocks = NULL;
	char	*rt;

	if (id == NULL || strchr(id, ' ') != NULL || *id == '\0') {
		compat_fail(err, 400, "%s: the id of the tool call it answers "
		    "is required", where);
		return (-1);
	}
	if (content == NULL || json_is_null(content))
		content = json_string("");
	else
		json_incref(content);
	rt = compat_text(content, where, max, &blocks, err);
	if (rt != NULL && blocks == NULL)
		blocks = json_pack("[{s:s, s:s}]", "type", "text", "text", rt);
	json_decref(content);
	if (rt == NULL)
		return (-1);
	if (blocks == NULL || turn_append(text, "[tool_result %s%s]\n%s", id,
	    is_error ? " error" : "", rt) != 0) {
		json_decref(blocks);
		free(rt);
		compat_fail(err, 500, "out of memory");
		return (-1);
	}
	if (json_array_append_new(results, json_pack("{s:s, s:o, s:b}", "id",
	    id, "content", blocks, "is_error", is_error)) != 0) {
		free(rt);
		compat_fail(err, 500, "out of memory");
		return (-1);
	}
	free(rt);
	return (0);
}

/*
 * Parse a "messages" array (each text at most max bytes).  With
 * system_roles (OpenAI), "system" and "developer" messages become the
 * system prompt and "tool" messages are tool results; otherwise (Anthropic)
 * only "user" and "assistant" are allowed, tool results being blocks of a
 * user message.  Tool calls and results are kept in the texts as lines
 * (turn_mark_call, compat_result).  The last turn must be the user's:
 * a message, or the results of the tool calls before it (then
 * m->tool_results holds them).  Returns 0, or -1 with err set and m empty.
 */
int
compat_parse(json_t *msgs, int system_roles, size_t max,
    struct compat_msgs *m, struct compat_err *err)
{
	json_t		*msg, *content, *b, *part, *results = NULL;
	const char	*role, *type;
	char		 where[64], *text;
	size_t		 i, j, n;
	int		 tool_turn = 0, is_tool;

	memset(m, 0, sizeof *m);
	if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
		compat_fail(err, 400, "messages: must be a non-empty array");
		return (-1);
	}
	if ((n = json_array_size(msgs)) > COMPAT_MAX_MESSAGES) {
		compat_fail(err, 400, "messages: more than %d messages",
		    COMPAT_MAX_MESSAGES);
		return (-1);
	}
	m->roles = calloc(n, sizeof *m->roles);
	m->texts = calloc(n, sizeof *m->texts);
	if (m->roles == NULL || m->texts == NULL)
		goto nomem;
	json_array_foreach(msgs, i, msg) {
		role = json_string_value(json_object_get(msg, "role"));
		snprintf(where, sizeof where, "messages[%zu].role", i);
		if (!json_is_object(msg) || role == NULL) {
			compat_fail(err, 400, "%s: required", where);
			goto fail;
		}
		content = json_object_get(msg, "content");
		if (system_roles && (strcmp(role, "system") == 0 ||
		    strcmp(role, "developer") == 0)) {
			snprintf(where, sizeof where, "messages[%zu].content", i);
			if ((text = compat_text(content, where, max, NULL,
			    err)) == NULL)
				goto fail;
			if (compat_add_system(m, text) != 0)
				goto nomem;
			continue;
		}
		/* Tool results: OpenAI's "tool" messages, Anthropic's blocks. */
		is_tool = system_roles && strcmp(role, "tool") == 0;
		json_array_foreach(!system_roles && strcmp(role, "user") == 0 &&
		    json_is_array(content) ? content : NULL, j, b) {
			type = json_string_value(json_object_get(b, "type"));
			if (type != NULL && strcmp(type, "tool_result") == 0)
				is_tool = 1;
		}
		if (!is_tool && strcmp(role, "user") != 0 &&
		    strcmp(role, "assistant") != 0) {
			compat_fail(err, 400, "%s: \"%.32s\" is not supported "
			    "(user and assistant%s)", where, role, system_roles ?
			    ", system, developer and tool" : "");
			goto fail;
		}
		json_decref(m->content);
		m->content = NULL;
		if (is_tool) {
			/* Consecutive tool messages are one turn of results. */
			if (!tool_turn) {
				json_decref(results);
				if ((results = json_array()) == NULL ||
				    (m->texts[m->n] = strdup("")) == NULL)
					goto nomem;
				m->roles[m->n++] = "user";
				tool_turn = 1;
			}
			if (system_roles) {
				if (!json_is_string(json_object_get(msg,
				    "tool_call_id"))) {
					compat_fail(err, 400, "messages[%zu]."
					    "tool_call_id: required", i);
					goto fail;
				}
				snprintf(where, sizeof where,
				    "messages[%zu].content", i);
				if (compat_result(json_string_value(
				    json_object_get(msg, "tool_call_id")),
				    content, 0, where, max, &m->texts[m->n - 1],
				    results, err) != 0)
					goto fail;
				continue;
			}
			json_array_foreach(content, j, b) {
				snprintf(where, sizeof where,
				    "messages[%zu].content[%zu]", i, j);
				type = json_string_value(json_object_get(b,
				    "type"));
				if (type != NULL && strcmp(type, "tool_result") ==
				    0) {
					if (compat_result(json_string_value(
					    json_object_get(b, "tool_use_id")),
					    json_object_get(b, "content"),
					    json_is_true(json_object_get(b,
					    "is_error")), where, max,
					    &m->texts[m->n - 1], results, err) !=
					    0)
						goto fail;
					continue;
				}
				/* Text beside results goes with the last. */
				if (json_array_size(results) == 0) {
					compat_fail(err, 400, "%s: tool results "
					    "come first", where);
					goto fail;
				}
				if ((part = json_pack("[O]", b)) == NULL)
					goto nomem;
				text = compat_text(part, where, max, NULL, err);
				json_decref(part);
				if (text == NULL)
					goto fail;
				if (turn_append(&m->texts[m->n - 1], "%s",
				    text) != 0 || json_array_append_new(
				    json_object_get(json_array_get(results,
				    json_array_size(results) - 1), "content"),
				    json_pack("{s:s, s:s}", "type", "text", "text",
				    text)) != 0) {
					free(text);
					goto nomem;
				}
				free(text);
			}
			continue;
		}
		tool_turn = 0;
		snprintf(where, sizeof where, "messages[%zu].content", i);
		if ((b = compat_plain(content)) == NULL)
			goto nomem;
		if (strcmp(role, "assistant") == 0 && (json_is_null(content) ||
		    (json_is_array(b) && json_array_size(b) == 0))) {
			json_decref(b);
			b = json_string("");
		}
		text = compat_text(b, where, max, strcmp(role, "user") == 0 ?
		    &m->content : NULL, err);
		json_decref(b);
		if (text == NULL)
			goto fail;
		m->roles[m->n] = strcmp(role, "user") == 0 ? "user" :
		    "assistant";
		m->texts[m->n++] = text;
		if (strcmp(role, "assistant") == 0 && compat_calls(msg, where,
		    &m->texts[m->n - 1], err) != 0)
			goto fail;
	}
	if (m->n == 0 || strcmp(m->roles[m->n - 1], "user") != 0 ||
	    *m->texts[m->n - 1] == '\0') {
		compat_fail(err, 400, "messages: the last message must be a "
		    "non-empty user message, or tool results");
		goto fail;
	}
	if (tool_turn) {
		m->tool_results = results;
		results = NULL;
	}
	json_decref(results);
	return (0);
nomem:
	compat_fail(err, 500, "out of memory");
fail:
	json_decref(results);
	compat_free(m);
	return (-1);
}

/*
 * The client's tools (OpenAI "tools" of type function, or the legacy
 * "functions"; Anthropic "tools"), as ccgate passes them on:
 * [{"name","description","input_schema"}], or NULL for none.  tool_choice
 * "none" offers none; "auto" is what a CLI does; a forced choice is put
 * in must ("*": any tool, or the tool's name; "" for none): ccgate-poold
 * asks the model again when it answered without.  Returns -1 after a 400.
 */
int
compat_tools(struct request *r, json_t *body, int openai, json_t **out,
    char *must, size_t mustlen)
{
	json_t		*tools, *t, *fn, *schema, *choice;
	const char	*name, *desc, *cs, *type, *forced;
	size_t		 i, k;
	int		 found = 0;

	*out = NULL;
	tools = req_field(r, body, "tools");
	if (openai && (tools == NULL || json_is_null(tools)))
		tools = req_field(r, body, "functions");
	choice = req_field(r, body, openai && req_field(r, body,
	    "tool_choice") == NULL ? "function_call" : "tool_choice");
	(void)req_field(r, body, "parallel_tool_calls");
	if (tools == NULL || json_is_null(tools))
		tools = NULL;
	else if (!json_is_array(tools) || json_array_size(tools) >
	    COMPAT_MAX_TOOLS) {
		req_error(r, 400, NULL, "tools: must be an array of at most %d "
		    "tools", COMPAT_MAX_TOOLS);
		return (-1);
	}
	/*
	 * The choice: "auto", "none", any tool ("required", {"type":"any"})
	 * or one by name (OpenAI {"type":"function","function":{"name"}} or
	 * the legacy {"name"}, Anthropic {"type":"tool","name"}).
	 */
	must[0] = '\0';
	cs = json_string_value(choice);
	if (cs == NULL)
		cs = json_string_value(json_object_get(choice, "type"));
	forced = json_string_value(json_object_get(json_object_get(choice,
	    "function"), "name"));
	if (forced == NULL)
		forced = json_string_value(json_object_get(choice, "name"));
	if (cs != NULL && (strcmp(cs, "required") == 0 ||
	    strcmp(cs, "any") == 0))
		snprintf(must, mustlen, "*");
	else if (forced != NULL && (cs == NULL || strcmp(cs, "function") == 0 ||
	    strcmp(cs, "tool") == 0)) {
		if (!util_valid_tool_name(forced)) {
			req_error(r, 400, NULL, "tool_choice: not a tool name");
			return (-1);
		}
		snprintf(must, mustlen, "%s", forced);
		cs = NULL;
	} else if (choice != NULL && !json_is_null(choice) && (cs == NULL ||
	    (strcmp(cs, "auto") != 0 && strcmp(cs, "none") != 0))) {
		req_error(r, 400, NULL, "tool_choice: \"auto\", \"none\", "
		    "\"%s\" or a tool by name", openai ? "required" : "any");
		return (-1);
	}
	if (must[0] != '\0' && (tools == NULL || json_array_size(tools) == 0)) {
		req_error(r, 400, NULL, "tool_choice: there are no tools to "
		    "call");
		return (-1);
	}
	if (tools == NULL || json_array_size(tools) == 0 ||
	    (cs != NULL && strcmp(cs, "none") == 0))
		return (0);
	if ((*out = json_array()) == NULL)
		goto nomem;
	json_array_foreach(tools, i, t) {
		fn = openai && json_is_object(json_object_get(t, "function")) ?
		    json_object_get(t, "function") : t;
		type = json_string_value(json_object_get(t, "type"));
		if (type != NULL && strcmp(type, openai ? "function" :
		    "custom") != 0) {
			req_error(r, 400, NULL, "tools[%zu]: type \"%.32s\" is "
			    "not supported (%s)", i, type, openai ?
			    "function" : "client tools only: custom");
			goto fail;
		}
		name = json_string_value(json_object_get(fn, "name"));
		desc = json_string_value(json_object_get(fn, "description"));
		schema = json_object_get(fn, openai ? "parameters" :
		    "input_schema");
		if (!util_valid_tool_name(name)) {
			req_error(r, 400, NULL, "tools[%zu].name: 1 to %d of "
			    "A-Z a-z 0-9 _ -", i, COMPAT_TOOL_NAME);
			goto fail;
		}
		for (k = 0; k < json_array_size(*out); k++) {
			if (strcmp(json_string_value(json_object_get(
			    json_array_get(*out, k), "name")), name) == 0) {
				req_error(r, 400, NULL, "tools[%zu].name: \"%s\" "
				    "twice", i, name);
				goto fail;
			}
		}
		if (schema != NULL && !json_is_null(schema) &&
		    (!json_is_object(schema) || !json_is_string(
		    json_object_get(schema, "type")) || strcmp(
		    json_string_value(json_object_get(schema, "type")),
		    "object") != 0)) {
			req_error(r, 400, NULL, "tools[%zu]: the input schema "
			    "must be a JSON schema of type \"object\"", i);
			goto fail;
		}
		found |= strcmp(must, name) == 0;
		if (json_array_append_new(*out, json_pack("{s:s, s:s, s:o}",
		    "name", name, "description", desc != NULL ? desc : "",
		    "input_schema", json_is_object(schema) ? json_incref(schema) :
		    json_pack("{s:s, s:{}}", "type", "object", "properties"))) !=
		    0)
			goto nomem;
	}
	if (must[0] != '\0' && strcmp(must, "*") != 0 && !found) {
		req_error(r, 400, NULL, "tool_choice: no tool \"%s\" in tools",
		    must);
		goto fail;
	}
	return (0);
nomem:
	req_error(r, 500, NULL, "out of memory");
fail:
	json_decref(*out);
	*out = NULL;
	return (-1);
}

/*
 * Find or create the conversation m continues, for model.  *prime is set
 * when a new CLI session must be primed with the stored history.  Returns
 * 0, or -1 after answering 503.
 */
int
compat_conversation(struct request *r, const char *model,
    struct compat_msgs *m, struct conversation *conv, int *prime)
{
	struct db	*db = db_thread();
	char		 h[65], next[65], *title;
	size_t		 i;
	int		 rc;

	*prime = 0;
	conv_chain("", "system", m->system != NULL ? m->system : "", h);
	for (i = 0; i + 1 < m->n; i++) {
		conv_chain(h, m->roles[i], m->texts[i], next);
		memcpy(h, next, sizeof h);
	}
	if (db == NULL)
		goto down;
	if (m->n > 1) {
		rc = conv_find_history(db, req_key(r)->tenant, h, conv);
		if (rc == -1)
			goto down;
		if (rc == 0) {
			if (strcmp(conv->model, model) != 0) {
				free(conv->model);
				if ((conv->model = strdup(model)) == NULL)
					goto down;
			}
			return (0);
		}
	}
	if ((title = conv_title_from_message(m->texts[0])) == NULL ||
	    conv_insert(db, req_key(r), model, m->system, title, conv) != 0) {
		free(title);
		goto down;
	}
	free(title);
	if (m->n == 1)
		return (0);
	/* A history we do not hold: keep it, and prime a new session. */
	for (i = 0; i + 1 < m->n; i++) {
		if (conv_add_message(db, conv->id, m->roles[i], m->texts[i],
		    req_id(r), 0, 0, 0.0) != 0)
			goto down;
	}
	if (conv_set_history(db, conv, h) != 0)
		goto down;
	*prime = 1;
	return (0);
down:
	conv_clear(conv);
	req_db_down(r);
	return (-1);
}

/*
 * Name every member of the body the handler did not read (req_field) in
 * X-Ccgate-Ignored: accepted, not applied.  Nothing is dropped unsaid.
 */
void
compat_ignored(struct request *r)
{
	char	buf[512];

	if (*req_unread(r, buf, sizeof buf) != '\0')
		req_add_header(r, "X-Ccgate-Ignored", buf);
}

/*
 * Structured output: the JSON schema the answer must follow, from OpenAI's
 * response_format ({"type":"json_schema","json_schema":{"schema"}}, or
 * "json_object": any object) or Anthropic's output_format /
 * output_config.format ({"type":"json_schema","schema"}).  *schema gets
 * a new reference, or NULL for plain text.  Returns -1 after a 400.
 */
int
compat_schema(struct request *r, json_t *body, int openai, json_t **schema)
{
	json_t		*f, *s = NULL;
	const char	*type, *name;

	*schema = NULL;
	name = openai ? "response_format" : "output_format";
	f = req_field(r, body, name);
	if (!openai && (f == NULL || json_is_null(f)) &&
	    json_is_object(req_field(r, body, "output_config"))) {
		name = "output_config.format";
		f = json_object_get(req_field(r, body, "output_config"),
		    "format");
	}
	if (f == NULL || json_is_null(f))
		return (0);
	type = json_string_value(json_object_get(f, "type"));
	if (type != NULL && strcmp(type, "text") == 0 && openai)
		return (0);
	if (type != NULL && strcmp(type, "json_object") == 0 && openai)
		s = json_pack("{s:s}", "type", "object");
	else if (type != NULL && strcmp(type, "json_schema") == 0)
		s = json_incref(openai ? json_object_get(json_object_get(f,
		    "json_schema"), "schema") : json_object_get(f, "schema"));
	if (!json_is_object(s)) {
		json_decref(s);
		req_error(r, 400, NULL, "%s: a JSON schema is required (type "
		    "\"json_schema\" with an object schema%s)", name, openai ?
		    ", or \"json_object\"" : "");
		return (-1);
	}
	*schema = s;
	return (0);
}

/*
 * The stop sequences of body's member name: a string (where string is 1:
 * OpenAI's "stop") or an array of at most COMPAT_MAX_STOPS (max, if not 0)
 * strings, each 1 to COMPAT_STOP_LEN bytes.  *stops gets them as an array
 * (a reference the caller drops), or NULL.  Returns -1 after a 400.
 */
int
compat_stops(struct request *r, json_t *body, const char *name, int max,
    json_t **stops)
{
	json_t	*v = req_field(r, body, name), *s;
	size_t	 i, n;

	*stops = NULL;
	if (v == NULL || json_is_null(v))
		return (0);
	if (json_is_string(v) && max != 0)
		*stops = json_pack("[O]", v);
	else if (json_is_array(v))
		*stops = json_incref(v);
	else {
		req_error(r, 400, NULL, "%s: must be %san array of strings",
		    name, max != 0 ? "a string or " : "");
		return (-1);
	}
	n = json_array_size(*stops);
	if (n > (size_t)(max != 0 ? max : COMPAT_MAX_STOPS)) {
		req_error(r, 400, NULL, "%s: at most %d sequences", name,
		    max != 0 ? max : COMPAT_MAX_STOPS);
		goto fail;
	}
	json_array_foreach(*stops, i, s) {
		if (!json_is_string(s) || json_string_length(s) == 0 ||
		    json_string_length(s) > COMPAT_STOP_LEN ||
		    strlen(json_string_value(s)) != json_string_length(s)) {
			req_error(r, 400, NULL, "%s[%zu]: must be a string of 1 "
			    "to %d bytes", name, i, COMPAT_STOP_LEN);
			goto fail;
		}
	}
	if (n == 0) {
		json_decref(*stops);
		*stops = NULL;
	}
	return (0);
fail:
	json_decref(*stops);
	*stops = NULL;
	return (-1);
}

/* A model that must be present and offered (400 otherwise). */
int
compat_model(struct request *r, json_t *body, const char **model)
{
	if (input_model(r, body, model) != 0)
		return (-1);
	if (*model == NULL) {
		req_error(r, 400, NULL, "model: required");
		return (-1);
	}
	return (0);
}
