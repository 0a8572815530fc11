/*
 * ccgate-fcgi and ccgate-admin: shared declarations.
 *
 * The core (auth, db, conversations, chat turns, dialects) is kept apart
 * from the FastCGI transport (fcgi.c, request.c) so that another front end
 * (the WebSocket one) can reuse it.
 *   appconf.c	 configuration
 *   db.c	 MariaDB: per-thread connections, prepared statements, retry
 *   auth.c	 API keys: format, keyed hash, lookup, permissions
 *   quota.c	 requests and tokens per minute and day
 *   route.c	 method + path -> handler
 *   request.c	 the request context over FastCGI; responses, SSE
 *   dialect.c	 error and answer shapes of the three API dialects
 *   input.c	 validation of request fields
 *   poolc.c	 client of ccgate-poold (poolc.h)
 *   chat.c	 chat turns (turn.h), the native dialect
 *   openai.c	 the OpenAI-compatible dialect
 *   anthropic.c the Anthropic-compatible dialect
 *   compat.c	 what those two share (compat.h)
 *   conv.c	 conversations
 *   health.c	 /healthz, /readyz
 *   poolinfo.c	 /api/cli-pool/ routes, /admin/pool and /api/models
 *   keys.c	 key management (admin API and ccgate-admin)
 *   adminuser.c administrators: accounts, login, tokens
 *   jwt.c	 admin tokens (HS256)
 *   audit.c	 the audit log
 *   adminapi.c	 the /admin/ routes
 *   metrics.c	 /metrics (Prometheus)
 *   usage.c	 usage records, batched off the request path
 *   wsauth.c	 the WebSocket upgrade's key check (nginx auth_request)
 *   front.c	 start-up, signals and threads of the two front ends
 *
 * ws.c is the WebSocket front end (ccgate-ws), fcgi.c the FastCGI one.
 */
#ifndef CCGATE_APP_H
#define CCGATE_APP_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "util.h"

#define APP_MAX_MODELS	32

struct request;

/* Configuration of ccgate-fcgi and ccgate-admin (one file, ccgate.conf). */
struct app_config {
	char	*listen;
	long	 listen_mode;
	char	*listen_group;
	long	 threads;
	char	*db_host;
	long	 db_port;
	char	*db_socket;
	char	*db_user;
	char	*db_password;
	char	*db_name;
	long	 db_timeout_s;
	long	 db_connections;
	char	*key_secret_file;
	uint8_t	 key_secret[32];
	int	 have_secret;
	char	*admin_secret_file;	/* signs admin tokens */
	uint8_t	 admin_secret[32];
	int	 have_admin_secret;
	char	*poold_socket;
	long	 max_body;
	long	 max_message;
	long	 max_json_depth;
	long	 job_timeout_ms;
	char	*default_model;
	char	*models[APP_MAX_MODELS];
	int	 nmodels;
	char	*node;
	char	*sql_dir;
	long	 batch_max;
	long	 key_cache_ms;
	long	 admin_token_ttl_s;
	long	 rotate_grace_s;
	long	 sse_heartbeat_ms;
	long	 db_retry_ms;
	char	*cors_origins;		/* "", "*", or a comma list */
	char	*ws_listen;		/* ccgate-ws */
	long	 ws_threads;
	long	 ws_max_message;
	long	 ws_max_connections;
	long	 verbose;
};

extern struct app_config	*appconf;

struct app_config	*appconf_load(const char *, char **);
void			 appconf_free(struct app_config *);

/* front.c: what ccgate-fcgi and ccgate-ws share around their transport. */
int		 front_start(const char *, int, char **, sigset_t *);
void		 front_socket_perms(const char *);
pthread_t	*front_threads(long, void *(*)(void *));
void		 front_wait_stop(sigset_t *);

/* A UTC DATETIME column as ISO 8601 text, and that text's format. */
#define SQL_ISO_FORMAT	"'%Y-%m-%dT%H:%i:%sZ'"
#define SQL_ISO(col)	"DATE_FORMAT(" col ", " SQL_ISO_FORMAT ")"

/* db.c */
struct db;
struct db_res {
	size_t		 nrows;
	size_t		 ncols;
	char		**cells;	/* nrows * ncols, NULL for SQL NULL */
	unsigned long	*lens;
};

struct db	*db_thread(void);
void		 db_release(void);
int		 db_warm(int);
void		 db_end(void);
int		 db_connect(struct db *, char **);
int		 db_run(struct db *, struct db_res **, uint64_t *, const char *,
		     const char *, ...);
int		 db_exec_multi(struct db *, const char *, char **);
int		 db_begin(struct db *);
int		 db_commit(struct db *);
int		 db_rollback(struct db *);
const char	*db_error(struct db *);
int		 db_ping(struct db *);
const char	*db_cell(const struct db_res *, size_t, size_t);
void		 db_res_free(struct db_res *);

/* auth.c */
#define KEY_PREFIX	"ccg_"
#define KEY_ID_LEN	16
#define KEY_SECRET_LEN	43
#define KEY_LEN		(4 + KEY_ID_LEN + 1 + KEY_SECRET_LEN)

struct apikey {
	char		 id[KEY_ID_LEN + 1];
	char		 tenant[TENANT_MAX + 1];
	char		 name[128];
	char		 status[16];
	/* Limits: -1 is unlimited. */
	long long	 rpm;
	long long	 rpd;
	long long	 tpd;
	/* Permissions. */
	char		 models[1024];	/* a JSON array, or "" for all */
	long long	 max_tokens;	/* 0: no cap */
	int		 allow_streaming;
	int		 allow_tools;
};

enum auth_result {
	AUTH_OK = 0,
	AUTH_MISSING,
	AUTH_MALFORMED,
	AUTH_UNKNOWN,
	AUTH_SUSPENDED,
	AUTH_EXPIRED,
	AUTH_REVOKED,
	AUTH_DB_ERROR
};

int		 auth_key_id_valid(const char *);
int		 auth_key_parse(const char *, char [KEY_ID_LEN + 1]);
void		 auth_key_hash(const uint8_t [32], const char *,
		     uint8_t [32]);
int		 auth_key_make(const char *, char [KEY_LEN + 1]);
int		 auth_key_generate(char [KEY_LEN + 1], char [KEY_ID_LEN + 1]);
enum auth_result auth_check(const char *, struct apikey *);
const char	*auth_strerror(enum auth_result);
int		 auth_load_secret(const char *, uint8_t [32], char **);
int		 auth_model_allowed(const struct apikey *, const char *);
int		 perm_check(struct request *, const char *, int, long long *);
const char	*auth_ws_protocol_key(const char *, char *, size_t);

/* quota.c */
int		 quota_admit(const struct apikey *, long *, char *, size_t);
void		 quota_charge(const struct apikey *, long long);

/* route.c */
enum dialect {
	DIALECT_NATIVE,
	DIALECT_OPENAI,
	DIALECT_ANTHROPIC,
	DIALECT_PLAIN
};

enum route_id {
	ROUTE_NONE = 0,
	ROUTE_HEALTHZ,
	ROUTE_READYZ,
	ROUTE_CHAT,
	ROUTE_CHAT_BATCH,
	ROUTE_CONV_CREATE,
	ROUTE_CONV_GET,
	ROUTE_CONV_LIST,
	ROUTE_CONV_DELETE,
	ROUTE_CONV_CONTINUE,
	ROUTE_MODELS,
	ROUTE_POOL_STATS,
	ROUTE_POOL_HEALTH,
	ROUTE_POOL_INIT,
	ROUTE_OPENAI_CHAT,
	ROUTE_OPENAI_MODELS,
	ROUTE_ANTHROPIC_MESSAGES,
	ROUTE_ADMIN_LOGIN,
	ROUTE_ADMIN_ME,
	ROUTE_ADMIN_KEYS_CREATE,
	ROUTE_ADMIN_KEYS_LIST,
	ROUTE_ADMIN_KEYS_GET,
	ROUTE_ADMIN_KEYS_UPDATE,
	ROUTE_ADMIN_KEYS_REVOKE,
	ROUTE_ADMIN_KEYS_ROTATE,
	ROUTE_ADMIN_USAGE,
	ROUTE_ADMIN_REQUESTS,
	ROUTE_ADMIN_ERRORS,
	ROUTE_ADMIN_POOL,
	ROUTE_ADMIN_POOL_INIT,
	ROUTE_ADMIN_AUDIT,
	ROUTE_METRICS,
	ROUTE_WS,
	ROUTE_MAX
};

struct route {
	enum route_id	 id;
	enum dialect	 dialect;
	const char	*name;		/* for logs and usage: "/api/chat" */
	char		 param[64];	/* :id */
	int		 status;	/* 0, or 404 / 405 when id is NONE */
	char		 allow[64];	/* with 405: the Allow header */
};

void		 route_match(const char *, const char *, struct route *);
const char	*route_name(enum route_id);
const char	*route_query(const char *, const char *, char *, size_t);

/* request.c: one request over FastCGI; owns what it allocates. */
struct request;

const char	*req_param(struct request *, const char *);
const char	*req_header(struct request *, const char *);
const char	*req_id(struct request *);
uint64_t	 req_started_us(const struct request *);
const char	*req_query(struct request *, const char *, char *, size_t);
json_t		*req_json_body(struct request *, int);
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
int		 req_authenticate(struct request *);
int		 req_authenticate_key(struct request *);
void		 req_set_admin(struct request *, const char *);
void		 req_usage(struct request *, const char *, long long,
		     long long, long long, long long, double, long long,
		     const char *);

/* input.c */
int		 input_str(struct request *, json_t *, const char *, int,
		     size_t, const char **);
int		 input_int(struct request *, json_t *, const char *, long long,
		     long long, long long *);
int		 input_number(struct request *, json_t *, const char *, double,
		     double, double *);
int		 input_bool(struct request *, json_t *, const char *, int *);
int		 input_model(struct request *, json_t *, const char **);

/* dialect.c */
json_t		*dialect_error(enum dialect, const char *, const char *);
const char	*dialect_error_type(enum dialect, int);

/* chat.c, conv.c, health.c */
void		 chat_handle(struct request *);
void		 chat_batch_handle(struct request *);
void		 chat_frame(struct request *, json_t *);
void		 ws_auth_handle(struct request *);
void		 conv_create_handle(struct request *);
void		 conv_get_handle(struct request *);
void		 conv_list_handle(struct request *);
void		 conv_delete_handle(struct request *);
void		 conv_continue_handle(struct request *);
void		 models_handle(struct request *);
void		 openai_chat_handle(struct request *);
void		 openai_models_handle(struct request *);
void		 anthropic_messages_handle(struct request *);
void		 poolinfo_stats_handle(struct request *);
void		 poolinfo_health_handle(struct request *);
void		 poolinfo_init_handle(struct request *);
void		 poolinfo_admin_handle(struct request *);
void		 health_live(struct request *);
void		 health_ready(struct request *);

/* Conversations, shared by the routes and the chat turn. */

/* The 404 text of a conversation the tenant does not have. */
#define CONV_MISSING	"conversation not found"

struct conversation {
	char	 id[UUID_LEN + 1];
	char	 tenant[TENANT_MAX + 1];
	char	*title;
	char	*model;
	char	*system_prompt;
	char	 cli_session_id[UUID_LEN + 1];
	char	 created_at[32];
	char	 history_hash[65];
	int	 fresh;		/* made by this request: nothing stored yet */
	int	 cached;	/* from this process's cache: not yet checked */
};

int		 conv_load(struct db *, const char *, const char *,
		     struct conversation *);
int		 conv_lookup(struct db *, const char *, const char *,
		     struct conversation *);
int		 conv_add_user_message(struct db *, struct conversation *,
		     const char *, const char *);
int		 conv_set_history(struct db *, struct conversation *,
		     const char *);
void		 conv_cache_counts(uint64_t *, uint64_t *);
int		 conv_insert(struct db *, const struct apikey *, const char *,
		     const char *, const char *, struct conversation *);
void		 conv_clear(struct conversation *);
int		 conv_forget_session(struct db *, struct conversation *);
int		 conv_add_message(struct db *, const char *, const char *,
		     const char *, const char *, long long, long long,
		     double);
int		 conv_set_session(struct db *, const char *, const char *,
		     const char *);
void		 conv_chain(const char *, const char *, const char *,
		     char [65]);
int		 conv_find_history(struct db *, const char *, const char *,
		     struct conversation *);
char		*conv_title_from_message(const char *);
void		 chat_turn(struct request *, struct conversation *,
		     const char *, long long, int, const char *);

/* An error of an operation shared by HTTP and the command line. */
struct op_error {
	int	 status;		/* the HTTP status it answers */
	char	 msg[512];
};

void		 op_fail(struct op_error *, int, const char *, ...)
		     __attribute__((format(printf, 3, 4)));

/* Who makes a change, for the audit log. */
struct actor {
	char	 name[100];		/* admin:<name>, cli:<user> */
	char	 ip[64];
};

/* audit.c */
int		 audit_record(struct db *, const struct actor *, const char *,
		     const char *, const char *, json_t *, json_t *);
void		 audit_cli_actor(struct actor *);

/* keys.c: a key as administrators manage it. */
struct keyrec {
	char		 id[KEY_ID_LEN + 1];
	char		 name[101];
	char		 tenant[TENANT_MAX + 1];
	char		 status[16];
	char		 created_at[32];
	char		 expires_at[32];	/* "" for none */
	char		 last_used_at[32];
	char		 prev_until[32];	/* old secret valid until */
	int		 time_expired;		/* expires_at has passed */
	long long	 rpm, rpd, tpd;		/* -1: unlimited */
	json_t		*models;		/* NULL: every model */
	long long	 max_tokens;		/* -1: no cap */
	int		 allow_streaming;
	int		 allow_tools;
	json_t		*metadata;
};

int		 keys_load(struct db *, const char *, int, struct keyrec *,
		     struct op_error *);
void		 keyrec_clear(struct keyrec *);
json_t		*keys_json(const struct keyrec *);
int		 keys_parse_time(const char *, char [32]);
int		 keys_apply(struct keyrec *, json_t *, int, struct op_error *);
int		 keys_create(struct db *, const struct actor *, json_t *,
		     char [KEY_LEN + 1], json_t **, struct op_error *);
int		 keys_update(struct db *, const struct actor *, const char *,
		     json_t *, json_t **, struct op_error *);
int		 keys_revoke(struct db *, const struct actor *, const char *,
		     json_t **, struct op_error *);
int		 keys_rotate(struct db *, const struct actor *, const char *,
		     long long, char [KEY_LEN + 1], json_t **,
		     struct op_error *);
json_t		*keys_list(struct db *, const char *, const char *, long long,
		     long long, struct op_error *);

/* jwt.c */
int		 jwt_sign(const uint8_t [32], long long, const char *,
		     long long, long long, long long, char *, size_t);
int		 jwt_verify(const uint8_t [32], const char *, long long,
		     long long, long long *, char *, size_t, long long *,
		     char *, size_t);

/* adminuser.c */
json_t		*admuser_list(struct db *, struct op_error *);
int		 admuser_create(struct db *, const struct actor *,
		     const char *, const char *, struct op_error *);
int		 admuser_change(struct db *, const struct actor *,
		     const char *, const char *, const char *,
		     struct op_error *);
int		 admuser_login(struct db *, const char *, const char *,
		     const char *, char *, size_t, json_t **, long long *,
		     struct op_error *);
int		 admuser_check_token(struct db *, const char *,
		     struct actor *, struct op_error *);

/* The longest client X-Request-Id kept (usage_logs.client_request_id). */
#define REQ_CLIENT_ID_MAX	128

/* usage.c: one request's usage record. */
struct usage_rec {
	char		 request_id[64];
	char		*client_request_id;		/* owned, may be NULL */
	char		 key_id[KEY_ID_LEN + 1];	/* "" for none */
	char		 tenant[TENANT_MAX + 1];	/* "" for none */
	char		 route[128];
	char		 method[16];
	char		*endpoint;			/* owned */
	char		*model;				/* owned, may be NULL */
	char		*error;				/* owned, may be NULL */
	int		 status;
	long long	 in, out, cache_read, cache_creation;
	long long	 ttft;
	long long	 duration_ms;
	double		 cost;
	uint64_t	 at_ms;				/* wall clock */
};

void		 usage_start(void);
void		 usage_stop(void);
void		 usage_submit(struct usage_rec *);

/* metrics.c */
void		 metrics_request(enum route_id, int, uint64_t, long long,
		     long long, long long, long long, double);
void		 metrics_quota_rejected(void);
void		 metrics_usage_lost(void);
void		 metrics_handle(struct request *);

/* adminapi.c */
int		 adminapi_authenticate(struct request *, struct actor *);
void		 adminapi_login(struct request *);
void		 adminapi_me(struct request *);
void		 adminapi_keys_create(struct request *);
void		 adminapi_keys_list(struct request *);
void		 adminapi_keys_get(struct request *);
void		 adminapi_keys_update(struct request *);
void		 adminapi_keys_revoke(struct request *);
void		 adminapi_keys_rotate(struct request *);
void		 adminapi_usage(struct request *);
void		 adminapi_requests(struct request *);
void		 adminapi_errors(struct request *);
void		 adminapi_audit(struct request *);

#endif
