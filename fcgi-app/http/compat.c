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
 * (text and image blocks, in order), or NULL when it is only text.
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
	if (images > 0)
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
 * Parse a "messages" array (each text at most max bytes).  With
 * system_roles, "system" and "developer" messages become the system
 * prompt (OpenAI); otherwise only "user" and "assistant" are allowed
 * (Anthropic).  The last message must be the user's.  Returns 0, or -1
 * with err set and m empty.
 */
int
compat_parse(json_t *msgs, int system_roles, size_t max,
    struct compat_msgs *m, struct compat_err *err)
{
	json_t		*msg;
	const char	*role;
	char		 where[64], *text;
	size_t		 i, n;

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
		if (system_roles && (strcmp(role, "system") == 0 ||
		    strcmp(role, "developer") == 0)) {
			snprintf(where, sizeof where, "messages[%zu].content", i);
			if ((text = compat_text(json_object_get(msg, "content"),
			    where, max, NULL, err)) == NULL)
				goto fail;
			if (compat_add_system(m, text) != 0)
				goto nomem;
			continue;
		}
		if (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0) {
			compat_fail(err, 400, "%s: \"%.32s\" is not supported "
			    "(user and assistant%s)", where, role, system_roles ?
			    ", system" : "");
			goto fail;
		}
		snprintf(where, sizeof where, "messages[%zu].content", i);
		json_decref(m->content);
		m->content = NULL;
		if ((text = compat_text(json_object_get(msg, "content"),
		    where, max, strcmp(role, "user") == 0 ? &m->content : NULL,
		    err)) == NULL)
			goto fail;
		m->roles[m->n] = strcmp(role, "user") == 0 ? "user" :
		    "assistant";
		m->texts[m->n++] = text;
	}
	if (m->n == 0 || strcmp(m->roles[m->n - 1], "user") != 0 ||
	    *m->texts[m->n - 1] == '\0') {
		compat_fail(err, 400, "messages: the last message must be a "
		    "non-empty user message");
		goto fail;
	}
	return (0);
nomem:
	compat_fail(err, 500, "out of memory");
fail:
	compat_free(m);
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

/* Return 1 if a tool_choice (or function_call) asks for no tool or any. */
static int
compat_choice_free(json_t *v)
{
	const char	*s = json_string_value(v);

	if (v == NULL || json_is_null(v))
		return (1);
	if (s == NULL)
		s = json_string_value(json_object_get(v, "type"));
	return (s != NULL && (strcmp(s, "none") == 0 ||
	    strcmp(s, "auto") == 0));
}

/*
 * Refuse client-defined tools (400) until they are supported.  No tools
 * at all is not a tool: "tools": [] (what the Claude Code CLI sends with
 * its own tools off), a tool_choice of "none" or "auto" with it, and
 * parallel_tool_calls are accepted.  names: the dialect's tool members,
 * the tool lists first, then their choices, NULL-terminated.
 */
int
compat_no_tools(struct request *r, json_t *body, const char *const *names)
{
	json_t	*v;

	for (; *names != NULL; names++) {
		if ((v = req_field(r, body, *names)) == NULL ||
		    json_is_null(v) || strcmp(*names, "parallel_tool_calls") == 0)
			continue;
		if (json_is_array(v) && json_array_size(v) == 0)
			continue;
		if (!json_is_array(v) && compat_choice_free(v))
			continue;
		req_error(r, 400, NULL, "%s: client-defined tools are not "
		    "supported by this gateway yet", *names);
		return (-1);
	}
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
