/*
 * One request.  The request context owns everything the request allocates
 * (the body, the parsed JSON, extra headers) and frees it in req_free;
 * handlers only borrow.  The usage record is written after the response is
 * finished, so a client never waits on that insert.
 *
 * A request knows no transport: a front end hands it one (struct
 * req_transport) with its parameters, CGI-style "NAME=value" strings.
 * FastCGI requests come through req_serve (front/fcgi.c), WebSocket turns
 * through req_frame_run (front/ws.c), batch items through req_sub (their
 * transport, below, keeps the answer for the batch).  The route table
 * (routes.c) says who may call a route; req_dispatch checks that, once,
 * before the handler runs.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "http.h"
#include "log.h"

#define REQ_MAX_HEADERS	2048
#define REQ_MAX_USED	48
/* 12 significant digits: costs print as 0.012453, not 0.012453000000000001. */
#define REQ_JSON_FLAGS	(JSON_COMPACT | JSON_REAL_PRECISION(12))

struct request {
	const struct req_transport *tp;
	void		*tp_arg;
	char		**envp;		/* the parameters */
	char		 id[64];	/* ccgate's, never the client's */
	/* The client's X-Request-Id, if usable, else "". */
	char		 client_id[REQ_CLIENT_ID_MAX + 1];
	char		 method[16];
	char		*path;
	struct route	 route;
	struct apikey	 key;
	int		 have_key;
	struct actor	 actor;		/* with ACCESS_ADMIN */
	char		 admin[100];	/* the administrator, once known */
	char		 wskey[KEY_LEN + 1]; /* a key from a subprotocol */
	int		 status;
	int		 sent;
	int		 sse;
	int		 held;		/* SSE writes wait for the next flush */
	char		 headers[REQ_MAX_HEADERS];
	size_t		 headers_len;
	char		*body;
	size_t		 body_len;
	json_t		*json;
	/* The members of the body a handler read (req_field). */
	const char	*used[REQ_MAX_USED];
	int		 nused;
	uint64_t	 started_us;

	/* A batch item: answers are kept here, not sent. */
	struct request	*parent;
	json_t		*captured;

	const struct route_table *table;
	int		 frame;		/* a WebSocket turn: no signature */

	/* The usage record. */
	char		*u_model;
	char		*u_error;
	long long	 u_in;
	long long	 u_out;
	long long	 u_cache_read;
	long long	 u_cache_creation;
	double		 u_cost;
	long long	 u_ttft;

	/* Tokens the turn holds of the key's day (quota.c), 0: none. */
	long long	 reserved;
	size_t		 item_len;	/* a batch item's or a frame's JSON */
};

/* The value of name in envp ("NAME=value" strings), or NULL. */
static const char *
req_env(char **envp, const char *name)
{
	size_t	n = strlen(name);
	char	**e;

	for (e = envp; e != NULL && *e != NULL; e++) {
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			return (*e + n + 1);
	}
	return (NULL);
}

/* A parameter ("REMOTE_ADDR"), or NULL. */
const char *
req_param(struct request *r, const char *name)
{
	return (req_env(r->envp, name));
}

/* A request header by its CGI name ("HTTP_X_API_KEY"), or NULL. */
const char *
req_header(struct request *r, const char *cgi_name)
{
	return (req_param(r, cgi_name));
}

/* The request id (nginx's $request_id, else generated). */
const char *
req_id(struct request *r)
{
	return (r->id);
}

/* When the request came (util_now_us). */
uint64_t
req_started_us(const struct request *r)
{
	return (r->started_us);
}

/*
 * The first value of query parameter name, percent-decoded into buf, or
 * NULL if absent, too long or holding a NUL.
 */
const char *
req_query(struct request *r, const char *name, char *buf, size_t len)
{
	return (route_query(req_param(r, "QUERY_STRING"), name, buf, len));
}

/* The matched route. */
struct route *
req_route(struct request *r)
{
	return (&r->route);
}

/* The authenticated key (with ACCESS_KEY and ACCESS_KEY_ONLY). */
struct apikey *
req_key(struct request *r)
{
	return (r->have_key ? &r->key : NULL);
}

/* The administrator (with ACCESS_ADMIN). */
struct actor *
req_actor(struct request *r)
{
	return (&r->actor);
}

/* Return 1 once the status line has gone out. */
int
req_sent(struct request *r)
{
	return (r->sent);
}

/* Return 1 if s is safe in a header value: printable, no CR or LF. */
static int
req_header_safe(const char *s)
{
	for (; *s != '\0'; s++) {
		if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			return (0);
	}
	return (1);
}

/* Add a response header (before anything is sent). */
void
req_add_header(struct request *r, const char *name, const char *value)
{
	int	n;

	if (r->sent || !req_header_safe(name) || !req_header_safe(value))
		return;
	n = snprintf(r->headers + r->headers_len,
	    sizeof r->headers - r->headers_len, "%s: %s\r\n", name, value);
	if (n > 0 && (size_t)n < sizeof r->headers - r->headers_len)
		r->headers_len += (size_t)n;
	else
		r->headers[r->headers_len] = '\0';
}

/* JSON text as answers and events carry it, or NULL. */
char *
req_json_dumps(const json_t *j)
{
	return (json_dumps(j, REQ_JSON_FLAGS));
}

/* What the transport sends besides the body; marks the answer sent. */
static void
req_reply(struct request *r, int status, const char *ctype,
    struct req_reply *rp)
{
	r->status = status;
	r->sent = 1;
	rp->status = status;
	rp->ctype = ctype;
	rp->id = r->id;
	rp->headers = r->headers;
}

/* Send a JSON response; takes the reference to body. */
void
req_send_json(struct request *r, int status, json_t *body)
{
	struct req_reply	rp;

	if (r->sent) {
		json_decref(body);
		return;
	}
	req_reply(r, status, "application/json", &rp);
	r->tp->json(r->tp_arg, &rp, body);
}

/* Send a text response of content type ctype (where text can go). */
void
req_send_text(struct request *r, int status, const char *ctype,
    const char *text)
{
	struct req_reply	rp;

	if (r->sent || r->tp->text == NULL)
		return;
	req_reply(r, status, ctype, &rp);
	r->tp->text(r->tp_arg, &rp, text);
}

/* Send a response without a body (204). */
void
req_send_empty(struct request *r, int status)
{
	struct req_reply	rp;

	if (r->sent)
		return;
	req_reply(r, status, NULL, &rp);
	r->tp->json(r->tp_arg, &rp, NULL);
}

/*
 * Send an error in the route's dialect.  type NULL derives the type from
 * the status.  The message is also the usage record's error.
 */
void
req_error(struct request *r, int status, const char *type, const char *fmt,
    ...)
{
	va_list	 ap;
	char	 msg[1024];

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (type == NULL)
		type = dialect_error_type(r->route.dialect, status);
	free(r->u_error);
	r->u_error = strdup(msg);
	if (r->sent) {
		r->status = status;
		return;
	}
	if (status == 405 && r->route.allow[0] != '\0')
		req_add_header(r, "Allow", r->route.allow);
	req_send_json(r, status, dialect_error(r->route.dialect, type, msg));
}

/* Answer that MariaDB does not answer (or no connection came free). */
void
req_db_down(struct request *r)
{
	req_add_header(r, "Retry-After", "5");
	req_error(r, 503, NULL, "the database is unavailable; retry shortly");
}

/*
 * Hold the stream's writes (1) or let them go (0).  What is written while
 * held goes out with the next event written after: a stream's headers,
 * its opening events and its first delta reach nginx in one write, so
 * nginx is woken once for them, not once for each.
 */
void
req_sse_hold(struct request *r, int hold)
{
	r->held = hold;
}

/* The request's path, without its query string (as the client sent it). */
const char *
req_path(struct request *r)
{
	return (r->path != NULL ? r->path : "/");
}

/*
 * Send raw bytes of an answer of type ctype: the first call (ctype set)
 * sends status and headers too.  -1 if the transport cannot or the client
 * is gone.
 */
int
req_raw(struct request *r, int status, const char *ctype, const char *buf,
    size_t len)
{
	struct req_reply	rp;

	if (r->tp->raw == NULL)
		return (-1);
	if (ctype != NULL) {
		if (r->sent)
			return (-1);
		req_reply(r, status, ctype, &rp);
		return (r->tp->raw(r->tp_arg, &rp, buf, len));
	}
	return (r->tp->raw(r->tp_arg, NULL, buf, len));
}

/* Start a Server-Sent Events response. */
int
req_sse_start(struct request *r)
{
	struct req_reply	rp;

	if (r->sent)
		return (r->sse ? 0 : -1);
	if (r->tp->stream == NULL)
		return (-1);
	req_reply(r, 200, "text/event-stream", &rp);
	r->sse = 1;
	return (r->tp->stream(r->tp_arg, &rp, !r->held));
}

/* Send one "data:" event (or a comment line if data starts with ':'). */
int
req_sse_data(struct request *r, const char *data)
{
	if (!r->sse)
		return (-1);
	return (r->tp->event(r->tp_arg, NULL, data, !r->held));
}

/* Send a JSON object as one event (borrowed). */
int
req_sse_json(struct request *r, json_t *obj)
{
	char	*s;
	int	 rc;

	if ((s = req_json_dumps(obj)) == NULL)
		return (-1);
	rc = req_sse_data(r, s);
	free(s);
	return (rc);
}

/* Send a named event ("event: name") with a JSON object (borrowed). */
int
req_sse_event(struct request *r, const char *name, json_t *obj)
{
	char	*s;
	int	 rc;

	if (!r->sse || (s = req_json_dumps(obj)) == NULL)
		return (-1);
	rc = r->tp->event(r->tp_arg, name, s, !r->held);
	free(s);
	return (rc);
}

/* The descriptor to watch for the client leaving. */
int
req_fd(struct request *r)
{
	return (r->tp->fd(r->tp_arg));
}

/* Send one event, named (name not NULL) or not, of data as it is. */
int
req_sse_named(struct request *r, const char *name, const char *data)
{
	if (!r->sse)
		return (-1);
	return (r->tp->event(r->tp_arg, name, data, !r->held));
}

/* The body as read (len bytes; "" when there is none). */
const char *
req_body(struct request *r, size_t *len)
{
	*len = r->body != NULL ? r->body_len : 0;
	return (r->body != NULL ? r->body : "");
}

/* The answer's status (0 before one is sent). */
int
req_status(struct request *r)
{
	return (r->status);
}

/* The request's transport and its argument. */
void
req_transport_get(struct request *r, const struct req_transport **tp,
    void **arg)
{
	*tp = r->tp;
	*arg = r->tp_arg;
}

/* Replace the request's transport (a tee in front of it: idem.c). */
void
req_transport_set(struct request *r, const struct req_transport *tp,
    void *arg)
{
	r->tp = tp;
	r->tp_arg = arg;
}

/* A batch item's transport: its answer is kept for the batch. */
static void
req_sub_json(void *arg, const struct req_reply *rp, json_t *body)
{
	struct request	*r = arg;

	(void)rp;
	json_decref(r->captured);
	r->captured = body;
}

static int
req_sub_fd(void *arg)
{
	struct request	*r = arg;

	return (req_fd(r->parent));
}

static const struct req_transport req_sub_transport = {
	NULL, req_sub_json, NULL, NULL, NULL, req_sub_fd, NULL, NULL
};

/*
 * A batch item of parent: it shares the parent's parameters, key and
 * client connection, but its answer is captured (req_sub_take) instead of
 * sent.  Its id is the parent's with "-n" appended.
 */
struct request *
req_sub(struct request *parent, int n, size_t size)
{
	struct request	*r;

	if ((r = calloc(1, sizeof *r)) == NULL)
		return (NULL);
	r->tp = &req_sub_transport;
	r->tp_arg = r;
	r->envp = parent->envp;
	r->parent = parent;
	snprintf(r->id, sizeof r->id, "%.50s-%d", parent->id, n);
	memcpy(r->method, parent->method, sizeof r->method);
	r->route = parent->route;
	r->key = parent->key;
	r->have_key = parent->have_key;
	r->item_len = size;	/* what its turn reserves for its prompt */
	r->table = parent->table;
	r->started_us = util_now_us();
	return (r);
}

/* Take a batch item's answer (with "status" added) and free the item. */
json_t *
req_sub_take(struct request *r, long long *tokens_in, long long *tokens_out,
    double *cost)
{
	json_t		*out = r->captured;
	const char	*ra;

	if (r->reserved > 0)
		req_settle(r, 0);
	if (out == NULL)
		out = dialect_error(DIALECT_NATIVE, "api_error", "no answer");
	if (out != NULL)
		json_object_set_new(out, "status", json_integer(r->status ?
		    r->status : 500));
	/* An item refused for now says when to retry, as HTTP would. */
	if (out != NULL && (ra = strstr(r->headers, "Retry-After: ")) != NULL)
		json_object_set_new(out, "retry_after",
		    json_integer(strtol(ra + 13, NULL, 10)));
	*tokens_in += r->u_in;
	*tokens_out += r->u_out;
	*cost += r->u_cost;
	free(r->u_model);
	free(r->u_error);
	free(r);
	return (out);
}

/*
 * Return 0 if JSON text nests at most max deep.  Checked before parsing,
 * so a deeply nested body costs nothing to refuse.
 */
int
req_json_depth_ok(const char *s, size_t len, long max)
{
	long	depth = 0;
	int	instr = 0, esc = 0;
	size_t	i;

	for (i = 0; i < len; i++) {
		char	c = s[i];

		if (instr) {
			if (esc)
				esc = 0;
			else if (c == '\\')
				esc = 1;
			else if (c == '"')
				instr = 0;
			continue;
		}
		if (c == '"')
			instr = 1;
		else if (c == '{' || c == '[') {
			if (++depth > max)
				return (-1);
		} else if (c == '}' || c == ']')
			depth--;
	}
	return (0);
}

/* Read the body, bounded by max_body. */
static int
req_read_body(struct request *r)
{
	const char	*cl = req_param(r, "CONTENT_LENGTH");
	char		*end;
	long long	 len;
	ssize_t		 n;

	if (cl == NULL || *cl == '\0')
		return (0);
	errno = 0;
	len = strtoll(cl, &end, 10);
	if (*end != '\0' || errno != 0 || len < 0) {
		req_error(r, 400, NULL, "invalid Content-Length");
		return (-1);
	}
	if (len > appconf->max_body) {
		req_error(r, 413, NULL, "the body exceeds %ld bytes",
		    appconf->max_body);
		return (-1);
	}
	if ((r->body = malloc((size_t)len + 1)) == NULL) {
		req_error(r, 500, NULL, "out of memory");
		return (-1);
	}
	while (r->tp->read != NULL && r->body_len < (size_t)len) {
		n = r->tp->read(r->tp_arg, r->body + r->body_len,
		    (size_t)len - r->body_len);
		if (n <= 0)
			break;
		r->body_len += (size_t)n;
	}
	r->body[r->body_len] = '\0';
	if (r->body_len != (size_t)len) {
		req_error(r, 400, NULL, "the body is shorter than its "
		    "Content-Length");
		return (-1);
	}
	return (0);
}

/*
 * Member name of obj (NULL if absent), noted as read when obj is the
 * request's body: what no handler reads, it did not apply (req_unread).
 */
json_t *
req_field(struct request *r, json_t *obj, const char *name)
{
	int	i;

	if (obj != NULL && obj == r->json) {
		for (i = 0; i < r->nused && strcmp(r->used[i], name) != 0; i++)
			;
		if (i == r->nused && r->nused < REQ_MAX_USED)
			r->used[r->nused++] = name;
	}
	return (json_object_get(obj, name));
}

/*
 * The members of the body no handler read (req_field), as a list for a
 * header ("a, b"), in buf; "" if none.  A name that a header could not
 * carry as it is shows as "?".
 */
const char *
req_unread(struct request *r, char *buf, size_t len)
{
	const char	*k, *name;
	json_t		*v;
	size_t		 o = 0;
	int		 i, n;

	buf[0] = '\0';
	json_object_foreach(r->json, k, v) {
		for (i = 0; i < r->nused && strcmp(r->used[i], k) != 0; i++)
			;
		if (i < r->nused)
			continue;
		name = *k != '\0' && k[strspn(k, "abcdefghijklmnopqrstuvwxyz"
		    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")] == '\0' ? k : "?";
		n = snprintf(buf + o, len - o, "%s%s", o > 0 ? ", " : "", name);
		if (n < 0 || (size_t)n >= len - o) {
			buf[o] = '\0';	/* the names that fit whole */
			break;
		}
		o += (size_t)n;
	}
	return (buf);
}

/*
 * Parse the body as a JSON object (borrowed by the caller).  An empty body
 * is an empty object unless required.  On error the answer is sent and
 * NULL returned.
 */
json_t *
req_json_body(struct request *r, int required)
{
	json_error_t	err;

	if (r->json != NULL)
		return (r->json);
	if (r->body_len == 0) {
		if (required) {
			req_error(r, 400, NULL, "a JSON body is required");
			return (NULL);
		}
		return (r->json = json_object());
	}
	if (req_json_depth_ok(r->body, r->body_len,
	    appconf->max_json_depth) != 0) {
		req_error(r, 400, NULL, "the JSON body nests deeper than %ld",
		    appconf->max_json_depth);
		return (NULL);
	}
	r->json = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES,
	    &err);
	if (r->json == NULL) {
		req_error(r, 400, NULL, "invalid JSON body: %s (at byte %d)",
		    err.text, err.position);
		return (NULL);
	}
	if (!json_is_object(r->json)) {
		req_error(r, 400, NULL, "the JSON body must be an object");
		return (NULL);
	}
	return (r->json);
}

/* A browser's WebSocket offers its key as a subprotocol (wsauth.c). */
#define WS_KEY_PROTOCOL	"ccgate.key."

/*
 * The key offered in a Sec-WebSocket-Protocol list (hdr, may be NULL),
 * copied into buf; NULL if none is offered.
 */
static const char *
req_ws_protocol_key(const char *hdr, char *buf, size_t len)
{
	const size_t	 plen = sizeof WS_KEY_PROTOCOL - 1;
	const char	*p, *end;
	size_t		 n;

	for (p = hdr; p != NULL && *p != '\0'; p = *end ? end + 1 : end) {
		while (*p == ' ' || *p == '\t')
			p++;
		end = p + strcspn(p, ",");
		n = (size_t)(end - p);
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n <= plen || strncasecmp(p, WS_KEY_PROTOCOL, plen) != 0)
			continue;
		if (n - plen >= len)
			return (NULL);
		memcpy(buf, p + plen, n - plen);
		buf[n - plen] = '\0';
		return (buf);
	}
	return (NULL);
}

/* Find the presented key: Authorization: Bearer, else x-api-key. */
static const char *
req_presented_key(struct request *r)
{
	const char	*a = req_header(r, "HTTP_AUTHORIZATION");

	if (a != NULL && strncasecmp(a, "Bearer ", 7) == 0) {
		a += 7;
		while (*a == ' ')
			a++;
		return (a);
	}
	if ((a = req_header(r, "HTTP_X_API_KEY")) != NULL)
		return (a);
	/* A browser's WebSocket can only offer it as a subprotocol. */
	if (r->route.def != NULL &&
	    (r->route.def->flags & ROUTE_KEY_PROTOCOL))
		return (req_ws_protocol_key(req_header(r,
		    "HTTP_SEC_WEBSOCKET_PROTOCOL"), r->wskey, sizeof r->wskey));
	return (NULL);
}

/* Check the request's key (no quota spent); on failure the answer is sent. */
static int
req_authenticate_key(struct request *r)
{
	enum auth_result	 ar;

	ar = auth_check(req_presented_key(r), &r->key);
	if (ar == AUTH_OK) {
		r->have_key = 1;
		/* A WebSocket's turns ride on its signed upgrade. */
		if (r->key.require_signature && !r->frame) {
			if (r->table->sign == NULL) {
				req_error(r, 401, NULL, "this key requires "
				    "signed requests");
				return (-1);
			}
			return (r->table->sign(r));
		}
		return (0);
	}
	if (ar == AUTH_DB_ERROR) {
		req_add_header(r, "Retry-After", "5");
		req_error(r, 503, NULL, "%s", auth_strerror(ar));
		return (-1);
	}
	if (ar != AUTH_MISSING && ar != AUTH_MALFORMED && ar != AUTH_UNKNOWN)
		r->have_key = 1;	/* known key: its usage row names it */
	if (r->route.dialect == DIALECT_NATIVE ||
	    r->route.dialect == DIALECT_OPENAI)
		req_add_header(r, "WWW-Authenticate", "Bearer");
	req_error(r, 401, NULL, "%s", auth_strerror(ar));
	return (-1);
}

/*
 * Answer what a quota check (quota_admit, quota_reserve) returned: 0 goes
 * on; 1 is refused, 429 with the seconds to wait (none if waiting cannot
 * help: retry 0); -1 is a 503 that says what the database did (db_why).
 */
static int
req_quota_answer(struct request *r, int rc, long retry, const char *why)
{
	char	ra[32];

	if (rc == 0)
		return (0);
	if (rc == 1) {
		metrics_quota_rejected();
		snprintf(ra, sizeof ra, "%ld", retry);
		if (retry > 0)
			req_add_header(r, "Retry-After", ra);
		req_error(r, 429, NULL, "%s", why);
	} else {
		req_add_header(r, "Retry-After", "5");
		req_error(r, 503, NULL, "the key store is unavailable: %s",
		    db_why(db_thread()));
	}
	return (-1);
}

/*
 * Admit one request of the authenticated key by its quotas (a batch item
 * is admitted as if sent alone); on refusal the answer is sent.
 */
int
req_admit(struct request *r)
{
	char	why[256];
	long	retry = 0;
	int	rc;

	rc = quota_admit(&r->key, &retry, why, sizeof why);
	return (req_quota_answer(r, rc, retry, why));
}

/*
 * Reserve what the turn may spend of the key's tokens_per_day before
 * anything is stored: *max_tokens (the turn's cap; without one,
 * quota_reserve_tokens, or what the day has left if less, which then
 * becomes the turn's cap) and its prompt's size (a token per four bytes
 * of the request).  The reservation is settled when the turn ends
 * (req_settle), or given back when the request ends without a turn.  On
 * refusal the answer is sent.
 */
int
req_reserve(struct request *r, long long *max_tokens)
{
	char		why[384];
	long		retry = 0;
	long long	prompt, out;
	int		rc, exact = *max_tokens > 0;

	if (r->reserved > 0 || r->key.tpd < 0)
		return (0);
	prompt = (long long)((r->item_len > 0 ? r->item_len : r->body_len) +
	    3) / 4;
	out = exact ? *max_tokens : appconf->quota_reserve_tokens;
	rc = quota_reserve(&r->key, r->id, &out, exact, prompt, &r->reserved,
	    &retry, why, sizeof why);
	if (rc != 0)
		r->reserved = 0;
	/* Holding less than it would have: the answer stops there. */
	else if (!exact && r->reserved > 0 &&
	    out < appconf->quota_reserve_tokens)
		*max_tokens = out;
	return (req_quota_answer(r, rc, retry, why));
}

/* What the request's turn holds of the key's day (0: nothing). */
long long
req_reserved(const struct request *r)
{
	return (r->reserved);
}

/* The turn ended having used tokens: they replace its reservation. */
void
req_settle(struct request *r, long long tokens)
{
	if (!r->have_key)
		return;
	quota_settle(&r->key, r->id, r->reserved > 0, tokens);
	r->reserved = 0;
}

/*
 * Authenticate the request's key and admit the request by the key's
 * quotas; on failure the answer is sent.
 */
static int
req_authenticate(struct request *r)
{
	if (req_authenticate_key(r) != 0)
		return (-1);
	/* A replayed answer spends no quota. */
	if (r->route.def != NULL && (r->route.def->flags & ROUTE_IDEMPOTENT) &&
	    r->table->idem != NULL && r->table->idem(r) != 0)
		return (-1);
	return (req_admit(r));
}

/* The client's address, for the audit log and login throttling. */
const char *
req_ip(struct request *r)
{
	const char	*ip = req_param(r, "REMOTE_ADDR");

	return (ip != NULL && *ip != '\0' ? ip : "unknown");
}

/*
 * Authenticate an administrator (Authorization: Bearer <admin token>)
 * into r->actor.  On failure the answer (401, or 403 for a client API
 * key: those are never admin) is sent and -1 returned.
 */
static int
req_authenticate_admin(struct request *r)
{
	const char	*a = req_header(r, "HTTP_AUTHORIZATION");
	struct actor	*who = &r->actor;
	struct op_error	 e;
	char		 id[KEY_ID_LEN + 1];

	memset(who, 0, sizeof *who);
	snprintf(who->ip, sizeof who->ip, "%s", req_ip(r));
	if (a != NULL && strncasecmp(a, "Bearer ", 7) == 0) {
		for (a += 7; *a == ' '; a++)
			;
	} else
		a = NULL;
	if ((a != NULL && auth_key_parse(a, id) == 0) ||
	    (a == NULL && req_header(r, "HTTP_X_API_KEY") != NULL)) {
		req_error(r, 403, NULL, "client API keys are never admin: log "
		    "in with POST /admin/login and send its token");
		return (-1);
	}
	if (a == NULL || *a == '\0') {
		req_add_header(r, "WWW-Authenticate", "Bearer");
		req_error(r, 401, NULL, "an admin token is required: log in "
		    "with POST /admin/login");
		return (-1);
	}
	if (admuser_check_token(db_thread(), a, who, &e) != 0) {
		if (e.status == 401)
			req_add_header(r, "WWW-Authenticate", "Bearer");
		req_op_fail(r, &e);
		return (-1);
	}
	req_set_admin(r, who->name);
	return (0);
}

/* Answer an op_error (with Retry-After on 503). */
void
req_op_fail(struct request *r, const struct op_error *e)
{
	if (e->status == 503)
		req_add_header(r, "Retry-After", "5");
	req_error(r, e->status ? e->status : 500, NULL, "%s", e->msg);
}

/* Record the administrator a request acts for (its usage row's tenant). */
void
req_set_admin(struct request *r, const char *name)
{
	snprintf(r->admin, sizeof r->admin, "%s", name);
}

/* Set the usage record's figures (the status comes from the answer). */
void
req_usage(struct request *r, const char *model, long long in, long long out,
    long long cache_read, long long cache_creation, double cost,
    long long ttft_ms, const char *error)
{
	free(r->u_model);
	r->u_model = model != NULL ? strdup(model) : NULL;
	r->u_in = in;
	r->u_out = out;
	r->u_cache_read = cache_read;
	r->u_cache_creation = cache_creation;
	r->u_cost = cost;
	r->u_ttft = ttft_ms;
	if (error != NULL) {
		free(r->u_error);
		r->u_error = strdup(error);
	}
}

/*
 * Hand the usage record to usage.c (after the response is finished); it
 * takes the record's strings.
 */
static void
req_write_usage(struct request *r, uint64_t duration_ms)
{
	struct usage_rec	u;
	struct timespec		ts;

	if (r->route.def != NULL && (r->route.def->flags & ROUTE_NO_USAGE))
		return;
	/* Admin reads (dashboards poll) are not usage; changes are. */
	if (strncmp(r->route.name, "/admin/", 7) == 0 &&
	    strcmp(r->method, "GET") == 0)
		return;
	memset(&u, 0, sizeof u);
	snprintf(u.request_id, sizeof u.request_id, "%s", r->id);
	/* Lost if out of memory: the row is still worth writing. */
	u.client_request_id = r->client_id[0] ? strdup(r->client_id) : NULL;
	if (r->have_key) {
		snprintf(u.key_id, sizeof u.key_id, "%s", r->key.id);
		snprintf(u.tenant, sizeof u.tenant, "%s", r->key.tenant);
	} else
		snprintf(u.tenant, sizeof u.tenant, "%.*s", TENANT_MAX,
		    r->admin);
	snprintf(u.route, sizeof u.route, "%s", r->route.name);
	snprintf(u.method, sizeof u.method, "%s", r->method);
	u.endpoint = r->path;
	u.model = r->u_model;
	u.error = r->u_error;
	r->path = r->u_model = r->u_error = NULL;
	u.status = r->status;
	u.in = r->u_in;
	u.out = r->u_out;
	u.cache_read = r->u_cache_read;
	u.cache_creation = r->u_cache_creation;
	u.ttft = r->u_ttft;
	u.duration_ms = (long long)duration_ms;
	u.cost = r->u_cost;
	clock_gettime(CLOCK_REALTIME, &ts);
	u.at_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	usage_submit(&u);
}

/*
 * Free what the request owns; a reservation no turn settled (the request
 * ended before its turn ran) is given back.
 */
static void
req_free(struct request *r)
{
	if (r->reserved > 0)
		req_settle(r, 0);
	json_decref(r->json);
	free(r->body);
	free(r->path);
	free(r->u_model);
	free(r->u_error);
}

/* Return 1 if origin may call this API from a browser. */
static int
req_origin_allowed(const char *origin)
{
	const char	*list = appconf->cors_origins, *p, *end;
	size_t		 n = strlen(origin);

	if (list == NULL || *origin == '\0' || !req_header_safe(origin))
		return (0);
	if (strcmp(list, "*") == 0)
		return (1);
	for (p = list; *p != '\0'; p = *end ? end + 1 : end) {
		while (*p == ' ')
			p++;
		end = p + strcspn(p, ",");
		if ((size_t)(end - p) == n && strncmp(p, origin, n) == 0)
			return (1);
	}
	return (0);
}

/*
 * CORS: headers for an allowed Origin, and the answer to a preflight
 * (OPTIONS).  Returns 1 if the request was answered here.
 */
static int
req_cors(struct request *r)
{
	const char	*origin = req_header(r, "HTTP_ORIGIN");
	int		 allowed = origin != NULL && req_origin_allowed(origin);

	if (allowed) {
		req_add_header(r, "Access-Control-Allow-Origin",
		    strcmp(appconf->cors_origins, "*") == 0 ? "*" : origin);
		req_add_header(r, "Vary", "Origin");
		req_add_header(r, "Access-Control-Expose-Headers", "X-Request-Id, "
		    "X-Ccgate-Conversation-Id, X-Ccgate-Ignored, Retry-After, "
		    "Idempotent-Replayed");
	}
	if (strcmp(r->method, "OPTIONS") != 0)
		return (0);
	if (r->route.status == 404) {
		req_error(r, 404, NULL, "no such route: %s", r->path);
		return (1);
	}
	if (r->route.status == 400) {
		req_error(r, 400, NULL, "%s", r->route.why);
		return (1);
	}
	if (!allowed) {
		req_error(r, 403, NULL, "origin not allowed: set cors_origins "
		    "in ccgate.conf");
		return (1);
	}
	req_add_header(r, "Access-Control-Allow-Methods", r->route.allow[0] ?
	    r->route.allow : r->method);
	req_add_header(r, "Access-Control-Allow-Headers", "Authorization, "
	    "Content-Type, X-Api-Key, Anthropic-Version, Anthropic-Beta, "
	    "X-Request-Id, Idempotency-Key, X-Ccgate-Timestamp, "
	    "X-Ccgate-Signature, X-Ccgate-Content-Sha256");
	req_add_header(r, "Access-Control-Max-Age", "600");
	req_send_empty(r, 204);
	return (1);
}

/* May the request call its route?  On refusal the answer is sent. */
static int
req_access(struct request *r)
{
	switch (r->route.def->access) {
	case ACCESS_ANYONE:
		return (0);
	case ACCESS_KEY:
		return (req_authenticate(r));
	case ACCESS_KEY_ONLY:
		return (req_authenticate_key(r));
	case ACCESS_ADMIN:
		return (req_authenticate_admin(r));
	}
	return (-1);
}

/*
 * Run the route's handler: CORS first, then the body is read (bounded),
 * then the route's access is checked.
 */
static void
req_dispatch(struct request *r)
{
	const struct route_def	*d = r->route.def;

	if (req_cors(r))
		return;
	if (d == NULL) {
		if (r->route.status == 400)
			req_error(r, 400, NULL, "%s", r->route.why);
		else if (r->route.status == 405)
			req_error(r, 405, NULL, "method %s is not allowed here",
			    r->method);
		else
			req_error(r, 404, NULL, "no such route: %s %s",
			    r->method, r->path);
		return;
	}
	if (!(d->flags & ROUTE_NO_BODY) && req_read_body(r) != 0)
		return;
	if (req_access(r) != 0)
		return;
	d->handler(r);
}

/*
 * Finish a request: the transport completes its answer, then the request
 * is counted and its usage record handed on; then what it owns is freed.
 */
static void
req_finish(struct request *r)
{
	uint64_t	duration;

	if (!r->sent)
		req_error(r, 500, NULL, "no answer");
	duration = (util_now_us() - r->started_us) / 1000;
	if (r->tp->finish != NULL)
		r->tp->finish(r->tp_arg);
	metrics_request(r->route.slot, r->route.def != NULL ?
	    r->route.def->pattern : "unmatched", r->status, duration, r->u_in,
	    r->u_out, r->u_cache_read, r->u_cache_creation, r->u_cost);
	req_write_usage(r, duration);
	req_free(r);
	db_release();
}

/*
 * Return 1 if id, a client's X-Request-Id, may be kept as its
 * client_request_id: 1 to REQ_CLIENT_ID_MAX visible ASCII characters.
 */
int
req_client_id_ok(const char *id)
{
	size_t	n;

	for (n = 0; id[n] != '\0'; n++) {
		if (n == REQ_CLIENT_ID_MAX || (unsigned char)id[n] < 0x21 ||
		    (unsigned char)id[n] > 0x7e)
			return (0);
	}
	return (n > 0);
}

/*
 * Set the request ids.  rid is ccgate's own, from nginx ($request_id, in
 * a parameter no client header can set): used if it is letters, digits,
 * '.', '_' and '-' that fit, else a new one is made.  The client's
 * X-Request-Id is only ever its client_request_id, kept if usable.
 */
static void
req_set_id(struct request *r, const char *rid)
{
	const char	*cid = req_header(r, "HTTP_X_REQUEST_ID");
	size_t		 n = 0;

	if (rid != NULL)
		n = strspn(rid, "abcdefghijklmnopqrstuvwxyz"
		    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-");
	if (rid != NULL && n > 0 && rid[n] == '\0' && n < sizeof r->id)
		snprintf(r->id, sizeof r->id, "%s", rid);
	else if (util_uuid4(r->id) != 0)
		snprintf(r->id, sizeof r->id, "unknown");
	r->client_id[0] = '\0';
	if (cid != NULL && req_client_id_ok(cid))
		snprintf(r->client_id, sizeof r->client_id, "%s", cid);
}

/*
 * Begin request r: over transport tp (arg), with parameters envp, method
 * and path (its first 2,048 bytes, without the query string), the id rid
 * (req_set_id), matched in routes as route_method.  Returns -1, with the
 * 500 sent, when memory ran out.
 */
static int
req_begin(struct request *r, const struct route_table *routes,
    const struct req_transport *tp, void *arg, char **envp,
    const char *method, const char *route_method, const char *path,
    const char *rid)
{
	size_t	n = strcspn(path, "?");

	memset(r, 0, sizeof *r);
	r->tp = tp;
	r->tp_arg = arg;
	r->envp = envp;
	r->table = routes;
	r->started_us = util_now_us();
	snprintf(r->method, sizeof r->method, "%s", method);
	r->path = strndup(path, n > 2048 ? 2048 : n);
	req_set_id(r, rid);
	route_match(routes, route_method, r->path != NULL ? r->path : "/",
	    &r->route);
	if (r->path != NULL)
		return (0);
	req_error(r, 500, NULL, "out of memory");
	return (-1);
}

/*
 * Handle one HTTP request, routed in routes, whose parameters are envp
 * (CGI names: the method, the URI, the headers as HTTP_*; nginx's
 * $request_id as CCGATE_REQUEST_ID), over transport tp, then finish it.
 */
void
req_serve(const struct route_table *routes, const struct req_transport *tp,
    void *arg, char **envp)
{
	struct request	 r;
	const char	*method, *uri;

	if ((method = req_env(envp, "REQUEST_METHOD")) == NULL)
		method = "GET";
	if ((uri = req_env(envp, "REQUEST_URI")) == NULL &&
	    (uri = req_env(envp, "DOCUMENT_URI")) == NULL)
		uri = "/";
	if (req_begin(&r, routes, tp, arg, envp, method, method, uri,
	    req_env(envp, "CCGATE_REQUEST_ID")) == 0)
		req_dispatch(&r);
	req_finish(&r);
}

/*
 * Run one chat turn that came as a WebSocket frame (body, borrowed; turn
 * runs it: chat_frame, from the front end): its parameters are envp (the
 * upgrade's headers, as CGI names), its events go out over tp (each
 * answer as one event too), whose fd hangs up when the turn is to be
 * cancelled.  The turn is a request of its own: authenticated, admitted
 * by the quotas and recorded in the usage log as "WS /api/ws" under its
 * own id (the upgrade's, with "-n"), with the upgrade's X-Request-Id, if
 * the client sent one, as its client_request_id.  Returns the turn's
 * status.
 */
int
req_frame_run(const struct route_table *routes,
    const struct req_transport *tp, void *arg, char **envp, const char *id,
    void (*turn)(struct request *, json_t *), json_t *body)
{
	struct request	r;
	int		status;

	if (req_begin(&r, routes, tp, arg, envp, "WS", "GET", "/api/ws",
	    id) == 0) {
		r.frame = 1;
		if (req_authenticate(&r) == 0) {
			r.item_len = json_dumpb(body, NULL, 0, JSON_COMPACT);
			turn(&r, body);
		}
	}
	status = r.status;
	req_finish(&r);
	return (status);
}
