/* Small helpers shared by both programs: clocks, UUIDs, name checks. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

/* Milliseconds on the monotonic clock. */
uint64_t
util_now_ms(void)
{
	struct timespec	ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		return (0);
	return ((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
}

/* Microseconds on the monotonic clock. */
uint64_t
util_now_us(void)
{
	struct timespec	ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		return (0);
	return ((uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000);
}

/* Write a random (version 4) UUID into out. */
int
util_uuid4(char out[UUID_LEN + 1])
{
	uint8_t	b[16];
	size_t	off = 0;
	ssize_t	n;

	while (off < sizeof b) {
		n = getrandom(b + off, sizeof b - off, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return (-1);
		off += (size_t)n;
	}
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(out, UUID_LEN + 1,
	    "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
	    "%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5],
	    b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
	return (0);
}

/* Return 1 if s is a UUID in canonical lower-case form. */
int
util_valid_uuid(const char *s)
{
	size_t	i;

	if (s == NULL || strlen(s) != UUID_LEN)
		return (0);
	for (i = 0; i < UUID_LEN; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return (0);
		} else if (!((s[i] >= '0' && s[i] <= '9') ||
		    (s[i] >= 'a' && s[i] <= 'f')))
			return (0);
	}
	return (1);
}

/*
 * Return 1 if s may name a tenant: 1..TENANT_MAX characters of
 * [A-Za-z0-9_.@-], not starting with '.' or '-'.  A tenant names a
 * directory, so nothing that could climb out of its parent is allowed.
 */
int
util_valid_tenant(const char *s)
{
	size_t	i, len;

	if (s == NULL || (len = strlen(s)) == 0 || len > TENANT_MAX)
		return (0);
	if (s[0] == '.' || s[0] == '-')
		return (0);
	for (i = 0; i < len; i++) {
		char	c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '_' || c == '.' ||
		    c == '@' || c == '-'))
			return (0);
	}
	return (1);
}

/*
 * Check path (len bytes, as a client sent it, decoded) as a file's path
 * beneath a workspace: NULL if it is one, else why not.  Relative,
 * components separated by single '/', none empty, "." or "..", none
 * starting with '.' (the CLI's own files, such as .claude/, never cross
 * the files API), no NUL or control character, at most FILE_NAME_MAX
 * bytes a component and FILE_PATH_MAX in all, at most FILE_PATH_DEPTH
 * components (deeper than a workspace's measuring walk would look).
 */
const char *
util_file_path(const char *path, size_t len)
{
	size_t	i, start, n;

	if (len == 0)
		return ("the path is empty");
	if (len > FILE_PATH_MAX)
		return ("the path is longer than 1024 bytes");
	if (path[0] == '/')
		return ("the path must be relative to the workspace");
	for (i = 0; i < len; i++) {
		if (path[i] == '\0')
			return ("the path holds a NUL byte");
		if ((unsigned char)path[i] < 0x20 ||
		    (unsigned char)path[i] == 0x7f)
			return ("the path holds a control character");
	}
	for (start = 0, n = 0; start <= len; start = i + 1) {
		if (++n > FILE_PATH_DEPTH)
			return ("the path has more than 32 components");
		for (i = start; i < len && path[i] != '/'; i++)
			;
		if (i == start)
			return ("the path has an empty component");
		if (path[start] == '.') {
			if (i - start <= 2 && (i - start == 1 ||
			    path[start + 1] == '.'))
				return ("the path may not hold '.' or '..'");
			return ("a name starting with '.' is not allowed");
		}
		if (i - start > FILE_NAME_MAX)
			return ("a name is longer than 255 bytes");
	}
	return (NULL);
}

/* Set O_NONBLOCK on fd. */
int
util_set_nonblock(int fd)
{
	int	fl;

	if ((fl = fcntl(fd, F_GETFL)) == -1)
		return (-1);
	return (fcntl(fd, F_SETFL, fl | O_NONBLOCK));
}

/*
 * Set *cause to a newly allocated message (the caller frees it).  cause
 * may be NULL; if memory runs out *cause is NULL.
 */
void
util_cause(char **cause, const char *fmt, ...)
{
	va_list	ap;

	if (cause == NULL)
		return;
	va_start(ap, fmt);
	if (vasprintf(cause, fmt, ap) == -1)
		*cause = NULL;
	va_end(ap);
}

/*
 * Read a daemon's command line, "[-nv] [-f config]", into a (config
 * defaults to def); anything else prints prog's usage and exits 2.
 */
void
util_args(const char *prog, int argc, char **argv, const char *def,
    struct util_args *a)
{
	int	ch;

	a->config = def;
	a->check = a->verbose = 0;
	while ((ch = getopt(argc, argv, "f:nv")) != -1) {
		switch (ch) {
		case 'f':
			a->config = optarg;
			break;
		case 'n':
			a->check = 1;
			break;
		case 'v':
			a->verbose++;
			break;
		default:
			goto usage;
		}
	}
	if (optind == argc)
		return;
usage:
	fprintf(stderr, "usage: %s [-nv] [-f config]\n", prog);
	exit(2);
}

/*
 * Write all len bytes of buf to the blocking descriptor fd, again after
 * EINTR or a short write.  Returns 0, or -1 with errno set.
 */
int
util_write_all(int fd, const void *buf, size_t len)
{
	const char	*p = buf;
	ssize_t		 n;

	while (len > 0) {
		if ((n = write(fd, p, len)) == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return (-1);
		if (n == 0) {
			errno = EIO;
			return (-1);
		}
		p += n;
		len -= (size_t)n;
	}
	return (0);
}

/* Return 1 if s is 1 to max of [A-Za-z0-9_-] (a name, an id). */
int
util_valid_word(const char *s, size_t max)
{
	size_t	n;

	if (s == NULL)
		return (0);
	n = strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "0123456789_-");
	return (n > 0 && n <= max && s[n] == '\0');
}

/* Return 1 if s is a tool name both APIs (and the CLI) take as it is. */
int
util_valid_tool_name(const char *s)
{
	return (util_valid_word(s, 64));
}
