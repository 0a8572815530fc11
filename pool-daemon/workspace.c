/*
 * The daemon's state directory:
 *
 *   neutral/		empty, read-only: the cwd of every tools-off CLI, so
 *			that a session's transcript folder (a slug of the cwd)
 *			is the same for every process that resumes it
 *   warm-home/		HOME of warm processes before they are bound
 *   slots/<n>		a symlink, the HOME of warm process n: it points at
 *			warm-home/ until the process is bound, then at its
 *			tenant's home/, so the transcript lands there
 *   tenants/<t>/	mode 0700, one per tenant:
 *	workspace/	projects/, temp/, uploads/, README.md (seed 001);
 *			the cwd of tool-enabled CLIs
 *	home/		HOME; home/.claude is CLAUDE_CONFIG_DIR
 */
#include "config.h"

#include <sys/stat.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "poold.h"

#define WORKSPACE_README \
	"# Your ccgate workspace\n\n" \
	"This folder belongs to you alone.  Tool-enabled sessions run here.\n\n" \
	"- projects/  your projects\n" \
	"- temp/      scratch space, may be cleaned\n" \
	"- uploads/   files you upload\n"

/* Return a newly allocated "a/b[/c]". */
char *
workspace_path(const char *a, const char *b, const char *c)
{
	char	*p;
	int	 r;

	if (c != NULL)
		r = asprintf(&p, "%s/%s/%s", a, b, c);
	else
		r = asprintf(&p, "%s/%s", a, b);
	return (r == -1 ? NULL : p);
}

/*
 * mkdir that accepts an existing directory; the mode is enforced.  With
 * own set and run_as_user configured, the directory belongs to that user
 * (the CLI runs as it and writes there).
 */
static int
ws_mkdir(const char *path, mode_t mode, int own, char **cause)
{
	struct poold_config	*cf = poold != NULL ? poold->cf : NULL;
	struct stat		 sb;

	if (mkdir(path, mode) == -1 && errno != EEXIST) {
		util_cause(cause, "mkdir %s: %s", path, strerror(errno));
		return (-1);
	}
	if (lstat(path, &sb) == -1 || !S_ISDIR(sb.st_mode)) {
		util_cause(cause, "%s: not a directory", path);
		return (-1);
	}
	if ((sb.st_mode & 07777) != mode && chmod(path, mode) == -1) {
		util_cause(cause, "chmod %s: %s", path, strerror(errno));
		return (-1);
	}
	if (own && cf != NULL && cf->run_as_user != NULL &&
	    (sb.st_uid != cf->run_uid || sb.st_gid != cf->run_gid) &&
	    chown(path, cf->run_uid, cf->run_gid) == -1) {
		util_cause(cause, "chown %s: %s", path, strerror(errno));
		return (-1);
	}
	return (0);
}

/*
 * Create the fixed parts of the state directory.  tenants/ and slots/ can
 * be crossed but not listed by others (a CLI run as run_as_user must reach
 * its own tenant's folder, and no one else's).
 */
int
workspace_init(const char *state, char **cause)
{
	static const struct {
		const char	*name;
		mode_t		 mode;
		int		 own;
	} dirs[] = {
		{ "tenants", 0711, 0 },
		{ "slots", 0711, 0 },
		{ "warm-home", 0700, 1 },
		{ "warm-home/.claude", 0700, 1 },
		{ "neutral", 0555, 0 },
	};
	char	*p;
	size_t	 i;
	int	 rc;

	if (ws_mkdir(state, 0711, 0, cause) != 0)
		return (-1);
	for (i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
		if ((p = workspace_path(state, dirs[i].name, NULL)) == NULL)
			return (-1);
		rc = ws_mkdir(p, dirs[i].mode, dirs[i].own, cause);
		free(p);
		if (rc != 0)
			return (-1);
	}
	return (0);
}

/*
 * Create (or check) tenant t's directories.  The name is validated first:
 * nothing is created for a bad one.
 */
int
workspace_tenant(const char *state, const char *t, char **cause)
{
	static const char *const	 sub[] = { "workspace",
	    "workspace/projects", "workspace/temp", "workspace/uploads",
	    "home", "home/.claude", NULL };
	const char *const		*s;
	char				*base, *p;
	int				 fd, rc = -1;

	if (!util_valid_tenant(t)) {
		util_cause(cause, "invalid tenant name");
		return (-1);
	}
	if ((base = workspace_path(state, "tenants", t)) == NULL)
		return (-1);
	if (ws_mkdir(base, 0700, 1, cause) != 0)
		goto out;
	for (s = sub; *s != NULL; s++) {
		if ((p = workspace_path(base, *s, NULL)) == NULL)
			goto out;
		if (ws_mkdir(p, 0700, 1, cause) != 0) {
			free(p);
			goto out;
		}
		free(p);
	}
	if ((p = workspace_path(base, "workspace/README.md", NULL)) == NULL)
		goto out;
	fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd != -1) {
		if (write(fd, WORKSPACE_README, strlen(WORKSPACE_README)) == -1)
			log_warn("write %s", p);
		if (poold->cf->run_as_user != NULL && fchown(fd,
		    poold->cf->run_uid, poold->cf->run_gid) == -1)
			log_warn("chown %s", p);
		close(fd);
	} else if (errno != EEXIST) {
		util_cause(cause, "create %s: %s", p, strerror(errno));
		free(p);
		goto out;
	}
	free(p);
	rc = 0;
out:
	free(base);
	return (rc);
}

/* Point slot n at target (relative to slots/) atomically. */
static int
ws_slot_point(const char *state, int n, const char *target, char **cause)
{
	char	link[PATH_MAX], tmp[PATH_MAX];

	if (snprintf(link, sizeof link, "%s/slots/%d", state, n) >=
	    (int)sizeof link || snprintf(tmp, sizeof tmp, "%s/slots/.%d.new",
	    state, n) >= (int)sizeof tmp) {
		util_cause(cause, "state path too long");
		return (-1);
	}
	(void)unlink(tmp);
	if (symlink(target, tmp) == -1 || rename(tmp, link) == -1) {
		util_cause(cause, "slot %d: %s", n, strerror(errno));
		(void)unlink(tmp);
		return (-1);
	}
	return (0);
}

/* Create warm slot n, pointing at warm-home. */
int
workspace_slot_create(const char *state, int n, char **cause)
{
	return (ws_slot_point(state, n, "../warm-home", cause));
}

/* Point warm slot n at tenant t's home: its transcripts now go there. */
int
workspace_slot_bind(const char *state, int n, const char *t, char **cause)
{
	char	target[PATH_MAX];

	if (!util_valid_tenant(t)) {
		util_cause(cause, "invalid tenant name");
		return (-1);
	}
	snprintf(target, sizeof target, "../tenants/%s/home", t);
	return (ws_slot_point(state, n, target, cause));
}

/* Remove warm slot n. */
void
workspace_slot_remove(const char *state, int n)
{
	char	link[PATH_MAX];

	snprintf(link, sizeof link, "%s/slots/%d", state, n);
	if (unlink(link) == -1 && errno != ENOENT)
		log_warn("unlink %s", link);
}

/* nftw callback removing everything. */
static int
ws_rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	if (remove(path) == -1)
		log_warn("remove %s", path);
	return (0);
}

/*
 * Remove session sid's transcript (projects/<any>/<sid>.jsonl and a
 * projects/<any>/<sid>/ folder) from tenant t.  Returns how many were
 * removed, or -1.
 */
int
workspace_delete_session(const char *state, const char *t, const char *sid)
{
	char		 dir[PATH_MAX], p[PATH_MAX * 2];
	DIR		*d;
	struct dirent	*de;
	struct stat	 sb;
	int		 n = 0;

	if (!util_valid_tenant(t) || !util_valid_uuid(sid))
		return (-1);
	snprintf(dir, sizeof dir, "%s/tenants/%s/home/.claude/projects", state,
	    t);
	if ((d = opendir(dir)) == NULL)
		return (errno == ENOENT ? 0 : -1);
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof p, "%s/%s/%s.jsonl", dir, de->d_name, sid);
		if (unlink(p) == 0)
			n++;
		snprintf(p, sizeof p, "%s/%s/%s", dir, de->d_name, sid);
		if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) {
			if (nftw(p, ws_rm_cb, 16, FTW_DEPTH | FTW_PHYS) == 0)
				n++;
		}
	}
	closedir(d);
	return (n);
}
