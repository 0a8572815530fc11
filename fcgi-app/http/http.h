/*
 * The HTTP layer (libccgate-http.a): the request context and its
 * transports, the route table, input checks and permissions, the turn
 * engine, the three dialects and every route's handler, and /metrics.
 * It builds on the core (core/core.h) and knows no transport: FastCGI
 * (front/fcgi.c) and a WebSocket turn (front/ws.c) each hand it a
 * struct req_transport.  Each section below is the file that defines what
 * it declares.
 */
#ifndef CCGATE_HTTP_H
#define CCGATE_HTTP_H

#include <sys/types.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core.h"

struct request;

/* http/route.c: method + path -> a row of a route table. */
enum dialect {
	DIALECT_NATIVE,
	DIALECT_OPENAI,
	DIALECT_ANTHROPIC,
	DIALECT_PLAIN
};

/* Who may call a route; request.c checks it before the handler runs. */
enum access {
	ACCESS_ANYONE,		/* health, metrics (nginx gates /metrics) */
	ACCESS_KEY,		/* a client key, admitted by its quotas */
	ACCESS_KEY_ONLY,	/* a client key, no quota spent (auth_request) */
	ACCESS_ADMIN		/* an admin token (POST /admin/login) */
};

#define ROUTE_NO_BODY		0x1	/* the body is not read */
#define ROUTE_NO_USAGE		0x2	/* no usage record */
#define ROUTE_KEY_PROTOCOL	0x4	/* the key may come as a subprotocol */
#define ROUTE_IDEMPOTENT	0x8	/* takes an Idempotency-Key (idem.c) */

/* One row of the table: a route and what it needs. */
struct route_def {
	const char	*method;
	const char	*pattern;	/* "/api/conversations/:id" */
	void		(*handler)(struct request *);
	enum access	 access;
	enum dialect	 dialect;
	int		 flags;
};

/* A request's route: its row, or why there is none. */
struct route {
	const struct route_def	*def;	/* NULL: status says why */
	int		 slot;		/* its counters (core/counters.c) */
	enum dialect	 dialect;
	const char	*name;		/* for logs and usage: "/api/chat" */
	char		 param[64];	/* :id */
	int		 status;	/* 0, or 400 / 404 / 405 when def is NULL */
	char		 allow[64];	/* with 405: the Allow header */
	const char	*why;		/* with 400: the path's fault */
};

/*
 * A table of routes, and the checks request.c runs between a key and its
 * quotas (NULL: none): a key's signature (signing.c) and an
 * Idempotency-Key (idem.c).  Each returns 0, or -1 with the answer sent.
 */
struct route_table {
	const struct route_def	*rows;
	size_t			 n;
	int			(*sign)(struct request *);
	int			(*idem)(struct request *);
};

void		 route_match(const struct route_table *, const char *,
		     const char *, struct route *);
const char	*route_query(const char *, const char *, char *, size_t);
const char	*route_path_bad(const char *);

/* http/routes.c: the API's routes. */
extern const struct route_table	http_routes;

/*
 * http/request.c: one request, whatever carried it.  The request owns what
 * it allocates; handlers only borrow.
 */

/* What an answer carries besides its body, for the transport. */
struct req_reply {
	int		 status;
	const char	*ctype;		/* NULL: no body */
	const char	*id;		/* ccgate's request id */
	const char	*headers;	/* "Name: value\r\n" each, maybe "" */
};

/*
 * A transport: how a request's body comes in and its answer goes out.
 * FastCGI (front/fcgi.c), a WebSocket turn (front/ws.c), a batch item
 * (request.c).  Each operation gets the transport's argument.
 */
struct req_transport {
	/* Up to len bytes of the body: 0 at its end, -1 on error. */
	ssize_t	(*read)(void *, char *, size_t);
	/*
	 * A whole answer: body (taken) is the JSON body of ctype, NULL with
	 * ctype set when memory ran out; ctype NULL: no body.
	 */
	void	(*json)(void *, const struct req_reply *, json_t *);
	/* A text answer; NULL: this transport carries JSON only. */
	void	(*text)(void *, const struct req_reply *, const char *);
	/* Open a stream; NULL: this transport cannot stream. */
	int	(*stream)(void *, const struct req_reply *, int);
	/*
	 * One event of the stream: name NULL for a plain "data:" event;
	 * data starting with ':' is a comment (a heartbeat), "[DONE]" the
	 * OpenAI-style end.  flush 0: it may wait for the next one.
	 */
	int	(*event)(void *, const char *, const char *, int);
	/* The descriptor that hangs up when the client leaves. */
	int	(*fd)(void *);
	/* The answer is complete (before usage is recorded); may be NULL. */
	void	(*finish)(void *);
	/*
	 * Raw bytes of an answer (a download): with a reply, its head goes
	 * first.  NULL: this transport cannot.  -1 once the client is gone.
	 */
	int	(*raw)(void *, const struct req_reply *, const char *, size_t);
};

void		 req_serve(const struct route_table *,
		     const struct req_transport *, void *, char **);
int		 req_frame_run(const struct route_table *,
		     const struct req_transport *, void *, char **,
		     const char *, void (*)(struct request *, json_t *),
		     json_t *);
char		*req_json_dumps(const json_t *);
int		 req_json_depth_ok(const char *, size_t, long);
int		 req_client_id_ok(const char *);

const char	*req_param(struct request *, const char *);
const char	*req_header(struct request *, const char *);
const char	*req_id(struct request *);
const char	*req_path(struct request *);
int		 req_raw(struct request *, int, const char *, const char *,
		     size_t);
uint64_t	 req_started_us(const struct request *);
const char	*req_query(struct request *, const char *, char *, size_t);
json_t		*req_json_body(struct request *, int);
json_t		*req_field(struct request *, json_t *, const char *);
const char	*req_unread(struct request *, char *, size_t);
void		 req_add_header(struct request *, const char *, const char *);
void		 req_send_json(struct request *, int, json_t *);
void		 req_send_empty(struct request *, int);
void		 req_send_text(struct request *, int, const char *,
		     const char *);
int		 req_sse_start(struct request *);
void		 req_sse_hold(struct request *, int);
int		 req_sse_data(struct request *, const char *);
int		 req_sse_json(struct request *, json_t *);
int		 req_sse_event(struct request *, const char *, json_t *);
int		 req_sent(struct request *);
void		 req_error(struct request *, int, const char *, const char *,
		     ...) __attribute__((format(printf, 4, 5)));
void		 req_db_down(struct request *);
struct route	*req_route(struct request *);
struct apikey	*req_key(struct request *);
void		 req_set_admin(struct request *, const char *);
const char	*req_ip(struct request *);
void		 req_op_fail(struct request *, const struct op_error *);
void		 req_usage(struct request *, const char *, long long,
		     long long, long long, long long, double, long long,
		     const char *);

int		 req_fd(struct request *);
struct actor	*req_actor(struct request *);
struct request	*req_sub(struct request *, int, size_t);
int		 req_admit(struct request *);
int		 req_reserve(struct request *, long long *);
long long	 req_reserved(const struct request *);
void		 req_settle(struct request *, long long);
const char	*req_body(struct request *, size_t *);
int		 req_status(struct request *);
int		 req_sse_named(struct request *, const char *, const char *);
void		 req_transport_get(struct request *,
		     const struct req_transport **, void **);
void		 req_transport_set(struct request *,
		     const struct req_transport *, void *);

/* http/files.c: a tenant's workspace files (/api/files). */
void		 files_put_handle(struct request *);
void		 files_post_handle(struct request *);
void		 files_get_handle(struct request *);
void		 files_list_handle(struct request *);
void		 files_delete_handle(struct request *);

/* http/signing.c: signed requests (keys with require_signature). */
int		 sign_check(struct request *);
int		 sign_content_sha256(struct request *, uint8_t [32]);

/* http/idem.c: Idempotency-Key on the chat routes. */
int		 idem_begin(struct request *);
json_t		*req_sub_take(struct request *, long long *, long long *,
		     double *);

/* http/input.c: request fields, and the key's permissions for a turn. */
int		 input_str(struct request *, json_t *, const char *, int,
		     size_t, const char **);
int		 input_int(struct request *, json_t *, const char *, long long,
		     long long, long long *);
int		 input_number(struct request *, json_t *, const char *, double,
		     double, double *);
int		 input_bool(struct request *, json_t *, const char *, int *);
int		 input_model(struct request *, json_t *, const char **);

int		 perm_check(struct request *, const char *, int, long long *);

/* http/dialect.c: error shapes and types of the three dialects. */
json_t		*dialect_error(enum dialect, const char *, const char *);
const char	*dialect_error_type(enum dialect, int);
const char	*dialect_upstream_type(enum dialect, const char *);

/*
 * http/turn.c: a chat turn, free of dialect.  turn_run stores the user's
 * message, runs the job, stores the answer; the dialect's turn_ops shape
 * what the client sees: native (chat.c), OpenAI (openai.c), Anthropic
 * (anthropic.c).
 */
struct turn;

struct turn_ops {
	/* A stream begins (headers are out): the dialect's opening events. */
	int	(*start)(struct turn *);
	/* One text delta of a stream. */
	int	(*delta)(struct turn *, const char *);
	/* The turn is done: send the answer (or the stream's last events). */
	void	(*done)(struct turn *);
	/* The turn failed after the stream began. */
	void	(*stream_error)(struct turn *, int, const char *, const char *);
};

struct turn {
	struct request		*r;
	const struct turn_ops	*ops;
	struct conversation	*conv;
	const char		*message;	/* what the user sent */
	const char		*send;		/* what the CLI is sent */
	long long		 max_tokens;
	int			 stream;
	int			 started;	/* ops->start has run */
	int			 resume;
	int			 prime;		/* new session from stored history */
	int			 include_usage;	/* OpenAI stream_options */
	json_t			*done;
	char			*partial;
	char			 code[32];
	char			 error[1024];
	long			 retry_after;	/* s, from the pool's error */
	const char		*missing;	/* the 404 text for a deleted conv */
	uint64_t		 started_ms;
	uint64_t		 job_us;	/* the job went to the pool */
	long long		 ttft_ms;
	long long		 created;	/* unix time, for the answer */
	json_t			*stops;		/* stop sequences, or NULL */
	json_t			*content;	/* message with images, or NULL */
	json_t			*tools;		/* the client's tools, or NULL */
	const char		*must_call;	/* tool_choice: "*", a name, "" */
	json_t			*tool_results;	/* the turn is these, or NULL */
	json_t			*tool_calls;	/* the answer's, once done */
	json_t			*output_schema;	/* structured output, or NULL */
	char			*stored;	/* the answer with its calls */
	/* The upstream's input usage, as the first answer began. */
	int			 have_start_usage;
	int			 ran;		/* the job reached a CLI */
	long long		 start_in, start_cache_read, start_cache_creation;
	/* The answer, once done. */
	const char		*text;
	const char		*session_id;
	const char		*stop_reason;	/* the upstream's: "end_turn"... */
	const char		*stop_sequence;	/* the one that ended it, or NULL */
	long long		 in, out, cache_read, cache_creation;
	double			 cost;
	/*
	 * A tools turn: the workspace files it created, changed or deleted
	 * [{path, size, sha256, change}], or NULL.
	 */
	json_t			*files;
	json_t			*workspace;	/* past its limits, or NULL */
};

void	turn_init(struct turn *, struct request *, const struct turn_ops *,
	    struct conversation *, const char *, long long, int);
void	turn_run(struct turn *);
int	turn_append(char **, const char *, ...)
	    __attribute__((format(printf, 2, 3)));
int	turn_mark_call(char **, const char *, const char *, json_t *);

/* http/compat.c: what the OpenAI and Anthropic dialects share. */
struct compat_msgs {
	char		 *system;
	size_t		  n;
	const char	**roles;	/* "user" or "assistant" */
	char		**texts;	/* images as placeholders */
	json_t		 *content;	/* the last message's blocks, if images */
	json_t		 *tool_results;	/* the last turn's, if tool results */
};

/*
 * Why a client's history was refused: the status (400, or 500 when
 * memory ran out) and what to tell the client.  The parsers need no
 * request, so a fuzz target drives them (tests/fuzz/fuzz_compat.c).
 */
struct compat_err {
	int	status;
	char	msg[256];
};

char	*compat_text(json_t *, const char *, size_t, json_t **,
	     struct compat_err *);
int	 compat_parse(json_t *, int, size_t, struct compat_msgs *,
	     struct compat_err *);
void	 compat_refuse(struct request *, const struct compat_err *);
void	 compat_free(struct compat_msgs *);
int	 compat_conversation(struct request *, const char *,
	     struct compat_msgs *, struct conversation *, int *);
void	 compat_ignored(struct request *);
int	 compat_tools(struct request *, json_t *, int, json_t **, char *,
	     size_t);
int	 compat_schema(struct request *, json_t *, int, json_t **);
int	 compat_model(struct request *, json_t *, const char **);
int	 compat_stops(struct request *, json_t *, const char *, int,
	     json_t **);

/* http/chat.c: the native dialect. */
void		 chat_handle(struct request *);
void		 chat_batch_handle(struct request *);
void		 chat_frame(struct request *, json_t *);
void		 chat_turn(struct request *, struct conversation *,
		     const char *, long long, int, const char *);

/* http/openai.c, http/anthropic.c: the compatible dialects. */
void		 openai_chat_handle(struct request *);
void		 openai_models_handle(struct request *);
void		 openai_model_handle(struct request *);
void		 anthropic_messages_handle(struct request *);
void		 anthropic_count_handle(struct request *);

/* http/convapi.c: /api/conversations. */
void		 conv_create_handle(struct request *);
void		 conv_get_handle(struct request *);
void		 conv_list_handle(struct request *);
void		 conv_delete_handle(struct request *);
void		 conv_continue_handle(struct request *);

/* http/poolinfo.c: the pool and the models as clients and admins see them. */
void		 models_handle(struct request *);
void		 poolinfo_stats_handle(struct request *);
void		 poolinfo_health_handle(struct request *);
void		 poolinfo_init_handle(struct request *);
void		 poolinfo_admin_handle(struct request *);
json_t		*poolinfo_workspaces(void);

/* http/health.c */
void		 health_live(struct request *);
void		 health_ready(struct request *);

/* http/wsauth.c: the WebSocket upgrade's key check. */
void		 ws_auth_handle(struct request *);

/* http/adminapi.c: the /admin/ routes. */
void		 adminapi_login(struct request *);
void		 adminapi_me(struct request *);
void		 adminapi_keys_create(struct request *);
void		 adminapi_keys_list(struct request *);
void		 adminapi_keys_get(struct request *);
void		 adminapi_keys_update(struct request *);
void		 adminapi_tenant_get(struct request *);
void		 adminapi_tenant_update(struct request *);
void		 adminapi_tenant_purge(struct request *);
void		 adminapi_keys_revoke(struct request *);
void		 adminapi_keys_rotate(struct request *);
void		 adminapi_usage(struct request *);
void		 adminapi_requests(struct request *);
void		 adminapi_errors(struct request *);
void		 adminapi_audit(struct request *);

/* http/metrics.c: GET /metrics. */
void		 metrics_handle(struct request *);

#endif
