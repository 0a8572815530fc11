/*
 * Routing: method and path to a route.  Paths are matched segment by
 * segment against a fixed table; ":id" captures one segment.  A path that
 * matches with another method answers 405 with Allow; anything else 404,
 * in the dialect of the path's family (/v1/... or /api/...).
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "app.h"

struct route_def {
	const char	*method;
	const char	*pattern;
	enum route_id	 id;
	enum dialect	 dialect;
};

static const struct route_def routes[] = {
	{ "GET",  "/healthz",			ROUTE_HEALTHZ, DIALECT_PLAIN },
	{ "GET",  "/readyz",			ROUTE_READYZ, DIALECT_PLAIN },
	{ "POST", "/api/chat",			ROUTE_CHAT, DIALECT_NATIVE },
	{ "POST", "/api/chat/batch",		ROUTE_CHAT_BATCH,
	    DIALECT_NATIVE },
	{ "POST", "/api/conversations",		ROUTE_CONV_CREATE,
	    DIALECT_NATIVE },
	{ "GET",  "/api/conversations",		ROUTE_CONV_LIST,
	    DIALECT_NATIVE },
	{ "GET",  "/api/conversations/:id",	ROUTE_CONV_GET,
	    DIALECT_NATIVE },
	{ "DELETE", "/api/conversations/:id",	ROUTE_CONV_DELETE,
	    DIALECT_NATIVE },
	{ "POST", "/api/conversations/:id/continue", ROUTE_CONV_CONTINUE,
	    DIALECT_NATIVE },
	{ "GET",  "/api/models",		ROUTE_MODELS, DIALECT_NATIVE },
	{ "GET",  "/api/cli-pool/stats",	ROUTE_POOL_STATS,
	    DIALECT_NATIVE },
	{ "GET",  "/api/cli-pool/health",	ROUTE_POOL_HEALTH,
	    DIALECT_NATIVE },
	/* The old path of /admin/pool/initialize: nginx gates both alike. */
	{ "POST", "/api/cli-pool/initialize",	ROUTE_POOL_INIT,
	    DIALECT_NATIVE },
	{ "POST", "/v1/chat/completions",	ROUTE_OPENAI_CHAT,
	    DIALECT_OPENAI },
	{ "GET",  "/v1/models",			ROUTE_OPENAI_MODELS,
	    DIALECT_OPENAI },
	{ "POST", "/v1/messages",		ROUTE_ANTHROPIC_MESSAGES,
	    DIALECT_ANTHROPIC },
	{ "POST", "/admin/login",		ROUTE_ADMIN_LOGIN,
	    DIALECT_NATIVE },
	{ "GET",  "/admin/me",			ROUTE_ADMIN_ME, DIALECT_NATIVE },
	{ "POST", "/admin/api-keys",		ROUTE_ADMIN_KEYS_CREATE,
	    DIALECT_NATIVE },
	{ "GET",  "/admin/api-keys",		ROUTE_ADMIN_KEYS_LIST,
	    DIALECT_NATIVE },
	{ "GET",  "/admin/api-keys/:id",	ROUTE_ADMIN_KEYS_GET,
	    DIALECT_NATIVE },
	{ "PUT",  "/admin/api-keys/:id",	ROUTE_ADMIN_KEYS_UPDATE,
	    DIALECT_NATIVE },
	{ "DELETE", "/admin/api-keys/:id",	ROUTE_ADMIN_KEYS_REVOKE,
	    DIALECT_NATIVE },
	{ "POST", "/admin/api-keys/:id/rotate",	ROUTE_ADMIN_KEYS_ROTATE,
	    DIALECT_NATIVE },
	{ "GET",  "/admin/usage",		ROUTE_ADMIN_USAGE, DIALECT_NATIVE },
	{ "GET",  "/admin/requests",		ROUTE_ADMIN_REQUESTS,
	    DIALECT_NATIVE },
	{ "GET",  "/admin/errors",		ROUTE_ADMIN_ERRORS,
	    DIALECT_NATIVE },
	{ "GET",  "/admin/pool",		ROUTE_ADMIN_POOL, DIALECT_NATIVE },
	{ "POST", "/admin/pool/initialize",	ROUTE_ADMIN_POOL_INIT,
	    DIALECT_NATIVE },
	{ "GET",  "/admin/audit",		ROUTE_ADMIN_AUDIT, DIALECT_NATIVE },
	{ "GET",  "/metrics",			ROUTE_METRICS, DIALECT_PLAIN },
	{ "GET",  "/api/ws",			ROUTE_WS, DIALECT_NATIVE },
	{ NULL, NULL, ROUTE_NONE, DIALECT_PLAIN }
};

/* The pattern of a route ("unmatched" for none), for logs and metrics. */
const char *
route_name(enum route_id id)
{
	const struct route_def	*d;

	for (d = routes; d->method != NULL; d++) {
		if (d->id == id)
			return (d->pattern);
	}
	return ("unmatched");
}

/*
 * Match path against pattern; on success copy the :id segment (if any)
 * into param.  A segment too long for param still matches, with param
 * left empty, so the handler answers 404 for it like any unknown id.
 */
static int
route_path_match(const char *pattern, const char *path, char *param,
    size_t plen)
{
	const char	*p = pattern, *s = path;
	size_t		 n;

	param[0] = '\0';
	while (*p != '\0') {
		if (*p == ':') {
			n = strcspn(s, "/");
			if (n == 0)
				return (0);
			if (n < plen) {
				memcpy(param, s, n);
				param[n] = '\0';
			}
			s += n;
			p += strcspn(p, "/");
			continue;
		}
		if (*p != *s)
			return (0);
		p++;
		s++;
	}
	return (*s == '\0');
}

/* The dialect of a path's family, for 404 and 405 answers. */
static enum dialect
route_family(const char *path)
{
	if (strcmp(path, "/v1/messages") == 0 ||
	    strncmp(path, "/v1/messages/", 13) == 0)
		return (DIALECT_ANTHROPIC);
	if (strncmp(path, "/v1/", 4) == 0)
		return (DIALECT_OPENAI);
	if (strncmp(path, "/api/", 5) == 0 || strncmp(path, "/admin/", 7) == 0)
		return (DIALECT_NATIVE);
	return (DIALECT_PLAIN);
}

/* Resolve method and path (without the query string) into r. */
void
route_match(const char *method, const char *path, struct route *r)
{
	const struct route_def	*d;
	char			 param[sizeof r->param];
	int			 path_known = 0;

	memset(r, 0, sizeof *r);
	r->dialect = route_family(path);
	r->name = path;
	for (d = routes; d->method != NULL; d++) {
		if (!route_path_match(d->pattern, path, param, sizeof param))
			continue;
		if (strcmp(d->method, method) == 0) {
			r->id = d->id;
			r->dialect = d->dialect;
			r->name = d->pattern;
			memcpy(r->param, param, sizeof r->param);
			return;
		}
		path_known = 1;
		r->dialect = d->dialect;
		r->name = d->pattern;
	}
	if (path_known) {
		/* Build Allow from every method the path answers. */
		char	buf[64] = "";

		for (d = routes; d->method != NULL; d++) {
			if (!route_path_match(d->pattern, path, param,
			    sizeof param))
				continue;
			if (buf[0] != '\0')
				strncat(buf, ", ", sizeof buf - strlen(buf) - 1);
			strncat(buf, d->method, sizeof buf - strlen(buf) - 1);
		}
		r->status = 405;
		snprintf(r->allow, sizeof r->allow, "%s", buf);
		return;
	}
	r->status = 404;
}

/* Value of a hex digit, or -1. */
static int
route_hex(char c)
{
	if (c >= '0' && c <= '9')
		return (c - '0');
	if (c >= 'a' && c <= 'f')
		return (c - 'a' + 10);
	if (c >= 'A' && c <= 'F')
		return (c - 'A' + 10);
	return (-1);
}

/*
 * The first value of parameter name in query string q (NULL for none),
 * percent-decoded into buf, or NULL if absent (or too long for buf, or
 * holding a NUL).
 */
const char *
route_query(const char *q, const char *name, char *buf, size_t len)
{
	const char	*p, *end;
	size_t		 nlen = strlen(name), o;
	int		 hi, lo;

	for (p = q; p != NULL && *p != '\0'; p = *end ? end + 1 : end) {
		end = p + strcspn(p, "&");
		if ((size_t)(end - p) <= nlen || strncmp(p, name, nlen) != 0 ||
		    p[nlen] != '=')
			continue;
		for (p += nlen + 1, o = 0; p < end; p++) {
			char	c = *p;

			if (c == '+')
				c = ' ';
			else if (c == '%' && end - p >= 3 &&
			    (hi = route_hex(p[1])) >= 0 &&
			    (lo = route_hex(p[2])) >= 0) {
				c = (char)(hi << 4 | lo);
				p += 2;
			}
			if (c == '\0' || o + 1 >= len)
				return (NULL);
			buf[o++] = c;
		}
		buf[o] = '\0';
		return (buf);
	}
	return (NULL);
}
