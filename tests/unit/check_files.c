/*
 * ccgate-poold's workspace files (pool-daemon/files.c): every message of
 * the files API against a real folder, with the links and special files a
 * compromised CLI could plant, through openat2 and through the O_NOFOLLOW
 * walk that stands in for it on older kernels.
 */
#include "config.h"

#include <sys/stat.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "poold.h"
#include "unit.h"

struct poold	*poold;
static char	 state[] = "/tmp/ccgate-check-files-XXXXXX";
static char	 ws[1024], outside[1024];

/* A message of type for tenant "t" and path (NULL: none). */
static json_t *
msg(const char *type, const char *path)
{
	json_t	*m = proto_new(type);

	json_object_set_new(m, "tenant", json_string("t"));
	if (path != NULL)
		json_object_set_new(m, "path", json_string(path));
	return (m);
}

/* Send m (taken); the answer's type or error code, and its descriptor. */
static const char *
call(json_t *m, int *fd, json_t **out)
{
	static char	 code[64];
	json_t		*a;
	int		 dfd;

	a = files_handle(m, &dfd);
	json_decref(m);
	ck_assert_ptr_nonnull(a);
	if (strcmp(proto_type(a), PROTO_OK) == 0)
		snprintf(code, sizeof code, "ok");
	else
		snprintf(code, sizeof code, "%s", json_string_value(
		    json_object_get(a, "code")));
	if (fd != NULL)
		*fd = dfd;
	else if (dfd != -1)
		close(dfd);
	if (out != NULL)
		*out = a;
	else
		json_decref(a);
	return (code);
}

/* Write path (under the workspace) with text, as a CLI would. */
static void
plant(const char *path, const char *text)
{
	char	p[PATH_MAX];
	int	fd;

	snprintf(p, sizeof p, "%s/%s", ws, path);
	ck_assert_int_ne(fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600), -1);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	files_forget("t");	/* as a turn's end does */
}

/* Upload text as path within limits: open, write, commit; the code. */
static const char *
upload_lim(const char *path, const char *text, long long max_bytes,
    long long max_files)
{
	json_t		*a, *m;
	const char	*code;
	char		 temp[64];
	int		 fd;

	m = msg(PROTO_FILE_OPEN, path);
	json_object_set_new(m, "mode", json_string("write"));
	json_object_set_new(m, "max_bytes", json_integer(max_bytes));
	json_object_set_new(m, "max_files", json_integer(max_files));
	code = call(m, &fd, &a);
	if (strcmp(code, "ok") != 0) {
		json_decref(a);
		return (code);
	}
	snprintf(temp, sizeof temp, "%s", json_string_value(json_object_get(a,
	    "temp")));
	json_decref(a);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	m = msg(PROTO_FILE_COMMIT, path);
	json_object_set_new(m, "temp", json_string(temp));
	json_object_set_new(m, "max_bytes", json_integer(max_bytes));
	json_object_set_new(m, "max_files", json_integer(max_files));
	return (call(m, NULL, NULL));
}

/* Upload text as path: open, write, commit; the commit's code. */
static const char *
upload(const char *path, const char *text, long long max_bytes)
{
	return (upload_lim(path, text, max_bytes, 0));
}

/* Make folders d/d/.../d, n deep, below the workspace's folder top. */
static void
plant_deep(const char *top, int n)
{
	char	p[PATH_MAX];
	int	fd, nfd, i;

	snprintf(p, sizeof p, "%s/%s", ws, top);
	ck_assert_int_eq(mkdir(p, 0700), 0);
	ck_assert_int_ne(fd = open(p, O_RDONLY | O_DIRECTORY), -1);
	for (i = 0; i < n; i++) {
		ck_assert_int_eq(mkdirat(fd, "d", 0700), 0);
		ck_assert_int_ne(nfd = openat(fd, "d", O_RDONLY | O_DIRECTORY),
		    -1);
		close(fd);
		fd = nfd;
	}
	ck_assert_int_ne(nfd = openat(fd, "x.bin", O_WRONLY | O_CREAT, 0600),
	    -1);
	ck_assert_int_eq(write(nfd, "0123456789", 10), 10);
	close(nfd);
	close(fd);
	files_forget("t");	/* as a turn's end does */
}

/* Read path through files_handle: its bytes into buf, or the code. */
static const char *
download(const char *path, char *buf, size_t len)
{
	json_t		*m = msg(PROTO_FILE_OPEN, path);
	const char	*code;
	ssize_t		 n;
	int		 fd;

	json_object_set_new(m, "mode", json_string("read"));
	code = call(m, &fd, NULL);
	buf[0] = '\0';
	if (strcmp(code, "ok") == 0) {
		ck_assert_int_ne(fd, -1);
		n = read(fd, buf, len - 1);
		ck_assert_int_ge(n, 0);
		buf[n] = '\0';
		close(fd);
	}
	return (code);
}

static void
setup(void)
{
	struct poold_config	*cf;
	char			 p[PATH_MAX];

	ck_assert_ptr_nonnull(mkdtemp(state));
	ck_assert_ptr_nonnull(poold = calloc(1, sizeof *poold));
	ck_assert_ptr_nonnull(cf = calloc(1, sizeof *cf));
	poold->cf = cf;
	cf->state_dir = strdup(state);
	cf->sandbox = SANDBOX_BWRAP;
	snprintf(p, sizeof p, "%s/tenants", state);
	ck_assert_int_eq(mkdir(p, 0700), 0);
	snprintf(ws, sizeof ws, "%s/tenants/t/workspace", state);
	snprintf(outside, sizeof outside, "%s/outside.txt", state);
	ck_assert_str_eq(call(msg(PROTO_FILE_LIST, NULL), NULL, NULL), "ok");
	plant("../../../outside.txt", "outside secret");
}

static void
teardown(void)
{
	char	cmd[PATH_MAX + 16];

	snprintf(cmd, sizeof cmd, "rm -rf %s", state);
	ck_assert_int_eq(system(cmd), 0);
	memcpy(state + strlen(state) - 6, "XXXXXX", 6);
	free(poold->cf->state_dir);
	free(poold->cf);
	free(poold);
	files_no_openat2 = 0;
}

/* The same checks, through openat2 or the walk. */
static void
links_refused(void)
{
	char	buf[256], p[PATH_MAX];

	ck_assert_str_eq(upload("projects/a/b.txt", "hello", 0), "ok");
	ck_assert_str_eq(download("projects/a/b.txt", buf, sizeof buf), "ok");
	ck_assert_str_eq(buf, "hello");
	/* A symbolic link on the way, or last: refused, nothing read. */
	snprintf(p, sizeof p, "%s/etc", ws);
	ck_assert_int_eq(symlink("/etc", p), 0);
	ck_assert_str_eq(download("etc/passwd", buf, sizeof buf),
	    PROTO_E_REFUSED);
	ck_assert_str_eq(download("etc", buf, sizeof buf), PROTO_E_REFUSED);
	ck_assert_str_eq(upload("etc/planted", "x", 0), PROTO_E_REFUSED);
	ck_assert_int_eq(access("/etc/planted", F_OK), -1);
	snprintf(p, sizeof p, "%s/uploads/out", ws);
	ck_assert_int_eq(symlink(outside, p), 0);
	ck_assert_str_eq(download("uploads/out", buf, sizeof buf),
	    PROTO_E_REFUSED);
	ck_assert_str_eq(upload("uploads/out", "overwrite", 0),
	    PROTO_E_REFUSED);
	/* A hard link to a file outside. */
	snprintf(p, sizeof p, "%s/uploads/hard", ws);
	ck_assert_int_eq(link(outside, p), 0);
	ck_assert_str_eq(download("uploads/hard", buf, sizeof buf),
	    PROTO_E_REFUSED);
	ck_assert_str_eq(upload("uploads/hard", "overwrite", 0),
	    PROTO_E_REFUSED);
	/* A FIFO is refused, not waited on. */
	snprintf(p, sizeof p, "%s/uploads/fifo", ws);
	ck_assert_int_eq(mkfifo(p, 0600), 0);
	ck_assert_str_eq(download("uploads/fifo", buf, sizeof buf),
	    PROTO_E_REFUSED);
	ck_assert_str_eq(download("uploads/none", buf, sizeof buf),
	    PROTO_E_NOT_FOUND);
	ck_assert_str_eq(download("nowhere/none", buf, sizeof buf),
	    PROTO_E_NOT_FOUND);
	ck_assert_str_eq(download("../outside.txt", buf, sizeof buf),
	    PROTO_E_BAD_REQUEST);
	ck_assert_str_eq(download("/etc/passwd", buf, sizeof buf),
	    PROTO_E_BAD_REQUEST);
	/* Deleting the link removes the link. */
	ck_assert_str_eq(call(msg(PROTO_FILE_DELETE, "etc"), NULL, NULL),
	    "ok");
	ck_assert_int_eq(access("/etc/passwd", F_OK), 0);
	/* The file outside is as it was. */
	ck_assert_str_eq(download("projects/a/b.txt", buf, sizeof buf), "ok");
	snprintf(p, sizeof p, "%s", outside);
	{
		FILE	*f = fopen(p, "r");

		ck_assert_ptr_nonnull(f);
		ck_assert_ptr_nonnull(fgets(buf, sizeof buf, f));
		fclose(f);
		ck_assert_str_eq(buf, "outside secret");
	}
}

START_TEST(test_links_openat2)
{
	links_refused();
}
END_TEST

START_TEST(test_links_walk)
{
	files_no_openat2 = 1;
	links_refused();
}
END_TEST

/* A commit past the limit leaves the earlier file; nothing is left over. */
START_TEST(test_limits)
{
	char	buf[256], p[PATH_MAX];
	json_t	*a;
	DIR	*d;

	/* README.md (seed 001) is there too: about 200 bytes. */
	ck_assert_str_eq(upload("uploads/a", "0123456789", 300), "ok");
	plant("uploads/big", "0123456789012345678901234567890123456789");
	ck_assert_str_eq(upload("uploads/a", "0123456789012345678901234567890"
	    "1234567890123456789012345678901234567890123456789012345678901234"
	    "56789", 300), PROTO_E_TOO_LARGE);
	ck_assert_str_eq(download("uploads/a", buf, sizeof buf), "ok");
	ck_assert_str_eq(buf, "0123456789");
	snprintf(p, sizeof p, "%s/tenants/t/incoming", state);
	ck_assert_ptr_nonnull(d = opendir(p));
	{
		struct dirent	*de;
		int		 n = 0;

		while ((de = readdir(d)) != NULL)
			n += de->d_name[0] != '.';
		ck_assert_int_eq(n, 0);
	}
	closedir(d);
	/* The listing: regular files, sizes; usage counts them. */
	ck_assert_str_eq(call(msg(PROTO_FILE_LIST, NULL), NULL, &a), "ok");
	ck_assert_int_eq(json_array_size(json_object_get(a, "files")), 3);
	json_decref(a);
	ck_assert_ptr_nonnull(a = files_tenant_usage("t"));
	/* Folders count too. */
	ck_assert_int_gt(json_integer_value(json_object_get(a, "files")), 3);
	ck_assert_int_gt(json_integer_value(json_object_get(a, "bytes")), 200);
	json_decref(a);
}
END_TEST

/* A path of more than 32 components is refused; 32 are taken. */
START_TEST(test_depth)
{
	char	p[200];
	int	i;

	for (i = 0; i < 32; i++) {
		p[2 * i] = 'd';
		p[2 * i + 1] = '/';
	}
	p[63] = '\0';
	ck_assert_str_eq(upload(p, "x", 0), "ok");
	ck_assert_str_eq(upload(strcat(p, "/x"), "x", 0),
	    PROTO_E_BAD_REQUEST);
	ck_assert_ptr_nonnull(util_file_path(p, strlen(p)));
}
END_TEST

/*
 * What a walk cannot measure (planted deeper than it looks) refuses
 * every upload: nothing bypasses the limit, and the space is not free.
 */
START_TEST(test_unmeasured)
{
	char	p[PATH_MAX];
	json_t	*a;

	ck_assert_str_eq(upload_lim("uploads/a", "x", 1000000, 1000), "ok");
	plant_deep("deep", 70);
	ck_assert_str_eq(upload_lim("uploads/b", "x", 1000000, 1000),
	    PROTO_E_TOO_LARGE);
	ck_assert_str_eq(upload_lim("uploads/b", "x", 0, 0),
	    PROTO_E_TOO_LARGE);
	ck_assert_ptr_nonnull(a = files_tenant_usage("t"));
	ck_assert(json_is_true(json_object_get(a, "partial")));
	json_decref(a);
	/* Out of the way, uploads go on. */
	snprintf(p, sizeof p, "rm -rf '%s/deep'", ws);
	ck_assert_int_eq(system(p), 0);
	files_forget("t");
	ck_assert_str_eq(upload_lim("uploads/b", "x", 1000000, 1000), "ok");
	/* Within the walk's depth, it is measured and counted. */
	plant_deep("deep", 40);
	ck_assert_str_eq(upload_lim("uploads/c", "x", 1000000, 1000), "ok");
	ck_assert_str_eq(upload_lim("uploads/d", "x", 1000000, 40),
	    PROTO_E_TOO_LARGE);
}
END_TEST

/* Folders count toward max_files. */
START_TEST(test_folders_count)
{
	json_t	*a;
	long	 n;

	ck_assert_ptr_nonnull(a = files_tenant_usage("t"));
	n = (long)json_integer_value(json_object_get(a, "files"));
	json_decref(a);
	/* a/b/c/f.txt adds three folders and a file. */
	ck_assert_str_eq(upload_lim("a/b/c/f.txt", "x", 0, n + 4), "ok");
	ck_assert_str_eq(upload_lim("a/b/c/g.txt", "x", 0, n + 4),
	    PROTO_E_TOO_LARGE);
	ck_assert_str_eq(upload_lim("a/b/c/g.txt", "x", 0, n + 5), "ok");
}
END_TEST

/* A tenant's fifth upload at once is busy; an abort frees its place. */
START_TEST(test_busy)
{
	json_t		*a, *m;
	const char	*temp;
	char		 name[64];
	json_int_t	 n;
	int		 fd[5], i;

	for (i = 0; i < 4; i++) {
		snprintf(name, sizeof name, "uploads/u%d", i);
		m = msg(PROTO_FILE_OPEN, name);
		json_object_set_new(m, "mode", json_string("write"));
		ck_assert_str_eq(call(m, &fd[i], i == 3 ? &a : NULL), "ok");
		ck_assert_int_eq(write(fd[i], "0123456789", 10), 10);
	}
	ck_assert_str_eq(upload("uploads/u4", "x", 0), PROTO_E_BUSY);
	temp = json_string_value(json_object_get(a, "temp"));
	m = msg(PROTO_FILE_ABORT, NULL);
	json_object_set_new(m, "temp", json_string(temp));
	ck_assert_str_eq(call(m, NULL, NULL), "ok");
	json_decref(a);
	/* The three uploads in progress hold their 30 bytes already. */
	ck_assert_ptr_nonnull(a = files_tenant_usage("t"));
	n = json_integer_value(json_object_get(a, "bytes"));
	json_decref(a);
	ck_assert_str_eq(upload("uploads/u4", "x", n + 30), PROTO_E_TOO_LARGE);
	ck_assert_str_eq(upload("uploads/u4", "x", n + 31), "ok");
	for (i = 0; i < 4; i++)
		close(fd[i]);
}
END_TEST

/*
 * A purged tenant's folder leaves at once and is removed from the trash in
 * bounded steps, however deep its CLI nested folders.
 */
START_TEST(test_purge_steps)
{
	char		 p[PATH_MAX];
	struct dirent	*de;
	DIR		*d;
	int		 steps, left;

	snprintf(p, sizeof p, "%s/trash", state);
	ck_assert_int_eq(mkdir(p, 0700), 0);
	plant_deep("deep", 300);
	ck_assert_int_eq(workspace_delete_tenant(state, "t"), 1);
	snprintf(p, sizeof p, "%s/tenants/t", state);
	ck_assert_int_eq(access(p, F_OK), -1);
	for (steps = 0, left = 1; left && steps < 1000; steps++) {
		workspace_trash_step(state, 50);
		snprintf(p, sizeof p, "%s/trash", state);
		ck_assert_ptr_nonnull(d = opendir(p));
		left = 0;
		while ((de = readdir(d)) != NULL)
			left += de->d_name[0] != '.';
		closedir(d);
	}
	ck_assert_int_eq(left, 0);
	ck_assert_int_gt(steps, 1);	/* 300 folders: more than one step */
}
END_TEST

/* A turn's changes: created, changed, deleted. */
START_TEST(test_changes)
{
	json_t	*before, *ch, *e;
	char	 p[PATH_MAX];
	int	 partial;
	size_t	 i;

	plant("uploads/keep", "k");
	plant("uploads/change", "c");
	plant("uploads/gone", "g");
	ck_assert_ptr_nonnull(before = files_snapshot("t", &partial));
	ck_assert_int_eq(partial, 0);
	plant("uploads/change", "changed");
	plant("projects/new", "n");
	snprintf(p, sizeof p, "%s/uploads/gone", ws);
	ck_assert_int_eq(unlink(p), 0);
	ck_assert_ptr_nonnull(ch = files_changes("t", before, &partial));
	ck_assert_int_eq(json_array_size(ch), 3);
	json_array_foreach(ch, i, e) {
		const char	*path = json_string_value(json_object_get(e,
				    "path"));
		const char	*c = json_string_value(json_object_get(e,
				    "change"));

		if (strcmp(path, "uploads/change") == 0)
			ck_assert_str_eq(c, "changed");
		else if (strcmp(path, "projects/new") == 0)
			ck_assert_str_eq(c, "created");
		else {
			ck_assert_str_eq(path, "uploads/gone");
			ck_assert_str_eq(c, "deleted");
		}
	}
	json_decref(ch);
	json_decref(before);
}
END_TEST

int
main(void)
{
	const TTest *const tests[] = {
		test_links_openat2,
		test_links_walk,
		test_limits,
		test_depth,
		test_unmeasured,
		test_folders_count,
		test_busy,
		test_purge_steps,
		test_changes,
		NULL
	};

	return (unit_run_fixture("files", "files", tests, setup, teardown, 0));
}
