/*
 * Idempotency keys on the chat routes (ROUTE_IDEMPOTENT): a request with
 * "Idempotency-Key: <1 to 255 printable ASCII characters>" claims that
 * key for its API key (table idempotency_keys, shared by every ccgate-fcgi
 * process; keys of other API keys never meet).  Its answer is captured
 * where every answer goes out, the request's transport (a tee in front of
 * the front end's: whole answers and streams alike), and kept for
 * idempotency_window_s.  A retry with the same key:
 *
 *	same method, path and body, answer kept	the answer again (status,
 *						content type, X-Ccgate-
 *						headers, the body or the
 *						stream's events) with
 *						Idempotent-Replayed: true;
 *						nothing runs, no quota
 *	another method, path or body		409
 *	the first still running			409, Retry-After: 1
 *	the first's answer was not kept		409 (larger than
 *						idempotency_max_answer, or
 *						the API key's kept answers
 *						at idempotency_key_bytes)
 *
 * An answer of 5xx, 408, 409, 425, 429 or 499 is not kept (the key is let
 * go, so a retry runs).  A running claim holds a lease (idempotency_lease_s,
 * default twice job_timeout_ms + 60 s): past it, its process is taken for
 * dead and a retry runs; the old request, if it was alive after all, then
 * neither keeps nor deletes what is now the retry's (request_id).  An
 * answer is deleted with its conversation.  The check comes after the key (and its signature)
 * and before the quotas.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "http.h"
#include "log.h"

#define IDEM_KEY_MAX	255
#define IDEM_HEADERS	1024

struct idem {
	struct request			*r;
	struct req_transport		 tee;
	const struct req_transport	*tp;	/* the front end's */
	void				*arg;
	char				 key_id[KEY_ID_LEN + 1];
	char				 ikey[IDEM_KEY_MAX + 1];
	int				 status;
	char				 ctype[128];
	char				 headers[IDEM_HEADERS];
	char				*buf;
	size_t				 len, cap;
	int				 too_large;
	int				 answered;
	int				 broken;	/* not kept */
};

/* Return 1 if s is an Idempotency-Key: 1 to 255 of 0x20 to 0x7e. */
static int
idem_key_ok(const char *s)
{
	size_t	n;

	for (n = 0; s[n] != '\0'; n++) {
		if (n == IDEM_KEY_MAX || (unsigned char)s[n] < 0x20 ||
		    (unsigned char)s[n] > 0x7e)
			return (0);
	}
	return (n > 0);
}

/* Append len bytes of s to the capture, bounded by idem_max_answer. */
static void
idem_append(struct idem *im, const char *s, size_t len)
{
	char	*nb;
	size_t	 ncap;

	if (im->too_large)
		return;
	if (len > (size_t)appconf->idem_max_answer - im->len) {
		im->too_large = 1;
		free(im->buf);
		im->buf = NULL;
		im->len = im->cap = 0;
		return;
	}
	if (im->len + len + 1 > im->cap) {
		ncap = im->cap ? im->cap : 4096;
		while (ncap < im->len + len + 1)
			ncap *= 2;
		if ((nb = realloc(im->buf, ncap)) == NULL) {
			im->broken = 1;
			return;
		}
		im->buf = nb;
		im->cap = ncap;
	}
	memcpy(im->buf + im->len, s, len);
	im->len += len;
	im->buf[im->len] = '\0';
}

/* Keep what a reply carries: status, content type, X-Ccgate- headers. */
static void
idem_reply(struct idem *im, const struct req_reply *rp)
{
	const char	*p, *end;
	size_t		 o = 0, n;

	im->answered = 1;
	im->status = rp->status;
	snprintf(im->ctype, sizeof im->ctype, "%s", rp->ctype ? rp->ctype : "");
	im->headers[0] = '\0';
	for (p = rp->headers; p != NULL && *p != '\0'; p = end) {
		end = strstr(p, "\r\n");
		end = end != NULL ? end + 2 : p + strlen(p);
		n = (size_t)(end - p);
		if (strncasecmp(p, "X-Ccgate-", 9) != 0 ||
		    n >= sizeof im->headers - o)
			continue;
		memcpy(im->headers + o, p, n);
		o += n;
		im->headers[o] = '\0';
	}
}

static ssize_t
idem_read(void *arg, char *buf, size_t len)
{
	struct idem	*im = arg;

	return (im->tp->read != NULL ? im->tp->read(im->arg, buf, len) : 0);
}

static void
idem_json(void *arg, const struct req_reply *rp, json_t *body)
{
	struct idem	*im = arg;
	char		*s;

	idem_reply(im, rp);
	if (body != NULL) {
		if ((s = req_json_dumps(body)) == NULL)
			im->broken = 1;
		else {
			idem_append(im, s, strlen(s));
			free(s);
		}
	} else if (rp->ctype != NULL)
		im->broken = 1;
	im->tp->json(im->arg, rp, body);
}

static void
idem_text(void *arg, const struct req_reply *rp, const char *text)
{
	struct idem	*im = arg;

	idem_reply(im, rp);
	idem_append(im, text, strlen(text));
	im->tp->text(im->arg, rp, text);
}

static int
idem_stream(void *arg, const struct req_reply *rp, int flush)
{
	struct idem	*im = arg;

	idem_reply(im, rp);
	return (im->tp->stream(im->arg, rp, flush));
}

/* A stream's event, kept as it goes out; heartbeats are not kept. */
static int
idem_event(void *arg, const char *name, const char *data, int flush)
{
	struct idem	*im = arg;

	if (data[0] != ':') {
		if (name != NULL) {
			idem_append(im, "event: ", 7);
			idem_append(im, name, strlen(name));
			idem_append(im, "\n", 1);
		}
		idem_append(im, "data: ", 6);
		idem_append(im, data, strlen(data));
		idem_append(im, "\n\n", 2);
	}
	return (im->tp->event(im->arg, name, data, flush));
}

static int
idem_fd(void *arg)
{
	struct idem	*im = arg;

	return (im->tp->fd(im->arg));
}

/* Return 1 if an answer of status is kept for retries. */
static int
idem_keeps(int status)
{
	return (status >= 200 && status < 500 && status != 408 &&
	    status != 409 && status != 425 && status != 429 && status != 499);
}

/*
 * The conversation the captured answer belongs to (its
 * X-Ccgate-Conversation-Id), or "": the answer is deleted with it.
 */
static void
idem_conversation(const struct idem *im, char *out, size_t len)
{
	const char	*h = strstr(im->headers, "X-Ccgate-Conversation-Id: ");
	size_t		 n;

	out[0] = '\0';
	if (h == NULL)
		return;
	h += strlen("X-Ccgate-Conversation-Id: ");
	n = strcspn(h, "\r\n");
	if (n == UUID_LEN && n < len) {
		memcpy(out, h, n);
		out[n] = '\0';
		if (!util_valid_uuid(out))
			out[0] = '\0';
	}
}

/*
 * Return 1 if the API key's kept answers leave room for len more bytes
 * within idempotency_key_bytes (summed from an index, bodies unread), 0 if
 * not, -1 if the database did not answer.  Concurrent answers may each
 * pass: the bound is passed by at most what they keep.
 */
static int
idem_room(struct db *db, const char *key_id, size_t len)
{
	struct db_res	*res = NULL;
	long long	 kept;
	int		 rc;

	if (db_run(db, &res, NULL, "SELECT IFNULL(SUM(body_bytes), 0) FROM "
	    "idempotency_keys WHERE key_id = ? AND expires_at > "
	    "UTC_TIMESTAMP()", "s", key_id) != 0)
		return (-1);
	kept = res->nrows == 1 && db_cell(res, 0, 0) != NULL ?
	    strtoll(db_cell(res, 0, 0), NULL, 10) : 0;
	rc = kept >= 0 && (unsigned long long)kept + len <=
	    (unsigned long long)appconf->idem_key_bytes;
	db_res_free(res);
	return (rc);
}

/* Keep the answer, or let the key go; then the front end finishes. */
static void
idem_finish(void *arg)
{
	struct idem	*im = arg;
	struct db	*db = db_thread();
	char		 conv[UUID_LEN + 1];
	uint64_t	 kept = 1;
	int		 status = req_status(im->r), rc, room = 1;

	/*
	 * Only while the claim is still this request's: past its lease a
	 * retry may have taken the key over, and its row is not ours.
	 */
	idem_conversation(im, conv, sizeof conv);
	if (im->answered && !im->broken && idem_keeps(status) &&
	    !im->too_large && (room = idem_room(db, im->key_id, im->len)) == 0)
		log_info("%s: the answers key %s keeps are at "
		    "idempotency_key_bytes: this one is not kept", req_id(im->r),
		    im->key_id);
	if (room < 0)
		rc = -1;
	else if (!im->answered || im->broken || !idem_keeps(status))
		rc = db_run(db, NULL, NULL, "DELETE FROM idempotency_keys "
		    "WHERE key_id = ? AND idem_key = ? AND state = 'running' "
		    "AND request_id = ?", "sss", im->key_id, im->ikey,
		    req_id(im->r));
	else if (im->too_large || room == 0)
		rc = db_run(db, NULL, &kept, "UPDATE idempotency_keys SET "
		    "state = 'done', status = ?, content_type = NULL, "
		    "headers = NULL, body = NULL, body_bytes = 0, "
		    "conversation_id = ? WHERE "
		    "key_id = ? AND idem_key = ? AND request_id = ? AND NOT "
		    "EXISTS (SELECT 1 FROM conversations WHERE id = ? AND "
		    "deleted_at IS NOT NULL)", "isssss", (long long)status,
		    conv[0] != '\0' ? conv : NULL, im->key_id, im->ikey,
		    req_id(im->r), conv);
	else
		rc = db_run(db, NULL, &kept, "UPDATE idempotency_keys SET "
		    "state = 'done', status = ?, content_type = ?, "
		    "headers = ?, body = ?, body_bytes = ?, conversation_id = ? "
		    "WHERE key_id = ? AND idem_key = ? AND request_id = ? AND "
		    "NOT EXISTS (SELECT 1 FROM conversations WHERE id = ? AND "
		    "deleted_at IS NOT NULL)", "issbisssss", (long long)status,
		    im->ctype, im->headers, im->buf != NULL ? im->buf : "",
		    im->len, (long long)im->len,
		    conv[0] != '\0' ? conv : NULL, im->key_id, im->ikey,
		    req_id(im->r), conv);
	/* Not kept (its conversation deleted meanwhile): let the key go. */
	if (rc == 0 && kept == 0)
		rc = db_run(db, NULL, NULL, "DELETE FROM idempotency_keys "
		    "WHERE key_id = ? AND idem_key = ? AND state = 'running' "
		    "AND request_id = ?", "sss", im->key_id, im->ikey,
		    req_id(im->r));
	if (rc != 0)
		log_warnx("%s: cannot record Idempotency-Key of key %s: a "
		    "retry runs again after the lease", req_id(im->r),
		    im->key_id);
	/* The front end's transport again, then this tee is gone. */
	req_transport_set(im->r, im->tp, im->arg);
	if (im->tp->finish != NULL)
		im->tp->finish(im->arg);
	free(im->buf);
	free(im);
}

/* Replay a kept stream: its events, one by one. */
static void
idem_replay_stream(struct request *r, char *body)
{
	char	*ev, *next, *line, *lnext, *name, *data;

	if (req_sse_start(r) != 0)
		return;
	for (ev = body; ev != NULL && *ev != '\0'; ev = next) {
		if ((next = strstr(ev, "\n\n")) != NULL) {
			*next = '\0';
			next += 2;
		}
		name = data = NULL;
		for (line = ev; line != NULL; line = lnext) {
			if ((lnext = strchr(line, '\n')) != NULL)
				*lnext++ = '\0';
			if (strncmp(line, "event: ", 7) == 0)
				name = line + 7;
			else if (strncmp(line, "data: ", 6) == 0)
				data = line + 6;
		}
		if (data != NULL && req_sse_named(r, name, data) != 0)
			return;
	}
}

/* Send a kept answer again. */
static void
idem_replay(struct request *r, const struct db_res *res)
{
	const char	*ctype = db_cell(res, 0, 5), *hdrs = db_cell(res, 0, 6);
	const char	*p, *colon, *end;
	char		 name[128], value[IDEM_HEADERS];
	char		*body;
	size_t		 blen = res->lens[7];
	int		 status;
	json_t		*j;

	status = (int)strtol(db_cell(res, 0, 4), NULL, 10);
	for (p = hdrs; p != NULL && *p != '\0'; p = end) {
		end = strstr(p, "\r\n");
		end = end != NULL ? end + 2 : p + strlen(p);
		if ((colon = memchr(p, ':', (size_t)(end - p))) == NULL ||
		    (size_t)(colon - p) >= sizeof name)
			continue;
		snprintf(name, sizeof name, "%.*s", (int)(colon - p), p);
		for (colon++; *colon == ' '; colon++)
			;
		snprintf(value, sizeof value, "%.*s", (int)(end - colon),
		    colon);
		value[strcspn(value, "\r\n")] = '\0';
		req_add_header(r, name, value);
	}
	req_add_header(r, "Idempotent-Replayed", "true");
	if ((body = malloc(blen + 1)) == NULL) {
		req_error(r, 500, NULL, "out of memory");
		return;
	}
	memcpy(body, db_cell(res, 0, 7), blen);
	body[blen] = '\0';
	if (ctype == NULL || *ctype == '\0')
		req_send_empty(r, status);
	else if (strcmp(ctype, "text/event-stream") == 0)
		idem_replay_stream(r, body);
	else if (strcmp(ctype, "application/json") == 0) {
		/* Out the way it went: the same text, as jansson keeps order. */
		if ((j = json_loads(body, JSON_DECODE_ANY, NULL)) == NULL)
			req_error(r, 500, NULL, "cannot replay the answer");
		else
			req_send_json(r, status, j);
	} else
		req_send_text(r, status, ctype, body);
	free(body);
}

/* Refuse with 409 in the route's dialect. */
static int
idem_conflict(struct request *r, const char *msg)
{
	req_error(r, 409, req_route(r)->dialect == DIALECT_ANTHROPIC ?
	    "invalid_request_error" : "idempotency_error", "%s", msg);
	return (-1);
}

/* Install the tee that captures r's answer for the claimed key. */
static int
idem_own(struct request *r, const char *key_id, const char *ikey)
{
	struct idem		*im;
	const struct req_transport *tp;
	void			*arg;

	if ((im = calloc(1, sizeof *im)) == NULL) {
		(void)db_run(db_thread(), NULL, NULL, "DELETE FROM "
		    "idempotency_keys WHERE key_id = ? AND idem_key = ? AND "
		    "request_id = ?", "sss", key_id, ikey, req_id(r));
		req_error(r, 500, NULL, "out of memory");
		return (-1);
	}
	im->r = r;
	snprintf(im->key_id, sizeof im->key_id, "%s", key_id);
	snprintf(im->ikey, sizeof im->ikey, "%s", ikey);
	req_transport_get(r, &tp, &arg);
	im->tp = tp;
	im->arg = arg;
	im->tee.read = idem_read;
	im->tee.json = idem_json;
	im->tee.text = tp->text != NULL ? idem_text : NULL;
	im->tee.stream = tp->stream != NULL ? idem_stream : NULL;
	im->tee.event = tp->event != NULL ? idem_event : NULL;
	im->tee.fd = idem_fd;
	im->tee.finish = idem_finish;
	/* req_finish always calls finish: idem_finish frees im. */
	req_transport_set(r, &im->tee, im);
	return (0);
}

/*
 * Check a request's Idempotency-Key (on an idempotent route), before the
 * quotas: 0 to run it (claimed, its answer to be kept, or without a
 * key), -1 when it was answered here (replayed, refused).
 */
int
idem_begin(struct request *r)
{
	const struct apikey	*k = req_key(r);
	const char		*ikey = req_header(r, "HTTP_IDEMPOTENCY_KEY");
	const char		*uri, *method, *body, *state;
	crypto_hash_sha256_state st;
	struct db_res		*res = NULL;
	struct db		*db = db_thread();
	uint8_t			 fp[32];
	uint64_t		 n;
	long long		 lease, window = appconf->idem_window_s;
	size_t			 len;
	int			 tries, rc = -1;

	if (ikey == NULL || k == NULL)
		return (0);
	if (!idem_key_ok(ikey)) {
		req_error(r, 400, NULL, "Idempotency-Key: 1 to %d printable "
		    "ASCII characters", IDEM_KEY_MAX);
		return (-1);
	}
	/* A turn may wait in the pool's queue, then run its whole timeout. */
	lease = appconf->idem_lease_s > 0 ? appconf->idem_lease_s :
	    2 * (appconf->job_timeout_ms / 1000) + 60;
	if ((uri = req_param(r, "REQUEST_URI")) == NULL)
		uri = "";
	if ((method = req_param(r, "REQUEST_METHOD")) == NULL)
		method = "";
	body = req_body(r, &len);
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, (const unsigned char *)method,
	    strlen(method));
	crypto_hash_sha256_update(&st, (const unsigned char *)"\n", 1);
	crypto_hash_sha256_update(&st, (const unsigned char *)uri, strlen(uri));
	crypto_hash_sha256_update(&st, (const unsigned char *)"\n", 1);
	crypto_hash_sha256_update(&st, (const unsigned char *)body, len);
	crypto_hash_sha256_final(&st, fp);
	for (tries = 0; tries < 3; tries++) {
		if (db_run(db, NULL, &n, "INSERT IGNORE INTO idempotency_keys "
		    "(key_id, idem_key, request_sha256, state, request_id, "
		    "lease_until, created_at, expires_at) VALUES (?, ?, ?, "
		    "'running', ?, UTC_TIMESTAMP() + INTERVAL ? SECOND, "
		    "UTC_TIMESTAMP(), UTC_TIMESTAMP() + INTERVAL ? SECOND)",
		    "ssbsii", k->id, ikey, fp, sizeof fp, req_id(r), lease,
		    window) != 0)
			goto dbdown;
		if (n == 1)
			return (idem_own(r, k->id, ikey));
		if (db_run(db, &res, NULL, "SELECT request_sha256, state, "
		    "lease_until <= UTC_TIMESTAMP(), expires_at <= "
		    "UTC_TIMESTAMP(), status, content_type, headers, body "
		    "FROM idempotency_keys WHERE key_id = ? AND idem_key = ?",
		    "ss", k->id, ikey) != 0)
			goto dbdown;
		if (res->nrows != 1) {
			db_res_free(res);	/* swept meanwhile */
			res = NULL;
			continue;
		}
		state = db_cell(res, 0, 1);
		if (strcmp(state, "done") == 0 &&
		    strcmp(db_cell(res, 0, 3), "1") == 0) {
			/* Past the window: a new request. */
		} else if (res->lens[0] != 32 ||
		    sodium_memcmp(db_cell(res, 0, 0), fp, 32) != 0) {
			rc = idem_conflict(r, "this Idempotency-Key was used "
			    "with another request (method, path or body); use "
			    "a new key for a new request");
			goto out;
		} else if (strcmp(state, "running") == 0 &&
		    strcmp(db_cell(res, 0, 2), "1") != 0) {
			req_add_header(r, "Retry-After", "1");
			rc = idem_conflict(r, "a request with this "
			    "Idempotency-Key is still running: retry later");
			goto out;
		} else if (strcmp(state, "done") == 0) {
			if (db_cell(res, 0, 7) == NULL)
				rc = idem_conflict(r, "the answer to this "
				    "Idempotency-Key was not kept (too large for "
				    "idempotency_max_answer, or this API key's "
				    "kept answers were at idempotency_key_bytes)"
				    ": use a new key");
			else
				idem_replay(r, res);
			goto out;
		}
		/* Take over an expired answer, or a dead process's claim. */
		db_res_free(res);
		res = NULL;
		if (db_run(db, NULL, &n, "UPDATE idempotency_keys SET "
		    "request_sha256 = ?, state = 'running', request_id = ?, "
		    "lease_until = UTC_TIMESTAMP() + INTERVAL ? SECOND, "
		    "status = NULL, content_type = NULL, headers = NULL, "
		    "body = NULL, body_bytes = 0, conversation_id = NULL, "
		    "created_at = UTC_TIMESTAMP(), expires_at = UTC_TIMESTAMP() "
		    "+ INTERVAL ? SECOND WHERE key_id = ? AND idem_key = ? AND "
		    "((state = 'running' AND lease_until <= UTC_TIMESTAMP()) OR "
		    "(state = 'done' AND expires_at <= UTC_TIMESTAMP()))",
		    "bsiiss", fp, sizeof fp, req_id(r), lease, window, k->id,
		    ikey) != 0)
			goto dbdown;
		if (n == 1)
			return (idem_own(r, k->id, ikey));
	}
	req_add_header(r, "Retry-After", "1");
	rc = idem_conflict(r, "a request with this Idempotency-Key is still "
	    "running: retry later");
	goto out;
dbdown:
	req_db_down(r);
out:
	db_res_free(res);
	return (rc);
}
