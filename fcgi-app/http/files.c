/*
 * The files API: a tenant's workspace, its files in and out.
 *
 *   PUT    /api/files/<path>	the raw body becomes the file (parents made)
 *   POST   /api/files		multipart/form-data: each file into uploads/
 *   GET    /api/files?prefix=	the files: path, size, modified, sha256
 *   GET    /api/files/<path>	the file (Range: one range)
 *   DELETE /api/files/<path>	remove it
 *
 * The tenant is the key's, never anything in the request.  This process
 * cannot reach the workspace: ccgate-poold opens the file beneath it
 * (pool-daemon/files.c) and hands over the descriptor; the bytes move
 * here, FILES_CHUNK at a time, so no body is ever whole in memory.  An
 * upload goes to a temporary file that ccgate-poold renames into place
 * once the workspace's limits (tenant_limits) allow it.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "http.h"
#include "log.h"
#include "proto.h"

#define FILES_CHUNK	(64 * 1024)
#define FILES_PREFIX	"/api/files/"
#define FILES_POOL_MS	30000

/* Decode %XX of the path after /api/files/ into out; -1 if malformed. */
static int
files_decode(const char *in, char *out, size_t outlen, size_t *len)
{
	size_t	o = 0;
	int	hi, lo;

	for (; *in != '\0'; in++) {
		char	c = *in;

		if (c == '%') {
			hi = in[1] >= '0' && in[1] <= '9' ? in[1] - '0' :
			    (in[1] | 0x20) >= 'a' && (in[1] | 0x20) <= 'f' ?
			    (in[1] | 0x20) - 'a' + 10 : -1;
			lo = hi < 0 ? -1 : in[2] >= '0' && in[2] <= '9' ?
			    in[2] - '0' : (in[2] | 0x20) >= 'a' &&
			    (in[2] | 0x20) <= 'f' ? (in[2] | 0x20) - 'a' + 10 :
			    -1;
			if (lo < 0)
				return (-1);
			c = (char)(hi << 4 | lo);
			in += 2;
		}
		if (o + 1 >= outlen)
			return (-1);
		out[o++] = c;
	}
	out[o] = '\0';
	*len = o;
	return (0);
}

/*
 * The request's file path, checked, into buf; -1 with the answer (400)
 * sent.
 */
static int
files_path(struct request *r, char *buf, size_t len)
{
	const char	*p = req_path(r), *why;
	size_t		 n;

	if (strncmp(p, FILES_PREFIX, strlen(FILES_PREFIX)) != 0) {
		req_error(r, 404, NULL, "not found");
		return (-1);
	}
	p += strlen(FILES_PREFIX);
	if (strlen(p) > FILE_PATH_MAX * 3 || files_decode(p, buf, len,
	    &n) != 0) {
		req_error(r, 400, NULL, "invalid path: bad percent-encoding "
		    "or longer than %d bytes", FILE_PATH_MAX);
		return (-1);
	}
	if ((why = util_file_path(buf, n)) != NULL) {
		req_error(r, 400, NULL, "invalid path: %s", why);
		return (-1);
	}
	return (0);
}

/* A files message for the key's tenant. */
static json_t *
files_msg(struct request *r, const char *type, const char *path)
{
	json_t	*m = proto_new(type);

	if (m == NULL)
		return (NULL);
	json_object_set_new(m, "tenant", json_string(req_key(r)->tenant));
	if (path != NULL)
		json_object_set_new(m, "path", json_string(path));
	return (m);
}

/*
 * Ask ccgate-poold (m taken): its "ok" answer, with a descriptor in *fd
 * if fd; NULL with the error answered.
 */
static json_t *
files_call(struct request *r, json_t *m, int *fd)
{
	const char	*type, *code, *msg;
	char		*cause = NULL;
	json_t		*ans;
	int		 dfd = -1;

	if (m == NULL) {
		req_error(r, 500, NULL, "out of memory");
		return (NULL);
	}
	ans = poolc_call_fd(appconf->poold_socket, m, FILES_POOL_MS, &dfd,
	    &cause);
	json_decref(m);
	if (ans == NULL) {
		req_add_header(r, "Retry-After", "5");
		req_error(r, 503, NULL, "the pool daemon is unavailable");
		log_warnx("files: %s", cause != NULL ? cause : "?");
		free(cause);
		return (NULL);
	}
	type = proto_type(ans);
	if (strcmp(type, PROTO_OK) != 0) {
		code = json_string_value(json_object_get(ans, "code"));
		msg = json_string_value(json_object_get(ans, "message"));
		if (code == NULL)
			code = "";
		if (msg == NULL)
			msg = "error";
		if (strcmp(code, PROTO_E_NOT_FOUND) == 0)
			req_error(r, 404, NULL, "no such file");
		else if (strcmp(code, PROTO_E_REFUSED) == 0)
			req_error(r, 403, NULL, "refused: %s", msg);
		else if (strcmp(code, PROTO_E_TOO_LARGE) == 0)
			req_error(r, 413, NULL, "%s", msg);
		else if (strcmp(code, PROTO_E_BAD_REQUEST) == 0)
			req_error(r, 400, NULL, "%s", msg);
		else
			req_error(r, 500, NULL, "%s", msg);
		if (dfd != -1)
			close(dfd);
		json_decref(ans);
		return (NULL);
	}
	if (fd != NULL)
		*fd = dfd;
	else if (dfd != -1)
		close(dfd);
	return (ans);
}

/* The key's tenant's limits; -1 with 503 answered. */
static int
files_limits(struct request *r, long long *max_bytes, long long *max_files)
{
	if (tenant_limits(db_thread(), req_key(r)->tenant, max_bytes,
	    max_files) != 0) {
		req_db_down(r);
		return (-1);
	}
	return (0);
}

/* Hex of a SHA-256 state's digest into out (65 bytes). */
static void
files_hex(crypto_hash_sha256_state *st, char out[65])
{
	unsigned char	d[crypto_hash_sha256_BYTES];

	crypto_hash_sha256_final(st, d);
	sodium_bin2hex(out, 65, d, sizeof d);
}

/*
 * Write len bytes of the body (from the transport) to fd, hashing them.
 * Returns 0, or -1 with the answer sent.
 */
static int
files_copy_in(struct request *r, int fd, long long len,
    crypto_hash_sha256_state *st)
{
	const struct req_transport	*tp;
	void				*arg;
	char				*buf;
	long long			 done = 0;
	ssize_t				 n;

	req_transport_get(r, &tp, &arg);
	if (tp->read == NULL) {
		req_error(r, 400, NULL, "no body");
		return (-1);
	}
	if ((buf = malloc(FILES_CHUNK)) == NULL) {
		req_error(r, 500, NULL, "out of memory");
		return (-1);
	}
	while (done < len) {
		n = tp->read(arg, buf, (size_t)(len - done < FILES_CHUNK ?
		    len - done : FILES_CHUNK));
		if (n <= 0)
			break;
		if (util_write_all(fd, buf, (size_t)n) != 0) {
			free(buf);
			req_error(r, 507, NULL, "cannot write the file: %s",
			    strerror(errno));
			return (-1);
		}
		crypto_hash_sha256_update(st, (unsigned char *)buf, (size_t)n);
		done += n;
	}
	free(buf);
	if (done != len) {
		req_error(r, 400, NULL, "the body is shorter than its "
		    "Content-Length");
		return (-1);
	}
	return (0);
}

/* Remove an upload's temporary file (the commit did not happen). */
static void
files_abort(struct request *r, const char *temp)
{
	json_t	*m = files_msg(r, PROTO_FILE_ABORT, NULL), *ans;
	char	*cause = NULL;
	int	 fd = -1;

	if (m == NULL)
		return;
	json_object_set_new(m, "temp", json_string(temp));
	ans = poolc_call_fd(appconf->poold_socket, m, FILES_POOL_MS, &fd,
	    &cause);
	json_decref(m);
	if (fd != -1)
		close(fd);
	if (ans == NULL) {
		log_warnx("files: abort %s: %s", temp, cause != NULL ? cause :
		    "?");
		free(cause);
	}
	json_decref(ans);
}

/*
 * Store len bytes of the body as path: open a temporary file, stream into
 * it, commit.  Returns the commit's answer with "sha256" set, or NULL
 * with the error answered.
 */
static json_t *
files_store(struct request *r, const char *path, long long len)
{
	crypto_hash_sha256_state	 st;
	long long			 max_bytes, max_files, used, existing;
	json_t				*ans, *m;
	char				 temp[64], hex[65];
	int				 fd = -1;

	if (files_limits(r, &max_bytes, &max_files) != 0)
		return (NULL);
	if (max_bytes > 0 && len > max_bytes) {
		req_error(r, 413, NULL, "the file (%lld bytes) exceeds the "
		    "workspace's limit of %lld bytes (workspace_max_bytes)",
		    len, max_bytes);
		return (NULL);
	}
	if ((m = files_msg(r, PROTO_FILE_OPEN, path)) != NULL)
		json_object_set_new(m, "mode", json_string("write"));
	if ((ans = files_call(r, m, &fd)) == NULL)
		return (NULL);
	snprintf(temp, sizeof temp, "%s", json_string_value(json_object_get(
	    ans, "temp")) != NULL ? json_string_value(json_object_get(ans,
	    "temp")) : "");
	used = json_integer_value(json_object_get(ans, "used_bytes"));
	existing = json_integer_value(json_object_get(ans, "existing"));
	json_decref(ans);
	if (fd == -1 || temp[0] == '\0') {
		if (fd != -1)
			close(fd);
		req_error(r, 500, NULL, "the pool daemon sent no file");
		return (NULL);
	}
	/* Stop before streaming what the limit cannot take. */
	if (max_bytes > 0 && used - (existing > 0 ? existing : 0) + len >
	    max_bytes) {
		close(fd);
		files_abort(r, temp);
		req_error(r, 413, NULL, "the workspace would hold %lld bytes, "
		    "over its limit of %lld bytes (workspace_max_bytes)",
		    used - (existing > 0 ? existing : 0) + len, max_bytes);
		return (NULL);
	}
	crypto_hash_sha256_init(&st);
	if (files_copy_in(r, fd, len, &st) != 0) {
		close(fd);
		files_abort(r, temp);
		return (NULL);
	}
	if (close(fd) != 0) {
		files_abort(r, temp);
		req_error(r, 507, NULL, "cannot write the file: %s",
		    strerror(errno));
		return (NULL);
	}
	files_hex(&st, hex);
	if ((m = files_msg(r, PROTO_FILE_COMMIT, path)) != NULL) {
		json_object_set_new(m, "temp", json_string(temp));
		json_object_set_new(m, "max_bytes", json_integer(max_bytes));
		json_object_set_new(m, "max_files", json_integer(max_files));
	}
	if ((ans = files_call(r, m, NULL)) == NULL)
		return (NULL);
	json_object_set_new(ans, "sha256", json_string(hex));
	return (ans);
}

/* The body's Content-Length; -1 with the answer (411, 400) sent. */
static long long
files_length(struct request *r)
{
	const char	*cl = req_param(r, "CONTENT_LENGTH");
	char		*end;
	long long	 len;

	if (cl == NULL || *cl == '\0') {
		req_error(r, 411, NULL, "Content-Length is required");
		return (-1);
	}
	errno = 0;
	len = strtoll(cl, &end, 10);
	if (*end != '\0' || errno != 0 || len < 0) {
		req_error(r, 400, NULL, "invalid Content-Length");
		return (-1);
	}
	return (len);
}

/* PUT /api/files/<path>: the body becomes the file. */
void
files_put_handle(struct request *r)
{
	char		 path[FILE_PATH_MAX + 1];
	long long	 len;
	json_t		*ans;
	int		 created;

	if (files_path(r, path, sizeof path) != 0 ||
	    (len = files_length(r)) < 0)
		return;
	if ((ans = files_store(r, path, len)) == NULL)
		return;
	created = json_is_true(json_object_get(ans, "created"));
	req_send_json(r, created ? 201 : 200, json_pack("{s:b, s:s, s:I, "
	    "s:O}", "success", 1, "path", path, "size",
	    json_integer_value(json_object_get(ans, "size")), "sha256",
	    json_object_get(ans, "sha256")));
	json_decref(ans);
}

/* POST /api/files: multipart uploads are not taken yet. */
void
files_post_handle(struct request *r)
{
	req_error(r, 415, NULL, "multipart uploads are not supported yet: "
	    "PUT /api/files/uploads/<name> with the raw body");
}

/*
 * Parse a Range header against size: 0 for the whole file, 1 for a range
 * (*from, *to inclusive), -1 unsatisfiable.
 */
static int
files_range(const char *h, long long size, long long *from, long long *to)
{
	char		*end;
	long long	 a, b;

	if (h == NULL || strncmp(h, "bytes=", 6) != 0 ||
	    strchr(h, ',') != NULL)
		return (0);
	h += 6;
	errno = 0;
	if (*h == '-') {
		b = strtoll(h + 1, &end, 10);
		if (end == h + 1 || *end != '\0' || errno != 0 || b <= 0)
			return (b == 0 && *end == '\0' && end != h + 1 ? -1 :
			    0);
		if (size == 0)
			return (-1);
		*from = b >= size ? 0 : size - b;
		*to = size - 1;
		return (1);
	}
	a = strtoll(h, &end, 10);
	if (end == h || *end != '-' || errno != 0 || a < 0)
		return (0);
	h = end + 1;
	if (*h == '\0')
		b = size - 1;
	else {
		b = strtoll(h, &end, 10);
		if (end == h || *end != '\0' || errno != 0 || b < a)
			return (0);
	}
	if (a >= size)
		return (-1);
	*from = a;
	*to = b >= size ? size - 1 : b;
	return (1);
}

/* GET /api/files/<path>: the file, or one range of it. */
void
files_get_handle(struct request *r)
{
	char		 path[FILE_PATH_MAX + 1], hdr[128], *buf;
	long long	 size, from = 0, to, off;
	json_t		*ans, *m;
	ssize_t		 n;
	int		 fd = -1, range, status = 200;
	size_t		 want;

	if (files_path(r, path, sizeof path) != 0)
		return;
	if ((m = files_msg(r, PROTO_FILE_OPEN, path)) != NULL)
		json_object_set_new(m, "mode", json_string("read"));
	if ((ans = files_call(r, m, &fd)) == NULL)
		return;
	size = json_integer_value(json_object_get(ans, "size"));
	json_decref(ans);
	if (fd == -1) {
		req_error(r, 500, NULL, "the pool daemon sent no file");
		return;
	}
	to = size - 1;
	range = files_range(req_header(r, "HTTP_RANGE"), size, &from, &to);
	if (range == -1) {
		close(fd);
		snprintf(hdr, sizeof hdr, "bytes */%lld", size);
		req_add_header(r, "Content-Range", hdr);
		req_error(r, 416, NULL, "the range is not satisfiable (the "
		    "file has %lld bytes)", size);
		return;
	}
	if (range == 1) {
		status = 206;
		snprintf(hdr, sizeof hdr, "bytes %lld-%lld/%lld", from, to,
		    size);
		req_add_header(r, "Content-Range", hdr);
	}
	snprintf(hdr, sizeof hdr, "%lld", size == 0 ? 0 : to - from + 1);
	req_add_header(r, "Content-Length", hdr);
	req_add_header(r, "Accept-Ranges", "bytes");
	req_add_header(r, "Content-Disposition", "attachment");
	req_add_header(r, "X-Content-Type-Options", "nosniff");
	if ((buf = malloc(FILES_CHUNK)) == NULL) {
		close(fd);
		req_error(r, 500, NULL, "out of memory");
		return;
	}
	if (req_raw(r, status, "application/octet-stream", "", 0) != 0) {
		free(buf);
		close(fd);
		if (!req_sent(r))
			req_error(r, 500, NULL, "this transport cannot carry "
			    "a file");
		return;
	}
	for (off = from; size > 0 && off <= to; off += n) {
		want = (size_t)(to - off + 1 < FILES_CHUNK ? to - off + 1 :
		    FILES_CHUNK);
		n = pread(fd, buf, want, (off_t)off);
		if (n == -1 && errno == EINTR) {
			n = 0;
			continue;
		}
		if (n <= 0)
			break;	/* the file shrank: the client sees it short */
		if (req_raw(r, 0, NULL, buf, (size_t)n) != 0)
			break;
	}
	free(buf);
	close(fd);
}

/* SHA-256 of fd's bytes into hex; -1 if it cannot be read. */
static int
files_hash_fd(int fd, char hex[65], long long *budget)
{
	crypto_hash_sha256_state	 st;
	char				*buf;
	ssize_t				 n;

	if ((buf = malloc(FILES_CHUNK)) == NULL)
		return (-1);
	crypto_hash_sha256_init(&st);
	for (;;) {
		n = read(fd, buf, FILES_CHUNK);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		crypto_hash_sha256_update(&st, (unsigned char *)buf,
		    (size_t)n);
		*budget -= n;
	}
	free(buf);
	if (n < 0)
		return (-1);
	files_hex(&st, hex);
	return (0);
}

/*
 * The SHA-256 of a listed file, as JSON (null if it cannot be had, or the
 * listing's budget is spent).
 */
static json_t *
files_sha(struct request *r, const char *path, long long size,
    long long *budget)
{
	json_t	*m, *ans;
	char	 hex[65], *cause = NULL;
	int	 fd = -1, rc;

	if (size > *budget)
		return (json_null());
	if ((m = files_msg(r, PROTO_FILE_OPEN, path)) == NULL)
		return (json_null());
	json_object_set_new(m, "mode", json_string("read"));
	ans = poolc_call_fd(appconf->poold_socket, m, FILES_POOL_MS, &fd,
	    &cause);
	json_decref(m);
	free(cause);
	if (ans == NULL || strcmp(proto_type(ans), PROTO_OK) != 0 ||
	    fd == -1) {
		json_decref(ans);
		if (fd != -1)
			close(fd);
		return (json_null());
	}
	json_decref(ans);
	rc = files_hash_fd(fd, hex, budget);
	close(fd);
	return (rc == 0 ? json_string(hex) : json_null());
}

/* GET /api/files?prefix=&limit=: the files, with their SHA-256. */
void
files_list_handle(struct request *r)
{
	char		 prefix[FILE_PATH_MAX + 1], lim[16], when[32];
	const char	*p, *why, *path;
	long long	 budget = appconf->files_hash_max_bytes, limit = 1000;
	json_t		*ans, *m, *files, *out, *f, *v;
	struct tm	 tm;
	time_t		 t;
	size_t		 i;
	char		*end;

	prefix[0] = '\0';
	if ((p = req_query(r, "prefix", prefix, sizeof prefix)) != NULL &&
	    *p != '\0') {
		size_t	n = strlen(prefix);

		while (n > 0 && prefix[n - 1] == '/')
			prefix[--n] = '\0';
		if ((why = util_file_path(prefix, n)) != NULL) {
			req_error(r, 400, NULL, "invalid prefix: %s", why);
			return;
		}
	} else
		prefix[0] = '\0';
	if (req_query(r, "limit", lim, sizeof lim) != NULL) {
		errno = 0;
		limit = strtoll(lim, &end, 10);
		if (*end != '\0' || errno != 0 || limit < 1 || limit > 10000) {
			req_error(r, 400, NULL, "limit: 1 to 10000");
			return;
		}
	}
	if ((m = files_msg(r, PROTO_FILE_LIST, NULL)) != NULL) {
		json_object_set_new(m, "prefix", json_string(prefix));
		json_object_set_new(m, "limit", json_integer(limit));
	}
	if ((ans = files_call(r, m, NULL)) == NULL)
		return;
	files = json_object_get(ans, "files");
	if ((out = json_array()) == NULL) {
		json_decref(ans);
		req_error(r, 500, NULL, "out of memory");
		return;
	}
	json_array_foreach(files, i, v) {
		path = json_string_value(json_object_get(v, "path"));
		if (path == NULL)
			continue;
		t = (time_t)json_integer_value(json_object_get(v,
		    "modified"));
		if (gmtime_r(&t, &tm) == NULL || strftime(when, sizeof when,
		    "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
			when[0] = '\0';
		f = json_pack("{s:s, s:O, s:s, s:o}", "path", path, "size",
		    json_object_get(v, "size"), "modified", when, "sha256",
		    json_integer_value(json_object_get(v, "links")) == 1 ?
		    files_sha(r, path, json_integer_value(json_object_get(v,
		    "size")), &budget) : json_null());
		if (f != NULL)
			json_array_append_new(out, f);
	}
	req_send_json(r, 200, json_pack("{s:b, s:o, s:b}", "success", 1,
	    "files", out, "truncated", json_is_true(json_object_get(ans,
	    "truncated"))));
	json_decref(ans);
}

/* DELETE /api/files/<path>. */
void
files_delete_handle(struct request *r)
{
	char	 path[FILE_PATH_MAX + 1];
	json_t	*ans;

	if (files_path(r, path, sizeof path) != 0)
		return;
	if ((ans = files_call(r, files_msg(r, PROTO_FILE_DELETE, path),
	    NULL)) == NULL)
		return;
	json_decref(ans);
	req_send_empty(r, 204);
}
