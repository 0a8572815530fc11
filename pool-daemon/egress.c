/*
 * Egress tokens.  No CLI holds the upstream credential: each gets an
 * opaque token of its own (in the variable that would carry the
 * credential), and reaches the upstream only through the egress, an nginx
 * server on a unix socket that swaps a known token for the real
 * credential (nginx/ccgate-egress.conf.in).  nginx knows the tokens from
 * this directory, without a reload:
 *
 *   egress/tokens/<hex>	a symlink to ../tenants/<tenant> (or ../warm
 *			before a warm process is bound): the token is valid
 *			while it exists, and nginx logs the tenant it
 *			resolves to
 *   egress/tenants/<t>/	empty: what the links point at
 *   egress/poold/	the same for ccgate-poold's own requests (the
 *			upstream account's checks): no tenant has its name
 *
 * A token lives as long as its process; the daemon removes it when the
 * process is gone, and all of them when it starts.  The directories can
 * be crossed but not listed, so nginx's workers can test a token they are
 * shown but nobody can list the tokens.
 */
#include "config.h"

#include <sys/random.h>
#include <sys/stat.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "poold.h"

/* A folder of the egress: crossed by nginx's workers, listed by no one. */
static int
egress_mkdir(const char *path, char **cause)
{
	return (workspace_mkdir(path, 0711, (uid_t)-1, (gid_t)-1, cause));
}

/*
 * Create the egress directories under state and revoke every token an
 * earlier run left (its processes are gone).
 */
int
egress_init(const char *state, char **cause)
{
	static const char *const	 sub[] = { "egress", "egress/tokens",
	    "egress/tenants", "egress/warm", "egress/poold", NULL };
	const char *const		*s;
	struct dirent			*de;
	DIR				*d;
	char				 path[PATH_MAX];

	for (s = sub; *s != NULL; s++) {
		snprintf(path, sizeof path, "%s/%s", state, *s);
		if (egress_mkdir(path, cause) != 0)
			return (-1);
	}
	snprintf(path, sizeof path, "%s/egress/tokens", state);
	if ((d = opendir(path)) == NULL) {
		util_cause(cause, "%s: %s", path, strerror(errno));
		return (-1);
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] != '.' &&
		    unlinkat(dirfd(d), de->d_name, 0) == -1)
			log_warn("unlink %s/%s", path, de->d_name);
	}
	closedir(d);
	return (0);
}

/* Point token hex at tenant t (NULL: warm), atomically. */
static int
egress_point(const char *state, const char *hex, const char *t, char **cause)
{
	char	link[PATH_MAX], tmp[PATH_MAX], target[PATH_MAX];

	if (t != NULL && strcmp(t, EGRESS_SELF) == 0)
		snprintf(target, sizeof target, "../poold");
	else if (t != NULL) {
		if (!util_valid_tenant(t)) {
			util_cause(cause, "invalid tenant name");
			return (-1);
		}
		snprintf(target, sizeof target, "%s/egress/tenants/%s", state,
		    t);
		if (egress_mkdir(target, cause) != 0)
			return (-1);
		snprintf(target, sizeof target, "../tenants/%s", t);
	} else
		snprintf(target, sizeof target, "../warm");
	snprintf(link, sizeof link, "%s/egress/tokens/%s", state, hex);
	snprintf(tmp, sizeof tmp, "%s/egress/tokens/.%s", state, hex);
	(void)unlink(tmp);
	if (symlink(target, tmp) == -1 || rename(tmp, link) == -1) {
		util_cause(cause, "egress token: %s", strerror(errno));
		(void)unlink(tmp);
		return (-1);
	}
	return (0);
}

/*
 * Make a new token for a process of tenant t (NULL: a warm process;
 * EGRESS_SELF: ccgate-poold's own request).
 */
int
egress_issue(const char *state, const char *t, char hex[EGRESS_TOKEN_HEX + 1],
    char **cause)
{
	uint8_t		b[EGRESS_TOKEN_HEX / 2];
	size_t		off = 0, i;
	ssize_t		n;

	while (off < sizeof b) {
		n = getrandom(b + off, sizeof b - off, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			util_cause(cause, "getrandom: %s", strerror(errno));
			return (-1);
		}
		off += (size_t)n;
	}
	for (i = 0; i < sizeof b; i++)
		snprintf(hex + i * 2, 3, "%02x", b[i]);
	return (egress_point(state, hex, t, cause));
}

/* A warm process's token now speaks for tenant t. */
int
egress_bind(const char *state, const char *hex, const char *t, char **cause)
{
	return (egress_point(state, hex, t, cause));
}

/* The process is gone: its token stops working. */
void
egress_revoke(const char *state, const char *hex)
{
	char	link[PATH_MAX];

	if (hex[0] == '\0')
		return;
	snprintf(link, sizeof link, "%s/egress/tokens/%s", state, hex);
	if (unlink(link) == -1 && errno != ENOENT)
		log_warn("unlink %s", link);
}
