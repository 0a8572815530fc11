/*
 * Routing: method and path to a row of a route table (the API's is
 * routes.c).  Paths are
 * matched segment by segment; ":id" captures one segment; a last "*"
 * matches the rest of the path, at least one byte (the handler reads it
 * from req_path).  A path that
 * matches with another method answers 405 with Allow; anything else 404,
 * in the dialect of the path's family (/v1/... or /api/...).  A path
 * that nginx and ccgate could read differently is refused with 400
 * before any row is tried: nginx picks a location (the admin allowlist
 * on /admin/, say) by its normalised $uri, ccgate routes on the raw
 * REQUEST_URI, so an encoded '/' or '\\' or a dot segment, literal or
 * percent-encoded, could aim one at a route the other did not check.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "http.h"

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
		if (*p == '*' && p[1] == '\0')
			return (*s != '\0');
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

/* Is s (n bytes) "%2e" in either case? */
static int
route_enc_dot(const char *s, size_t n)
{
	return (n >= 3 && s[0] == '%' && s[1] == '2' &&
	    (s[2] == 'e' || s[2] == 'E'));
}

/*
 * Why path (without its query) is refused, or NULL: an encoded '/' or
 * '\\' anywhere, or a segment that is "." or "..", each dot literal or
 * "%2e".
 */
const char *
route_path_bad(const char *path)
{
	const char	*p, *seg, *end;
	size_t		 dots, k;

	for (p = path; (p = strchr(p, '%')) != NULL; p++) {
		if ((p[1] == '2' && (p[2] == 'f' || p[2] == 'F')) ||
		    (p[1] == '5' && (p[2] == 'c' || p[2] == 'C')))
			return ("invalid path: an encoded '/' or '\\' "
			    "(%2F, %5C) is refused");
	}
	for (seg = path; *seg != '\0'; seg = *end != '\0' ? end + 1 : end) {
		end = seg + strcspn(seg, "/");
		for (k = 0, dots = 0; seg + k < end; dots++) {
			if (seg[k] == '.')
				k++;
			else if (route_enc_dot(seg + k, (size_t)(end - seg - k)))
				k += 3;
			else
				break;
		}
		if (seg + k == end && (dots == 1 || dots == 2))
			return ("invalid path: a '.' or '..' segment (literal "
			    "or percent-encoded) is refused");
	}
	return (NULL);
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

/* Resolve method and path (without the query string) in t into r. */
void
route_match(const struct route_table *t, const char *method,
    const char *path, struct route *r)
{
	const struct route_def	*routes = t->rows;
	char	param[sizeof r->param];
	size_t	i;
	int	path_known = 0;

	memset(r, 0, sizeof *r);
	r->dialect = route_family(path);
	r->name = path;
	if ((r->why = route_path_bad(path)) != NULL) {
		r->status = 400;
		return;
	}
	for (i = 0; i < t->n; i++) {
		if (!route_path_match(routes[i].pattern, path, param,
		    sizeof param))
			continue;
		if (strcmp(routes[i].method, method) == 0) {
			r->def = &routes[i];
			r->slot = (int)i + 1;
			r->dialect = routes[i].dialect;
			r->name = routes[i].pattern;
			memcpy(r->param, param, sizeof r->param);
			return;
		}
		path_known = 1;
		r->dialect = routes[i].dialect;
		r->name = routes[i].pattern;
	}
	if (path_known) {
		/* Build Allow from every method the path answers. */
		char	buf[64] = "";

		for (i = 0; i < t->n; i++) {
			if (!route_path_match(routes[i].pattern, path, param,
			    sizeof param))
				continue;
			if (buf[0] != '\0')
				strncat(buf, ", ", sizeof buf - strlen(buf) - 1);
			strncat(buf, routes[i].method,
			    sizeof buf - strlen(buf) - 1);
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
