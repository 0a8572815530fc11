/*
 * ccgate-poold: the one process on a machine that owns claude CLI
 * processes.  Shared declarations of the daemon's files:
 *   poold.c	 start-up, configuration, signals, shutdown
 *   server.c	 the listening socket and its clients (framing)
 *   pool.c	 jobs and scheduling: warm, bound and new processes, queue
 *   proc.c	 one CLI process: spawn, pipes, reaping
 *   workspace.c tenant directories and warm slots
 *   sandbox.c	 the bubblewrap sandbox around each CLI, its settings
 *   egress.c	 the tokens a CLI shows the egress instead of a credential
 *   cli.c	 the CLI's stream-json lines
 *   warm.c	 the warm target: arrivals per profile, spawns, memory
 */
#ifndef CCGATE_POOLD_H
#define CCGATE_POOLD_H

#include <sys/queue.h>
#include <sys/types.h>
#include <limits.h>
#include <stdint.h>

#include <jansson.h>

#include "loop.h"
#include "proto.h"
#include "util.h"

#define POOLD_MAX_PROMPT	(64 * 1024 * 1024)	/* max_frame bounds it */
#define POOLD_MAX_STOPS		8	/* a job's stop sequences */
#define POOLD_MAX_STOP_LEN	256
#define POOLD_MAX_BLOCKS	100	/* a message's text and image blocks */
#define POOLD_MAX_TOOLS		128	/* a client's tools, a turn's results */
#define POOLD_MAX_SCHEMA	(256 * 1024)	/* an output schema, as JSON */
#define POOLD_MAX_MODEL		128
#define POOLD_STDERR_KEEP	2048
#define POOLD_ENV_MAX		64
#define POOLD_SAMPLES		1024
#define POOLD_STOP_GRACE_MS	3000
#define POOLD_SANDBOX_PATHS	16
#define EGRESS_TOKEN_HEX	64
/* The egress's name for ccgate-poold's own requests: no tenant's name. */
#define EGRESS_SELF		"(ccgate-poold)"

/* Where a CLI runs. */
enum sandbox_kind {
	SANDBOX_BWRAP,		/* bubblewrap: namespaces, a filesystem of its own */
	SANDBOX_NONE		/* on the host, as run_as_user (tools refused) */
};

struct job;
struct proc;

/*
 * Where a job's frames go: a client of the job socket (server.c), or a
 * test.  The pool calls started(arg, job) as soon as the job exists (its
 * owner keeps it, to cancel it with pool_cancel), send(arg, frame) for
 * each frame (-1: the peer is gone, the pool cancels the job), finished(arg)
 * once the job is over (the last frame sent), and handed_us(arg) for the
 * moment the last frame reached the kernel (the daemon's own time ends
 * there).
 */
struct job_sink {
	void		 (*started)(void *, struct job *);
	int		 (*send)(void *, json_t *);
	void		 (*finished)(void *);
	uint64_t	 (*handed_us)(void *);
};

/* What a process tells its owner: an output line, and that it is gone. */
typedef void (*proc_line_cb)(struct proc *, const char *, size_t);
typedef void (*proc_gone_cb)(struct proc *);

/* The daemon's configuration, read at start and on SIGHUP. */
struct poold_config {
	char	*socket_path;
	mode_t	 socket_mode;
	char	*socket_group;
	char	*state_dir;
	char	*cli_path;
	char	*cli_env_path;
	char	*default_model;
	char	*cli_real;		/* cli_path with symlinks resolved */
	char	*run_as_user;
	uid_t	 run_uid;
	gid_t	 run_gid;
	int	 sandbox;		/* enum sandbox_kind */
	char	*sandbox_bwrap;
	char	*sandbox_setpriv;
	char	*sandbox_paths[POOLD_SANDBOX_PATHS];	/* extra, read-only */
	int	 nsandbox_paths;
	long	 sandbox_tmp_mb;
	char	*egress_socket;		/* NULL: the CLI has the network */
	int	 egress_oauth;		/* the token as an OAuth token */
	long	 min_instances;
	long	 min_warm;	/* warm even when full: idle bound ones go */
	long	 max_warm;	/* the adaptive target's bound, 0: none */
	long	 warm_window_ms;	/* arrivals counted over */
	long	 warm_profiles;	/* non-default profiles learned, at most */
	long	 max_spawning;	/* CLIs starting at once, 0: any */
	long	 spawn_nice;	/* a starting CLI's nice */
	long	 max_pool_rss_mb;	/* the CLIs' memory, 0: no bound */
	long	 max_instances;
	long	 tenant_max_jobs;
	long	 key_max_jobs;		/* 0: no cap but the tenant's */
	long	 tenant_max_processes;
	long	 queue_max;
	long	 tenant_max_queued;	/* of the queue, for one tenant */
	long	 queue_max_wait_ms;
	long	 job_timeout_ms;
	long	 first_event_timeout_ms;
	long	 stall_timeout_ms;
	long	 idle_timeout_ms;
	long	 max_messages_per_instance;
	long	 max_instance_age_ms;
	long	 health_check_interval_ms;
	long	 shutdown_grace_ms;
	long	 max_frame;
	long	 tool_park_ms;
	long	 rlimit_nofile;
	long	 rlimit_nproc;
	long	 cli_nice;
	long	 verbose;
	long	 cli_max_retries;	/* CLAUDE_CODE_MAX_RETRIES */
	long	 upstream_cooldown_ms;	/* overloaded, a bare 429 */
	long	 upstream_probe_interval_ms;	/* credential rejected */
	long	 temp_retention_s;	/* workspace/temp/, 0: kept */
	long	 temp_sweep_interval_ms;
	char	*env[POOLD_ENV_MAX];	/* "NAME=value" */
	int	 nenv;
};

/* What a process was started for: a job may only run on a match. */
struct profile {
	char	model[POOLD_MAX_MODEL];
	char	*system_prompt;		/* NULL: the CLI's own */
	int	 tools;
	long	 max_tokens;		/* 0: the CLI's default */
	char	*client_tools;		/* the client's (JSON), or NULL */
	char	*output_schema;		/* structured output (JSON), or NULL */
};

enum proc_state {
	PROC_WARM,		/* started ahead of demand, no tenant yet */
	PROC_BOUND,		/* idle, holding one conversation's session */
	PROC_BUSY,		/* running a job */
	PROC_DYING		/* killed, waiting for EOF and waitpid */
};

enum proc_origin {
	ORIGIN_WARM,		/* taken from the warm set */
	ORIGIN_BOUND,		/* the conversation's own live process */
	ORIGIN_SPAWNED,		/* started for this job, new session */
	ORIGIN_RESUMED		/* started for this job with --resume */
};

struct proc {
	pid_t			 pid;
	enum proc_state		 state;
	struct profile		 profile;
	char			 tenant[TENANT_MAX + 1];
	char			 conversation[UUID_LEN + 1];
	char			 session_id[UUID_LEN + 1];
	int			 slot;		/* warm slot number, or -1 */
	pid_t			 cli_pid;	/* the CLI inside the sandbox */
	char			 egress[EGRESS_TOKEN_HEX + 1];	/* "" for none */
	char			 model_seen[POOLD_MAX_MODEL];
	uint64_t		 started_at;
	uint64_t		 last_used_at;
	unsigned		 turns;
	int			 resumed;	/* started with --resume */
	int			 niced;		/* at spawn_nice until it runs */
	/* A learned profile's warm process: for its tenant only. */
	char			 warm_for[TENANT_MAX + 1];
	long			 rss_kb;	/* its tree's, last sampled */

	int			 in_fd;
	int			 out_fd;
	int			 err_fd;
	struct loop_io		 out_io;
	struct loop_io		 err_io;
	struct loop_io		 in_io;
	char			*inbuf;		/* pending stdin bytes */
	size_t			 inlen;
	size_t			 inoff;
	char			*line;		/* stdout line being assembled */
	uint64_t		 read_us;	/* when its last bytes came */
	size_t			 linelen;
	size_t			 linecap;
	char			 errtail[POOLD_STDERR_KEEP];
	size_t			 errlen;
	int			 eof;
	int			 reaped;
	int			 crashed;	/* exited without being killed */
	int			 delete_home;	/* its conversation was deleted */
	int			 delete_tenant;	/* its tenant was purged */
	uint64_t		 kill_at;	/* stopping: SIGKILL from then */
	int			 status;

	int			 untrusted;	/* a turn of its failed */
	/*
	 * A turn whose model called the client's tools waits here for their
	 * results (the client's next request): the CLI's tools/call requests
	 * by tool use id, results that came before their call, and the ids
	 * the client was asked for.
	 */
	int			 parked;
	uint64_t		 parked_at;
	char			 parked_key[TENANT_MAX + 1]; /* whose turn */
	unsigned		 mcp_asked;	/* MCP requests but calls */
	json_t			*waiting;	/* id -> {request_id, rpc_id} */
	json_t			*held;		/* id -> the client's result */
	json_t			*asked;		/* [id] */

	struct job		*job;
	proc_line_cb		 line_cb;
	proc_gone_cb		 gone_cb;
	TAILQ_ENTRY(proc)	 entry;
};
TAILQ_HEAD(procs, proc);

enum job_state {
	JOB_NEW,		/* validated, not yet queued */
	JOB_QUEUED,
	JOB_RUNNING,
	JOB_FINISHED
};

struct job {
	const struct job_sink	*sink;		/* NULL once cancelled */
	void			*sink_arg;
	enum job_state		 state;
	char			 id[64];
	char			 tenant[TENANT_MAX + 1];
	char			 key[TENANT_MAX + 1];	/* "" for none */
	long			 key_max;	/* the key's own limit, 0: none */
	int			 no_queue;	/* at key_max: refuse, not queue */
	char			 conversation[UUID_LEN + 1];
	char			 resume[UUID_LEN + 1];	/* "" for none */
	struct profile		 profile;
	char			*message;
	json_t			*content;	/* with images: the CLI's blocks */
	uint64_t		 accepted_at;
	uint64_t		 accepted_us;	/* frame decoded */
	uint64_t		 handed_us;	/* turn written to the CLI */
	int			 waited;	/* was queued: no overhead sample */
	int			 new_block;	/* next delta starts a paragraph */
	uint64_t		 started_at;
	uint64_t		 first_event_at;
	uint64_t		 last_output_at;
	long			 timeout_ms;
	int			 attempts;
	int			 got_output;
	enum proc_origin	 origin;
	struct proc		*proc;
	char			*text;
	size_t			 textlen;
	size_t			 textcap;
	char			 session_id[UUID_LEN + 1];
	int			 retries_seen;
	int			 last_retry_status;
	/* What the CLI said of the upstream account (upstream.c). */
	long long		 retry_ms;	/* the CLI's last retry wait */
	long long		 resets_at;	/* a rejected plan limit's */
	/*
	 * What the client has been sent of text: a stop sequence's
	 * possible beginning is held back until it is known not to be one.
	 */
	size_t			 sent;
	char			*stops[POOLD_MAX_STOPS];
	int			 nstops;
	int			 stop_hit;	/* stops[] index, or -1 */
	char			 stop_reason[32]; /* the upstream's last */
	int			 halted;	/* interrupted: output ignored */
	int			 usage_sent;	/* the input usage went out */
	/* The client's tools: its own, and the turn's results for them. */
	json_t			*client_tools;
	json_t			*tool_results;
	json_t			*calls;		/* this answer's, for the client */
	int			 tool_turn;	/* resumes a parked turn */
	char			 must_call[72];	/* tool_choice: "*", a name */
	int			 must_asked;	/* times the model was told */
	long long		 s_in, s_out, s_cache_read, s_cache_creation;
	/* A tools turn: its workspace before it ran (files.c), for done. */
	json_t			*ws_before;
	int			 ws_partial;
	TAILQ_ENTRY(job)	 entry;
};
TAILQ_HEAD(jobs, job);

/* Counters and samples for statistics. */
struct poold_stats {
	uint64_t	jobs;
	uint64_t	succeeded;
	uint64_t	failed;
	uint64_t	cancelled;
	uint64_t	busy;
	uint64_t	timeouts;
	uint64_t	cli_failed;
	uint64_t	upstream_errors;
	uint64_t	resume_failed;
	uint64_t	retried;
	uint64_t	spawned;
	uint64_t	spawned_warm;
	uint64_t	spawn_failed;
	uint64_t	exited;
	uint64_t	recycled;
	uint64_t	evicted;
	uint64_t	stale_sessions;	/* bound processes behind their conversation */
	uint64_t	unhealthy;
	uint64_t	by_origin[4];
	uint32_t	ttfe[POOLD_SAMPLES];	/* time to first event, ms */
	uint32_t	dur[POOLD_SAMPLES];	/* job duration, ms */
	uint32_t	qwait[POOLD_SAMPLES];	/* time queued, ms */
	uint32_t	overhead[POOLD_SAMPLES]; /* daemon's own time, us */
	uint32_t	spawn[POOLD_SAMPLES];	/* the same with a spawn, us */
	uint64_t	nttfe;
	uint64_t	ndur;
	uint64_t	nqwait;
	uint64_t	noverhead;
	uint64_t	nspawn;
	uint64_t	started_at;
};

/*
 * The upstream account as ccgate-poold's own checks find it (upstream.c):
 * ok, limited until a time, overloaded for a cool-down, or its credential
 * rejected.  Deadlines on the daemon's clock; reset is the epoch the
 * upstream named.
 */
enum upstream_state {
	UPSTREAM_OK,
	UPSTREAM_LIMITED,
	UPSTREAM_OVERLOADED,
	UPSTREAM_CREDENTIAL
};
#define UPSTREAM_NSTATES	4
struct upstream {
	enum upstream_state	 state;
	uint64_t		 until;		/* the next check may run */
	long long		 since;		/* epoch seconds */
	long long		 reset;		/* LIMITED: epoch, or 0 */
	int			 status;	/* the upstream's last */
	struct count		*check;		/* the check running, or NULL */
	uint64_t		 check_started;
	long long		 last_check;	/* epoch of the last one's end */
	int			 last_check_status; /* its status, 0: none */
	uint64_t		 changes;
	uint64_t		 errors[UPSTREAM_NSTATES]; /* by what followed */
	uint64_t		 refused;
	uint64_t		 checks;
	uint64_t		 hints;		/* CLIs' reports of an error */
	json_t			*pending;	/* changes not yet audited */
};
/* Changes of state kept for a ccgate-fcgi to audit, at most. */
#define UPSTREAM_MAX_PENDING	32

/*
 * The warm target (warm.c): new conversations' arrivals per profile in
 * buckets of WARM_BUCKET_MS over warm_window_ms, and the targets they
 * give; profiles other than the default are learned when they recur.
 */
#define WARM_BUCKET_MS		1000
#define WARM_BUCKETS		60	/* warm_window_ms is at most this */
#define WARM_PROFILES_MAX	16
#define WARM_SEEN		32	/* non-default profiles seen once */
#define WARM_SEEN_TENANT	4	/* of which one tenant's, at most */
#define WARM_PROMPT_MAX		(256 * 1024)	/* a learned system prompt */
struct warm_rate {
	uint64_t	idx[WARM_BUCKETS];	/* the bucket's number */
	uint32_t	n[WARM_BUCKETS];
};
struct warm_profile {
	int			 used;
	uint64_t		 hash;
	struct profile		 profile;
	char			 tenant[TENANT_MAX + 1]; /* whose it is */
	struct warm_rate	 rate;
	long			 demand;
	long			 target;
};
struct warm_seen {
	uint64_t		 hash;
	uint64_t		 at;
	char			 tenant[TENANT_MAX + 1];
};
struct warm_state {
	struct warm_rate	 def;		/* the default profile's */
	long			 def_demand;
	long			 def_target;
	struct warm_profile	 learned[WARM_PROFILES_MAX];
	struct warm_seen	 seen[WARM_SEEN];
	uint64_t		 spawn_ms;	/* a spawn's time, estimated */
	long			 rss_kb;	/* the CLIs', last sampled */
	long			 rss_peak_kb;	/* one CLI's most */
	int			 rss_known;	/* a started one was seen */
	uint64_t		 rss_at;
	uint64_t		 arrivals;
	uint64_t		 learned_n;
	uint64_t		 refused;	/* not learned: no room, or cap */
};

/* The daemon. */
struct poold {
	struct poold_config	*cf;
	char			*config_path;
	struct loop		*loop;
	int			 listen_fd;
	struct loop_io		 listen_io;
	struct procs		 procs;
	struct jobs		 queue;
	int			 nprocs;
	int			 draining;
	int			 stopping;
	uint64_t		 stop_deadline;
	uint64_t		 last_health;
	int			 next_slot;
	int			 run_as_root;	/* the daemon runs as root */
	struct job		*submitting;	/* the job pool_submit places */
	int			 warm_failures;
	uint64_t		 warm_backoff_until;
	char			*neutral_dir;
	uint64_t		 (*clock)(void);	/* ms: util_now_ms */
	struct poold_stats	 stats;
	struct upstream		 upstream;
	struct warm_state	 warm;
};

extern struct poold	*poold;

/* The time deadlines are measured in (a test may make its own clock). */
#define poold_now()	(poold->clock())

/* poold.c */
struct poold_config	*poold_config_load(const char *, char **);
void			 poold_config_free(struct poold_config *);

/* server.c */
int		 server_listen(const char *, mode_t, const char *, char **);
void		 server_accept_cb(struct loop_io *, uint32_t);
void		 server_close_all(void);

/* pool.c */
int		 pool_submit(const struct job_sink *, void *, json_t *,
		     char **);
void		 pool_cancel(struct job *);
void		 pool_tick(void *);
void		 pool_dispatch(void);
json_t		*pool_stats(void);
int		 pool_set_limits(json_t *, char **);
int		 pool_delete(json_t *, char **);
int		 pool_purge(json_t *, char **);
void		 pool_shutdown(void);
int		 pool_idle(void);
int		 profile_equal(const struct profile *,
		     const struct profile *);
void		 profile_clear(struct profile *);
int		 profile_copy(struct profile *, const struct profile *);

/* warm.c */
void		 warm_arrival(const struct job *);
void		 warm_update(void);
long		 warm_keep(const struct profile *, const char *);
long		 warm_reserve(void);
const struct profile *warm_short(const char **);
int		 warm_spawning(void);
int		 warm_may_spawn(void);
int		 warm_mem_room(void);
int		 warm_over_memory(void);
void		 warm_sample(void);
void		 warm_spawn_time(uint64_t);
json_t		*warm_stats(void);
void		 warm_free(void);
int		 warm_is_default(const struct profile *);

/* upstream.c */
struct cli_msg;
int		 upstream_admit(struct job *, json_t **);
json_t		*upstream_failed(struct job *, const struct cli_msg *,
		     const char **);
json_t		*upstream_take(void);
void		 upstream_untake(json_t *);
void		 upstream_tick(void);
void		 upstream_probe_now(const char *);
void		 upstream_free(void);
json_t		*upstream_stats(void);
const char	*upstream_state_name(enum upstream_state);

/* proc.c: a growing NULL-terminated vector of strings (argv, envp). */
struct strv {
	char	**v;
	size_t	  n;
	size_t	  cap;
	int	  failed;	/* an allocation failed: the vector is short */
};
void		 strv_add(struct strv *, const char *, ...)
		     __attribute__((format(printf, 2, 3)));
void		 strv_free(struct strv *);

struct proc	*proc_spawn(const struct profile *, const char *, const char *,
		     const char *, int, proc_line_cb, proc_gone_cb, char **);
pid_t		 proc_cli_pid(struct proc *);
void		 proc_exit_text(const struct proc *, char *, size_t);
int		 proc_write(struct proc *, const char *, size_t);
void		 proc_kill(struct proc *);
void		 proc_stop(struct proc *);
void		 proc_tick(uint64_t);
void		 proc_reap(void);
void		 proc_free(struct proc *);
long		 proc_rss_kb(pid_t);
long		 proc_tree_rss_kb(pid_t);
int		 proc_renice(struct proc *, int);
char		 proc_sched_state(pid_t);

/* files.c */
extern int	 files_no_openat2;
json_t		*files_handle(json_t *, int *);
int		 files_type(const char *);
json_t		*files_snapshot(const char *, int *);
json_t		*files_changes(const char *, json_t *, int *);
json_t		*files_tenant_usage(const char *);
void		 files_forget(const char *);
void		 files_tick(uint64_t);

/* workspace.c */
int		 workspace_mkdir(const char *, mode_t, uid_t, gid_t, char **);
int		 workspace_init(const char *, char **);
int		 workspace_tenant(const char *, const char *, char **);
char		*workspace_path(const char *, const char *, const char *);
int		 workspace_home(const char *, const char *, const char *, char *,
		     size_t, char **);
int		 workspace_home_exists(const char *, const char *,
		     const char *);
int		 workspace_slot_create(const char *, int, char **);
int		 workspace_slot_bind(const char *, int, const char *,
		     const char *, char **);
void		 workspace_slot_remove(const char *, int);
int		 workspace_delete_tenant(const char *, const char *);
void		 workspace_trash_step(const char *, long);
int		 workspace_delete_home(const char *, const char *,
		     const char *);

/* sandbox.c */
#define SANDBOX_HOME		"/home/claude"
#define SANDBOX_WORKSPACE	"/workspace"
#define SANDBOX_EGRESS_DIR	"/run/ccgate-egress"
#define SANDBOX_PROMPT		"/run/ccgate/system-prompt"
#define SANDBOX_PROMPT_FD	3
int		 sandbox_egress_dir(const struct poold_config *, char *,
		     size_t);
int		 sandbox_check(const struct poold_config *, char **);
int		 sandbox_init(const char *, char **);
void		 sandbox_args(struct strv *, const char *, const char *, int);
void		 sandbox_cli_args(struct strv *, int);

/* count.c */
struct count;
typedef void	(*count_done_cb)(void *, json_t *);
typedef void	(*count_answer_cb)(void *, int, const char *, const char *,
		    size_t);
struct count	*count_start(const char *, json_t *, count_done_cb, void *,
		     const char **, char **);
void		 count_cancel(struct count *);
struct count	*count_message(json_t *, size_t, count_answer_cb, void *,
		     char **);
int		 count_header(const char *, const char *, char *, size_t);

/* egress.c */
int		 egress_init(const char *, char **);
int		 egress_issue(const char *, const char *,
		     char [EGRESS_TOKEN_HEX + 1], char **);
int		 egress_bind(const char *, const char *, const char *, char **);
void		 egress_revoke(const char *, const char *);

#endif
