/*
 * A tenant's workspace files, for the files API (ccgate-fcgi's
 * http/files.c): open a file to read, open a temporary file to write and
 * rename it into place once the workspace's limits allow it, delete, list,
 * and measure.  ccgate-fcgi cannot reach the state directory; it asks here
 * and gets an open descriptor (SCM_RIGHTS, server.c) whose bytes it moves
 * itself, in bounded chunks, so no body passes through this event loop.
 *
 * Every path is resolved beneath tenants/<t>/workspace and nowhere else:
 * the path is checked first (util_file_path: no "..", nothing absolute, no
 * dot names, no control characters), then opened relative to the
 * workspace's descriptor with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
 * | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV), or, where the kernel lacks
 * it, one component at a time with O_NOFOLLOW.  The last component is
 * opened O_NOFOLLOW | O_NONBLOCK and must be a regular file with one link:
 * a symbolic link, a FIFO, a device, a folder or a hard link (which could
 * name a file outside) is refused.  The tenant's CLI may change the
 * workspace at any moment (it is its /workspace); every check is made on
 * the descriptor that is then used, never on a name looked up again.
 *
 * Uploads are written to tenants/<t>/incoming/<random> (outside the
 * workspace: no CLI sees a half-written file) and renamed into place by
 * file_commit, after the workspace's byte and file limits are checked: a
 * refused upload leaves the earlier file as it was.  The rename replaces
 * a name, never writes through one.
 *
 * With run_as_user, this daemon is root; everything below the workspace's
 * descriptor is done with the file system identity of the CLI user
 * (setfsuid, setfsgid), so nothing here can create or open what that user
 * could not, and everything created is that user's.
 */
#include "config.h"

#include <sys/fsuid.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(HAVE_LINUX_OPENAT2_H) && defined(SYS_openat2)
#define FILES_OPENAT2
#include <linux/openat2.h>
#endif

#include "log.h"
#include "poold.h"

#define FILES_WALK_MAX		200000	/* entries a walk looks at */
#define FILES_WALK_DEPTH	64
#define FILES_UPLOADS_MAX	4	/* a tenant's uploads at once */
#define FILES_UPLOAD_IDLE_S	600	/* an upload counts while this fresh */
#define FILES_CACHE_MS		2000	/* a workspace's measure is reused */
#define FILES_CACHE_TENANTS	4096

/* Tests set it to take the O_NOFOLLOW walk where openat2 would do. */
int	files_no_openat2;

/*
 * Each workspace's last complete measure: {tenant: [bytes, files, when
 * (ms)]}, reused for FILES_CACHE_MS (so an upload's open and commit do
 * not walk twice) and adjusted by this daemon's own commits and deletes;
 * what the CLI changes meanwhile is seen once it expires (and a turn's
 * end drops it).
 */
static json_t	*files_cache;

/* Folders files_open_dir made (counted into the cache). */
static int	 files_dirs_made;
#define FILES_LIST_MAX		10000
#define FILES_LIST_BYTES	(2 * 1024 * 1024)	/* of paths, a listing */
#define FILES_TEMP_LEN		32

/* A walk's totals. */
struct files_walk {
	long long	 bytes;		/* regular files' st_size */
	long long	 disk;		/* st_blocks * 512 of all */
	long long	 files;		/* entries, folders too */
	long long	 entries;	/* everything seen */
	long long	 max_files;	/* stop once files pass it; 0: no */
	long long	 max_bytes;	/* stop once bytes pass it; 0: no */
	int		 over;		/* stopped early: past a limit */
	int		 incomplete;	/* an entry could not be measured */
	json_t		*list;		/* listing: [{path,size,modified}] */
	long		 limit;		/* of list */
	size_t		 list_bytes;	/* of its paths */
	int		 truncated;
};

static void	files_limits(json_t *, long long *, long long *);

/* An error answer. */
static json_t *
files_error(const char *code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static json_t *
files_error(const char *code, const char *fmt, ...)
{
	va_list	 ap;
	char	 msg[512];
	json_t	*f;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if ((f = proto_new(PROTO_ERROR)) == NULL)
		return (NULL);
	json_object_set_new(f, "code", json_string(code));
	json_object_set_new(f, "message", json_string(msg));
	return (f);
}

/* Take on the CLI user's file system identity (if this daemon is root). */
static void
files_as_user(void)
{
	if (poold->run_as_root && poold->cf->run_as_user != NULL) {
		(void)setfsgid(poold->cf->run_gid);
		(void)setfsuid(poold->cf->run_uid);
	}
}

/* Back to the daemon's own. */
static void
files_as_self(void)
{
	if (poold->run_as_root && poold->cf->run_as_user != NULL) {
		(void)setfsuid(0);
		(void)setfsgid(0);
	}
}

/*
 * Open tenant t's folder sub ("workspace", "incoming") as this daemon,
 * creating the tenant's folders first.  -1 with *cause set.
 */
static int
files_tenant_dir(const char *t, const char *sub, char **cause)
{
	struct poold_config	*cf = poold->cf;
	char			 path[PATH_MAX];
	int			 fd;

	if (workspace_tenant(cf->state_dir, t, cause) != 0)
		return (-1);
	if (snprintf(path, sizeof path, "%s/tenants/%s/%s", cf->state_dir, t,
	    sub) >= (int)sizeof path) {
		util_cause(cause, "state path too long");
		return (-1);
	}
	if (strcmp(sub, "workspace") != 0 && workspace_mkdir(path, 0700,
	    cf->run_as_user != NULL ? cf->run_uid : (uid_t)-1,
	    cf->run_as_user != NULL ? cf->run_gid : (gid_t)-1, cause) != 0)
		return (-1);
	fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd == -1)
		util_cause(cause, "open %s: %s", path, strerror(errno));
	return (fd);
}

/*
 * Open tenant t's workspace as it is (nothing created): a descriptor, or
 * -1 if t is not a tenant's name or it has none.
 */
static int
files_workspace_open(const char *t)
{
	char	path[PATH_MAX];

	if (!util_valid_tenant(t) || snprintf(path, sizeof path,
	    "%s/tenants/%s/workspace", poold->cf->state_dir, t) >=
	    (int)sizeof path)
		return (-1);
	return (open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
}

/*
 * Open folder dir (a checked path, "" for the workspace itself) beneath
 * the workspace's descriptor ws, creating what is missing if create.
 * Returns the descriptor, or -1 with errno set (ELOOP, ENOTDIR: a link or
 * not a folder on the way).
 */
static int
files_open_dir(int ws, const char *dir, int create)
{
	char		 buf[FILE_PATH_MAX + 1], *p, *slash;
	int		 fd, nfd;
#ifdef FILES_OPENAT2
	struct open_how	 how;

	if (*dir == '\0')
		return (fcntl(ws, F_DUPFD_CLOEXEC, 0));
	if (!create && !files_no_openat2) {
		memset(&how, 0, sizeof how);
		how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
		how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
		    RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
		fd = (int)syscall(SYS_openat2, ws, dir, &how, sizeof how);
		if (fd != -1 || (errno != ENOSYS && errno != EPERM))
			return (fd);
	}
#else
	if (*dir == '\0')
		return (fcntl(ws, F_DUPFD_CLOEXEC, 0));
#endif
	/* Component by component, never following a link. */
	if (strlen(dir) >= sizeof buf) {
		errno = ENAMETOOLONG;
		return (-1);
	}
	snprintf(buf, sizeof buf, "%s", dir);
	if ((fd = fcntl(ws, F_DUPFD_CLOEXEC, 0)) == -1)
		return (-1);
	for (p = buf; p != NULL; p = slash) {
		if ((slash = strchr(p, '/')) != NULL)
			*slash++ = '\0';
		if (create && mkdirat(fd, p, 0700) == 0)
			files_dirs_made++;
		else if (create && errno != EEXIST) {
			close(fd);
			return (-1);
		}
		nfd = openat(fd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
		    O_CLOEXEC);
		close(fd);
		if (nfd == -1)
			return (-1);
		fd = nfd;
	}
	return (fd);
}

/* Split a checked path into its folder (maybe "") and its last name. */
static void
files_split(const char *path, char *dir, size_t dirlen, const char **base)
{
	const char	*s = strrchr(path, '/');

	if (s == NULL) {
		dir[0] = '\0';
		*base = path;
		return;
	}
	snprintf(dir, dirlen, "%.*s", (int)(s - path), path);
	*base = s + 1;
}

/* The error answer for errno after opening a path. */
static json_t *
files_errno(const char *path, int error)
{
	switch (error) {
	case ENOENT:
		return (files_error(PROTO_E_NOT_FOUND, "%s: no such file",
		    path));
	case ELOOP:
	case EXDEV:
	case ENOTDIR:
		return (files_error(PROTO_E_REFUSED, "%s: a symbolic link or "
		    "not a folder on the way", path));
	case EACCES:
	case EPERM:
		return (files_error(PROTO_E_REFUSED, "%s: permission denied",
		    path));
	case EISDIR:
	case ENOTEMPTY:
	case EEXIST:
		return (files_error(PROTO_E_REFUSED, "%s: a folder", path));
	default:
		return (files_error(PROTO_E_INTERNAL, "%s: %s", path,
		    strerror(error)));
	}
}

/* Refuse what is not a regular file with one link. */
static json_t *
files_check_stat(const char *path, const struct stat *sb)
{
	if (S_ISDIR(sb->st_mode))
		return (files_error(PROTO_E_REFUSED, "%s: a folder", path));
	if (!S_ISREG(sb->st_mode))
		return (files_error(PROTO_E_REFUSED, "%s: not a regular file",
		    path));
	if (sb->st_nlink != 1)
		return (files_error(PROTO_E_REFUSED, "%s: a hard link", path));
	return (NULL);
}

/*
 * Walk folder fd (its path rel, "" for the top), counting into w; with
 * w->list, also list its regular files.  Never follows a link; closes fd.
 * Nothing is skipped in silence: what cannot be measured (too deep, a
 * path too long, a folder that cannot be opened or read) sets
 * w->incomplete.  The walk stops (w->over) once past w->max_files or
 * w->max_bytes: the answer is then known, and a walk costs no more than
 * the tenant's own limits.
 */
static void
files_walk_dir(int fd, const char *rel, int depth, struct files_walk *w)
{
	struct dirent	*de;
	struct stat	 sb;
	DIR		*d;
	char		 path[FILE_PATH_MAX + FILE_NAME_MAX + 2];
	int		 sub;

	if ((d = fdopendir(fd)) == NULL) {
		close(fd);
		w->incomplete = 1;
		return;
	}
	for (;;) {
		/* A listing goes on past what it cannot see; a count stops. */
		if (w->over || (w->incomplete && w->list == NULL))
			break;
		errno = 0;
		if ((de = readdir(d)) == NULL) {
			if (errno != 0)
				w->incomplete = 1;
			break;
		}
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		if (++w->entries > FILES_WALK_MAX) {
			w->over = w->incomplete = 1;
			break;
		}
		if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) ==
		    -1) {
			if (errno != ENOENT)
				w->incomplete = 1;
			continue;
		}
		w->disk += (long long)sb.st_blocks * 512;
		w->files++;
		if (w->max_files > 0 && w->files > w->max_files)
			w->over = 1;
		if (snprintf(path, sizeof path, "%s%s%s", rel, *rel != '\0' ?
		    "/" : "", de->d_name) >= (int)sizeof path) {
			w->incomplete = 1;
			continue;
		}
		if (S_ISDIR(sb.st_mode)) {
			if (depth >= FILES_WALK_DEPTH) {
				w->incomplete = 1;
				continue;
			}
			sub = openat(dirfd(d), de->d_name, O_RDONLY |
			    O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub != -1)
				files_walk_dir(sub, path, depth + 1, w);
			else if (errno != ENOENT)
				w->incomplete = 1;
			continue;
		}
		if (S_ISREG(sb.st_mode))
			w->bytes += (long long)sb.st_size;
		if (w->max_bytes > 0 && w->bytes > w->max_bytes)
			w->over = 1;
		if (w->list == NULL || !S_ISREG(sb.st_mode) ||
		    de->d_name[0] == '.' || util_file_path(path,
		    strlen(path)) != NULL)
			continue;
		if ((long)json_array_size(w->list) >= w->limit ||
		    w->list_bytes + strlen(path) > FILES_LIST_BYTES) {
			w->truncated = 1;
			continue;
		}
		w->list_bytes += strlen(path);
		json_array_append_new(w->list, json_pack("{s:s, s:I, s:I, s:I}",
		    "path", path, "size", (json_int_t)sb.st_size, "modified",
		    (json_int_t)sb.st_mtim.tv_sec, "links",
		    (json_int_t)sb.st_nlink));
	}
	closedir(d);
}

/* Measure the workspace ws (not closed) into w. */
static void
files_measure(int ws, struct files_walk *w)
{
	int	fd;

	if ((fd = fcntl(ws, F_DUPFD_CLOEXEC, 0)) != -1)
		files_walk_dir(fd, "", 0, w);
}

/*
 * Measure tenant t's workspace ws into w (its limits set), from the cache
 * while it is fresh; a complete walk is cached.
 */
static void
files_measure_cached(const char *t, int ws, struct files_walk *w)
{
	json_t		*c = json_object_get(files_cache, t);
	uint64_t	 now = util_now_ms();

	if (c != NULL && now - (uint64_t)json_integer_value(json_array_get(c,
	    2)) < FILES_CACHE_MS) {
		w->bytes = json_integer_value(json_array_get(c, 0));
		w->files = json_integer_value(json_array_get(c, 1));
		return;
	}
	files_measure(ws, w);
	if (w->over || w->incomplete) {
		if (files_cache != NULL)
			(void)json_object_del(files_cache, t);
		return;
	}
	if (files_cache == NULL || json_object_size(files_cache) >=
	    FILES_CACHE_TENANTS) {
		json_decref(files_cache);
		if ((files_cache = json_object()) == NULL)
			return;
	}
	json_object_set_new(files_cache, t, json_pack("[I, I, I]",
	    (json_int_t)w->bytes, (json_int_t)w->files, (json_int_t)now));
}

/* Drop tenant t's cached measure: its CLI changed the workspace. */
void
files_forget(const char *t)
{
	if (files_cache != NULL)
		(void)json_object_del(files_cache, t);
}

/* Adjust tenant t's cached measure by bytes and files, if it has one. */
static void
files_cache_add(const char *t, long long bytes, long long files)
{
	json_t	*c = json_object_get(files_cache, t);

	if (c == NULL)
		return;
	json_array_set_new(c, 0, json_integer(json_integer_value(
	    json_array_get(c, 0)) + bytes));
	json_array_set_new(c, 1, json_integer(json_integer_value(
	    json_array_get(c, 1)) + files));
}

/* A new temporary name: FILES_TEMP_LEN hex digits. */
static int
files_temp_name(char out[FILES_TEMP_LEN + 1])
{
	unsigned char	b[FILES_TEMP_LEN / 2];
	size_t		i;

	if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
		return (-1);
	for (i = 0; i < sizeof b; i++)
		snprintf(out + i * 2, 3, "%02x", b[i]);
	return (0);
}

/* Whether s is a temporary name files_temp_name made. */
static int
files_temp_ok(const char *s)
{
	size_t	i;

	if (s == NULL || strlen(s) != FILES_TEMP_LEN)
		return (0);
	for (i = 0; i < FILES_TEMP_LEN; i++) {
		if (!((s[i] >= '0' && s[i] <= '9') ||
		    (s[i] >= 'a' && s[i] <= 'f')))
			return (0);
	}
	return (1);
}

/* {"type":"file_open","mode":"read"}: the file, and its size. */
static json_t *
files_open_read(int ws, const char *path, int *passfd)
{
	char		 dir[FILE_PATH_MAX + 1];
	const char	*base;
	struct stat	 sb;
	json_t		*err;
	int		 dfd, fd;

	files_split(path, dir, sizeof dir, &base);
	if ((dfd = files_open_dir(ws, dir, 0)) == -1)
		return (files_errno(path, errno));
	fd = openat(dfd, base, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC |
	    O_NOCTTY);
	close(dfd);
	if (fd == -1)
		return (files_errno(path, errno));
	if (fstat(fd, &sb) == -1) {
		close(fd);
		return (files_errno(path, errno));
	}
	if ((err = files_check_stat(path, &sb)) != NULL) {
		close(fd);
		return (err);
	}
	*passfd = fd;
	return (json_pack("{s:s, s:i, s:I, s:I}", "type", PROTO_OK, "v",
	    PROTO_VERSION, "size", (json_int_t)sb.st_size, "modified",
	    (json_int_t)sb.st_mtim.tv_sec));
}

/*
 * The size of path's file now, -1 if there is none, or an error answer
 * in *err if what is there may not be replaced.
 */
static long long
files_existing(int ws, const char *path, json_t **err)
{
	char		 dir[FILE_PATH_MAX + 1];
	const char	*base;
	struct stat	 sb;
	int		 dfd;

	*err = NULL;
	files_split(path, dir, sizeof dir, &base);
	if ((dfd = files_open_dir(ws, dir, 0)) == -1) {
		if (errno == ENOENT)
			return (-1);
		*err = files_errno(path, errno);
		return (-1);
	}
	if (fstatat(dfd, base, &sb, AT_SYMLINK_NOFOLLOW) == -1) {
		close(dfd);
		if (errno != ENOENT)
			*err = files_errno(path, errno);
		return (-1);
	}
	close(dfd);
	if ((*err = files_check_stat(path, &sb)) != NULL)
		return (-1);
	return ((long long)sb.st_size);
}

/*
 * The uploads in progress in incoming/ (inc, not closed) but skip: how
 * many were written to in the last FILES_UPLOAD_IDLE_S (*count) and the
 * bytes all of them hold so far (*bytes).  At most FILES_LIST_MAX entries
 * are looked at; past them, *count is FILES_UPLOADS_MAX.
 */
static void
files_incoming(int inc, const char *skip, int *count, long long *bytes)
{
	struct dirent	*de;
	struct stat	 sb;
	DIR		*d;
	time_t		 fresh = time(NULL) - FILES_UPLOAD_IDLE_S;
	long		 seen = 0;
	int		 fd;

	*count = 0;
	*bytes = 0;
	if ((fd = openat(inc, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return;
	if ((d = fdopendir(fd)) == NULL) {
		close(fd);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		if (!files_temp_ok(de->d_name) || (skip != NULL &&
		    strcmp(de->d_name, skip) == 0))
			continue;
		if (++seen > FILES_LIST_MAX) {
			*count = FILES_UPLOADS_MAX;
			break;
		}
		if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) ==
		    -1 || !S_ISREG(sb.st_mode))
			continue;
		*bytes += (long long)sb.st_size;
		if (sb.st_mtime >= fresh)
			(*count)++;
	}
	closedir(d);
}

/* The 413 of a workspace that holds what its walk could not measure. */
static json_t *
files_unmeasured(void)
{
	return (files_error(PROTO_E_TOO_LARGE, "the workspace holds entries "
	    "that cannot be measured (nested deeper than %d folders, a path "
	    "too long, or a folder that cannot be read): remove them first",
	    FILES_WALK_DEPTH));
}

/*
 * {"type":"file_open","mode":"write","max_bytes","max_files"}: a new
 * temporary file, with what the workspace holds now (so the writer can
 * stop at the limit).  At most FILES_UPLOADS_MAX uploads of a tenant at
 * once: past them, busy.
 */
static json_t *
files_open_write(const char *t, int ws, int inc, const char *path,
    json_t *msg, int *passfd)
{
	struct files_walk	 w;
	char			 temp[FILES_TEMP_LEN + 1];
	long long		 existing, max_bytes, max_files, up_bytes;
	json_t			*err;
	int			 fd, ups;

	existing = files_existing(ws, path, &err);
	if (err != NULL)
		return (err);
	files_incoming(inc, NULL, &ups, &up_bytes);
	if (ups >= FILES_UPLOADS_MAX)
		return (files_error(PROTO_E_BUSY, "%d uploads to this "
		    "workspace are in progress already", FILES_UPLOADS_MAX));
	files_limits(msg, &max_bytes, &max_files);
	memset(&w, 0, sizeof w);
	w.max_files = max_files;
	w.max_bytes = max_bytes > 0 ? max_bytes + (existing > 0 ? existing :
	    0) : 0;
	files_measure_cached(t, ws, &w);
	if (w.incomplete)
		return (files_unmeasured());
	w.bytes += up_bytes;
	if (files_temp_name(temp) != 0)
		return (files_error(PROTO_E_INTERNAL, "getrandom failed"));
	fd = openat(inc, temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
	    O_CLOEXEC, 0600);
	if (fd == -1)
		return (files_error(PROTO_E_INTERNAL, "create a temporary file: "
		    "%s", strerror(errno)));
	*passfd = fd;
	return (json_pack("{s:s, s:i, s:s, s:I, s:I, s:I, s:b}", "type",
	    PROTO_OK, "v", PROTO_VERSION, "temp", temp, "used_bytes",
	    (json_int_t)w.bytes, "used_files", (json_int_t)w.files,
	    "existing", (json_int_t)existing, "over", w.over));
}

/* The limits of a message: max_bytes, max_files (0: none). */
static void
files_limits(json_t *msg, long long *max_bytes, long long *max_files)
{
	*max_bytes = json_integer_value(json_object_get(msg, "max_bytes"));
	*max_files = json_integer_value(json_object_get(msg, "max_files"));
	if (*max_bytes < 0)
		*max_bytes = 0;
	if (*max_files < 0)
		*max_files = 0;
}

/*
 * {"type":"file_commit","temp","max_bytes","max_files"}: rename the
 * temporary file into place if the workspace stays within its limits;
 * else remove it, and the earlier file stays.
 */
static json_t *
files_commit(const char *t, int ws, int inc, const char *path,
    json_t *msg)
{
	const char		*temp = json_string_value(json_object_get(msg,
				    "temp"));
	struct files_walk	 w;
	struct stat		 sb;
	char			 dir[FILE_PATH_MAX + 1];
	const char		*base;
	long long		 existing, max_bytes, max_files, bytes, files;
	long long		 up_bytes;
	json_t			*err;
	int			 dfd, ups;

	if (!files_temp_ok(temp))
		return (files_error(PROTO_E_BAD_REQUEST, "bad temporary name"));
	files_limits(msg, &max_bytes, &max_files);
	if (fstatat(inc, temp, &sb, AT_SYMLINK_NOFOLLOW) == -1)
		return (files_error(PROTO_E_NOT_FOUND, "no such upload"));
	if ((err = files_check_stat(temp, &sb)) != NULL)
		goto fail;
	existing = files_existing(ws, path, &err);
	if (err != NULL)
		goto fail;
	/*
	 * Stop the walk once the answer is known: past max_files, or past
	 * max_bytes plus the file this one replaces.
	 */
	memset(&w, 0, sizeof w);
	w.max_files = max_files;
	w.max_bytes = max_bytes > 0 ? max_bytes + (existing > 0 ? existing :
	    0) : 0;
	files_measure_cached(t, ws, &w);
	if (w.incomplete) {
		err = files_unmeasured();
		goto fail;
	}
	/* The other uploads in progress hold their bytes already. */
	files_incoming(inc, temp, &ups, &up_bytes);
	bytes = w.bytes - (existing > 0 ? existing : 0) + (long long)sb.st_size +
	    up_bytes;
	files = w.files + (existing == -1 ? 1 : 0);
	if (max_bytes > 0 && bytes > max_bytes) {
		err = files_error(PROTO_E_TOO_LARGE, "the workspace would hold "
		    "%lld bytes, over its limit of %lld bytes "
		    "(workspace_max_bytes)", bytes, max_bytes);
		goto fail;
	}
	if (w.over || (max_files > 0 && files > max_files)) {
		err = files_error(PROTO_E_TOO_LARGE, "the workspace would hold "
		    "more than its limit of %lld files and folders "
		    "(workspace_max_files)",
		    max_files > 0 ? max_files : (long long)FILES_WALK_MAX);
		goto fail;
	}
	files_split(path, dir, sizeof dir, &base);
	files_dirs_made = 0;
	if ((dfd = files_open_dir(ws, dir, 1)) == -1) {
		files_cache_add(t, 0, files_dirs_made);
		err = files_errno(path, errno);
		goto fail;
	}
	files_cache_add(t, 0, files_dirs_made);
	if (renameat(inc, temp, dfd, base) == -1) {
		err = files_errno(path, errno);
		close(dfd);
		goto fail;
	}
	close(dfd);
	files_cache_add(t, (long long)sb.st_size - (existing > 0 ? existing :
	    0), existing == -1 ? 1 : 0);
	return (json_pack("{s:s, s:i, s:I, s:b, s:I, s:I}", "type", PROTO_OK,
	    "v", PROTO_VERSION, "size", (json_int_t)sb.st_size, "created",
	    existing == -1, "used_bytes", (json_int_t)bytes, "used_files",
	    (json_int_t)files));
fail:
	if (unlinkat(inc, temp, 0) == -1 && errno != ENOENT)
		log_warn("remove upload %s", temp);
	return (err);
}

/* {"type":"file_abort","temp"}: remove a temporary file. */
static json_t *
files_abort(int inc, json_t *msg)
{
	const char	*temp = json_string_value(json_object_get(msg, "temp"));

	if (!files_temp_ok(temp))
		return (files_error(PROTO_E_BAD_REQUEST, "bad temporary name"));
	if (unlinkat(inc, temp, 0) == -1 && errno != ENOENT)
		return (files_error(PROTO_E_INTERNAL, "remove: %s",
		    strerror(errno)));
	return (json_pack("{s:s, s:i}", "type", PROTO_OK, "v", PROTO_VERSION));
}

/*
 * {"type":"file_delete"}: remove a file (or a link: the link itself), or
 * an empty folder.
 */
static json_t *
files_delete(const char *t, int ws, const char *path)
{
	char		 dir[FILE_PATH_MAX + 1];
	const char	*base;
	struct stat	 sb;
	int		 dfd, rc;

	files_split(path, dir, sizeof dir, &base);
	if ((dfd = files_open_dir(ws, dir, 0)) == -1)
		return (files_errno(path, errno));
	if (fstatat(dfd, base, &sb, AT_SYMLINK_NOFOLLOW) == -1) {
		close(dfd);
		return (files_errno(path, errno));
	}
	rc = unlinkat(dfd, base, S_ISDIR(sb.st_mode) ? AT_REMOVEDIR : 0);
	close(dfd);
	if (rc == -1 && (errno == ENOTEMPTY || errno == EEXIST))
		return (files_error(PROTO_E_REFUSED, "%s: the folder is not "
		    "empty", path));
	if (rc == -1)
		return (files_errno(path, errno));
	files_cache_add(t, S_ISREG(sb.st_mode) ? -(long long)sb.st_size : 0,
	    -1);
	return (json_pack("{s:s, s:i}", "type", PROTO_OK, "v", PROTO_VERSION));
}

/* {"type":"file_list","prefix","limit"}: the regular files below prefix. */
static json_t *
files_list(int ws, json_t *msg)
{
	const char		*prefix = json_string_value(json_object_get(msg,
				    "prefix"));
	struct files_walk	 w;
	json_int_t		 limit;
	int			 fd;

	limit = json_integer_value(json_object_get(msg, "limit"));
	if (limit <= 0 || limit > FILES_LIST_MAX)
		limit = FILES_LIST_MAX;
	if (prefix == NULL)
		prefix = "";
	if (*prefix != '\0' && util_file_path(prefix, strlen(prefix)) != NULL)
		return (files_error(PROTO_E_BAD_REQUEST, "bad prefix"));
	if ((fd = files_open_dir(ws, prefix, 0)) == -1) {
		if (errno == ENOENT)
			return (json_pack("{s:s, s:i, s:[], s:b}", "type",
			    PROTO_OK, "v", PROTO_VERSION, "files",
			    "truncated", 0));
		return (files_errno(prefix, errno));
	}
	memset(&w, 0, sizeof w);
	w.limit = (long)limit;
	if ((w.list = json_array()) == NULL) {
		close(fd);
		return (NULL);
	}
	files_walk_dir(fd, prefix, 0, &w);
	return (json_pack("{s:s, s:i, s:o, s:b}", "type", PROTO_OK, "v",
	    PROTO_VERSION, "files", w.list, "truncated", w.truncated ||
	    w.over));
}

/*
 * What tenant t's workspace holds: {bytes, files, disk_bytes, partial},
 * or NULL if it has none.  files counts folders too; partial: the walk
 * stopped or could not see everything.
 */
json_t *
files_tenant_usage(const char *t)
{
	struct files_walk	 w;
	int			 fd;

	if ((fd = files_workspace_open(t)) == -1)
		return (NULL);
	memset(&w, 0, sizeof w);
	files_as_user();
	files_walk_dir(fd, "", 0, &w);
	files_as_self();
	return (json_pack("{s:I, s:I, s:I, s:b}", "bytes", (json_int_t)w.bytes,
	    "files", (json_int_t)w.files, "disk_bytes", (json_int_t)w.disk,
	    "partial", w.over || w.incomplete));
}

#define FILES_USAGE_TENANTS	1000	/* tenants one usage answer lists */
#define FILES_USAGE_CACHE_MS	30000
#define FILES_USAGE_MEASURE	4	/* tenants one usage answer walks */

/*
 * Each tenant's usage as last measured: {tenant: [usage, when (ms)]}, a
 * tenant measured again once its entry is FILES_USAGE_CACHE_MS old.
 */
static json_t	*files_usage_cache;

/* What every tenant's workspace holds (each cached), a new reference. */
static json_t *
files_usage_every(void)
{
	struct dirent	*de;
	DIR		*d;
	char		 path[PATH_MAX];
	json_t		*out, *u, *c, *cache;
	uint64_t	 now = util_now_ms();
	int		 walks = 0;

	if (snprintf(path, sizeof path, "%s/tenants", poold->cf->state_dir) >=
	    (int)sizeof path || (out = json_object()) == NULL)
		return (NULL);
	if ((cache = json_object()) == NULL) {
		json_decref(out);
		return (NULL);
	}
	if ((d = opendir(path)) != NULL) {
		while ((de = readdir(d)) != NULL &&
		    json_object_size(out) < FILES_USAGE_TENANTS) {
			if (!util_valid_tenant(de->d_name))
				continue;
			/*
			 * A stale entry is measured again only while this
			 * answer has walks left: the others show their last
			 * measure (a tenant never measured waits its turn).
			 */
			c = json_object_get(files_usage_cache, de->d_name);
			if (c != NULL && (walks >= FILES_USAGE_MEASURE ||
			    now - (uint64_t)json_integer_value(json_array_get(c,
			    1)) < FILES_USAGE_CACHE_MS))
				u = json_incref(json_array_get(c, 0));
			else if (walks >= FILES_USAGE_MEASURE)
				continue;
			else if (walks++, (u = files_tenant_usage(de->d_name)) ==
			    NULL)
				continue;
			else
				c = NULL;
			json_object_set(out, de->d_name, u);
			json_object_set_new(cache, de->d_name, c != NULL ?
			    json_incref(c) : json_pack("[O, I]", u,
			    (json_int_t)now));
			json_decref(u);
		}
		closedir(d);
	}
	/* Tenants no longer there (purged) leave the cache. */
	json_decref(files_usage_cache);
	files_usage_cache = cache;
	return (out);
}

/*
 * {"type":"file_usage","tenants":[t, ...]}: what each workspace holds
 * (bytes, files, disk), for operators; without tenants, every tenant's
 * (at most FILES_USAGE_TENANTS, measured at most every 30 s).
 */
static json_t *
files_usage(json_t *msg)
{
	json_t			*ts = json_object_get(msg, "tenants");
	json_t			*out, *v, *u;
	size_t			 i;

	if (ts == NULL)
		out = files_usage_every();
	else {
		if (!json_is_array(ts) || json_array_size(ts) > 1000)
			return (files_error(PROTO_E_BAD_REQUEST, "tenants: an "
			    "array of at most 1000 names"));
		if ((out = json_object()) == NULL)
			return (NULL);
		json_array_foreach(ts, i, v) {
			const char	*t = json_string_value(v);

			if (t == NULL || (u = files_tenant_usage(t)) == NULL)
				continue;
			json_object_set_new(out, t, u);
		}
	}
	if (out == NULL)
		return (NULL);
	return (json_pack("{s:s, s:i, s:o}", "type", PROTO_OK, "v",
	    PROTO_VERSION, "usage", out));
}

/*
 * Answer one files message (type is one of PROTO_FILE_*).  Returns the
 * answer frame (NULL: out of memory); *passfd is set to a descriptor to
 * pass with it (the caller sends and closes it), else -1.
 */
json_t *
files_handle(json_t *msg, int *passfd)
{
	const char	*type = proto_type(msg);
	const char	*t = json_string_value(json_object_get(msg, "tenant"));
	const char	*path = json_string_value(json_object_get(msg, "path"));
	const char	*mode, *why;
	char		*cause = NULL;
	json_t		*ans;
	int		 ws, inc = -1;

	*passfd = -1;
	if (strcmp(type, PROTO_FILE_USAGE) == 0)
		return (files_usage(msg));
	if (t == NULL || !util_valid_tenant(t))
		return (files_error(PROTO_E_BAD_REQUEST, "invalid tenant"));
	if (strcmp(type, PROTO_FILE_LIST) != 0 &&
	    strcmp(type, PROTO_FILE_ABORT) != 0) {
		if (path == NULL)
			return (files_error(PROTO_E_BAD_REQUEST, "no path"));
		if ((why = util_file_path(path, strlen(path))) != NULL)
			return (files_error(PROTO_E_BAD_REQUEST, "%s", why));
	}
	if ((ws = files_tenant_dir(t, "workspace", &cause)) == -1) {
		/* The cause names host paths: the log has it, not the client. */
		log_warnx("files: tenant %s: %s", t, cause != NULL ? cause :
		    "?");
		ans = files_error(PROTO_E_INTERNAL, "cannot open the tenant's "
		    "workspace");
		free(cause);
		return (ans);
	}
	if ((strcmp(type, PROTO_FILE_OPEN) == 0 ||
	    strcmp(type, PROTO_FILE_COMMIT) == 0 ||
	    strcmp(type, PROTO_FILE_ABORT) == 0) &&
	    (inc = files_tenant_dir(t, "incoming", &cause)) == -1) {
		close(ws);
		/* The cause names host paths: the log has it, not the client. */
		log_warnx("files: tenant %s: %s", t, cause != NULL ? cause :
		    "?");
		ans = files_error(PROTO_E_INTERNAL, "cannot open the tenant's "
		    "workspace");
		free(cause);
		return (ans);
	}
	files_as_user();
	if (strcmp(type, PROTO_FILE_OPEN) == 0) {
		mode = json_string_value(json_object_get(msg, "mode"));
		if (mode != NULL && strcmp(mode, "read") == 0)
			ans = files_open_read(ws, path, passfd);
		else if (mode != NULL && strcmp(mode, "write") == 0)
			ans = files_open_write(t, ws, inc, path, msg,
			    passfd);
		else
			ans = files_error(PROTO_E_BAD_REQUEST, "mode: read or "
			    "write");
	} else if (strcmp(type, PROTO_FILE_COMMIT) == 0)
		ans = files_commit(t, ws, inc, path, msg);
	else if (strcmp(type, PROTO_FILE_ABORT) == 0)
		ans = files_abort(inc, msg);
	else if (strcmp(type, PROTO_FILE_DELETE) == 0)
		ans = files_delete(t, ws, path);
	else
		ans = files_list(ws, msg);
	files_as_self();
	close(ws);
	if (inc != -1)
		close(inc);
	return (ans);
}

/* Whether type is a files message. */
int
files_type(const char *type)
{
	return (strncmp(type, "file_", 5) == 0);
}

#define FILES_SNAP_MAX		10000	/* files a turn's snapshot keeps */
#define FILES_SNAP_WALK		20000	/* entries its walk looks at */
#define FILES_CHANGES_MAX	1000	/* changes a done frame lists */

/*
 * Add folder fd's regular files (path rel) to the snapshot snap; *budget
 * bounds the entries looked at (folders too: a CLI can make a million).
 */
static void
files_snap_dir(int fd, const char *rel, int depth, json_t *snap, int *over,
    long *budget)
{
	struct dirent	*de;
	struct stat	 sb;
	DIR		*d;
	char		 path[FILE_PATH_MAX + FILE_NAME_MAX + 2];
	int		 sub;

	if ((d = fdopendir(fd)) == NULL) {
		close(fd);
		return;
	}
	while (!*over && (de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		if (--*budget < 0) {
			*over = 1;
			break;
		}
		if (de->d_name[0] == '.')
			continue;	/* dot names: counted, not listed */
		if (snprintf(path, sizeof path, "%s%s%s", rel, *rel != '\0' ?
		    "/" : "", de->d_name) >= (int)sizeof path) {
			*over = 1;	/* not seen: the snapshot is partial */
			continue;
		}
		if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) ==
		    -1)
			continue;
		if (S_ISDIR(sb.st_mode)) {
			if (depth >= FILES_WALK_DEPTH) {
				*over = 1;
				continue;
			}
			sub = openat(dirfd(d), de->d_name, O_RDONLY |
			    O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub != -1)
				files_snap_dir(sub, path, depth + 1, snap, over,
				    budget);
			else if (errno != ENOENT)
				*over = 1;
			continue;
		}
		if (!S_ISREG(sb.st_mode) || util_file_path(path,
		    strlen(path)) != NULL)
			continue;
		if (json_object_size(snap) >= FILES_SNAP_MAX) {
			*over = 1;
			break;
		}
		json_object_set_new(snap, path, json_pack("[I, I, I, I]",
		    (json_int_t)sb.st_size, (json_int_t)sb.st_ino,
		    (json_int_t)(sb.st_mtim.tv_sec * 1000000000LL +
		    sb.st_mtim.tv_nsec), (json_int_t)(sb.st_ctim.tv_sec *
		    1000000000LL + sb.st_ctim.tv_nsec)));
	}
	closedir(d);
}

/*
 * A snapshot of tenant t's workspace: {path: [size, inode, mtime, ctime]}
 * of its regular files (no dot names, at most FILES_SNAP_MAX, a walk of
 * at most FILES_SNAP_WALK entries; past them, or with a folder it could
 * not see, *partial is set), taken as the CLI user.  NULL if there is
 * none.
 */
json_t *
files_snapshot(const char *t, int *partial)
{
	json_t	*snap;
	long	 budget = FILES_SNAP_WALK;
	int	 fd;

	*partial = 0;
	if ((fd = files_workspace_open(t)) == -1)
		return (NULL);
	if ((snap = json_object()) == NULL) {
		close(fd);
		return (NULL);
	}
	files_as_user();
	files_snap_dir(fd, "", 0, snap, partial, &budget);
	files_as_self();
	return (snap);
}

/*
 * What changed in tenant t's workspace since the snapshot before:
 * [{path, size, change: created|changed|deleted}] in path order, at most
 * FILES_CHANGES_MAX; *partial set if either walk or the list was cut.
 */
json_t *
files_changes(const char *t, json_t *before, int *partial)
{
	json_t		*after, *out, *v, *w;
	const char	*k;
	int		 p2 = 0;
	void		*it;

	/* The turn's CLI changed the workspace: measure it again. */
	files_forget(t);
	if ((after = files_snapshot(t, &p2)) == NULL)
		return (NULL);
	*partial = *partial || p2;
	if ((out = json_array()) == NULL) {
		json_decref(after);
		return (NULL);
	}
	json_object_foreach(after, k, v) {
		w = json_object_get(before, k);
		if (w != NULL && json_equal(v, w))
			continue;
		if (json_array_size(out) >= FILES_CHANGES_MAX) {
			*partial = 1;
			break;
		}
		json_array_append_new(out, json_pack("{s:s, s:O, s:s}", "path",
		    k, "size", json_array_get(v, 0), "change", w == NULL ?
		    "created" : "changed"));
	}
	for (it = json_object_iter(before); it != NULL;
	    it = json_object_iter_next(before, it)) {
		k = json_object_iter_key(it);
		if (json_object_get(after, k) != NULL)
			continue;
		if (json_array_size(out) >= FILES_CHANGES_MAX) {
			*partial = 1;
			break;
		}
		json_array_append_new(out, json_pack("{s:s, s:i, s:s}", "path",
		    k, "size", 0, "change", "deleted"));
	}
	json_decref(after);
	return (out);
}

#define FILES_INCOMING_MAX_S	3600	/* an upload's temporary file */
#define FILES_TRASH_STEP	5000	/* entries of the trash a tick removes */

/*
 * Remove what in folder fd (closed here) was last modified before
 * cutoff: files, links, and folders that end up empty.  *budget bounds
 * the entries looked at.  Returns 1 if the folder is now empty.
 */
static int
files_sweep_dir(int fd, time_t cutoff, int depth, long *budget)
{
	struct dirent	*de;
	struct stat	 sb;
	DIR		*d;
	int		 sub, left = 0;

	if ((d = fdopendir(fd)) == NULL) {
		close(fd);
		return (0);
	}
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		if (--*budget < 0 || fstatat(dirfd(d), de->d_name, &sb,
		    AT_SYMLINK_NOFOLLOW) == -1) {
			left = 1;
			continue;
		}
		if (S_ISDIR(sb.st_mode)) {
			sub = depth < FILES_WALK_DEPTH ? openat(dirfd(d),
			    de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			    O_CLOEXEC) : -1;
			if (sub == -1 || !files_sweep_dir(sub, cutoff,
			    depth + 1, budget) || sb.st_mtime >= cutoff ||
			    unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) == -1)
				left = 1;
			continue;
		}
		if (sb.st_mtime >= cutoff ||
		    unlinkat(dirfd(d), de->d_name, 0) == -1)
			left = 1;
	}
	closedir(d);
	return (!left);
}

/* Sweep tenant t's folder sub (below tenants/t) of what is older than age. */
static void
files_sweep(const char *t, const char *sub, time_t age, long *budget)
{
	char	path[PATH_MAX];
	int	fd;

	if (snprintf(path, sizeof path, "%s/tenants/%s/%s",
	    poold->cf->state_dir, t, sub) >= (int)sizeof path)
		return;
	if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
	    O_CLOEXEC)) == -1)
		return;
	files_as_user();
	(void)files_sweep_dir(fd, time(NULL) - age, 0, budget);
	files_as_self();
}

/*
 * Once every temp_sweep_interval_ms: remove what every tenant's
 * workspace/temp/ has not changed for temp_retention_s, and uploads left
 * in incoming/ for an hour (their ccgate-fcgi died).  At most
 * FILES_WALK_MAX entries a sweep.
 */
void
files_tick(uint64_t now)
{
	static uint64_t	 last;
	struct dirent	*de;
	DIR		*d;
	char		 path[PATH_MAX];
	long		 budget = FILES_WALK_MAX;

	/* Purged tenants' folders, a bounded step each tick. */
	workspace_trash_step(poold->cf->state_dir, FILES_TRASH_STEP);
	if (last != 0 && now - last <
	    (uint64_t)poold->cf->temp_sweep_interval_ms)
		return;
	last = now;
	if (snprintf(path, sizeof path, "%s/tenants", poold->cf->state_dir) >=
	    (int)sizeof path || (d = opendir(path)) == NULL)
		return;
	while ((de = readdir(d)) != NULL && budget > 0) {
		if (!util_valid_tenant(de->d_name))
			continue;
		if (poold->cf->temp_retention_s > 0)
			files_sweep(de->d_name, "workspace/temp",
			    (time_t)poold->cf->temp_retention_s, &budget);
		files_sweep(de->d_name, "incoming", FILES_INCOMING_MAX_S,
		    &budget);
	}
	closedir(d);
}
