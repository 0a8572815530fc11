/*
 * Configuration file parser.  Bounded: the file, each line and each key
 * have hard limits, duplicate keys are refused, and every error names the
 * file and line.
 */
#include "config.h"

#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "util.h"

/* Trim white space at both ends of s in place; return the new start. */
static char *
conf_trim(char *s)
{
	char	*e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return (s);
}

/* Return 1 if key is made of [A-Za-z0-9_.-] and is not too long. */
static int
conf_valid_key(const char *key)
{
	size_t	i, len = strlen(key);

	if (len == 0 || len > CONF_MAX_KEY)
		return (0);
	for (i = 0; i < len; i++) {
		if (!isalnum((unsigned char)key[i]) && key[i] != '_' &&
		    key[i] != '.' && key[i] != '-')
			return (0);
	}
	return (1);
}

/*
 * Parse a configuration held in memory.  name is used in error messages.
 * Returns NULL with *cause set on error; the caller frees *cause.
 */
struct conf *
conf_parse(const char *buf, size_t len, const char *name, char **cause)
{
	struct conf		*cf;
	struct conf_entry	*ne;
	char			 line[CONF_MAX_LINE + 1], *key, *value, *eq;
	size_t			 off = 0, ll, i;
	int			 lineno = 0;

	if (len > CONF_MAX_SIZE) {
		util_cause(cause, "%s: file too large", name);
		return (NULL);
	}
	if ((cf = calloc(1, sizeof *cf)) == NULL ||
	    (cf->path = strdup(name)) == NULL) {
		free(cf);
		util_cause(cause, "%s: out of memory", name);
		return (NULL);
	}
	while (off < len) {
		lineno++;
		for (ll = 0; off + ll < len && buf[off + ll] != '\n'; ll++)
			;
		if (ll > CONF_MAX_LINE) {
			util_cause(cause, "%s:%d: line too long", name, lineno);
			goto fail;
		}
		memcpy(line, buf + off, ll);
		line[ll] = '\0';
		off += ll + 1;
		if (memchr(line, '\0', ll) != NULL) {
			util_cause(cause, "%s:%d: NUL byte", name, lineno);
			goto fail;
		}
		key = conf_trim(line);
		if (*key == '\0' || *key == '#')
			continue;
		if ((eq = strchr(key, '=')) == NULL) {
			util_cause(cause, "%s:%d: expected key = value", name,
			    lineno);
			goto fail;
		}
		*eq = '\0';
		value = conf_trim(eq + 1);
		key = conf_trim(key);
		if (!conf_valid_key(key)) {
			util_cause(cause, "%s:%d: invalid key \"%s\"", name,
			    lineno, key);
			goto fail;
		}
		for (i = 0; i < cf->n; i++) {
			if (strcmp(cf->entries[i].key, key) == 0) {
				util_cause(cause, "%s:%d: duplicate key %s "
				    "(first on line %d)", name, lineno, key,
				    cf->entries[i].line);
				goto fail;
			}
		}
		ne = reallocarray(cf->entries, cf->n + 1, sizeof *ne);
		if (ne == NULL)
			goto nomem;
		cf->entries = ne;
		ne = &cf->entries[cf->n];
		ne->line = lineno;
		ne->key = strdup(key);
		ne->value = strdup(value);
		cf->n++;
		if (ne->key == NULL || ne->value == NULL)
			goto nomem;
	}
	return (cf);

nomem:
	util_cause(cause, "%s: out of memory", name);
fail:
	conf_free(cf);
	return (NULL);
}

/* Read and parse a configuration file. */
struct conf *
conf_load(const char *path, char **cause)
{
	struct conf	*cf;
	char		*buf;
	ssize_t		 n;
	size_t		 len = 0;
	int		 fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		util_cause(cause, "%s: %s", path, strerror(errno));
		return (NULL);
	}
	if ((buf = malloc(CONF_MAX_SIZE + 1)) == NULL) {
		close(fd);
		util_cause(cause, "%s: out of memory", path);
		return (NULL);
	}
	for (;;) {
		n = read(fd, buf + len, CONF_MAX_SIZE + 1 - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			util_cause(cause, "%s: %s", path, strerror(errno));
			close(fd);
			free(buf);
			return (NULL);
		}
		if (n == 0 || (len += (size_t)n) > CONF_MAX_SIZE)
			break;
	}
	close(fd);
	cf = conf_parse(buf, len, path, cause);
	free(buf);
	return (cf);
}

/* Free a configuration. */
void
conf_free(struct conf *cf)
{
	size_t	i;

	if (cf == NULL)
		return;
	for (i = 0; i < cf->n; i++) {
		free(cf->entries[i].key);
		free(cf->entries[i].value);
	}
	free(cf->entries);
	free(cf->path);
	free(cf);
}

/* Return the value of key, or NULL. */
const char *
conf_get(const struct conf *cf, const char *key)
{
	size_t	i;

	for (i = 0; cf != NULL && i < cf->n; i++) {
		if (strcmp(cf->entries[i].key, key) == 0)
			return (cf->entries[i].value);
	}
	return (NULL);
}

/* Return the value of key, or def. */
const char *
conf_str(const struct conf *cf, const char *key, const char *def)
{
	const char	*v = conf_get(cf, key);

	return (v != NULL ? v : def);
}

/* Read an integer within [min, max]; absent means def. */
int
conf_long(const struct conf *cf, const char *key, long def, long min,
    long max, long *out, char **cause)
{
	const char	*v = conf_get(cf, key);
	char		*end;
	long		 n;

	if (v == NULL) {
		*out = def;
		return (0);
	}
	errno = 0;
	n = strtol(v, &end, 10);
	if (*v == '\0' || *end != '\0' || errno != 0) {
		util_cause(cause, "%s: %s: not an integer: %s", cf->path, key,
		    v);
		return (-1);
	}
	if (n < min || n > max) {
		util_cause(cause, "%s: %s: %ld is outside %ld..%ld", cf->path,
		    key, n, min, max);
		return (-1);
	}
	*out = n;
	return (0);
}

/* Read a boolean (yes/no, true/false, on/off, 1/0); absent means def. */
int
conf_bool(const struct conf *cf, const char *key, int def, int *out,
    char **cause)
{
	const char	*v = conf_get(cf, key);

	if (v == NULL)
		*out = def;
	else if (strcmp(v, "yes") == 0 || strcmp(v, "true") == 0 ||
	    strcmp(v, "on") == 0 || strcmp(v, "1") == 0)
		*out = 1;
	else if (strcmp(v, "no") == 0 || strcmp(v, "false") == 0 ||
	    strcmp(v, "off") == 0 || strcmp(v, "0") == 0)
		*out = 0;
	else {
		util_cause(cause, "%s: %s: not a boolean: %s", cf->path, key,
		    v);
		return (-1);
	}
	return (0);
}

/*
 * Refuse keys that are neither in known nor start with one of prefixes
 * (both NULL-terminated lists; prefixes may be NULL).
 */
int
conf_check(const struct conf *cf, const char *const *known,
    const char *const *prefixes, char **cause)
{
	const char *const	*k;
	size_t			 i;

	for (i = 0; i < cf->n; i++) {
		for (k = known; *k != NULL; k++) {
			if (strcmp(*k, cf->entries[i].key) == 0)
				break;
		}
		if (*k != NULL)
			continue;
		for (k = prefixes; k != NULL && *k != NULL; k++) {
			if (strncmp(*k, cf->entries[i].key, strlen(*k)) == 0)
				break;
		}
		if (k != NULL && *k != NULL)
			continue;
		util_cause(cause, "%s:%d: unknown key %s", cf->path,
		    cf->entries[i].line, cf->entries[i].key);
		return (-1);
	}
	return (0);
}
