/*
 * The daemon's state directory:
 *
 *   tenants/<t>/		one per tenant, the daemon's (root's):
 *	workspace/		projects/, temp/, uploads/, README.md (seed
 *				001); the CLI user's; /workspace of the
 *				tenant's tool-enabled CLIs
 *	conversations/<c>/	the HOME of every CLI of conversation c (its
 *				.claude holds the transcript); the CLI user's
 *	incoming/		uploads being written (files.c), renamed into
 *				workspace/ when complete; the CLI user's
 *   warm/<n>/			the HOME of warm process n until it is bound:
 *				binding renames it to its conversation's
 *   slots/<n>			a symlink to warm process n's HOME wherever it
 *				is (the path a CLI without a sandbox knows)
 *   neutral/			empty, read-only: the cwd of every tools-off
 *				CLI that runs without a sandbox
 *   egress/			the egress tokens (egress.c)
 *   sandbox/			passwd and group inside the sandbox (sandbox.c)
 *
 * A sandboxed CLI sees its HOME and (with tools) its workspace, mounted
 * when it starts; a rename keeps the mount, so a warm process's transcript
 * lands in its conversation's folder once bound.  Each conversation has a
 * HOME of its own: --resume finds the session there, and no CLI ever sees
 * another conversation's transcript.
 */
#include "config.h"

#include <sys/stat.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
 * The mode of the daemon's own directories on the way to a CLI's HOME: a
 * sandboxed CLI gets its folders mounted by bubblewrap (run as root) and
 * need not cross them; one without a sandbox must.
 */
static mode_t
ws_dir_mode(void)
{
	return (poold->cf->sandbox == SANDBOX_BWRAP ? 0700 : 0711);
}

/*
 * mkdir that accepts an existing directory (never a symlink), with the
 * mode enforced and, unless uid is (uid_t)-1, the owner too.
 */
int
workspace_mkdir(const char *path, mode_t mode, uid_t uid, gid_t gid,
    char **cause)
{
	struct stat	sb;

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
	if (uid != (uid_t)-1 && (sb.st_uid != uid || sb.st_gid != gid) &&
	    chown(path, uid, gid) == -1) {
		util_cause(cause, "chown %s: %s", path, strerror(errno));
		return (-1);
	}
	return (0);
}

/*
 * workspace_mkdir for the state directory: with own set and run_as_user
 * configured, the directory belongs to that user (the CLI runs as it and
 * writes there).
 */
static int
ws_mkdir(const char *path, mode_t mode, int own, char **cause)
{
	struct poold_config	*cf = poold->cf;

	if (own && cf->run_as_user != NULL)
		return (workspace_mkdir(path, mode, cf->run_uid, cf->run_gid,
		    cause));
	return (workspace_mkdir(path, mode, (uid_t)-1, (gid_t)-1, cause));
}

/*
 * Remove name (under the directory at) and everything below it, never
 * following a symbolic link: each directory is opened relative to its
 * parent with O_NOFOLLOW, so a CLI that swaps a folder for a link to
 * elsewhere cannot make the daemon remove anything outside.  Returns 0 if
 * it was removed or did not exist.
 */
static int
ws_rmtree_at(int at, const char *name, int depth)
{
	struct dirent	*de;
	DIR		*d;
	int		 fd, rc = 0;

	if (unlinkat(at, name, 0) == 0 || errno == ENOENT)
		return (0);
	if ((errno != EISDIR && errno != EPERM) || depth > 256)
		return (-1);
	fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
	    O_CLOEXEC);
	if (fd == -1)
		return (-1);
	if ((d = fdopendir(fd)) == NULL) {
		close(fd);
		return (-1);
	}
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (ws_rmtree_at(dirfd(d), de->d_name, depth + 1) != 0)
			rc = -1;
	}
	closedir(d);
	if (unlinkat(at, name, AT_REMOVEDIR) == -1 && errno != ENOENT)
		rc = -1;
	return (rc);
}

/* Remove path and everything below it (see ws_rmtree_at). */
static int
ws_rmtree(const char *path)
{
	return (ws_rmtree_at(AT_FDCWD, path, 0));
}

#define WS_TRASH_DEPTH	128	/* deeper: moved up to the trash's top */

/*
 * Remove name below at, looking at most at *budget entries: 1 once it is
 * gone, 0 if some is left for the next step, -1 on an error.  Never
 * follows a link.  A folder WS_TRASH_DEPTH deep is moved up to the
 * trash's top (top) and removed from there later, so no tree a CLI made
 * is too deep to remove.
 */
static int
ws_rm_step(int top, int at, const char *name, int depth, long *budget)
{
	static unsigned long	 moves;
	struct dirent		*de;
	DIR			*d;
	char			 moved[64];
	int			 fd, r, rc = 1;

	if (--*budget < 0)
		return (0);
	if (unlinkat(at, name, 0) == 0 || errno == ENOENT)
		return (1);
	if (errno != EISDIR && errno != EPERM)
		return (-1);
	if (depth >= WS_TRASH_DEPTH) {
		snprintf(moved, sizeof moved, "deep-%llu-%lu",
		    (unsigned long long)util_now_ms(), moves++);
		return (renameat(at, name, top, moved) == 0 ? 1 : -1);
	}
	fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
	    O_CLOEXEC);
	if (fd == -1)
		return (-1);
	if ((d = fdopendir(fd)) == NULL) {
		close(fd);
		return (-1);
	}
	while (*budget >= 0 && (de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		r = ws_rm_step(top, dirfd(d), de->d_name, depth + 1, budget);
		if (r == -1)
			rc = -1;
		else if (r == 0 && rc == 1)
			rc = 0;
	}
	closedir(d);
	if (*budget < 0 && rc == 1)
		rc = 0;
	if (rc == 1 && unlinkat(at, name, AT_REMOVEDIR) == -1 &&
	    errno != ENOENT)
		rc = -1;
	return (rc);
}

/*
 * Remove what is in state/trash, looking at most at budget entries (a
 * step of the event loop's tick): a purged tenant's folder goes away in
 * bounded steps.  A step goes down at most WS_TRASH_DEPTH folders before
 * it removes anything: a budget of twice that always makes progress.
 */
void
workspace_trash_step(const char *state, long budget)
{
	struct dirent	*de;
	DIR		*d;
	char		 path[PATH_MAX];
	int		 top;

	if (budget < 2 * WS_TRASH_DEPTH)
		budget = 2 * WS_TRASH_DEPTH;
	if (snprintf(path, sizeof path, "%s/trash", state) >=
	    (int)sizeof path || (top = open(path, O_RDONLY | O_DIRECTORY |
	    O_NOFOLLOW | O_CLOEXEC)) == -1)
		return;
	if ((d = fdopendir(top)) == NULL) {
		close(top);
		return;
	}
	while (budget >= 0 && (de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (ws_rm_step(dirfd(d), dirfd(d), de->d_name, 0, &budget) ==
		    -1)
			log_debug("trash: cannot remove %s yet", de->d_name);
	}
	closedir(d);
}

/* Remove every entry of directory path (what a crash left behind). */
static void
ws_empty(const char *path)
{
	struct dirent	*de;
	DIR		*d;

	if ((d = opendir(path)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (ws_rmtree_at(dirfd(d), de->d_name, 0) != 0)
			log_warn("remove %s/%s", path, de->d_name);
	}
	closedir(d);
}

/*
 * Create the fixed parts of the state directory, and empty what belongs
 * to processes of an earlier run (warm homes and their slots).  The state
 * directory itself can be crossed (nginx reaches egress/ through it).
 */
int
workspace_init(const char *state, char **cause)
{
	const struct {
		const char	*name;
		mode_t		 mode;
	} dirs[] = {
		{ "tenants", ws_dir_mode() },
		{ "warm", ws_dir_mode() },
		{ "slots", ws_dir_mode() },
		{ "neutral", 0555 },
		{ "trash", 0700 },	/* purged tenants, removed in steps */
	};
	char	*p;
	size_t	 i;
	int	 rc;

	if (ws_mkdir(state, 0711, 0, cause) != 0)
		return (-1);
	for (i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
		if ((p = workspace_path(state, dirs[i].name, NULL)) == NULL)
			return (-1);
		rc = ws_mkdir(p, dirs[i].mode, 0, cause);
		if (rc == 0 && (strcmp(dirs[i].name, "warm") == 0 ||
		    strcmp(dirs[i].name, "slots") == 0))
			ws_empty(p);
		free(p);
		if (rc != 0)
			return (-1);
	}
	/* The shared warm HOME of earlier versions. */
	if ((p = workspace_path(state, "warm-home", NULL)) != NULL) {
		if (ws_rmtree(p) != 0)
			log_warn("remove %s", p);
		free(p);
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
	    NULL };
	const char *const		*s;
	char				*base, *p;
	int				 fd, rc = -1;

	if (!util_valid_tenant(t)) {
		util_cause(cause, "invalid tenant name");
		return (-1);
	}
	if ((base = workspace_path(state, "tenants", t)) == NULL)
		return (-1);
	if (ws_mkdir(base, ws_dir_mode(), 0, cause) != 0)
		goto out;
	if ((p = workspace_path(base, "conversations", NULL)) == NULL)
		goto out;
	if (ws_mkdir(p, ws_dir_mode(), 0, cause) != 0) {
		free(p);
		goto out;
	}
	free(p);
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
	fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	    0600);
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

/* Write tenant t's conversation c's HOME into out. */
static int
ws_home_path(const char *state, const char *t, const char *c, char *out,
    size_t outlen, char **cause)
{
	if (!util_valid_tenant(t) || !util_valid_uuid(c)) {
		util_cause(cause, "invalid tenant or conversation");
		return (-1);
	}
	if (snprintf(out, outlen, "%s/tenants/%s/conversations/%s", state, t,
	    c) >= (int)outlen) {
		util_cause(cause, "state path too long");
		return (-1);
	}
	return (0);
}

/*
 * Create (or check) the HOME of tenant t's conversation c, with its
 * .claude, and write its path into out.
 */
int
workspace_home(const char *state, const char *t, const char *c, char *out,
    size_t outlen, char **cause)
{
	char	conf[PATH_MAX + 16];

	if (workspace_tenant(state, t, cause) != 0 ||
	    ws_home_path(state, t, c, out, outlen, cause) != 0 ||
	    ws_mkdir(out, 0700, 1, cause) != 0)
		return (-1);
	snprintf(conf, sizeof conf, "%s/.claude", out);
	return (ws_mkdir(conf, 0700, 1, cause));
}

/* Whether conversation c of tenant t has a HOME (an earlier session). */
int
workspace_home_exists(const char *state, const char *t, const char *c)
{
	struct stat	sb;
	char		path[PATH_MAX];

	if (ws_home_path(state, t, c, path, sizeof path, NULL) != 0)
		return (1);	/* no warm process for it, whatever it is */
	return (lstat(path, &sb) == 0 || errno != ENOENT);
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

/* Create warm slot n: a HOME of its own in warm/, and its slot link. */
int
workspace_slot_create(const char *state, int n, char **cause)
{
	char	home[PATH_MAX], conf[PATH_MAX + 16], target[64];

	snprintf(home, sizeof home, "%s/warm/%d", state, n);
	snprintf(conf, sizeof conf, "%s/.claude", home);
	snprintf(target, sizeof target, "../warm/%d", n);
	if (ws_rmtree(home) != 0) {
		util_cause(cause, "remove %s: %s", home, strerror(errno));
		return (-1);
	}
	if (ws_mkdir(home, 0700, 1, cause) != 0 ||
	    ws_mkdir(conf, 0700, 1, cause) != 0)
		return (-1);
	return (ws_slot_point(state, n, target, cause));
}

/*
 * Bind warm slot n to tenant t's conversation c: its HOME moves to be the
 * conversation's (which must not exist yet), so its transcript is there.
 */
int
workspace_slot_bind(const char *state, int n, const char *t, const char *c,
    char **cause)
{
	char	from[PATH_MAX], to[PATH_MAX], target[PATH_MAX];

	if (workspace_tenant(state, t, cause) != 0 ||
	    ws_home_path(state, t, c, to, sizeof to, cause) != 0)
		return (-1);
	snprintf(from, sizeof from, "%s/warm/%d", state, n);
	if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == -1) {
		util_cause(cause, "bind slot %d: %s", n, strerror(errno));
		return (-1);
	}
	snprintf(target, sizeof target, "../tenants/%s/conversations/%s", t, c);
	return (ws_slot_point(state, n, target, cause));
}

/* Remove warm slot n, and its HOME if it was never bound. */
void
workspace_slot_remove(const char *state, int n)
{
	char	path[PATH_MAX];

	snprintf(path, sizeof path, "%s/slots/%d", state, n);
	if (unlink(path) == -1 && errno != ENOENT)
		log_warn("unlink %s", path);
	snprintf(path, sizeof path, "%s/warm/%d", state, n);
	if (ws_rmtree(path) != 0)
		log_warn("remove %s", path);
}

/*
 * Remove the HOME of tenant t's conversation c: its transcripts and all
 * its CLIs wrote there.  Returns 1 if there was one, 0 if not, -1.
 */
int
workspace_delete_home(const char *state, const char *t, const char *c)
{
	struct stat	sb;
	char		path[PATH_MAX];

	if (ws_home_path(state, t, c, path, sizeof path, NULL) != 0)
		return (-1);
	if (lstat(path, &sb) == -1)
		return (errno == ENOENT ? 0 : -1);
	return (ws_rmtree(path) == 0 ? 1 : -1);
}

/*
 * Remove tenant t's folder: its workspace, uploads in progress and every
 * conversation's HOME (transcripts).  Returns 1 if there was one, 0 if
 * not, -1.
 */
int
workspace_delete_tenant(const char *state, const char *t)
{
	static unsigned long	purges;
	struct stat		sb;
	char			path[PATH_MAX], trash[PATH_MAX];

	if (!util_valid_tenant(t) || snprintf(path, sizeof path,
	    "%s/tenants/%s", state, t) >= (int)sizeof path)
		return (-1);
	if (lstat(path, &sb) == -1)
		return (errno == ENOENT ? 0 : -1);
	/*
	 * Moved aside at once (the tenant is gone as of now), removed from
	 * the trash in bounded steps by the tick (workspace_trash_step):
	 * a tenant's million files never stop the event loop.
	 */
	if (snprintf(trash, sizeof trash, "%s/trash/%s-%llu-%lu", state, t,
	    (unsigned long long)util_now_ms(), purges++) < (int)sizeof trash &&
	    rename(path, trash) == 0)
		return (1);
	log_warn("move %s to the trash", path);
	return (ws_rmtree(path) == 0 ? 1 : -1);
}
