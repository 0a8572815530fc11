/*
 * libFuzzer target: the history a client of the compatible dialects sends
 * (compat.c): the body's JSON, then its "messages" parsed as the OpenAI
 * route does (system and developer roles become the system prompt) and
 * as the Anthropic route does, and its "system" as a content value.
 * Whatever it is, the parse succeeds with a well-formed result (at least
 * one message, the last the user's and not empty, every text within the
 * limit) or refuses with a status and a message.
 */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "http.h"

#define FUZZ_MAX	4096

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* Parse msgs one way and check what comes out. */
static void
fuzz_parse(json_t *msgs, int system_roles)
{
	struct compat_msgs	m;
	struct compat_err	err;
	size_t			i;

	memset(&err, 0, sizeof err);
	if (compat_parse(msgs, system_roles, FUZZ_MAX, &m, &err) != 0) {
		if ((err.status != 400 && err.status != 500) ||
		    err.msg[0] == '\0' || m.n != 0 || m.texts != NULL)
			abort();
		return;
	}
	if (m.n == 0 || strcmp(m.roles[m.n - 1], "user") != 0 ||
	    m.texts[m.n - 1][0] == '\0')
		abort();
	/* Tool results are the last turn, with an id each. */
	if (m.tool_results != NULL) {
		json_t	*r;

		if (!json_is_array(m.tool_results) ||
		    json_array_size(m.tool_results) == 0 || m.content != NULL)
			abort();
		json_array_foreach(m.tool_results, i, r) {
			if (!json_is_string(json_object_get(r, "id")) ||
			    !json_is_array(json_object_get(r, "content")))
				abort();
		}
	}
	for (i = 0; i < m.n; i++) {
		if (strlen(m.texts[i]) > FUZZ_MAX)
			abort();
	}
	if (!system_roles && m.system != NULL)
		abort();
	/* Blocks for the CLI only when the last message has several parts. */
	if (m.content != NULL) {
		json_t	*b;
		int	 images = 0;

		if (!json_is_array(m.content))
			abort();
		json_array_foreach(m.content, i, b) {
			const char *t = json_string_value(json_object_get(b,
			    "type"));

			if (t == NULL)
				abort();
			images += strcmp(t, "image") == 0;
			if (strcmp(t, "image") != 0 && strcmp(t, "text") != 0)
				abort();
		}
		/* Images, or several parts: kept apart for the CLI. */
		if (images > 0 && strstr(m.texts[m.n - 1], "[image ") == NULL)
			abort();
		if (images == 0 && json_array_size(m.content) < 2)
			abort();
	}
	compat_free(&m);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct compat_err	 err;
	json_error_t		 jerr;
	json_t			*body;
	char			*text;

	if (req_json_depth_ok((const char *)data, size, 32) != 0 ||
	    (body = json_loadb((const char *)data, size,
	    JSON_REJECT_DUPLICATES, &jerr)) == NULL)
		return (0);
	fuzz_parse(json_object_get(body, "messages"), 1);
	fuzz_parse(json_object_get(body, "messages"), 0);
	memset(&err, 0, sizeof err);
	text = compat_text(json_object_get(body, "system"), "system",
	    FUZZ_MAX, NULL, &err);
	if (text == NULL && err.msg[0] == '\0')
		abort();
	if (text != NULL && strlen(text) > FUZZ_MAX)
		abort();
	free(text);
	json_decref(body);
	return (0);
}
