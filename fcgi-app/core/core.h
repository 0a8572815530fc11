/*
 * The core of ccgate-fcgi, ccgate-ws and ccgate-admin (libccgate-core.a):
 * configuration, MariaDB, keys, quotas, conversations, usage, audit,
 * administrators, admin tokens, the job-protocol client and the request
 * counters.  Nothing here speaks HTTP or links libfcgi: the HTTP layer
 * (http/http.h) and the front ends build on it, never the other way.
 * Each section below is the file that defines what it declares.
 */
#ifndef CCGATE_CORE_H
#define CCGATE_CORE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "util.h"

/* core/appconf.c: ccgate.conf, one file for every front end. */
#define APP_MAX_MODELS	32

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
	long	 quota_reserve_tokens;	/* a turn without max_tokens */
	long	 key_cache_ms;
	long	 admin_token_ttl_s;
	long	 rotate_grace_s;
	long	 sse_heartbeat_ms;
	long	 db_retry_ms;
	char	*db_hosts;		/* a list; NULL: db_host */
	long	 db_failback_s;		/* the first host tried again */
	long	 db_sync_wait;		/* wsrep_sync_wait; -1: 1 on Galera */
	char	*spool_dir;		/* answers the database did not take */
	char	*cors_origins;		/* "", "*", or a comma list */
	char	*ws_listen;		/* ccgate-ws */
	long	 ws_threads;
	long	 ws_max_message;
	long	 ws_max_connections;
	long	 signature_skew_s;	/* signed requests' clock window */
	long	 idem_window_s;		/* Idempotency-Key answers kept */
	long	 idem_max_answer;	/* the largest answer kept */
	long	 idem_key_bytes;	/* all one API key's answers kept */
	long	 idem_lease_s;		/* 0: job_timeout_ms + 60 s */
	long	 workspace_max_bytes;	/* a tenant's default, 0: none */
	long	 workspace_max_files;
	long	 files_hash_max_bytes;	/* a listing hashes at most */
	long	 verbose;
};

extern struct app_config	*appconf;

struct app_config	*appconf_load(const char *, char **);
void			 appconf_free(struct app_config *);

/* core/db.c: MariaDB, per-thread connections, prepared statements. */
/* A UTC DATETIME column as ISO 8601 text, and that text's format. */
#define SQL_ISO_FORMAT	"'%Y-%m-%dT%H:%i:%sZ'"
#define SQL_ISO(col)	"DATE_FORMAT(" col ", " SQL_ISO_FORMAT ")"

struct db;
#define DB_MAX_HOSTS	16
/* A database host of db_hosts (db_host and db_port: one). */
struct db_host {
	char		*name;		/* NULL: localhost */
	unsigned int	 port;
};
int		 appconf_hosts_parse(const char *, long, struct db_host *,
		     char **);
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
int		 db_retryable(struct db *);
#define DB_TX_AGAIN	(-2)	/* from a db_tx function: run it again */
int		 db_tx(struct db *, int (*)(struct db *, void *), void *);
const char	*db_why(struct db *);

/* core/spool.c: answers the database did not take, on disk. */
void		 spool_start(const char *);
void		 spool_stop(void);
int		 spool_answer(const char *, const char *, const char *,
		     long long, long long, double, const char *, const char *,
		     const char *);
int		 spool_usage(json_t *, const char *);
void		 spool_usage_writer(int (*)(struct db *, json_t *));
int		 spool_ready(void);
void		 db_host_in_use(int *, int *, int *);
const char	*db_error(struct db *);
int		 db_ping(struct db *);
const char	*db_cell(const struct db_res *, size_t, size_t);
void		 db_res_free(struct db_res *);

/* core/auth.c: API keys: format, keyed hash, lookup, the key cache. */
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
	/* Concurrency. */
	long long	 max_concurrent;	/* -1: unlimited */
	/* 1: wait in the pool's queue when at max_concurrent; 0: 429 at once */
	int		 queue;
	/* Request signing: the salt derives the secret (auth_signing_secret). */
	int		 require_signature;
	int		 have_signing_salt;
	uint8_t		 signing_salt[16];
	int		 have_prev_signing_salt;	/* rotation grace */
	uint8_t		 prev_signing_salt[16];
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
int		 auth_model_allowed(const struct apikey *, const char *);
/* The signing secret's text: "ccs_" and 64 hex digits. */
#define SIGNING_SECRET_LEN	68
void		 auth_signing_secret(const char *, const uint8_t [16],
		     char [SIGNING_SECRET_LEN + 1]);

/* core/quota.c: requests and tokens per minute and day. */
int		 quota_admit(const struct apikey *, long *, char *, size_t);
int		 quota_reserve(const struct apikey *, const char *, long long *,
		     int, long long, long long *, long *, char *, size_t);
void		 quota_settle(const struct apikey *, const char *, int,
		     long long);

/* core/conv.c: conversations and their messages, by (tenant, id). */

/* The 404 text of a conversation the tenant does not have. */
#define CONV_MISSING	"conversation not found"
/* The longest title a client may set. */
#define CONV_TITLE_MAX	200

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
int		 conv_delete(struct db *, const char *);
void		 conv_uncache(const char *);
int		 conv_add_answer(struct db *, const char *, const char *,
		     const char *, long long, long long, double);
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

/*
 * An error of an operation shared by HTTP and the command line
 * (core/keys.c defines op_fail).
 */
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

/* core/audit.c */
int		 audit_record(struct db *, const struct actor *, const char *,
		     const char *, const char *, json_t *, json_t *);
void		 audit_cli_actor(struct actor *);

/* core/tenant.c: a tenant's workspace limits. */
int		 tenant_limits(struct db *, const char *, long long *,
		     long long *);
json_t		*tenant_get(struct db *, const char *, struct op_error *);
int		 tenant_update(struct db *, const struct actor *, const char *,
		     json_t *, json_t **, struct op_error *);
int		 tenant_purge(struct db *, const struct actor *, const char *,
		     json_t **, struct op_error *);

/* core/keys.c: a key as administrators manage it. */
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
	long long	 max_concurrent;	/* -1: unlimited */
	int		 queue;			/* wait at max_concurrent */
	int		 require_signature;
	int		 new_signing;		/* make a new signing salt */
	char		 signing_secret[SIGNING_SECRET_LEN + 1]; /* "": none */
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

/* core/jwt.c: admin tokens (HS256). */
int		 jwt_sign(const uint8_t [32], long long, const char *,
		     long long, long long, long long, char *, size_t);
int		 jwt_verify(const uint8_t [32], const char *, long long,
		     long long, long long *, char *, size_t, long long *,
		     char *, size_t);

/* core/adminuser.c: administrators, login, tokens. */
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

/* core/usage.c: usage records, batched off the request path. */
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

/* core/counters.c: this process's request counters. */
#define METRICS_SLOTS		64	/* 0: no route; then the route table's */
#define METRICS_NBUCKETS	13
#define METRICS_NSTATUS		500	/* 100 to 599 */

struct metrics_route {
	const char	*name;		/* NULL: nothing counted yet */
	uint64_t	status[METRICS_NSTATUS];
	uint64_t	bucket[METRICS_NBUCKETS];	/* <= metrics_le_ms[i] */
	uint64_t	count;
	double		sum_s;
};

struct metrics_counts {
	struct metrics_route	route[METRICS_SLOTS];
	uint64_t		tokens_in, tokens_out, cache_read, cache_creation;
	double			cost;
	uint64_t		quota_rejections;
	uint64_t		usage_lost;
	int64_t			spooled;	/* answers in the spool now */
};

extern const long long	metrics_le_ms[METRICS_NBUCKETS];

void		 metrics_request(int, const char *, int, uint64_t, long long,
		     long long, long long, long long, double);
void		 metrics_quota_rejected(void);
void		 metrics_usage_lost(void);
void		 metrics_spool(long);
void		 metrics_read(void (*)(const struct metrics_counts *, void *),
		     void *);

/* core/poolc.c: the client of ccgate-poold's job protocol. */
#define POOLC_ERROR	0
#define POOLC_TIMEOUT	1
#define POOLC_GONE	2

struct poolc;

struct poolc	*poolc_open(const char *, char **);
int		 poolc_send(struct poolc *, json_t *, char **);
json_t		*poolc_next(struct poolc *, int, int, int *, char **);
void		 poolc_close(struct poolc *);
json_t		*poolc_call(const char *, json_t *, int, char **);
json_t		*poolc_call_fd(const char *, json_t *, int, int *, char **);
json_t		*poolc_file_sha256(const char *, const char *, const char *,
		     long long, long long *);

#endif
