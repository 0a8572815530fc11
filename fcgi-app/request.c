/*
 * One request.  The request context owns everything the request allocates
 * (the body, the parsed JSON, extra headers) and frees it in req_free;
 * handlers only borrow.  The usage record is written after the response is
 * finished, so a client never waits on that insert.
 *
 * A request comes over FastCGI (req_handle), or is a turn on a WebSocket
 * (req_frame_run): then its parameters are the front end's, and what a
 * handler sends goes to the front end's sink as one JSON event each, the
 * same events a stream carries over SSE.
 */
#include "config.h"

#include <sys/socket.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <fcgiapp.h>

#include "app.h"
#include "log.h"
#include "request.h"

#define REQ_MAX_HEADERS	2048
/* 12 significant digits: costs print as 0.012453, not 0.012453000000000001. */
#define REQ_JSON_FLAGS	(JSON_COMPACT | JSON_REAL_PRECISION(12))

struct request {
	FCGX_Request	*fx;		/* NULL for a WebSocket turn */
	char		**envp;		/* the parameters */
	const struct req_sink *sink;	/* a WebSocket turn's events */
	int		 watch_fd;	/* with sink: hangs up on cancel */
	char		 id[64];	/* ccgate's, never the client's */
	/* The client's X-Request-Id, if usable, else "". */
	char		 client_id[REQ_CLIENT_ID_MAX + 1];
	char		 method[16];
	char		*path;
	struct route	 route;
	struct apikey	 key;
	int		 have_key;
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
	uint64_t	 started_us;

	/* A batch item: answers are kept here, not sent. */
	struct request	*parent;
	json_t		*captured;

	/* The usage record. */
	char		*u_model;
	char		*u_error;
	long long	 u_in;
	long long	 u_out;
	long long	 u_cache_read;
	long long	 u_cache_creation;
	double		 u_cost;
	long long	 u_ttft;
};

/* A FastCGI parameter, or NULL. */
const char *
req_param(struct request *r, const char *name)
{
	return (FCGX_GetParam(name, r->envp));
}

/* A request header by its CGI name ("HTTP_X_API_KEY"), or NULL. */
const char *
req_header(struct request *r, const char *cgi_name)
{
	return (FCGX_GetParam(cgi_name, r->envp));
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

/* The authenticated key (after req_authenticate). */
struct apikey *
req_key(struct request *r)
{
	return (r->have_key ? &r->key : NULL);
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

	if (r->parent != NULL || r->sent || !req_header_safe(name) ||
	    !req_header_safe(value))
		return;
	n = snprintf(r->headers + r->headers_len,
	    sizeof r->headers - r->headers_len, "%s: %s\r\n", name, value);
	if (n > 0 && (size_t)n < sizeof r->headers - r->headers_len)
		r->headers_len += (size_t)n;
	else
		r->headers[r->headers_len] = '\0';
}

/* Write the status line and headers. */
static void
req_head(struct request *r, int status, const char *ctype)
{
	r->status = status;
	r->sent = 1;
	FCGX_FPrintF(r->fx->out, "Status: %d\r\n", status);
	if (ctype != NULL)
		FCGX_FPrintF(r->fx->out, "Content-Type: %s\r\n", ctype);
	FCGX_FPrintF(r->fx->out, "X-Request-Id: %s\r\n%s\r\n", r->id,
	    r->headers);
}

/*
 * A WebSocket turn's answer sent as one event: an error gets "type":
 * "error", its "status" and the turn's "request_id" (and "retry_after"
 * where HTTP would send Retry-After); takes the reference to body.
 */
static void
req_sink_answer(struct request *r, int status, json_t *body)
{
	const char	*ra;
	char		*s;

	r->sent = 1;
	r->status = status;
	if (body == NULL)
		return;
	if (json_object_get(body, "type") == NULL)
		json_object_set_new(body, "type", json_string(status >= 400 ?
		    "error" : "done"));
	json_object_set_new(body, "status", json_integer(status));
	json_object_set_new(body, "request_id", json_string(r->id));
	/* What a header would have said: when to try again. */
	if ((ra = strstr(r->headers, "Retry-After: ")) != NULL)
		json_object_set_new(body, "retry_after",
		    json_integer(strtol(ra + 13, NULL, 10)));
	if ((s = json_dumps(body, REQ_JSON_FLAGS)) != NULL)
		(void)r->sink->send(r->sink->arg, s);
	free(s);
	json_decref(body);
}

/* Send a JSON response; takes the reference to body. */
void
req_send_json(struct request *r, int status, json_t *body)
{
	char	*s;

	if (r->sent) {
		json_decref(body);
		return;
	}
	if (r->parent != NULL) {
		r->sent = 1;
		r->status = status;
		r->captured = body;
		return;
	}
	if (r->sink != NULL) {
		req_sink_answer(r, status, body);
		return;
	}
	s = body != NULL ? json_dumps(body, REQ_JSON_FLAGS) : NULL;
	json_decref(body);
	if (s == NULL) {
		req_head(r, 500, "application/json");
		FCGX_PutS("{\"success\":false,\"error\":{\"type\":\"api_error\","
		    "\"message\":\"out of memory\"}}\n", r->fx->out);
		return;
	}
	req_head(r, status, "application/json");
	FCGX_PutS(s, r->fx->out);
	FCGX_PutS("\n", r->fx->out);
	free(s);
}

/* Send a text response of content type ctype. */
void
req_send_text(struct request *r, int status, const char *ctype,
    const char *text)
{
	if (r->sent || r->parent != NULL || r->sink != NULL)
		return;
	req_head(r, status, ctype);
	FCGX_PutS(text, r->fx->out);
}

/* Send a response without a body (204). */
void
req_send_empty(struct request *r, int status)
{
	if (!r->sent && r->sink == NULL)
		req_head(r, status, NULL);
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

/* Send what the stream has buffered, unless it is held. */
static int
req_sse_flush(struct request *r)
{
	if (!r->held && FCGX_FFlush(r->fx->out) != 0)
		return (-1);
	return (FCGX_GetError(r->fx->out) == 0 ? 0 : -1);
}

/* Start a Server-Sent Events response. */
int
req_sse_start(struct request *r)
{
	if (r->parent != NULL)
		return (-1);
	if (r->sent)
		return (r->sse ? 0 : -1);
	if (r->sink != NULL) {
		r->sent = r->sse = 1;
		r->status = 200;
		return (0);
	}
	req_add_header(r, "Cache-Control", "no-cache");
	req_add_header(r, "X-Accel-Buffering", "no");
	req_head(r, 200, "text/event-stream");
	r->sse = 1;
	return (req_sse_flush(r));
}

/* Send one "data:" event (or a comment line if data starts with ':'). */
int
req_sse_data(struct request *r, const char *data)
{
	if (!r->sse)
		return (-1);
	if (r->sink != NULL) {
		/* A socket has its own pings; a turn ends with "done". */
		if (data[0] == ':' || strcmp(data, "[DONE]") == 0)
			return (r->sink->alive(r->sink->arg) ? 0 : -1);
		return (r->sink->send(r->sink->arg, data));
	}
	if (data[0] == ':')
		FCGX_FPrintF(r->fx->out, "%s\n\n", data);
	else
		FCGX_FPrintF(r->fx->out, "data: %s\n\n", data);
	return (req_sse_flush(r));
}

/* Send a JSON object as one event (borrowed). */
int
req_sse_json(struct request *r, json_t *obj)
{
	char	*s;
	int	 rc;

	if ((s = json_dumps(obj, REQ_JSON_FLAGS)) == NULL)
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

	if (!r->sse || (s = json_dumps(obj, REQ_JSON_FLAGS)) == NULL)
		return (-1);
	if (r->sink != NULL) {
		int	rc = r->sink->send(r->sink->arg, s);

		free(s);
		return (rc);
	}
	FCGX_FPrintF(r->fx->out, "event: %s\ndata: %s\n\n", name, s);
	free(s);
	return (req_sse_flush(r));
}

/*
 * The descriptor to watch for the client leaving: the connection to nginx,
 * or a WebSocket turn's cancel pipe.
 */
int
req_fd(struct request *r)
{
	return (r->sink != NULL ? r->watch_fd : r->fx->ipcFd);
}

/*
 * A batch item of parent: it shares the parent's parameters, key and
 * client connection, but its answer is captured (req_sub_take) instead of
 * sent.  Its id is the parent's with "-n" appended.
 */
struct request *
req_sub(struct request *parent, int n)
{
	struct request	*r;

	if ((r = calloc(1, sizeof *r)) == NULL)
		return (NULL);
	r->fx = parent->fx;
	r->envp = parent->envp;
	r->parent = parent;
	snprintf(r->id, sizeof r->id, "%.50s-%d", parent->id, n);
	memcpy(r->method, parent->method, sizeof r->method);
	r->route = parent->route;
	r->key = parent->key;
	r->have_key = parent->have_key;
	r->started_us = util_now_us();
	return (r);
}

/* Take a batch item's answer (with "status" added) and free the item. */
json_t *
req_sub_take(struct request *r, long long *tokens_in, long long *tokens_out,
    double *cost)
{
	json_t	*out = r->captured;

	if (out == NULL)
		out = dialect_error(DIALECT_NATIVE, "api_error", "no answer");
	if (out != NULL)
		json_object_set_new(out, "status", json_integer(r->status ?
		    r->status : 500));
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
	int		 n;

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
	while (r->body_len < (size_t)len) {
		n = FCGX_GetStr(r->body + r->body_len,
		    (int)((size_t)len - r->body_len), r->fx->in);
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
	if (r->route.id == ROUTE_WS)
		return (auth_ws_protocol_key(req_header(r,
		    "HTTP_SEC_WEBSOCKET_PROTOCOL"), r->wskey, sizeof r->wskey));
	return (NULL);
}

/* Check the request's key (no quota spent); on failure the answer is sent. */
int
req_authenticate_key(struct request *r)
{
	enum auth_result	 ar;

	ar = auth_check(req_presented_key(r), &r->key);
	if (ar == AUTH_OK) {
		r->have_key = 1;
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
 * Authenticate the request's key and admit the request by the key's
 * quotas; on failure the answer is sent.
 */
int
req_authenticate(struct request *r)
{
	char	why[256], ra[32];
	long	retry;

	if (req_authenticate_key(r) != 0)
		return (-1);
	switch (quota_admit(&r->key, &retry, why, sizeof why)) {
	case 0:
		return (0);
	case 1:
		metrics_quota_rejected();
		snprintf(ra, sizeof ra, "%ld", retry);
		req_add_header(r, "Retry-After", ra);
		req_error(r, 429, NULL, "%s", why);
		return (-1);
	default:
		req_add_header(r, "Retry-After", "5");
		req_error(r, 503, NULL, "the key store is unavailable");
		return (-1);
	}
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

	if (r->route.id == ROUTE_HEALTHZ || r->route.id == ROUTE_READYZ ||
	    r->route.id == ROUTE_METRICS)
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

/* Free what the request owns. */
static void
req_free(struct request *r)
{
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
		    "X-Ccgate-Conversation-Id, X-Ccgate-Ignored, Retry-After");
	}
	if (strcmp(r->method, "OPTIONS") != 0)
		return (0);
	if (r->route.status != 405 && r->route.id == ROUTE_NONE) {
		req_error(r, 404, NULL, "no such route: %s", r->path);
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
	    "X-Request-Id");
	req_add_header(r, "Access-Control-Max-Age", "600");
	req_send_empty(r, 204);
	return (1);
}

/* Run the route's handler. */
static void
req_dispatch(struct request *r)
{
	if (req_cors(r))
		return;
	switch (r->route.id) {
	case ROUTE_HEALTHZ:
		health_live(r);
		return;
	case ROUTE_READYZ:
		health_ready(r);
		return;
	case ROUTE_METRICS:
		metrics_handle(r);
		return;
	case ROUTE_NONE:
	case ROUTE_MAX:
		break;
	default:
		if (req_read_body(r) != 0)
			return;
		break;
	}
	switch (r->route.id) {
	case ROUTE_CHAT:
		chat_handle(r);
		break;
	case ROUTE_CHAT_BATCH:
		chat_batch_handle(r);
		break;
	case ROUTE_CONV_CREATE:
		conv_create_handle(r);
		break;
	case ROUTE_CONV_GET:
		conv_get_handle(r);
		break;
	case ROUTE_CONV_LIST:
		conv_list_handle(r);
		break;
	case ROUTE_CONV_DELETE:
		conv_delete_handle(r);
		break;
	case ROUTE_CONV_CONTINUE:
		conv_continue_handle(r);
		break;
	case ROUTE_MODELS:
		models_handle(r);
		break;
	case ROUTE_POOL_STATS:
		poolinfo_stats_handle(r);
		break;
	case ROUTE_POOL_HEALTH:
		poolinfo_health_handle(r);
		break;
	case ROUTE_POOL_INIT:
	case ROUTE_ADMIN_POOL_INIT:
		poolinfo_init_handle(r);
		break;
	case ROUTE_OPENAI_CHAT:
		openai_chat_handle(r);
		break;
	case ROUTE_OPENAI_MODELS:
		openai_models_handle(r);
		break;
	case ROUTE_ANTHROPIC_MESSAGES:
		anthropic_messages_handle(r);
		break;
	case ROUTE_ADMIN_LOGIN:
		adminapi_login(r);
		break;
	case ROUTE_ADMIN_ME:
		adminapi_me(r);
		break;
	case ROUTE_ADMIN_KEYS_CREATE:
		adminapi_keys_create(r);
		break;
	case ROUTE_ADMIN_KEYS_LIST:
		adminapi_keys_list(r);
		break;
	case ROUTE_ADMIN_KEYS_GET:
		adminapi_keys_get(r);
		break;
	case ROUTE_ADMIN_KEYS_UPDATE:
		adminapi_keys_update(r);
		break;
	case ROUTE_ADMIN_KEYS_REVOKE:
		adminapi_keys_revoke(r);
		break;
	case ROUTE_ADMIN_KEYS_ROTATE:
		adminapi_keys_rotate(r);
		break;
	case ROUTE_ADMIN_USAGE:
		adminapi_usage(r);
		break;
	case ROUTE_ADMIN_REQUESTS:
		adminapi_requests(r);
		break;
	case ROUTE_ADMIN_ERRORS:
		adminapi_errors(r);
		break;
	case ROUTE_ADMIN_POOL:
		poolinfo_admin_handle(r);
		break;
	case ROUTE_ADMIN_AUDIT:
		adminapi_audit(r);
		break;
	case ROUTE_WS:
		ws_auth_handle(r);
		break;
	default:
		if (r->route.status == 405)
			req_error(r, 405, NULL, "method %s is not allowed here",
			    r->method);
		else
			req_error(r, 404, NULL, "no such route: %s %s",
			    r->method, r->path);
		break;
	}
}

/*
 * Finish a request: count it and hand its usage record on; then free what
 * it owns.  finish completes the transport's answer first.
 */
static void
req_finish(struct request *r, void (*finish)(struct request *))
{
	uint64_t	duration;

	if (!r->sent)
		req_error(r, 500, NULL, "no answer");
	duration = (util_now_us() - r->started_us) / 1000;
	if (finish != NULL)
		finish(r);
	metrics_request(r->route.id, r->status, duration, r->u_in, r->u_out,
	    r->u_cache_read, r->u_cache_creation, r->u_cost);
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

/* FastCGI: end the request (the answer goes out to nginx). */
static void
req_fcgi_finish(struct request *r)
{
	FCGX_Finish_r(r->fx);
}

/* Handle one accepted FastCGI request, then finish it. */
void
req_handle(FCGX_Request *fx)
{
	struct request	 r;
	const char	*v;
	size_t		 plen;

	memset(&r, 0, sizeof r);
	r.fx = fx;
	r.envp = fx->envp;
	r.started_us = util_now_us();
	v = req_param(&r, "REQUEST_METHOD");
	snprintf(r.method, sizeof r.method, "%s", v != NULL ? v : "GET");
	v = req_param(&r, "REQUEST_URI");
	if (v == NULL)
		v = req_param(&r, "DOCUMENT_URI");
	if (v == NULL)
		v = "/";
	plen = strcspn(v, "?");
	if (plen > 2048)
		plen = 2048;
	r.path = strndup(v, plen);
	req_set_id(&r, req_param(&r, "CCGATE_REQUEST_ID"));
	route_match(r.method, r.path != NULL ? r.path : "/", &r.route);
	if (r.path == NULL)
		req_error(&r, 500, NULL, "out of memory");
	else
		req_dispatch(&r);
	req_finish(&r, req_fcgi_finish);
}

/*
 * Run one chat turn that came as a WebSocket frame (body, borrowed): its
 * parameters are envp (the upgrade's headers, as CGI names), its events go
 * to sink, and watch_fd hangs up when the turn is to be cancelled.  The
 * turn is a request of its own: authenticated, admitted by the quotas and
 * recorded in the usage log as "WS /api/ws" under its own id (the
 * upgrade's, with "-n"), with the upgrade's X-Request-Id, if the client
 * sent one, as its client_request_id.  Returns the turn's status.
 */
int
req_frame_run(const struct req_sink *sink, char **envp, int watch_fd,
    const char *id, json_t *body)
{
	struct request	r;
	int		status;

	memset(&r, 0, sizeof r);
	r.envp = envp;
	r.sink = sink;
	r.watch_fd = watch_fd;
	r.started_us = util_now_us();
	snprintf(r.method, sizeof r.method, "WS");
	r.path = strdup("/api/ws");
	req_set_id(&r, id);
	route_match("GET", "/api/ws", &r.route);
	if (r.path == NULL)
		req_error(&r, 500, NULL, "out of memory");
	else if (req_authenticate(&r) == 0)
		chat_frame(&r, body);
	status = r.status;
	req_finish(&r, NULL);
	return (status);
}
