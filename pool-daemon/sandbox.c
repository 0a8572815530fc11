/*
 * The sandbox around every CLI.  The CLI is third-party code acting on a
 * hostile tenant's words, so each one runs inside bubblewrap (bwrap(1),
 * Debian's bubblewrap) as if compromised:
 *
 *  - its own mount, pid, ipc, uts and cgroup namespaces, and with an
 *    egress configured its own network namespace with nothing but
 *    loopback: it reaches the upstream only through the egress socket;
 *  - a filesystem of its own on a tmpfs: the system (/usr and the /lib
 *    and /bin links, a few files of /etc, a passwd naming only itself),
 *    the CLI's executable, read-only; its conversation's HOME; at
 *    /workspace its tenant's workspace (tools on) or an empty read-only
 *    folder (tools off); a private /tmp, /proc and /dev.  Nothing of the
 *    daemons' configuration, secrets, sockets, other tenants, MariaDB;
 *  - the unprivileged run_as_user, with no capability and no_new_privs
 *    (setpriv(1), util-linux, drops root's inside the sandbox: bwrap runs
 *    as root so that it can mount what the CLI user may not reach).
 *
 * The CLI is also told what not to do with a message (sandbox_cli_args):
 * no slash commands, no @-mention reads outside /workspace (none at all
 * with tools off), no hooks.
 */
#include "config.h"

#include <sys/stat.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "poold.h"

/* Files of /etc a CLI may need (certificates, the dynamic linker, time). */
static const char *const sandbox_etc[] = {
	"/etc/ssl", "/etc/ca-certificates", "/etc/alternatives",
	"/etc/ld.so.cache", "/etc/localtime", "/etc/nsswitch.conf",
	"/etc/hosts", "/etc/resolv.conf", NULL
};

/* Top-level links or folders that hold the system on merged-/usr hosts. */
static const char *const sandbox_sys[] = {
	"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", NULL
};

/*
 * Every top-level name a path inside the sandbox can start with: reads
 * (and edits) the CLI is told to refuse, all but /workspace's.
 */
static const char *const sandbox_tops[] = {
	"bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64",
	"libx32", "media", "mnt", "opt", "proc", "root", "run", "sbin", "srv",
	"sys", "tmp", "usr", "var", NULL
};

/* Whether path is an executable file. */
static int
sandbox_executable(const char *path)
{
	struct stat	sb;

	return (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) &&
	    access(path, X_OK) == 0);
}

/* Whether the file at path is an ELF executable (needs nothing beside it). */
static int
sandbox_is_elf(const char *path)
{
	char	magic[4];
	int	fd;
	ssize_t	n;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return (0);
	n = read(fd, magic, sizeof magic);
	close(fd);
	return (n == 4 && memcmp(magic, "\177ELF", 4) == 0);
}

/*
 * Write the egress socket's folder (what every sandbox mounts) into buf.
 * Returns -1 if there is no egress, or no folder but /.
 */
int
sandbox_egress_dir(const struct poold_config *cf, char *buf, size_t len)
{
	const char	*slash;

	if (cf->egress_socket == NULL ||
	    (slash = strrchr(cf->egress_socket, '/')) == NULL ||
	    slash == cf->egress_socket ||
	    (size_t)(slash - cf->egress_socket) >= len)
		return (-1);
	memcpy(buf, cf->egress_socket, (size_t)(slash - cf->egress_socket));
	buf[slash - cf->egress_socket] = '\0';
	return (0);
}

/*
 * Check a configuration's sandbox before it is used: the programs exist,
 * the egress socket's folder holds nothing else a CLI could reach.
 */
int
sandbox_check(const struct poold_config *cf, char **cause)
{
	struct stat	 sb;
	char		 dir[PATH_MAX];
	const char	*base;
	DIR		*d;
	struct dirent	*de;
	int		 rc = 0;

	if (cf->sandbox == SANDBOX_BWRAP) {
		if (!sandbox_executable(cf->sandbox_bwrap)) {
			util_cause(cause, "sandbox = bwrap, but %s is not "
			    "executable (install the Debian package "
			    "bubblewrap)", cf->sandbox_bwrap);
			return (-1);
		}
		if (geteuid() == 0 && !sandbox_executable(cf->sandbox_setpriv)) {
			util_cause(cause, "%s is not executable (util-linux)",
			    cf->sandbox_setpriv);
			return (-1);
		}
	}
	if (cf->egress_socket == NULL)
		return (0);
	if (sandbox_egress_dir(cf, dir, sizeof dir) != 0 ||
	    (stat(dir, &sb) == 0 && !S_ISDIR(sb.st_mode))) {
		util_cause(cause, "egress_socket: %s must be in a folder of "
		    "its own", cf->egress_socket);
		return (-1);
	}
	base = cf->egress_socket + strlen(dir) + 1;
	/* The folder is mounted into every sandbox: it holds the socket only. */
	if ((d = opendir(dir)) != NULL) {
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 ||
			    strcmp(de->d_name, "..") == 0 ||
			    strcmp(de->d_name, base) == 0)
				continue;
			util_cause(cause, "egress_socket: its folder %s holds "
			    "%s too; every CLI sees that folder, so it must "
			    "hold the egress socket alone", dir, de->d_name);
			rc = -1;
			break;
		}
		closedir(d);
	}
	return (rc);
}

/* Write path (mode 0644, root's) with contents s, atomically. */
static int
sandbox_write(const char *path, const char *s, char **cause)
{
	char	tmp[PATH_MAX];
	int	fd;
	size_t	len = strlen(s);

	snprintf(tmp, sizeof tmp, "%s.new", path);
	(void)unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	    0644);
	if (fd == -1 || write(fd, s, len) != (ssize_t)len || fsync(fd) != 0 ||
	    close(fd) != 0 || rename(tmp, path) != 0) {
		util_cause(cause, "write %s: %s", path, strerror(errno));
		if (fd != -1)
			(void)unlink(tmp);
		return (-1);
	}
	return (0);
}

/*
 * Prepare what every sandbox shares: the passwd and group files it sees
 * (the CLI user alone, with the sandbox's HOME), and the egress socket's
 * folder, which the CLI user's group may cross and no one else.
 */
int
sandbox_init(const char *state, char **cause)
{
	struct poold_config	*cf = poold->cf;
	struct group		*gr;
	char			 dir[PATH_MAX], path[PATH_MAX + 16];
	char			 buf[1024], group[256];
	uid_t			 uid = cf->run_as_user != NULL ? cf->run_uid :
				     geteuid();
	gid_t			 gid = cf->run_as_user != NULL ? cf->run_gid :
				     getegid();

	snprintf(dir, sizeof dir, "%s/sandbox", state);
	if (mkdir(dir, 0755) == -1 && errno != EEXIST) {
		util_cause(cause, "mkdir %s: %s", dir, strerror(errno));
		return (-1);
	}
	if ((gr = getgrgid(gid)) != NULL)
		snprintf(group, sizeof group, "%s", gr->gr_name);
	else
		snprintf(group, sizeof group, "ccgate");
	snprintf(path, sizeof path, "%s/passwd", dir);
	snprintf(buf, sizeof buf, "root:x:0:0:root:/root:/usr/sbin/nologin\n"
	    "%s:x:%lu:%lu:ccgate CLI:%s:/bin/bash\n"
	    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
	    cf->run_as_user != NULL ? cf->run_as_user : "claude",
	    (unsigned long)uid, (unsigned long)gid, SANDBOX_HOME);
	if (sandbox_write(path, buf, cause) != 0)
		return (-1);
	snprintf(path, sizeof path, "%s/group", dir);
	snprintf(buf, sizeof buf, "root:x:0:\n%s:x:%lu:\nnogroup:x:65534:\n",
	    group, (unsigned long)gid);
	if (sandbox_write(path, buf, cause) != 0)
		return (-1);

	if (sandbox_egress_dir(cf, dir, sizeof dir) != 0)
		return (0);
	return (workspace_mkdir(dir, 0750, geteuid() == 0 ? 0 : (uid_t)-1, gid,
	    cause));
}

/* Make path's parent folders on the sandbox's own root (mode 0755). */
static void
sandbox_parents(struct strv *sv, const char *path)
{
	char	buf[PATH_MAX], *p;

	snprintf(buf, sizeof buf, "%s", path);
	for (p = buf + 1; (p = strchr(p, '/')) != NULL; p++) {
		*p = '\0';
		strv_add(sv, "--perms");
		strv_add(sv, "0755");
		strv_add(sv, "--dir");
		strv_add(sv, "%s", buf);
		*p = '/';
	}
}

/* A read-only bind of a host path at the same place, if it exists. */
static void
sandbox_ro(struct strv *sv, const char *path)
{
	strv_add(sv, "--ro-bind-try");
	strv_add(sv, "%s", path);
	strv_add(sv, "%s", path);
}

/*
 * Append to sv the sandbox that a CLI runs in, up to and including the
 * command that becomes the CLI user: home is the host folder mounted as
 * its HOME, workspace the tenant's (tools on) or NULL, prompt whether the
 * system prompt is on SANDBOX_PROMPT_FD.  The CLI's own argv follows.
 */
void
sandbox_args(struct strv *sv, const char *home, const char *workspace,
    int prompt)
{
	struct poold_config	*cf = poold->cf;
	const char *const	*s;
	struct stat		 sb;
	char			 target[PATH_MAX], state[PATH_MAX + 16];
	char			*copy;
	ssize_t			 n;
	int			 i;

	strv_add(sv, "%s", cf->sandbox_bwrap);
	if (!poold->run_as_root) {
		/* No root to mount with: a user namespace does it. */
		strv_add(sv, "--unshare-user");
		strv_add(sv, "--disable-userns");
	}
	strv_add(sv, "--unshare-ipc");
	strv_add(sv, "--unshare-pid");
	strv_add(sv, "--unshare-uts");
	strv_add(sv, "--unshare-cgroup-try");
	if (cf->egress_socket != NULL)
		strv_add(sv, "--unshare-net");
	strv_add(sv, "--die-with-parent");
	strv_add(sv, "--new-session");
	strv_add(sv, "--hostname");
	strv_add(sv, "ccgate");

	/* The system, read-only. */
	strv_add(sv, "--ro-bind");
	strv_add(sv, "/usr");
	strv_add(sv, "/usr");
	for (s = sandbox_sys; *s != NULL; s++) {
		if (lstat(*s, &sb) == -1)
			continue;
		if (S_ISLNK(sb.st_mode) &&
		    (n = readlink(*s, target, sizeof target - 1)) > 0) {
			target[n] = '\0';
			strv_add(sv, "--symlink");
			strv_add(sv, "%s", target);
			strv_add(sv, "%s", *s);
		} else if (S_ISDIR(sb.st_mode))
			sandbox_ro(sv, *s);
	}
	strv_add(sv, "--perms");
	strv_add(sv, "0755");
	strv_add(sv, "--dir");
	strv_add(sv, "/etc");
	for (s = sandbox_etc; *s != NULL; s++)
		sandbox_ro(sv, *s);
	snprintf(state, sizeof state, "%s/sandbox/passwd", cf->state_dir);
	strv_add(sv, "--ro-bind");
	strv_add(sv, "%s", state);
	strv_add(sv, "/etc/passwd");
	snprintf(state, sizeof state, "%s/sandbox/group", cf->state_dir);
	strv_add(sv, "--ro-bind");
	strv_add(sv, "%s", state);
	strv_add(sv, "/etc/group");
	strv_add(sv, "--proc");
	strv_add(sv, "/proc");
	strv_add(sv, "--dev");
	strv_add(sv, "/dev");
	strv_add(sv, "--perms");
	strv_add(sv, "1777");
	strv_add(sv, "--size");
	strv_add(sv, "%ld", cf->sandbox_tmp_mb * 1024 * 1024);
	strv_add(sv, "--tmpfs");
	strv_add(sv, "/tmp");

	/* The CLI itself: its executable, or a script's whole package. */
	if (strncmp(cf->cli_real, "/usr/", 5) != 0) {
		if (sandbox_is_elf(cf->cli_real)) {
			sandbox_parents(sv, cf->cli_real);
			strv_add(sv, "--ro-bind");
			strv_add(sv, "%s", cf->cli_real);
			strv_add(sv, "%s", cf->cli_real);
		} else if ((copy = strdup(cf->cli_real)) != NULL) {
			sandbox_parents(sv, dirname(copy));
			sandbox_ro(sv, copy);
			free(copy);
		} else
			sv->failed = 1;
	}
	for (i = 0; i < cf->nsandbox_paths; i++) {
		sandbox_parents(sv, cf->sandbox_paths[i]);
		sandbox_ro(sv, cf->sandbox_paths[i]);
	}

	/* What is the tenant's: its HOME, and its workspace with tools. */
	strv_add(sv, "--perms");
	strv_add(sv, "0755");
	strv_add(sv, "--dir");
	strv_add(sv, "/home");
	strv_add(sv, "--bind");
	strv_add(sv, "%s", home);
	strv_add(sv, SANDBOX_HOME);
	if (workspace != NULL) {
		strv_add(sv, "--bind");
		strv_add(sv, "%s", workspace);
		strv_add(sv, SANDBOX_WORKSPACE);
	} else {
		strv_add(sv, "--perms");
		strv_add(sv, "0555");
		strv_add(sv, "--dir");
		strv_add(sv, SANDBOX_WORKSPACE);
	}
	strv_add(sv, "--perms");
	strv_add(sv, "0755");
	strv_add(sv, "--dir");
	strv_add(sv, "/run");
	if (sandbox_egress_dir(cf, target, sizeof target) == 0) {
		strv_add(sv, "--ro-bind");
		strv_add(sv, "%s", target);
		strv_add(sv, SANDBOX_EGRESS_DIR);
	}
	if (prompt) {
		strv_add(sv, "--perms");
		strv_add(sv, "0755");
		strv_add(sv, "--dir");
		strv_add(sv, "/run/ccgate");
		strv_add(sv, "--perms");
		strv_add(sv, "0444");
		strv_add(sv, "--ro-bind-data");
		strv_add(sv, "%d", SANDBOX_PROMPT_FD);
		strv_add(sv, SANDBOX_PROMPT);
	}
	strv_add(sv, "--chdir");
	strv_add(sv, SANDBOX_WORKSPACE);
	strv_add(sv, "--");

	/* Inside: become the CLI user, with no way back. */
	if (poold->run_as_root) {
		strv_add(sv, "%s", cf->sandbox_setpriv);
		strv_add(sv, "--reuid=%lu", (unsigned long)cf->run_uid);
		strv_add(sv, "--regid=%lu", (unsigned long)cf->run_gid);
		strv_add(sv, "--clear-groups");
		strv_add(sv, "--inh-caps=-all");
		strv_add(sv, "--ambient-caps=-all");
		strv_add(sv, "--bounding-set=-all");
		strv_add(sv, "--no-new-privs");
		strv_add(sv, "--");
	}
}

/*
 * Append the CLI options that keep a message's text from doing more than
 * talk to the model: slash commands off (a message's leading '/' is also
 * escaped, pool.c), no hooks, and @-mentions (which the CLI reads with
 * its Read permission, tools or not) refused everywhere but /workspace
 * with tools on, everywhere with tools off.  The sandbox bounds what a
 * CLI could read anyway; this keeps even that from the model.
 */
void
sandbox_cli_args(struct strv *sv, int tools)
{
	const char *const	*s;
	char			 deny[2048];
	size_t			 off = 0;

	if (!tools)
		off = (size_t)snprintf(deny, sizeof deny,
		    "\"Read(//**)\",\"Edit(//**)\"");
	else {
		for (s = sandbox_tops; *s != NULL && off < sizeof deny; s++) {
			off += (size_t)snprintf(deny + off, sizeof deny - off,
			    "%s\"Read(//%s/**)\"", off > 0 ? "," : "", *s);
			if (strcmp(*s, "tmp") != 0 && off < sizeof deny)
				off += (size_t)snprintf(deny + off,
				    sizeof deny - off, ",\"Edit(//%s/**)\"", *s);
		}
	}
	if (off >= sizeof deny) {
		sv->failed = 1;
		return;
	}
	strv_add(sv, "--disable-slash-commands");
	strv_add(sv, "--settings={\"permissions\":{\"deny\":[%s]},"
	    "\"disableAllHooks\":true}", deny);
	if (tools)
		strv_add(sv, "--permission-mode=bypassPermissions");
	else
		strv_add(sv, "--tools=");
}
