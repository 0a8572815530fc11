/*
 * ccgate-ws: the WebSocket front end.  nginx checks the key of GET /api/ws
 * with ccgate-fcgi (auth_request, wsauth.c), then hands the upgrade to this
 * daemon over a unix socket.  A socket carries many turns, one at a time:
 *
 *	client:	{"type":"chat","message":"...","conversation_id":"..."}
 *		{"type":"cancel"}
 *	server:	{"type":"delta","text":"..."} ... {"type":"done",...}
 *		{"type":"error","error":{"type","message"},"status":N}
 *
 * the same events as POST /api/chat's stream.  A chat frame sent while a
 * turn runs waits for it (at most WS_TURNS_MAX per socket); "cancel" stops
 * the running turn.  Each turn is a request of
 * the HTTP layer (request.c's req_frame_run): its key is checked
 * again and admitted by the quotas, its conversation stored and its usage
 * recorded, exactly as over FastCGI.
 *
 * libwebsockets (Debian's libwebsockets-dev) does the protocol: the
 * handshake, framing and masking, UTF-8 checks, pings and close codes, on
 * one service thread.  It was chosen over wslay (framing only: the
 * handshake and the event loop would be ours to write) and over writing
 * RFC 6455 by hand.  Turns block on MariaDB and ccgate-poold, so they run
 * on a pool of worker threads (sharing db_connections connections); a
 * worker queues its events on the connection and wakes the service thread
 * with lws_cancel_service(), the one call libwebsockets allows from
 * another thread.  ws_lock guards every connection's shared state.
 *
 * Usage: ccgate-ws [-nv] [-f config]
 */
#include "config.h"

#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>
#include <mysql.h>

#include "front.h"
#include "http.h"
#include "log.h"

#define WS_PROTOCOL	"ccgate"
#define WS_RX_CHUNK	65536
/* Events waiting for a client that does not read: past this, it is shut. */
#define WS_QUEUE_MAX	(4 * 1024 * 1024)
#define WS_HEADER_MAX	1024
#define WS_TURNS_MAX	8	/* a socket's running and waiting turns */
#define WS_NPARAMS	4	/* the upgrade's headers the turns see */
#define WS_TRY_AGAIN_LATER	1013	/* RFC 6455's registry; lws 4.1 has no name */
/* After SIGTERM, how long running turns may take to end. */
#define WS_DRAIN_MS	((uint64_t)appconf->job_timeout_ms + 5000)

struct ws_out {
	struct ws_out	*next;
	size_t		 len;
	unsigned char	 buf[];		/* LWS_PRE bytes, then the event */
};

struct wsconn {
	struct wsconn	*prev, *next;	/* every connection */
	struct wsconn	*wnext;		/* on the wants-to-write list */
	int		 want_write;
	struct lws	*wsi;		/* NULL once the socket is closed */
	int		 refs;		/* the socket's, and a turn's */
	char		*envp[WS_NPARAMS + 1]; /* the turns' parameters */
	char		 id[48];	/* the upgrade's request id (nginx's) */
	unsigned	 nturns;	/* turns so far, for their ids */
	struct ws_turn	*turns;		/* the first runs, the others wait */
	struct ws_turn	**turns_tail;
	int		 nwaiting;	/* on that list */
	struct ws_out	*out, **out_tail;
	size_t		 out_bytes;
	int		 close_code;	/* close once the queue is out */
	char		*rx;		/* a message being assembled */
	size_t		 rx_len;
};

struct ws_turn {
	struct ws_turn	*next;		/* on the workers' queue */
	struct ws_turn	*cnext;		/* on its socket's list */
	struct wsconn	*c;		/* holds a reference */
	json_t		*body;
	int		 cancel_r;	/* the request watches it */
	int		 cancel_w;	/* closed to cancel, or -1 */
	int		 cancel_asked;	/* by a cancel frame */
	char		 id[64];
};

static pthread_mutex_t	 ws_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t	 ws_cond = PTHREAD_COND_INITIALIZER;
static struct lws_context *ws_ctx;
static struct wsconn	*ws_conns;	/* every connection */
static long		 ws_nconns;
static struct wsconn	*ws_wants;	/* connections with events to send */
static struct ws_turn	*ws_queue, **ws_queue_tail = &ws_queue;
static int		 ws_turns;	/* accepted and not ended */
static int		 ws_stopping;	/* SIGTERM: no new turns */
static int		 ws_workers_stop;
static volatile int	 ws_done;	/* leave the service loop */
static int		 ws_ctx_dead;	/* ws_ctx is being destroyed */

/* Wake the service thread (from any thread; ws_lock not held). */
static void
ws_kick(void)
{
	pthread_mutex_lock(&ws_lock);
	if (!ws_ctx_dead)
		lws_cancel_service(ws_ctx);
	pthread_mutex_unlock(&ws_lock);
}

/* Put c on the list the service thread walks when woken (ws_lock held). */
static void
ws_want_write(struct wsconn *c)
{
	if (c->want_write || c->wsi == NULL)
		return;
	c->want_write = 1;
	c->wnext = ws_wants;
	ws_wants = c;
}

/* Drop a reference to c; the last one frees it (ws_lock held). */
static void
ws_conn_unref(struct wsconn *c)
{
	struct ws_out	*o;
	size_t		 i;

	if (--c->refs > 0)
		return;
	while ((o = c->out) != NULL) {
		c->out = o->next;
		free(o);
	}
	for (i = 0; i < sizeof c->envp / sizeof c->envp[0]; i++)
		free(c->envp[i]);
	free(c->rx);
	free(c);
}

/*
 * Queue one event (JSON text) for c's client.  Returns -1 if the client is
 * gone, or reads so slowly that WS_QUEUE_MAX is waiting (it is then shut
 * with 1008, and the turn cancelled by the caller's -1).
 */
static int
ws_queue_event(struct wsconn *c, const char *text)
{
	struct ws_out	*o;
	size_t		 n = strlen(text);
	int		 rc = -1;

	pthread_mutex_lock(&ws_lock);
	if (c->wsi != NULL && c->close_code == 0) {
		if (c->out_bytes + n > WS_QUEUE_MAX) {
			c->close_code = LWS_CLOSE_STATUS_POLICY_VIOLATION;
			ws_want_write(c);
		} else if ((o = malloc(sizeof *o + LWS_PRE + n)) != NULL) {
			o->next = NULL;
			o->len = n;
			memcpy(o->buf + LWS_PRE, text, n);
			*c->out_tail = o;
			c->out_tail = &o->next;
			c->out_bytes += n;
			ws_want_write(c);
			rc = 0;
		}
	}
	pthread_mutex_unlock(&ws_lock);
	ws_kick();
	return (rc);
}

/* 1 while c's client is there. */
static int
ws_alive(struct wsconn *c)
{
	int	alive;

	pthread_mutex_lock(&ws_lock);
	alive = c->wsi != NULL && c->close_code == 0;
	pthread_mutex_unlock(&ws_lock);
	return (alive);
}

/*
 * The transport of a turn (http.h), whose argument is the turn: every
 * event goes out as one message; an answer too, as an event of "type"
 * "done" (or "error", with its "status", the turn's "request_id" and
 * "retry_after" where HTTP would send Retry-After).
 */
static void
ws_tp_json(void *arg, const struct req_reply *rp, json_t *body)
{
	struct ws_turn	*t = arg;
	const char	*ra;
	char		*s;

	if (body == NULL)
		return;
	if (json_object_get(body, "type") == NULL)
		json_object_set_new(body, "type", json_string(rp->status >=
		    400 ? "error" : "done"));
	json_object_set_new(body, "status", json_integer(rp->status));
	json_object_set_new(body, "request_id", json_string(rp->id));
	if ((ra = strstr(rp->headers, "Retry-After: ")) != NULL)
		json_object_set_new(body, "retry_after",
		    json_integer(strtol(ra + 13, NULL, 10)));
	if ((s = req_json_dumps(body)) != NULL)
		(void)ws_queue_event(t->c, s);
	free(s);
	json_decref(body);
}

static int
ws_tp_stream(void *arg, const struct req_reply *rp, int flush)
{
	(void)arg;
	(void)rp;
	(void)flush;
	return (0);
}

/* A socket has its own pings, and a turn ends with "done": no [DONE]. */
static int
ws_tp_event(void *arg, const char *name, const char *data, int flush)
{
	struct ws_turn	*t = arg;

	(void)flush;
	if (name == NULL && (data[0] == ':' || strcmp(data, "[DONE]") == 0))
		return (ws_alive(t->c) ? 0 : -1);
	return (ws_queue_event(t->c, data));
}

/* Closed (so it hangs up) when the turn is cancelled. */
static int
ws_tp_fd(void *arg)
{
	struct ws_turn	*t = arg;

	return (t->cancel_r);
}

static const struct req_transport ws_transport = {
	NULL, ws_tp_json, NULL, ws_tp_stream, ws_tp_event, ws_tp_fd, NULL, NULL
};

/* An error event for c, in the native dialect with its status. */
static void
ws_error(struct wsconn *c, int status, const char *type, const char *msg)
{
	json_t	*ev;
	char	*s = NULL;

	if (type == NULL)
		type = dialect_error_type(DIALECT_NATIVE, status);
	ev = dialect_error(DIALECT_NATIVE, type, msg);
	if (ev != NULL && json_object_set_new(ev, "type",
	    json_string("error")) == 0 && json_object_set_new(ev, "status",
	    json_integer(status)) == 0)
		s = json_dumps(ev, JSON_COMPACT);
	if (s != NULL)
		(void)ws_queue_event(c, s);
	free(s);
	json_decref(ev);
}

/* Give the workers turn t (ws_lock held). */
static void
ws_queue_turn(struct ws_turn *t)
{
	t->next = NULL;
	*ws_queue_tail = t;
	ws_queue_tail = &t->next;
	pthread_cond_signal(&ws_cond);
}

/* A worker: run queued turns until told to stop. */
static void *
ws_worker(void *arg)
{
	struct ws_turn		*t;
	struct wsconn		*c;
	int			 gone, cancelled, stopping, status, late;

	(void)arg;
	for (;;) {
		pthread_mutex_lock(&ws_lock);
		while (ws_queue == NULL && !ws_workers_stop)
			pthread_cond_wait(&ws_cond, &ws_lock);
		if ((t = ws_queue) == NULL) {
			pthread_mutex_unlock(&ws_lock);
			break;
		}
		if ((ws_queue = t->next) == NULL)
			ws_queue_tail = &ws_queue;
		c = t->c;
		gone = c->wsi == NULL;
		cancelled = t->cancel_w == -1;
		stopping = ws_stopping;
		pthread_mutex_unlock(&ws_lock);

		status = 0;
		if (gone)
			;
		else if (cancelled)
			ws_error(c, 499, "cancelled", "the turn was cancelled "
			    "before it started");
		else if (stopping)
			ws_error(c, 503, NULL, "the server is restarting: "
			    "reconnect and send the turn again");
		else {
			status = req_frame_run(&http_routes, &ws_transport, t,
			    c->envp, t->id, chat_frame, t->body);
		}

		/* A cancel that came after the turn's last event. */
		pthread_mutex_lock(&ws_lock);
		late = t->cancel_asked && status != 0 && status != 499;
		pthread_mutex_unlock(&ws_lock);
		if (late)
			ws_error(c, 409, NULL, "cancel: no turn is running "
			    "(the last one had already ended)");

		/* The socket's next turn may run now. */
		pthread_mutex_lock(&ws_lock);
		if (t->cancel_w != -1)
			close(t->cancel_w);
		if ((c->turns = t->cnext) == NULL)
			c->turns_tail = &c->turns;
		else
			ws_queue_turn(c->turns);
		c->nwaiting--;
		ws_turns--;
		ws_conn_unref(c);
		pthread_mutex_unlock(&ws_lock);
		ws_kick();
		close(t->cancel_r);
		json_decref(t->body);
		free(t);
	}
	db_release();
	return (NULL);
}

/* Accept a chat turn of c (body: the frame, taken). */
static void
ws_chat(struct wsconn *c, json_t *body)
{
	struct ws_turn	*t = NULL;
	int		 fds[2];
	const char	*why = NULL;
	int		 status = 0;

	pthread_mutex_lock(&ws_lock);
	if (ws_stopping) {
		status = 503;
		why = "the server is restarting: reconnect and send the turn "
		    "again";
	} else if (c->nwaiting >= WS_TURNS_MAX) {
		status = 429;
		why = "too many turns waiting on this socket";
	} else if ((t = calloc(1, sizeof *t)) == NULL ||
	    pipe2(fds, O_CLOEXEC) == -1) {
		free(t);
		status = 500;
		why = "out of resources for a new turn";
	} else {
		t->c = c;
		t->body = body;
		t->cancel_r = fds[0];
		t->cancel_w = fds[1];
		snprintf(t->id, sizeof t->id, "%s-%u", c->id, ++c->nturns);
		c->refs++;
		c->nwaiting++;
		ws_turns++;
		*c->turns_tail = t;
		c->turns_tail = &t->cnext;
		if (c->turns == t)
			ws_queue_turn(t);
		body = NULL;
	}
	pthread_mutex_unlock(&ws_lock);
	json_decref(body);
	if (why != NULL)
		ws_error(c, status, NULL, why);
}

/* Cancel c's turn: its worker sees the pipe hang up. */
static void
ws_cancel(struct wsconn *c)
{
	struct ws_turn	*t;
	int		 had;

	pthread_mutex_lock(&ws_lock);
	t = c->turns;
	had = t != NULL && t->cancel_w != -1;
	if (had) {
		close(t->cancel_w);
		t->cancel_w = -1;
		t->cancel_asked = 1;
	}
	pthread_mutex_unlock(&ws_lock);
	if (!had)
		ws_error(c, 409, NULL, "cancel: no turn is running");
}

/* One whole message from the client. */
static void
ws_message(struct wsconn *c, int binary)
{
	json_error_t	 err;
	json_t		*j;
	const char	*type;
	char		 msg[256];

	if (binary) {
		ws_error(c, 400, NULL, "frames must be text: a JSON object");
		return;
	}
	if (req_json_depth_ok(c->rx, c->rx_len, appconf->max_json_depth) !=
	    0) {
		snprintf(msg, sizeof msg, "the frame nests deeper than %ld",
		    appconf->max_json_depth);
		ws_error(c, 400, NULL, msg);
		return;
	}
	if ((j = json_loadb(c->rx, c->rx_len, JSON_REJECT_DUPLICATES,
	    &err)) == NULL || !json_is_object(j)) {
		if (j == NULL)
			snprintf(msg, sizeof msg, "invalid JSON frame: %s (at "
			    "byte %d)", err.text, err.position);
		else
			snprintf(msg, sizeof msg, "the frame must be a JSON "
			    "object");
		json_decref(j);
		ws_error(c, 400, NULL, msg);
		return;
	}
	type = json_string_value(json_object_get(j, "type"));
	if (type != NULL && strcmp(type, "chat") == 0) {
		ws_chat(c, j);
		return;
	}
	if (type != NULL && strcmp(type, "cancel") == 0)
		ws_cancel(c);
	else
		ws_error(c, 400, NULL, "type: must be \"chat\" or \"cancel\"");
	json_decref(j);
}

/* Copy header h of the upgrade as CGI parameter name into c->envp[i]. */
static void
ws_param(struct wsconn *c, size_t i, struct lws *wsi, const char *name,
    int token, const char *custom)
{
	char	buf[WS_HEADER_MAX];
	int	n;

	if (custom != NULL)
		n = lws_hdr_custom_copy(wsi, buf, sizeof buf, custom,
		    (int)strlen(custom));
	else
		n = lws_hdr_copy(wsi, buf, sizeof buf,
		    (enum lws_token_indexes)token);
	if (n <= 0)
		return;
	if (asprintf(&c->envp[i], "%s=%s", name, buf) == -1)
		c->envp[i] = NULL;
}

/* Return 1 if id (nginx's X-Ccgate-Request-Id) may start the turns' ids. */
static int
ws_id_ok(const char *id)
{
	size_t	n = strspn(id, "abcdefghijklmnopqrstuvwxyz"
		    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.");

	return (n > 0 && n <= 40 && id[n] == '\0');
}

/* A socket is open: keep what its turns need from the upgrade. */
static int
ws_open(struct lws *wsi, struct wsconn **slot)
{
	struct wsconn	*c;
	char		 rid[48];
	size_t		 i, n;
	int		 full;

	pthread_mutex_lock(&ws_lock);
	full = ws_stopping || ws_nconns >= appconf->ws_max_connections;
	pthread_mutex_unlock(&ws_lock);
	if (full) {
		lws_close_reason(wsi,
		    (enum lws_close_status)WS_TRY_AGAIN_LATER,
		    (unsigned char *)"too many sockets; try again later", 33);
		return (-1);
	}
	if ((c = calloc(1, sizeof *c)) == NULL)
		return (-1);
	c->wsi = wsi;
	c->refs = 1;
	c->turns_tail = &c->turns;
	c->out_tail = &c->out;
	/* The order of req_presented_key: Bearer, x-api-key, subprotocol. */
	ws_param(c, 0, wsi, "HTTP_AUTHORIZATION", WSI_TOKEN_HTTP_AUTHORIZATION,
	    NULL);
	ws_param(c, 1, wsi, "HTTP_X_API_KEY", 0, "x-api-key:");
	ws_param(c, 2, wsi, "HTTP_SEC_WEBSOCKET_PROTOCOL", WSI_TOKEN_PROTOCOL,
	    NULL);
	/* The client's own X-Request-Id: each turn's client_request_id. */
	ws_param(c, 3, wsi, "HTTP_X_REQUEST_ID", 0, "x-request-id:");
	/* Compact: the NULLs of absent headers must not end the list. */
	for (i = n = 0; i < WS_NPARAMS; i++) {
		if (c->envp[i] == NULL)
			continue;
		if (i != n) {
			c->envp[n] = c->envp[i];
			c->envp[i] = NULL;
		}
		n++;
	}
	/* ccgate's id: nginx's, set over any a client sent of that name. */
	if (lws_hdr_custom_copy(wsi, rid, sizeof rid, "x-ccgate-request-id:",
	    20) <= 0 || !ws_id_ok(rid))
		(void)util_uuid4(rid);
	snprintf(c->id, sizeof c->id, "%s", rid);

	pthread_mutex_lock(&ws_lock);
	c->next = ws_conns;
	if (ws_conns != NULL)
		ws_conns->prev = c;
	ws_conns = c;
	ws_nconns++;
	pthread_mutex_unlock(&ws_lock);
	*slot = c;
	return (0);
}

/* Cancel every turn of c (ws_lock held). */
static void
ws_cancel_all(struct wsconn *c)
{
	struct ws_turn	*t;

	for (t = c->turns; t != NULL; t = t->cnext) {
		if (t->cancel_w != -1) {
			close(t->cancel_w);
			t->cancel_w = -1;
		}
	}
}

/* A socket is closed: cancel its turns; their workers still hold it. */
static void
ws_closed(struct wsconn *c)
{
	struct wsconn	**pp;

	pthread_mutex_lock(&ws_lock);
	c->wsi = NULL;
	ws_cancel_all(c);
	if (c->want_write) {
		for (pp = &ws_wants; *pp != NULL; pp = &(*pp)->wnext) {
			if (*pp == c) {
				*pp = c->wnext;
				break;
			}
		}
		c->want_write = 0;
	}
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		ws_conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	ws_nconns--;
	ws_conn_unref(c);
	pthread_mutex_unlock(&ws_lock);
}

/* Send c's next event; close it if that was asked and all is out. */
static int
ws_writable(struct lws *wsi, struct wsconn *c)
{
	struct ws_out	*o;
	int		 code, more;

	pthread_mutex_lock(&ws_lock);
	if ((o = c->out) != NULL) {
		if ((c->out = o->next) == NULL)
			c->out_tail = &c->out;
		c->out_bytes -= o->len;
	}
	code = c->close_code;
	more = c->out != NULL;
	pthread_mutex_unlock(&ws_lock);
	if (o == NULL && code != 0) {
		lws_close_reason(wsi, (enum lws_close_status)code,
		    (unsigned char *)(code == LWS_CLOSE_STATUS_GOINGAWAY ?
		    "server restarting" : "client too slow to read"),
		    code == LWS_CLOSE_STATUS_GOINGAWAY ? 17 : 23);
		return (-1);
	}
	if (o != NULL && lws_write(wsi, o->buf + LWS_PRE, o->len,
	    LWS_WRITE_TEXT) < (int)o->len) {
		free(o);
		return (-1);
	}
	free(o);
	if (more || code != 0)
		lws_callback_on_writable(wsi);
	return (0);
}

/* Woken by a worker (or the signal thread): ask to write where needed. */
static void
ws_wake(void)
{
	struct wsconn	*c;

	pthread_mutex_lock(&ws_lock);
	while ((c = ws_wants) != NULL) {
		ws_wants = c->wnext;
		c->want_write = 0;
		if (c->wsi != NULL)
			lws_callback_on_writable(c->wsi);
	}
	/* Stopping: close each socket whose turn has ended. */
	for (c = ws_conns; ws_stopping && c != NULL; c = c->next) {
		if (c->turns == NULL && c->close_code == 0 && c->wsi != NULL) {
			c->close_code = LWS_CLOSE_STATUS_GOINGAWAY;
			lws_callback_on_writable(c->wsi);
		}
	}
	if (ws_stopping && ws_nconns == 0 && ws_turns == 0)
		ws_done = 1;
	pthread_mutex_unlock(&ws_lock);
}

/* The protocol's callback (libwebsockets' service thread). */
static int
ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
    void *in, size_t len)
{
	struct wsconn	**slot = user, *c = slot != NULL ? *slot : NULL;
	size_t		  left;

	switch (reason) {
	case LWS_CALLBACK_HTTP:
		/* Not an upgrade. */
		if (lws_return_http_status(wsi, HTTP_STATUS_BAD_REQUEST,
		    "GET /api/ws must ask to upgrade to a WebSocket"))
			return (-1);
		return (lws_http_transaction_completed(wsi));
	case LWS_CALLBACK_ESTABLISHED:
		return (ws_open(wsi, slot));
	case LWS_CALLBACK_CLOSED:
		if (c != NULL)
			ws_closed(c);
		*slot = NULL;
		return (0);
	case LWS_CALLBACK_RECEIVE:
		if (c == NULL)
			return (-1);
		left = lws_remaining_packet_payload(wsi);
		if (c->rx_len + len + left > (size_t)appconf->ws_max_message) {
			lws_close_reason(wsi,
			    LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
			    (unsigned char *)"message too large", 17);
			return (-1);
		}
		if (len > 0) {
			char	*p = realloc(c->rx, c->rx_len + len + 1);

			if (p == NULL)
				return (-1);
			memcpy(p + c->rx_len, in, len);
			c->rx = p;
			c->rx_len += len;
		}
		if (left > 0 || !lws_is_final_fragment(wsi))
			return (0);
		ws_message(c, lws_frame_is_binary(wsi));
		free(c->rx);
		c->rx = NULL;
		c->rx_len = 0;
		return (0);
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return (c != NULL ? ws_writable(wsi, c) : 0);
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
		ws_wake();
		return (0);
	default:
		return (lws_callback_http_dummy(wsi, reason, user, in, len));
	}
}

static const struct lws_protocols ws_protocols[] = {
	{ WS_PROTOCOL, ws_callback, sizeof(struct wsconn *), WS_RX_CHUNK, 0,
	    NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 }
};

/* Pings keep idle sockets (and nginx's timers) alive and find dead ones. */
static const lws_retry_bo_t ws_retry = {
	.secs_since_valid_ping = 30,
	.secs_since_valid_hangup = 75,
};

/* libwebsockets' own log lines, into ours. */
static void
ws_lws_log(int level, const char *line)
{
	size_t	n = strlen(line);

	while (n > 0 && line[n - 1] == '\n')
		n--;
	if (level & LLL_ERR)
		log_warnx("libwebsockets: %.*s", (int)n, line);
	else
		log_info("libwebsockets: %.*s", (int)n, line);
}

/* Wait for SIGTERM, then drain: no new turns, close sockets as they end. */
static void *
ws_signals(void *arg)
{
	const struct timespec	 tick = { 0, 200 * 1000000L };
	sigset_t		*set = arg;
	uint64_t		 deadline;

	front_wait_stop(set);
	log_info("stopping: finishing turns in progress");
	pthread_mutex_lock(&ws_lock);
	ws_stopping = 1;
	pthread_mutex_unlock(&ws_lock);
	deadline = util_now_ms() + WS_DRAIN_MS;
	while (!ws_done && util_now_ms() < deadline) {
		ws_kick();
		(void)nanosleep(&tick, NULL);
	}
	ws_done = 1;
	ws_kick();
	return (NULL);
}

int
main(int argc, char **argv)
{
	struct lws_context_creation_info info;
	struct wsconn	*c;
	pthread_t	*workers, sigthread;
	sigset_t	 set;
	mode_t		 old;
	int		 verbose;
	long		 i, n;

	verbose = front_start("ccgate-ws", argc, argv, &set);

	lws_set_log_level(LLL_ERR | (verbose > 0 ? LLL_WARN : 0), ws_lws_log);
	memset(&info, 0, sizeof info);
	info.options = LWS_SERVER_OPTION_UNIX_SOCK |
	    LWS_SERVER_OPTION_VALIDATE_UTF8;
	info.iface = appconf->ws_listen;
	info.protocols = ws_protocols;
	info.retry_and_idle_policy = &ws_retry;
	info.gid = (gid_t)-1;
	info.uid = (uid_t)-1;
	info.fd_limit_per_thread = (unsigned int)appconf->ws_max_connections +
	    64;
	if (unlink(appconf->ws_listen) == -1 && errno != ENOENT)
		fatal("unlink %s", appconf->ws_listen);
	usage_start();
	spool_start("ws");
	old = umask(0177);
	ws_ctx = lws_create_context(&info);
	umask(old);
	if (ws_ctx == NULL)
		fatalx("cannot listen on %s", appconf->ws_listen);
	front_socket_perms(appconf->ws_listen);

	n = appconf->ws_threads;
	workers = front_threads(n, ws_worker);
	if (pthread_create(&sigthread, NULL, ws_signals, &set) != 0)
		fatalx("pthread_create");
	log_info("listening on %s with %ld threads", appconf->ws_listen, n);

	while (!ws_done) {
		if (lws_service(ws_ctx, 0) < 0) {
			log_warnx("the service loop failed; stopping");
			ws_done = 1;
			if (pthread_kill(sigthread, SIGTERM) != 0)
				fatalx("pthread_kill");
		}
	}
	if (pthread_join(sigthread, NULL) != 0)
		log_warnx("signal thread: join failed");

	/* Cancel what still runs, let the workers end, then close. */
	pthread_mutex_lock(&ws_lock);
	ws_workers_stop = 1;
	for (c = ws_conns; c != NULL; c = c->next)
		ws_cancel_all(c);
	pthread_cond_broadcast(&ws_cond);
	pthread_mutex_unlock(&ws_lock);
	for (i = 0; i < n; i++)
		pthread_join(workers[i], NULL);
	pthread_mutex_lock(&ws_lock);
	ws_ctx_dead = 1;
	pthread_mutex_unlock(&ws_lock);
	lws_context_destroy(ws_ctx);	/* closes the sockets left */
	if (unlink(appconf->ws_listen) == -1 && errno != ENOENT)
		log_warn("unlink %s", appconf->ws_listen);
	spool_stop();
	usage_stop();
	db_end();
	free(workers);
	mysql_library_end();
	appconf_free(appconf);
	log_info("stopped");
	return (0);
}
