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
 * once the workspace's limits (tenant_limits) allow it.  A body whose
 * SHA-256 the client declares (X-Ccgate-Content-Sha256, which a signed
 * upload must send and sign: signing.c) is hashed as it streams, every
 * byte read, and nothing of it is stored unless it matches.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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
		else if (strcmp(code, PROTO_E_BUSY) == 0) {
			req_add_header(r, "Retry-After", "1");
			req_error(r, 429, NULL, "%s", msg);
		} else
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

/*
 * The body's declared SHA-256 into want: 1, 0 if none was declared, -1
 * with the answer (400) sent if it is malformed.
 */
static int
files_declared(struct request *r, uint8_t want[32])
{
	int	rc = sign_content_sha256(r, want);

	if (rc == -1)
		req_error(r, 400, NULL, "malformed X-Ccgate-Content-Sha256: "
		    "64 hex digits");
	return (rc);
}

/* Does the digest of a copy of st (left as it is) equal want? */
static int
files_digest_ok(const crypto_hash_sha256_state *st, const uint8_t want[32])
{
	crypto_hash_sha256_state	c = *st;
	unsigned char			d[crypto_hash_sha256_BYTES];

	crypto_hash_sha256_final(&c, d);
	return (sodium_memcmp(d, want, sizeof d) == 0);
}

#define FILES_E_DIGEST	"the body does not match X-Ccgate-Content-Sha256"

/* Hex of a SHA-256 state's digest into out (65 bytes). */
static void
files_hex(crypto_hash_sha256_state *st, char out[65])
{
	unsigned char	d[crypto_hash_sha256_BYTES];

	crypto_hash_sha256_final(st, d);
	sodium_bin2hex(out, 65, d, sizeof d);
}

/* An upload under way: its temporary file, what it may still take. */
struct files_up {
	char				 path[FILE_PATH_MAX + 1];
	char				 temp[64];
	int				 fd;
	long long			 max_bytes;
	long long			 max_files;
	long long			 room;	/* bytes it may take; -1: any */
	long long			 written;
	crypto_hash_sha256_state	 st;
};

/* Remove an upload's temporary file (the commit did not happen). */
static void
files_abort(struct request *r, struct files_up *up)
{
	json_t	*m, *ans;
	char	*cause = NULL;
	int	 fd = -1;

	if (up->fd != -1) {
		close(up->fd);
		up->fd = -1;
	}
	if (up->temp[0] == '\0' ||
	    (m = files_msg(r, PROTO_FILE_ABORT, NULL)) == NULL)
		return;
	json_object_set_new(m, "temp", json_string(up->temp));
	ans = poolc_call_fd(appconf->poold_socket, m, FILES_POOL_MS, &fd,
	    &cause);
	json_decref(m);
	if (fd != -1)
		close(fd);
	if (ans == NULL) {
		log_warnx("files: abort %s: %s", up->temp, cause != NULL ?
		    cause : "?");
		free(cause);
	}
	json_decref(ans);
	up->temp[0] = '\0';
}

/*
 * Begin an upload to path (checked) of len bytes (-1: not known yet),
 * after pending bytes of uploads not yet committed: the tenant's limits,
 * a temporary file from ccgate-poold.  Returns 0, or -1 with the answer
 * sent.
 */
static int
files_up_open(struct request *r, struct files_up *up, const char *path,
    long long len, long long pending)
{
	long long	 used, existing;
	json_t		*ans, *m;
	const char	*temp;

	memset(up, 0, sizeof *up);
	up->fd = -1;
	snprintf(up->path, sizeof up->path, "%s", path);
	if (files_limits(r, &up->max_bytes, &up->max_files) != 0)
		return (-1);
	if (up->max_bytes > 0 && len > up->max_bytes) {
		req_error(r, 413, NULL, "the file (%lld bytes) exceeds the "
		    "workspace's limit of %lld bytes (workspace_max_bytes)",
		    len, up->max_bytes);
		return (-1);
	}
	if ((m = files_msg(r, PROTO_FILE_OPEN, path)) != NULL) {
		json_object_set_new(m, "mode", json_string("write"));
		/* The daemon's walk stops once past them. */
		json_object_set_new(m, "max_bytes",
		    json_integer(up->max_bytes));
		json_object_set_new(m, "max_files",
		    json_integer(up->max_files));
	}
	if ((ans = files_call(r, m, &up->fd)) == NULL)
		return (-1);
	temp = json_string_value(json_object_get(ans, "temp"));
	snprintf(up->temp, sizeof up->temp, "%s", temp != NULL ? temp : "");
	used = json_integer_value(json_object_get(ans, "used_bytes"));
	existing = json_integer_value(json_object_get(ans, "existing"));
	json_decref(ans);
	if (up->fd == -1 || up->temp[0] == '\0') {
		files_abort(r, up);
		req_error(r, 500, NULL, "the pool daemon sent no file");
		return (-1);
	}
	up->room = -1;
	if (up->max_bytes > 0) {
		up->room = up->max_bytes - used + (existing > 0 ? existing : 0) -
		    pending;
		if (up->room < 0)
			up->room = 0;
	}
	/* Stop before streaming what the limit cannot take. */
	if (up->room >= 0 && len > up->room) {
		files_abort(r, up);
		req_error(r, 413, NULL, "the workspace would hold %lld bytes, "
		    "over its limit of %lld bytes (workspace_max_bytes)",
		    up->max_bytes - up->room + len, up->max_bytes);
		return (-1);
	}
	crypto_hash_sha256_init(&up->st);
	return (0);
}

/*
 * Write n bytes of an upload, stopping at the workspace's limit.  Returns
 * 0, or -1 with the upload aborted and the answer sent.
 */
static int
files_up_write(struct request *r, struct files_up *up, const char *buf,
    size_t n)
{
	if (up->room >= 0 && up->written + (long long)n > up->room) {
		files_abort(r, up);
		req_error(r, 413, NULL, "the workspace would hold more than "
		    "its limit of %lld bytes (workspace_max_bytes)",
		    up->max_bytes);
		return (-1);
	}
	if (util_write_all(up->fd, buf, n) != 0) {
		files_abort(r, up);
		req_error(r, 507, NULL, "cannot write the file: %s",
		    strerror(errno));
		return (-1);
	}
	crypto_hash_sha256_update(&up->st, (const unsigned char *)buf, n);
	up->written += (long long)n;
	return (0);
}

/*
 * Close an upload's temporary file, all written.  Returns 0, or -1 with
 * the upload aborted and the answer sent.
 */
static int
files_up_close(struct request *r, struct files_up *up)
{
	int	rc;

	if (up->fd == -1)
		return (0);
	rc = close(up->fd);
	up->fd = -1;
	if (rc != 0) {
		files_abort(r, up);
		req_error(r, 507, NULL, "cannot write the file: %s",
		    strerror(errno));
		return (-1);
	}
	return (0);
}

/*
 * Commit an upload: ccgate-poold renames it into place if the workspace
 * stays within its limits.  Returns {path, size, sha256, created}, or
 * NULL with the answer sent (the earlier file is as it was).
 */
static json_t *
files_up_commit(struct request *r, struct files_up *up)
{
	json_t	*ans, *m, *out;
	char	 hex[65];

	if (files_up_close(r, up) != 0)
		return (NULL);
	files_hex(&up->st, hex);
	if ((m = files_msg(r, PROTO_FILE_COMMIT, up->path)) != NULL) {
		json_object_set_new(m, "temp", json_string(up->temp));
		json_object_set_new(m, "max_bytes", json_integer(up->max_bytes));
		json_object_set_new(m, "max_files", json_integer(up->max_files));
	}
	up->temp[0] = '\0';	/* ccgate-poold removes it if it refuses */
	if ((ans = files_call(r, m, NULL)) == NULL)
		return (NULL);
	out = json_pack("{s:s, s:I, s:s, s:b}", "path", up->path, "size",
	    (json_int_t)up->written, "sha256", hex, "created",
	    json_is_true(json_object_get(ans, "created")));
	json_decref(ans);
	if (out == NULL)
		req_error(r, 500, NULL, "out of memory");
	return (out);
}

/*
 * Store len bytes of the body as path, if their SHA-256 is want (when
 * declared).  Returns {path, size, sha256, created}, or NULL with the
 * error answered.
 */
static json_t *
files_store(struct request *r, const char *path, long long len,
    int declared, const uint8_t want[32])
{
	const struct req_transport	*tp;
	struct files_up			 up;
	void				*arg;
	char				*buf;
	long long			 done = 0;
	ssize_t				 n;

	req_transport_get(r, &tp, &arg);
	if (tp->read == NULL) {
		req_error(r, 400, NULL, "no body");
		return (NULL);
	}
	if (files_up_open(r, &up, path, len, 0) != 0)
		return (NULL);
	if ((buf = malloc(FILES_CHUNK)) == NULL) {
		files_abort(r, &up);
		req_error(r, 500, NULL, "out of memory");
		return (NULL);
	}
	while (done < len) {
		n = tp->read(arg, buf, (size_t)(len - done < FILES_CHUNK ?
		    len - done : FILES_CHUNK));
		if (n <= 0)
			break;
		if (files_up_write(r, &up, buf, (size_t)n) != 0) {
			free(buf);
			return (NULL);
		}
		done += n;
	}
	free(buf);
	if (done != len) {
		files_abort(r, &up);
		req_error(r, 400, NULL, "the body is shorter than its "
		    "Content-Length");
		return (NULL);
	}
	/* The raw body is the file: its hash is the body's. */
	if (declared && !files_digest_ok(&up.st, want)) {
		files_abort(r, &up);
		req_error(r, 400, NULL, FILES_E_DIGEST);
		return (NULL);
	}
	return (files_up_commit(r, &up));
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
	uint8_t		 want[32];
	long long	 len;
	json_t		*ans;
	int		 created, declared;

	if (files_path(r, path, sizeof path) != 0 ||
	    (len = files_length(r)) < 0 ||
	    (declared = files_declared(r, want)) < 0)
		return;
	if ((ans = files_store(r, path, len, declared, want)) == NULL)
		return;
	created = json_is_true(json_object_get(ans, "created"));
	json_object_del(ans, "created");
	json_object_set_new(ans, "success", json_true());
	req_send_json(r, created ? 201 : 200, ans);
}

#define FILES_MP_HEAD	8192	/* a part's headers */
#define FILES_MP_PARTS	100	/* files in one POST */
#define FILES_BOUNDARY	70	/* RFC 2046 */

/* A multipart body being read: the transport, what is buffered. */
struct files_mp {
	const struct req_transport	*tp;
	void				*arg;
	long long			 left;	/* of Content-Length */
	char				*buf;
	size_t				 len;
	size_t				 cap;
	char				 delim[FILES_BOUNDARY + 5];
	size_t				 dlen;	/* "\r\n--" boundary */
	crypto_hash_sha256_state	 body;	/* every byte read */
};

/* Read more of the body into the buffer: the bytes read, 0 at its end. */
static ssize_t
files_mp_fill(struct files_mp *mp)
{
	ssize_t	n;
	size_t	want = mp->cap - mp->len;

	if (mp->left <= 0 || want == 0)
		return (0);
	if ((long long)want > mp->left)
		want = (size_t)mp->left;
	n = mp->tp->read(mp->arg, mp->buf + mp->len, want);
	if (n <= 0)
		return (0);
	crypto_hash_sha256_update(&mp->body,
	    (const unsigned char *)mp->buf + mp->len, (size_t)n);
	mp->len += (size_t)n;
	mp->left -= n;
	return (n);
}

/* Drop the first n buffered bytes. */
static void
files_mp_consume(struct files_mp *mp, size_t n)
{
	memmove(mp->buf, mp->buf + n, mp->len - n);
	mp->len -= n;
}

/* Offset of needle in the buffer, or -1. */
static ssize_t
files_mp_find(const struct files_mp *mp, const char *needle, size_t nlen)
{
	size_t	i;

	for (i = 0; nlen <= mp->len && i <= mp->len - nlen; i++) {
		if (memcmp(mp->buf + i, needle, nlen) == 0)
			return ((ssize_t)i);
	}
	return (-1);
}

/*
 * Pass a part's content up to the next delimiter to up (NULL: a field,
 * dropped), consuming the delimiter.  Returns 0, or -1 with the answer
 * sent (up aborted).
 */
static int
files_mp_content(struct request *r, struct files_mp *mp, struct files_up *up)
{
	ssize_t	at;
	size_t	n;

	for (;;) {
		if ((at = files_mp_find(mp, mp->delim, mp->dlen)) != -1) {
			if (up != NULL && at > 0 && files_up_write(r, up,
			    mp->buf, (size_t)at) != 0)
				return (-1);
			files_mp_consume(mp, (size_t)at + mp->dlen);
			return (0);
		}
		/* Keep what could be the start of a delimiter. */
		if (mp->len >= mp->dlen) {
			n = mp->len - (mp->dlen - 1);
			if (up != NULL && files_up_write(r, up, mp->buf, n) != 0)
				return (-1);
			files_mp_consume(mp, n);
		}
		if (files_mp_fill(mp) == 0) {
			if (up != NULL)
				files_abort(r, up);
			req_error(r, 400, NULL, "multipart: the body ends "
			    "inside a part");
			return (-1);
		}
	}
}

/*
 * The filename of a part's headers (hdr, NUL-terminated), into out: the
 * last component of what the client named it.  1 if there is one, 0 for a
 * field without a file.
 */
static int
files_mp_filename(const char *hdr, char *out, size_t outlen)
{
	const char	*p, *q, *e;
	size_t		 n;

	for (p = hdr; (p = strstr(p, "filename=")) != NULL; p++) {
		if (p != hdr && p[-1] != ' ' && p[-1] != ';' && p[-1] != '\t')
			continue;
		p += 9;
		if (*p == '"') {
			p++;
			e = strchr(p, '"');
		} else
			e = p + strcspn(p, "; \r\n");
		if (e == NULL)
			return (0);
		for (q = p; q < e; q++) {
			if (*q == '/' || *q == '\\')
				p = q + 1;
		}
		n = (size_t)(e - p);
		if (n >= outlen)
			n = outlen - 1;
		memcpy(out, p, n);
		out[n] = '\0';
		return (1);
	}
	return (0);
}

/* The boundary of a multipart/form-data Content-Type into out; -1. */
static int
files_mp_boundary(const char *ct, char *out, size_t outlen)
{
	const char	*p;
	size_t		 n;

	if (ct == NULL || strncasecmp(ct, "multipart/form-data", 19) != 0 ||
	    (p = strstr(ct, "boundary=")) == NULL)
		return (-1);
	p += 9;
	if (*p == '"') {
		p++;
		n = strcspn(p, "\"");
	} else
		n = strcspn(p, "; \t");
	if (n == 0 || n > FILES_BOUNDARY || n >= outlen)
		return (-1);
	memcpy(out, p, n);
	out[n] = '\0';
	return (0);
}

/* Abort the uploads of a POST not committed yet. */
static void
files_mp_abort(struct request *r, struct files_up *pend, int npend)
{
	int	i;

	for (i = 0; i < npend; i++)
		files_abort(r, &pend[i]);
}

/*
 * POST /api/files: multipart/form-data, each part with a filename stored
 * as uploads/<its last component>, streamed and committed part by part
 * (a part refused stops the request; the parts before it are stored).
 * With X-Ccgate-Content-Sha256 declared, the parts wait, written but not
 * committed, until the whole body is read and its hash matches: then
 * they are committed in order; otherwise none is.
 */
void
files_post_handle(struct request *r)
{
	struct files_mp	 mp;
	struct files_up	 up, *pend = NULL;
	char		 boundary[FILES_BOUNDARY + 1], name[FILE_NAME_MAX + 1];
	char		 path[FILE_PATH_MAX + 1], *hdr = NULL;
	const char	*why;
	uint8_t		 want[32];
	long long	 len, pending = 0;
	json_t		*files = NULL, *f;
	ssize_t		 at;
	int		 nparts = 0, npend = 0, declared, i;

	if ((len = files_length(r)) < 0 ||
	    (declared = files_declared(r, want)) < 0)
		return;
	if (files_mp_boundary(req_param(r, "CONTENT_TYPE"), boundary,
	    sizeof boundary) != 0) {
		req_error(r, 415, NULL, "the body must be multipart/form-data "
		    "with a boundary");
		return;
	}
	memset(&mp, 0, sizeof mp);
	crypto_hash_sha256_init(&mp.body);
	req_transport_get(r, &mp.tp, &mp.arg);
	mp.left = len;
	mp.cap = FILES_CHUNK + FILES_MP_HEAD;
	mp.dlen = (size_t)snprintf(mp.delim, sizeof mp.delim, "\r\n--%s",
	    boundary);
	if (mp.tp->read == NULL || (mp.buf = malloc(mp.cap)) == NULL ||
	    (files = json_array()) == NULL || (declared &&
	    (pend = calloc(FILES_MP_PARTS, sizeof *pend)) == NULL)) {
		req_error(r, 500, NULL, "cannot read the body");
		goto out;
	}
	/* The first delimiter has no CRLF before it: pretend it had. */
	memcpy(mp.buf, "\r\n", 2);
	mp.len = 2;
	if (files_mp_content(r, &mp, NULL) != 0)
		goto out;
	for (;;) {
		/* After a delimiter: "--" ends the body, CRLF a part. */
		while (mp.len < 2 && files_mp_fill(&mp) > 0)
			;
		if (mp.len >= 2 && memcmp(mp.buf, "--", 2) == 0)
			break;
		if (mp.len < 2 || memcmp(mp.buf, "\r\n", 2) != 0) {
			req_error(r, 400, NULL, "multipart: a bad delimiter");
			goto out;
		}
		files_mp_consume(&mp, 2);
		while ((at = files_mp_find(&mp, "\r\n\r\n", 4)) == -1 &&
		    mp.len < FILES_MP_HEAD && files_mp_fill(&mp) > 0)
			;
		if (at == -1) {
			req_error(r, 400, NULL, "multipart: a part's headers "
			    "are missing or longer than %d bytes",
			    FILES_MP_HEAD);
			goto out;
		}
		free(hdr);
		if ((hdr = strndup(mp.buf, (size_t)at)) == NULL) {
			req_error(r, 500, NULL, "out of memory");
			goto out;
		}
		files_mp_consume(&mp, (size_t)at + 4);
		if (!files_mp_filename(hdr, name, sizeof name)) {
			if (files_mp_content(r, &mp, NULL) != 0)
				goto out;
			continue;
		}
		if (++nparts > FILES_MP_PARTS) {
			req_error(r, 400, NULL, "multipart: more than %d files",
			    FILES_MP_PARTS);
			goto out;
		}
		snprintf(path, sizeof path, "uploads/%s", name);
		if ((why = util_file_path(path, strlen(path))) != NULL) {
			req_error(r, 400, NULL, "invalid file name: %s", why);
			goto out;
		}
		if (files_up_open(r, &up, path, -1, pending) != 0 ||
		    files_mp_content(r, &mp, &up) != 0)
			goto out;
		if (declared) {
			/* Held until the whole body is known. */
			pend[npend] = up;
			if (files_up_close(r, &pend[npend++]) != 0)
				goto out;
			pending += up.written;
			continue;
		}
		if ((f = files_up_commit(r, &up)) == NULL)
			goto out;
		json_object_del(f, "created");
		json_array_append_new(files, f);
	}
	if (declared) {
		/* The epilogue is the body's too: read it all. */
		do
			mp.len = 0;
		while (files_mp_fill(&mp) > 0);
		if (mp.left != 0) {
			req_error(r, 400, NULL, "the body is shorter than its "
			    "Content-Length");
			goto out;
		}
		if (!files_digest_ok(&mp.body, want)) {
			req_error(r, 400, NULL, FILES_E_DIGEST);
			goto out;
		}
		for (i = 0; i < npend; i++) {
			if ((f = files_up_commit(r, &pend[i])) == NULL)
				goto out;
			json_object_del(f, "created");
			json_array_append_new(files, f);
		}
	}
	if (json_array_size(files) == 0) {
		req_error(r, 400, NULL, "multipart: no part with a filename");
		goto out;
	}
	req_send_json(r, 201, json_pack("{s:b, s:O}", "success", 1, "files",
	    files));
out:
	if (pend != NULL) {
		files_mp_abort(r, pend, npend);
		free(pend);
	}
	json_decref(files);
	free(hdr);
	free(mp.buf);
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
		    poolc_file_sha256(appconf->poold_socket,
		    req_key(r)->tenant, path, json_integer_value(
		    json_object_get(v, "size")), &budget) : json_null());
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
