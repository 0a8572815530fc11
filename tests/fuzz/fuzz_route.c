/*
 * libFuzzer target: the router and the query string decoder.  The input
 * is "METHOD\nPATH\nQUERY" (missing parts are empty).
 */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const names[] = { "limit", "offset", "before",
	    "model", "" };
	struct route	 r;
	char		*in, *method, *path, *query, buf[64];
	size_t		 i;

	if ((in = malloc(size + 1)) == NULL)
		return (0);
	memcpy(in, data, size);
	in[size] = '\0';
	method = in;
	path = strchr(method, '\n');
	path = path != NULL ? (*path = '\0', path + 1) : method + strlen(method);
	query = strchr(path, '\n');
	query = query != NULL ? (*query = '\0', query + 1) : path + strlen(path);

	route_match(&http_routes, method, path, &r);
	if ((r.def == NULL) != (r.status != 0) ||
	    strlen(r.param) >= sizeof r.param || strlen(r.allow) >= sizeof r.allow)
		abort();
	for (i = 0; i < sizeof names / sizeof names[0]; i++) {
		if (route_query(query, names[i], buf, sizeof buf) != NULL &&
		    strlen(buf) >= sizeof buf)
			abort();
	}
	free(in);
	return (0);
}
