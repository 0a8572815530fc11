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

#include "http.h"

#define COMPAT_MAX_MESSAGES	1000

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

/*
 * The text of a content value: a string, or an array of {"type":"text",
 * "text":...} parts joined by newlines, at most max bytes.  Anything else
 * returns NULL with err naming where.
 */
char *
compat_text(json_t *content, const char *where, size_t max,
    struct compat_err *err)
{
	json_t	*part;
	char	*out = NULL, *nb;
	size_t	 i, len = 0, add;

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
	if ((out = strdup("")) == NULL) {
		compat_fail(err, 500, "out of memory");
		return (NULL);
	}
	json_array_foreach(content, i, part) {
		const char	*type = json_string_value(json_object_get(part,
		    "type"));
		json_t		*text = json_object_get(part, "text");

		if (type == NULL || strcmp(type, "text") != 0 ||
		    !json_is_string(text)) {
			compat_fail(err, 400, "%s[%zu]: only text parts are "
			    "supported", where, i);
			free(out);
			return (NULL);
		}
		add = json_string_length(text) + (len > 0);
		if (len + add > max) {
			compat_fail(err, 400, "%s: longer than %zu bytes",
			    where, max);
			free(out);
			return (NULL);
		}
		if ((nb = realloc(out, len + add + 1)) == NULL) {
			compat_fail(err, 500, "out of memory");
			free(out);
			return (NULL);
		}
		out = nb;
		if (len > 0)
			out[len++] = '\n';
		memcpy(out + len, json_string_value(text),
		    json_string_length(text));
		len += json_string_length(text);
		out[len] = '\0';
	}
	if (strlen(out) != len) {
		compat_fail(err, 400, "%s: contains a NUL character", where);
		free(out);
		return (NULL);
	}
	return (out);
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
			    where, max, err)) == NULL)
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
		if ((text = compat_text(json_object_get(msg, "content"),
		    where, max, err)) == NULL)
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
 * Note the parameters present in body that the CLI cannot honour, in
 * X-Ccgate-Ignored (accepted, not applied).
 */
void
compat_ignored(struct request *r, json_t *body, const char *const *names)
{
	char	buf[512] = "";

	for (; *names != NULL; names++) {
		if (json_object_get(body, *names) == NULL)
			continue;
		if (buf[0] != '\0')
			strncat(buf, ", ", sizeof buf - strlen(buf) - 1);
		strncat(buf, *names, sizeof buf - strlen(buf) - 1);
	}
	if (buf[0] != '\0')
		req_add_header(r, "X-Ccgate-Ignored", buf);
}

/* Refuse tools and function calling (400) until they are supported. */
int
compat_no_tools(struct request *r, json_t *body, const char *const *names)
{
	for (; *names != NULL; names++) {
		if (json_object_get(body, *names) != NULL) {
			req_error(r, 400, NULL, "%s: tools and function calling "
			    "are not supported by this gateway yet", *names);
			return (-1);
		}
	}
	return (0);
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
