/*
 * ccgate-poold's scheduler (pool.c with proc.c and workspace.c) against a
 * stand-in CLI (stub-cli.py), without the socket: jobs go in through
 * pool_submit with a test's job sink, the event loop runs a round at a
 * time, and deadlines are read from a clock the test moves.  Covers the
 * placement order (bound, warm, spawn, queue), eviction, tenant and key
 * caps, one conversation's turns in order, the first-event, stall, job
 * and queue timeouts, recycling, a crash retried once, and a CLI that
 * reports another model.
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <check.h>
#include <jansson.h>

#include "poold.h"
#include "proto.h"
#include "unit.h"

struct poold	*poold;

static uint64_t	fake_ms;

/* Deadlines are read here: the test moves it with advance(). */
static uint64_t
test_clock(void)
{
	return (fake_ms);
}

/* A job as the test sees it: its frames and when it ended. */
struct tjob {
	struct job	*job;
	json_t		*frames;
	int		 finished;
	int		 order;		/* 1 for the first job to end, ... */
	char		 conv[64];
};

/*
 * What the conversations' rows would hold: the session each one's last
 * answered turn ended in.  submit sends it as "resume", as ccgate-fcgi
 * does, unless the test names its own.
 */
#define MAX_TCONVS	16
static struct {
	char	conv[64];
	char	session[64];
} tconvs[MAX_TCONVS];

/* The row of a conversation (a new one if need be). */
static char *
tconv_session(const char *conv)
{
	int	i;

	for (i = 0; i < MAX_TCONVS; i++) {
		if (tconvs[i].conv[0] == '\0')
			snprintf(tconvs[i].conv, sizeof tconvs[i].conv, "%s",
			    conv);
		if (strcmp(tconvs[i].conv, conv) == 0)
			return (tconvs[i].session);
	}
	ck_abort_msg("more than %d conversations", MAX_TCONVS);
	return (NULL);
}

static int	ended;

/* Every job a test submitted, freed by teardown. */
#define MAX_TJOBS	32
static struct tjob	*tjobs[MAX_TJOBS];
static int		 ntjobs;

static void
sink_started(void *arg, struct job *job)
{
	((struct tjob *)arg)->job = job;
}

static int
sink_send(void *arg, json_t *frame)
{
	return (json_array_append(((struct tjob *)arg)->frames, frame));
}

static void
sink_finished(void *arg)
{
	struct tjob	*tj = arg;
	json_t		*f;
	const char	*sid;

	f = json_array_get(tj->frames, json_array_size(tj->frames) - 1);
	sid = json_string_value(json_object_get(f, "session_id"));
	if (f != NULL && strcmp(proto_type(f), PROTO_DONE) == 0 && sid != NULL)
		snprintf(tconv_session(tj->conv), 64, "%s", sid);
	tj->job = NULL;
	tj->finished = 1;
	tj->order = ++ended;
}

static uint64_t
sink_handed_us(void *arg)
{
	return (util_now_us());
}

static const struct job_sink test_sink = {
	sink_started, sink_send, sink_finished, sink_handed_us
};

static void
on_signal(int sig, void *arg)
{
	proc_reap();
}

/* Remove a directory tree (the test's state). */
static void
rmtree(const char *path)
{
	char	cmd[PATH_MAX + 16];

	snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
	ck_assert_int_eq(system(cmd), 0);
}

static char	state[64];

/* A daemon with everything a test needs but the socket. */
static void
setup(void)
{
	static const int	 sigs[] = { SIGCHLD };
	struct poold_config	*cf;
	const char		*src = getenv("CCGATE_SRCDIR");
	char			*cause = NULL;

	snprintf(state, sizeof state, "/tmp/ccgate-check-pool-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(state));
	/* As the daemon: a CLI that is gone shows as EPIPE, not a signal. */
	ck_assert(signal(SIGPIPE, SIG_IGN) != SIG_ERR);
	ck_assert_ptr_nonnull(poold = calloc(1, sizeof *poold));
	ck_assert_ptr_nonnull(cf = calloc(1, sizeof *cf));
	TAILQ_INIT(&poold->procs);
	TAILQ_INIT(&poold->queue);
	poold->cf = cf;
	poold->listen_fd = -1;
	poold->clock = test_clock;
	fake_ms = 1000000;
	ended = 0;
	ck_assert_ptr_nonnull(cf->state_dir = strdup(state));
	ck_assert_int_ne(asprintf(&cf->cli_path, "%s/tests/unit/stub-cli.py",
	    src != NULL ? src : "."), -1);
	ck_assert_ptr_nonnull(cf->cli_real = strdup(cf->cli_path));
	ck_assert_ptr_nonnull(cf->cli_env_path = strdup("/usr/bin:/bin"));
	ck_assert_ptr_nonnull(cf->default_model = strdup("claude-sonnet-4-5"));
	cf->sandbox = SANDBOX_NONE;
	cf->min_instances = 0;
	cf->max_instances = 4;
	cf->tenant_max_jobs = 4;
	cf->tenant_max_processes = 8;
	cf->queue_max = 100;
	cf->tenant_max_queued = 100;
	cf->queue_max_wait_ms = 30000;
	cf->job_timeout_ms = 600000;
	cf->first_event_timeout_ms = 120000;
	cf->stall_timeout_ms = 120000;
	cf->idle_timeout_ms = 300000;
	cf->max_messages_per_instance = 100;
	cf->max_instance_age_ms = 3600000;
	cf->health_check_interval_ms = 30000;
	cf->shutdown_grace_ms = 1000;
	cf->max_frame = PROTO_DEFAULT_MAX;
	cf->tool_park_ms = 600000;
	cf->rlimit_nofile = 1024;
	cf->cli_max_retries = -1;
	cf->upstream_cooldown_ms = 10000;
	cf->upstream_probe_interval_ms = 60000;
	ck_assert_ptr_nonnull(poold->loop = loop_create(20, pool_tick, NULL));
	ck_assert_int_eq(loop_signals(poold->loop, sigs, 1, on_signal, NULL),
	    0);
	ck_assert_int_eq(workspace_init(state, &cause), 0);
	ck_assert_int_eq(egress_init(state, &cause), 0);
	ck_assert_int_eq(sandbox_init(state, &cause), 0);
	ck_assert_ptr_nonnull(poold->neutral_dir = workspace_path(state,
	    "neutral", NULL));
}

static void
teardown(void)
{
	uint64_t	deadline = util_now_ms() + 60000;

	pool_shutdown();
	upstream_free();
	while (poold->nprocs > 0 && util_now_ms() < deadline) {
		fake_ms += 1000;
		ck_assert_int_eq(loop_once(poold->loop, 20), 0);
	}
	ck_assert_int_eq(poold->nprocs, 0);
	while (ntjobs > 0) {
		json_decref(tjobs[--ntjobs]->frames);
		free(tjobs[ntjobs]);
	}
	memset(tconvs, 0, sizeof tconvs);
	loop_free(poold->loop);
	free(poold->neutral_dir);
	free(poold->cf->state_dir);
	free(poold->cf->cli_path);
	free(poold->cf->cli_real);
	free(poold->cf->cli_env_path);
	free(poold->cf->default_model);
	free(poold->cf);
	free(poold);
	rmtree(state);
}

/*
 * Run the loop until pred holds (at most 60 s of real time: a bound for a
 * test that would hang, room for stub CLIs started on a loaded machine).
 */
#define RUN_UNTIL(pred) do {						\
	uint64_t	until_ = util_now_ms() + 60000;			\
	while (!(pred)) {						\
		ck_assert_msg(util_now_ms() < until_, "timed out: %s",	\
		    #pred);						\
		ck_assert_int_eq(loop_once(poold->loop, 20), 0);	\
	}								\
} while (0)

/* Submit a job; extra is a JSON object of more fields, or NULL. */
static struct tjob *
submit(const char *tenant, const char *conv, const char *message,
    const char *extra)
{
	struct tjob	*tj;
	json_t		*msg, *more;
	char		*cause = NULL;

	ck_assert_int_lt(ntjobs, MAX_TJOBS);
	ck_assert_ptr_nonnull(tj = calloc(1, sizeof *tj));
	ck_assert_ptr_nonnull(tj->frames = json_array());
	snprintf(tj->conv, sizeof tj->conv, "%s", conv);
	tjobs[ntjobs++] = tj;
	msg = json_pack("{s:i, s:s, s:s, s:s, s:s}", "v", PROTO_VERSION,
	    "type", "job", "tenant", tenant, "conversation", conv, "message",
	    message);
	ck_assert_ptr_nonnull(msg);
	if (*tconv_session(conv) != '\0')
		ck_assert_int_eq(json_object_set_new(msg, "resume",
		    json_string(tconv_session(conv))), 0);
	if (extra != NULL) {
		ck_assert_ptr_nonnull(more = json_loads(extra, 0, NULL));
		ck_assert_int_eq(json_object_update(msg, more), 0);
		json_decref(more);
	}
	ck_assert_int_eq(pool_submit(&test_sink, tj, msg, &cause), 0);
	json_decref(msg);
	return (tj);
}

/* The job's last frame. */
static json_t *
last(struct tjob *tj)
{
	return (json_array_get(tj->frames, json_array_size(tj->frames) - 1));
}

/* Wait for a job's end; it must be "done": its process's origin. */
static const char *
done(struct tjob *tj)
{
	json_t	*f;

	RUN_UNTIL(tj->finished);
	f = last(tj);
	ck_assert_msg(strcmp(proto_type(f), PROTO_DONE) == 0, "not done: %s",
	    json_string_value(json_object_get(f, "message")));
	return (json_string_value(json_object_get(json_object_get(f,
	    "process"), "origin")));
}

/* Wait for a job's end; it must be an error with code: its message. */
static const char *
failed_with(struct tjob *tj, const char *code)
{
	json_t	*f;

	RUN_UNTIL(tj->finished);
	f = last(tj);
	ck_assert_str_eq(proto_type(f), PROTO_ERROR);
	ck_assert_str_eq(json_string_value(json_object_get(f, "code")), code);
	return (json_string_value(json_object_get(f, "message")));
}

static const char *
session_of(struct tjob *tj)
{
	return (json_string_value(json_object_get(last(tj), "session_id")));
}


/* Count live processes in a state. */
static int
count(enum proc_state st)
{
	struct proc	*p;
	int		 n = 0;

	TAILQ_FOREACH(p, &poold->procs, entry)
		n += p->state == st;
	return (n);
}

/* The live process of a conversation, or NULL. */
static struct proc *
proc_of(const char *conv)
{
	struct proc	*p;

	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (p->state != PROC_DYING && strcmp(p->conversation, conv) == 0)
			return (p);
	}
	return (NULL);
}

/* Move the test's clock (deadlines), then let the tick see it. */
static void
advance(uint64_t ms)
{
	fake_ms += ms;
	pool_tick(NULL);
}

#define C1	"11111111-1111-4111-8111-111111111111"
#define C2	"22222222-2222-4222-8222-222222222222"
#define C3	"33333333-3333-4333-8333-333333333333"
#define C4	"44444444-4444-4444-8444-444444444444"

START_TEST(test_placement_order)
{
	struct tjob	*a, *b, *c, *d, *e;
	char		 extra[128];

	/* A warm process, then the conversation's own on its next turn. */
	poold->cf->min_instances = 1;
	pool_dispatch();
	RUN_UNTIL(count(PROC_WARM) == 1);
	a = submit("t", C1, "first", NULL);
	ck_assert_str_eq(done(a), "warm");
	snprintf(extra, sizeof extra, "{\"resume\":\"%s\"}", session_of(a));
	b = submit("t", C1, "second", extra);
	ck_assert_str_eq(done(b), "bound");
	/* With no warm process left: a spawn. */
	poold->cf->min_instances = 0;
	pool_tick(NULL);
	RUN_UNTIL(count(PROC_WARM) == 0 && count(PROC_DYING) == 0);
	c = submit("t", C2, "third", NULL);
	ck_assert_str_eq(done(c), "spawned");
	/* After the idle timeout: --resume in a new process. */
	advance((uint64_t)poold->cf->idle_timeout_ms);
	RUN_UNTIL(proc_of(C1) == NULL);
	d = submit("t", C1, "fourth", extra);
	ck_assert_str_eq(done(d), "resumed");
	/*
	 * A full pool: the job waits in the queue while an idle process
	 * makes room, then takes its place.
	 */
	poold->cf->max_instances = 1;
	e = submit("t", C3, "fifth", NULL);
	ck_assert_int_eq(e->job->state, JOB_QUEUED);
	ck_assert_str_eq(done(e), "spawned");
}
END_TEST

/*
 * min_warm: a full pool of idle bound processes still keeps its warm
 * share, by stopping the least recently used one ahead of demand; a
 * busy one never goes.
 */
START_TEST(test_the_warm_share_holds_in_a_full_pool)
{
	struct tjob	*a, *b, *c, *h1, *h2, *h3;
	struct proc	*pc;

	poold->cf->max_instances = 3;
	poold->cf->min_instances = 1;
	poold->cf->min_warm = 1;
	a = submit("t", C1, "one", NULL);
	done(a);
	advance(10);
	b = submit("t", C2, "two", NULL);
	done(b);
	advance(10);
	c = submit("t", C3, "three", NULL);
	done(c);
	/* Full (three bound): C1, the least recently used, made room. */
	RUN_UNTIL(count(PROC_WARM) == 1 && count(PROC_DYING) == 0);
	ck_assert_ptr_null(proc_of(C1));
	pc = proc_of(C3);
	ck_assert_ptr_nonnull(proc_of(C2));
	ck_assert_ptr_nonnull(pc);
	ck_assert_int_eq(poold->nprocs, 3);
	ck_assert_uint_eq(poold->stats.evicted, 1);
	/* A new conversation takes the warm process at once. */
	ck_assert_str_eq(done(submit("t", C4, "four", NULL)), "warm");
	/* ...and the share is made again: C2 now goes. */
	RUN_UNTIL(count(PROC_WARM) == 1 && count(PROC_DYING) == 0);
	ck_assert_ptr_null(proc_of(C2));
	ck_assert_ptr_eq(proc_of(C3), pc);
	ck_assert_uint_eq(poold->stats.evicted, 2);
	/* Every process busy: nothing is stopped for the share. */
	h1 = submit("t", C3, "hang", NULL);
	h2 = submit("t", C4, "hang", NULL);
	/* (A new conversation: C1's folder would need a process of its own.) */
	h3 = submit("t", "55555555-5555-4555-8555-555555555555", "hang", NULL);
	RUN_UNTIL(count(PROC_BUSY) == 3);
	advance(10);
	pool_dispatch();
	ck_assert_int_eq(count(PROC_BUSY), 3);
	ck_assert_int_eq(count(PROC_DYING), 0);
	ck_assert_uint_eq(poold->stats.evicted, 2);
	pool_cancel(h1->job);
	pool_cancel(h2->job);
	pool_cancel(h3->job);
}
END_TEST

START_TEST(test_a_bound_process_of_another_session_is_not_used)
{
	struct tjob	*a;
	struct proc	*p;
	char		 s1[64], extra[128];
	const char	*s2 = "55555555-5555-4555-8555-555555555555";

	a = submit("t", C1, "one", NULL);
	done(a);
	snprintf(s1, sizeof s1, "%s", session_of(a));
	ck_assert_ptr_nonnull(p = proc_of(C1));
	ck_assert_int_eq(p->state, PROC_BOUND);
	/* Its next turn, in the session it holds: the same process. */
	ck_assert_str_eq(done(submit("t", C1, "two", NULL)), "bound");
	ck_assert_ptr_eq(proc_of(C1), p);
	/* A turn that ran elsewhere moved the conversation to s2. */
	snprintf(extra, sizeof extra, "{\"resume\":\"%s\"}", s2);
	a = submit("t", C1, "three", extra);
	ck_assert_str_eq(done(a), "resumed");
	ck_assert_str_eq(session_of(a), s2);
	ck_assert_uint_eq(poold->stats.stale_sessions, 1);
	ck_assert_int_eq(count(PROC_BOUND), 1);
	/*
	 * Naming no session (a new one, primed), a turn takes the process
	 * if its turns ended well: another turn sent before the first one's
	 * session was stored sees none yet.
	 */
	ck_assert_str_eq(done(submit("t", C1, "four", "{\"resume\":\"\"}")),
	    "bound");
	ck_assert_uint_eq(poold->stats.stale_sessions, 1);
	/* A failed turn leaves half of it in the session: ccgate-fcgi... */
	a = submit("t", C1, "five upstream=bad", NULL);
	failed_with(a, PROTO_E_UPSTREAM);
	ck_assert_int_eq(proc_of(C1)->state, PROC_BOUND);
	/* ...forgets it, and the next turn is primed in a new one. */
	a = submit("t", C1, "six", "{\"resume\":\"\"}");
	ck_assert_str_eq(done(a), "spawned");
	ck_assert_str_ne(session_of(a), s2);
	ck_assert_str_ne(session_of(a), s1);
	ck_assert_uint_eq(poold->stats.stale_sessions, 2);
	/* And from there, its own process again. */
	ck_assert_str_eq(done(submit("t", C1, "seven", NULL)), "bound");
	ck_assert_uint_eq(poold->stats.stale_sessions, 2);
	ck_assert_int_eq(poold->nprocs, 1);
}
END_TEST

START_TEST(test_eviction_takes_the_oldest_idle_process)
{
	struct tjob	*a, *b, *c, *hang, *d;
	struct proc	*pb;

	poold->cf->max_instances = 2;
	a = submit("t", C1, "one", NULL);
	done(a);
	advance(10);
	b = submit("t", C2, "two", NULL);
	done(b);
	pb = proc_of(C2);
	/* C1 was used least recently: it goes, C2 stays. */
	c = submit("t", C3, "three", NULL);
	ck_assert_str_eq(done(c), "spawned");
	ck_assert_ptr_null(proc_of(C1));
	ck_assert_ptr_eq(proc_of(C2), pb);
	ck_assert_uint_eq(poold->stats.evicted, 1);
	/* A busy process is never evicted, however old. */
	advance(10);
	hang = submit("t", C2, "hang", NULL);
	RUN_UNTIL(pb->state == PROC_BUSY && pb->job != NULL &&
	    pb->job->got_output);
	d = submit("t", C4, "four", NULL);
	ck_assert_str_eq(done(d), "spawned");
	ck_assert_ptr_null(proc_of(C3));
	ck_assert_ptr_eq(proc_of(C2), pb);
	ck_assert_int_eq(pb->state, PROC_BUSY);
	pool_cancel(hang->job);
}
END_TEST

START_TEST(test_tenant_and_key_caps)
{
	struct tjob	*a, *b, *c, *k1, *k2, *k3;

	/* One running job a tenant: its next waits, another tenant's runs. */
	poold->cf->tenant_max_jobs = 1;
	a = submit("capped", C1, "hang", NULL);
	RUN_UNTIL(a->job->state == JOB_RUNNING);
	b = submit("capped", C2, "waits", NULL);
	c = submit("other", C3, "runs", NULL);
	done(c);
	ck_assert_int_eq(b->job->state, JOB_QUEUED);
	pool_cancel(a->job);
	done(b);
	ck_assert_int_lt(c->order, b->order);
	/* One running job a key, the tenant allowing more. */
	poold->cf->tenant_max_jobs = 4;
	poold->cf->key_max_jobs = 1;
	k1 = submit("keyed", C1, "hang", "{\"key\":\"k1\"}");
	RUN_UNTIL(k1->job->state == JOB_RUNNING);
	k2 = submit("keyed", C2, "same key", "{\"key\":\"k1\"}");
	k3 = submit("keyed", C3, "other key", "{\"key\":\"k2\"}");
	done(k3);
	ck_assert_int_eq(k2->job->state, JOB_QUEUED);
	pool_cancel(k1->job);
	done(k2);
}
END_TEST

START_TEST(test_a_keys_own_concurrency)
{
	struct tjob	*a, *b, *c, *d;

	/* The key's own limit (the pool sets none): its next job waits. */
	a = submit("own", C1, "hang", "{\"key\":\"k1\",\"key_max_jobs\":1}");
	RUN_UNTIL(a->job->state == JOB_RUNNING);
	b = submit("own", C2, "waits", "{\"key\":\"k1\",\"key_max_jobs\":1}");
	/* Told not to queue: refused at once, nothing queued. */
	c = submit("own", C3, "refused", "{\"key\":\"k1\","
	    "\"key_max_jobs\":1,\"queue\":false}");
	ck_assert_ptr_nonnull(strstr(failed_with(c, PROTO_E_KEY_BUSY),
	    "max_concurrent_requests"));
	ck_assert_int_eq(b->job->state, JOB_QUEUED);
	/* Another key of the tenant is not held back. */
	d = submit("own", C4, "runs", "{\"key\":\"k2\",\"key_max_jobs\":1,"
	    "\"queue\":false}");
	done(d);
	pool_cancel(a->job);
	done(b);
	ck_assert_int_lt(d->order, b->order);
}
END_TEST

START_TEST(test_a_tenant_has_its_share_of_the_queue)
{
	struct tjob	*a, *b, *c, *d;

	poold->cf->tenant_max_jobs = 1;
	poold->cf->tenant_max_queued = 1;
	a = submit("greedy", C1, "hang", NULL);
	RUN_UNTIL(a->job->state == JOB_RUNNING);
	b = submit("greedy", C2, "waits", NULL);
	c = submit("greedy", C3, "refused", NULL);
	ck_assert_ptr_nonnull(strstr(failed_with(c, PROTO_E_TENANT_BUSY),
	    "tenant_max_queued"));
	ck_assert_int_eq(b->job->state, JOB_QUEUED);
	/* Another tenant still gets a place. */
	d = submit("modest", C4, "runs", NULL);
	done(d);
	pool_cancel(a->job);
	done(b);
}
END_TEST

START_TEST(test_one_conversations_turns_never_overlap)
{
	struct tjob	*a, *b;
	char		 extra[128];

	a = submit("t", C1, "first", NULL);
	done(a);
	snprintf(extra, sizeof extra, "{\"resume\":\"%s\"}", session_of(a));
	/* The second is sent while the first runs: it waits for it, on
	 * the same process, never a second one for the conversation. */
	a = submit("t", C1, "slow", extra);
	b = submit("t", C1, "after", extra);
	RUN_UNTIL(a->job == NULL || a->job->state == JOB_RUNNING);
	ck_assert_int_eq(b->job->state, JOB_QUEUED);
	ck_assert_str_eq(done(a), "bound");
	ck_assert_str_eq(done(b), "bound");
	ck_assert_int_lt(a->order, b->order);
	ck_assert_uint_eq(poold->stats.spawned, 1);
}
END_TEST

START_TEST(test_timeouts)
{
	struct tjob	*a, *b, *c, *d, *q;
	const char	*msg;

	/* No first output in time. */
	poold->cf->first_event_timeout_ms = 5000;
	a = submit("t", C1, "silent", NULL);
	RUN_UNTIL(a->job->state == JOB_RUNNING);
	advance(4999);
	ck_assert_int_eq(a->finished, 0);
	advance(2);
	msg = failed_with(a, PROTO_E_TIMEOUT);
	ck_assert_ptr_nonnull(strstr(msg, "no output"));
	/* Output, then nothing: stalled. */
	poold->cf->stall_timeout_ms = 3000;
	b = submit("t", C2, "stall", NULL);
	RUN_UNTIL(json_array_size(b->frames) > 0);
	advance(3001);
	msg = failed_with(b, PROTO_E_TIMEOUT);
	ck_assert_ptr_nonnull(strstr(msg, "stalled"));
	/* The job's own limit. */
	poold->cf->first_event_timeout_ms = 120000;
	c = submit("t", C3, "hang", "{\"timeout_ms\":2000}");
	RUN_UNTIL(c->job->state == JOB_RUNNING);
	advance(2001);
	msg = failed_with(c, PROTO_E_TIMEOUT);
	ck_assert_ptr_nonnull(strstr(msg, "time limit"));
	/* Queued too long: busy. */
	poold->cf->max_instances = 1;
	poold->cf->queue_max_wait_ms = 1000;
	RUN_UNTIL(count(PROC_DYING) == 0);
	d = submit("t", C4, "hang", NULL);
	RUN_UNTIL(d->job->state == JOB_RUNNING);
	q = submit("t", C1, "queued", NULL);
	ck_assert_int_eq(q->job->state, JOB_QUEUED);
	advance(1001);
	failed_with(q, PROTO_E_BUSY);
	pool_cancel(d->job);
}
END_TEST

START_TEST(test_recycled_after_its_turns)
{
	struct tjob	*a, *b, *c;
	char		 extra[128];

	poold->cf->max_messages_per_instance = 2;
	a = submit("t", C1, "one", NULL);
	ck_assert_str_eq(done(a), "spawned");
	snprintf(extra, sizeof extra, "{\"resume\":\"%s\"}", session_of(a));
	b = submit("t", C1, "two", extra);
	ck_assert_str_eq(done(b), "bound");
	ck_assert_uint_eq(poold->stats.recycled, 1);
	RUN_UNTIL(proc_of(C1) == NULL && count(PROC_DYING) == 0);
	c = submit("t", C1, "three", extra);
	ck_assert_str_eq(done(c), "resumed");
}
END_TEST

START_TEST(test_a_crash_is_retried_once)
{
	struct tjob	*a, *b;
	const char	*msg;

	a = submit("t", C1, "crash-once", NULL);
	ck_assert_str_eq(done(a), "spawned");
	ck_assert_uint_eq(poold->stats.retried, 1);
	b = submit("t", C2, "crash", NULL);
	msg = failed_with(b, PROTO_E_CLI_FAILED);
	ck_assert_ptr_nonnull(strstr(msg, "exit code 3"));
	ck_assert_uint_eq(poold->stats.retried, 2);
}
END_TEST

START_TEST(test_another_model_ends_the_turn)
{
	struct tjob	*a;
	const char	*msg;

	a = submit("t", C1, "model=claude-opus-4-1", NULL);
	msg = failed_with(a, PROTO_E_MODEL_MISMATCH);
	ck_assert_ptr_nonnull(strstr(msg, "claude-opus-4-1"));
	ck_assert_int_eq(json_array_size(a->frames), 1);
	RUN_UNTIL(poold->nprocs == 0);
}
END_TEST

/* The text of a job's event frames, in order. */
static void
relayed(struct tjob *tj, char *buf, size_t len)
{
	json_t	*f;
	size_t	 i;

	buf[0] = '\0';
	json_array_foreach(tj->frames, i, f) {
		if (strcmp(proto_type(f), PROTO_EVENT) == 0 &&
		    json_string_value(json_object_get(f, "text")) != NULL)
			strncat(buf, json_string_value(json_object_get(f,
			    "text")), len - strlen(buf) - 1);
	}
}

START_TEST(test_max_tokens_interrupts_the_turn)
{
	struct tjob	*a, *b;
	json_t		*f;
	char		 text[256], extra[128];

	a = submit("t", C1, "maxtokens", NULL);
	ck_assert_str_eq(done(a), "spawned");
	/* The input usage first, as the upstream's message_start gave it. */
	f = json_array_get(a->frames, 0);
	ck_assert_str_eq(proto_type(f), PROTO_EVENT);
	ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(f,
	    "usage"), "input_tokens")), 7);
	ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(f,
	    "usage"), "cache_read_input_tokens")), 1);
	/* Nothing the CLI printed after max_tokens reached the client. */
	relayed(a, text, sizeof text);
	ck_assert_str_eq(text, "echo: ");
	f = last(a);
	ck_assert_str_eq(json_string_value(json_object_get(f, "text")),
	    "echo: ");
	ck_assert_str_eq(json_string_value(json_object_get(f, "stop_reason")),
	    "max_tokens");
	/* The turn was interrupted, not the process: it takes the next. */
	snprintf(extra, sizeof extra, "{\"resume\":\"%s\"}", session_of(a));
	b = submit("t", C1, "again", extra);
	ck_assert_str_eq(done(b), "bound");
	ck_assert_str_eq(json_string_value(json_object_get(last(b),
	    "stop_reason")), "end_turn");
}
END_TEST

START_TEST(test_stop_sequences)
{
	struct tjob	*a, *b;
	json_t		*f;
	size_t		 i;
	char		 text[256];

	/* "HALT" comes in two deltas: none of it goes out. */
	a = submit("t", C1, "pieces: alp ha_HA LT_omega",
	    "{\"stop\":[\"never\",\"HALT\"]}");
	ck_assert_str_eq(done(a), "spawned");
	relayed(a, text, sizeof text);
	ck_assert_str_eq(text, "echo: alpha ");
	json_array_foreach(a->frames, i, f) {
		if (json_string_value(json_object_get(f, "text")) != NULL)
			ck_assert_ptr_null(strstr(json_string_value(
			    json_object_get(f, "text")), "HA"));
	}
	f = last(a);
	ck_assert_str_eq(json_string_value(json_object_get(f, "text")),
	    "echo: alpha ");
	ck_assert_str_eq(json_string_value(json_object_get(f, "stop_reason")),
	    "stop_sequence");
	ck_assert_str_eq(json_string_value(json_object_get(f,
	    "stop_sequence")), "HALT");
	/* A stop's beginning that never completes: held, then all of it. */
	b = submit("t", C2, "pieces: alp ha_HA LT_omega",
	    "{\"stop\":[\"HALTING\"]}");
	ck_assert_str_eq(done(b), "spawned");
	relayed(b, text, sizeof text);
	ck_assert_str_eq(text, "echo: alpha HALT omega");
	ck_assert_str_eq(json_string_value(json_object_get(last(b),
	    "stop_reason")), "end_turn");
	ck_assert_ptr_null(json_object_get(last(b), "stop_sequence"));
}
END_TEST

static void
count_never(void *arg, json_t *frame)
{
	ck_abort_msg("a count without an egress was answered");
}

/* Without the egress there is no road to the upstream: unavailable. */
START_TEST(test_count_needs_the_egress)
{
	json_t		*body;
	const char	*code = NULL;
	char		*cause = NULL;

	ck_assert_ptr_null(poold->cf->egress_socket);
	ck_assert_ptr_nonnull(body = json_pack("{s:s}", "model", "m"));
	ck_assert_ptr_null(count_start("t", body, count_never, NULL, &code,
	    &cause));
	ck_assert_str_eq(code, PROTO_E_UNAVAILABLE);
	ck_assert_ptr_nonnull(strstr(cause, "egress"));
	free(cause);
	json_decref(body);
}
END_TEST

#define TOOLS	"\"client_tools\":[{\"name\":\"lookup\",\"description\":" \
	"\"d\",\"input_schema\":{\"type\":\"object\"}}]"

START_TEST(test_client_tools_park_and_resume)
{
	struct tjob	*a, *b, *c;
	json_t		*f, *calls;
	struct proc	*p;
	char		 text[256], extra[512];

	/* The model calls the client's tool: the job ends with the call. */
	a = submit("t", C1, "calltool=lookup", "{" TOOLS "}");
	ck_assert_str_eq(done(a), "spawned");
	f = last(a);
	ck_assert_str_eq(json_string_value(json_object_get(f, "stop_reason")),
	    "tool_use");
	calls = json_object_get(f, "tool_calls");
	ck_assert_int_eq(json_array_size(calls), 1);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(
	    calls, 0), "name")), "lookup");
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(
	    calls, 0), "id")), "toolu_stub_1");
	ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(f,
	    "usage"), "output_tokens")), 5);
	/* Its process waits, with the turn open. */
	ck_assert_ptr_nonnull(p = proc_of(C1));
	ck_assert_int_eq(p->parked, 1);
	ck_assert_int_eq(p->state, PROC_BUSY);
	/* The results: the same process, the same turn goes on. */
	snprintf(extra, sizeof extra, "{%s, \"tool_results\":[{\"id\":"
	    "\"toolu_stub_1\",\"content\":[{\"type\":\"text\",\"text\":"
	    "\"/found it\"}],\"is_error\":false}]}", TOOLS);
	b = submit("t", C1, "[tool_result toolu_stub_1]", extra);
	ck_assert_str_eq(done(b), "bound");
	relayed(b, text, sizeof text);
	/* A result's text is the client's, a leading '/' and all. */
	ck_assert_str_eq(text, "result: /found it");
	ck_assert_ptr_eq(proc_of(C1), p);
	ck_assert_int_eq(p->parked, 0);
	/* Results with no turn waiting for them: resume_failed (primed). */
	c = submit("t", C2, "[tool_result x]", "{" TOOLS ", \"tool_results\":"
	    "[{\"id\":\"x\",\"content\":[{\"type\":\"text\",\"text\":"
	    "\"y\"}]}]}");
	failed_with(c, PROTO_E_RESUME_FAILED);
}
END_TEST

START_TEST(test_a_parked_turn_ends)
{
	struct tjob	*a, *b, *c;
	char		 text[256], extra[512];

	/* Results that name no call: the call gets an error result. */
	a = submit("t", C1, "calltool=lookup", "{" TOOLS "}");
	ck_assert_str_eq(done(a), "spawned");
	snprintf(extra, sizeof extra, "{%s, \"tool_results\":[{\"id\":"
	    "\"other\",\"content\":[{\"type\":\"text\",\"text\":"
	    "\"z\"}]}]}", TOOLS);
	b = submit("t", C1, "[tool_result other]", extra);
	ck_assert_str_eq(done(b), "bound");
	relayed(b, text, sizeof text);
	ck_assert_str_eq(text, "result: the client sent no result for this "
	    "call (error)");
	/* Parked past tool_park_ms: the process is dropped. */
	c = submit("t", C2, "calltool=lookup", "{" TOOLS "}");
	ck_assert_str_eq(done(c), "spawned");
	ck_assert_ptr_nonnull(proc_of(C2));
	advance((uint64_t)poold->cf->tool_park_ms);
	RUN_UNTIL(proc_of(C2) == NULL);
}
END_TEST

/* A waiting turn is its key's: another key's results start over. */
START_TEST(test_a_parked_turn_is_its_keys)
{
	struct tjob	*a, *b;
	char		 extra[512];

	a = submit("t", C1, "calltool=lookup", "{\"key\":\"k1\"," TOOLS "}");
	ck_assert_str_eq(done(a), "spawned");
	snprintf(extra, sizeof extra, "{\"key\":\"k2\",%s, \"tool_results\":"
	    "[{\"id\":\"toolu_stub_1\",\"content\":[{\"type\":\"text\","
	    "\"text\":\"x\"}]}]}", TOOLS);
	b = submit("t", C1, "[tool_result toolu_stub_1]", extra);
	failed_with(b, PROTO_E_RESUME_FAILED);
	RUN_UNTIL(proc_of(C1) == NULL);
}
END_TEST

/* Text held for a stop that never came goes out when max_tokens ends it. */
START_TEST(test_held_text_at_max_tokens)
{
	struct tjob	*a;
	char		 text[256];

	a = submit("t", C1, "maxtokens", "{\"stop\":[\"echo: XYZ\"]}");
	ck_assert_str_eq(done(a), "spawned");
	relayed(a, text, sizeof text);
	ck_assert_str_eq(text, "echo: ");
	ck_assert_str_eq(json_string_value(json_object_get(last(a),
	    "stop_reason")), "max_tokens");
}
END_TEST

/* A required tool call: the model that answered without is told. */
START_TEST(test_a_required_call)
{
	struct tjob	*a;
	json_t		*f;

	a = submit("t", C1, "just talk",
	    "{\"tool_choice\":\"*\"," TOOLS "}");
	ck_assert_str_eq(done(a), "spawned");
	f = last(a);
	ck_assert_str_eq(json_string_value(json_object_get(f, "stop_reason")),
	    "tool_use");
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(
	    json_object_get(f, "tool_calls"), 0), "name")), "lookup");
	ck_assert_int_eq(proc_of(C1)->parked, 1);
}
END_TEST

/* With an output schema, the answer is the structured output alone. */
START_TEST(test_structured_output)
{
	struct tjob	*a, *b;
	json_t		*f;
	char		 text[256];

	a = submit("t", C1, "shape=round",
	    "{\"output_schema\":{\"type\":\"object\"}}");
	ck_assert_str_eq(done(a), "spawned");
	relayed(a, text, sizeof text);
	ck_assert_str_eq(text, "{\"v\":\"round\"}");
	f = last(a);
	ck_assert_str_eq(json_string_value(json_object_get(f, "text")),
	    "{\"v\":\"round\"}");
	ck_assert_str_eq(json_string_value(json_object_get(f, "stop_reason")),
	    "end_turn");
	/* No structured output: the turn failed. */
	b = submit("t", C2, "plain",
	    "{\"output_schema\":{\"type\":\"object\"}}");
	ck_assert_ptr_nonnull(strstr(failed_with(b, PROTO_E_UPSTREAM),
	    "structured output"));
}
END_TEST

START_TEST(test_bad_stops_and_content_are_refused)
{
	static const char *const bad[] = {
		"{\"stop\":\"HALT\"}", "{\"stop\":[\"\"]}", "{\"stop\":[1]}",
		"{\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]}",
		"{\"content\":[]}", "{\"content\":[{\"type\":\"tool_use\"}]}",
		"{\"client_tools\":[{\"name\":\"a b\",\"description\":\"\","
		    "\"input_schema\":{\"type\":\"object\"}}]}",
		"{\"client_tools\":[{\"name\":\"a\",\"description\":\"\","
		    "\"input_schema\":{\"type\":\"array\"}}]}",
		"{\"tool_results\":[{\"content\":[{\"type\":\"text\","
		    "\"text\":\"x\"}]}]}",
		"{\"output_schema\":\"object\"}",
		"{\"content\":[{\"type\":\"image\",\"source\":{\"media_type\":"
		    "\"image/bmp\",\"data\":\"AAAA\"}}]}",
		"{\"content\":[{\"type\":\"image\",\"source\":{\"media_type\":"
		    "\"image/png\",\"data\":\"AA\\nAA\"}}]}",
		NULL
	};
	json_t		*msg, *extra;
	char		*cause;
	int		 i;

	for (i = 0; bad[i] != NULL; i++) {
		msg = json_pack("{s:i, s:s, s:s, s:s, s:s}", "v", PROTO_VERSION,
		    "type", PROTO_JOB, "tenant", "t", "conversation", C1,
		    "message", "x");
		extra = json_loads(bad[i], 0, NULL);
		ck_assert_ptr_nonnull(extra);
		json_object_update(msg, extra);
		json_decref(extra);
		cause = NULL;
		ck_assert_msg(pool_submit(&test_sink, NULL, msg, &cause) == -1,
		    "accepted %s", bad[i]);
		free(cause);
		json_decref(msg);
	}
	ck_assert_int_eq(poold->nprocs, 0);
}
END_TEST

/* The spawns so far (a refused job starts none). */
static uint64_t
spawns(void)
{
	return (poold->stats.spawned + poold->stats.spawned_warm);
}

/* A job refused at once, without a CLI: its frame (code, retry_after). */
static json_t *
refused_at_once(const char *conv, const char *code)
{
	struct tjob	*tj;
	uint64_t	 before = spawns();

	tj = submit("t", conv, "hello", NULL);
	/* Answered inside pool_submit: no loop round, no process. */
	ck_assert_int_eq(tj->finished, 1);
	ck_assert_int_eq(spawns(), before);
	failed_with(tj, code);
	ck_assert_int_ge(json_integer_value(json_object_get(last(tj),
	    "retry_after")), 1);
	return (last(tj));
}

/* The retry_after of a job's last frame. */
static long long
retry_of(json_t *f)
{
	return ((long long)json_integer_value(json_object_get(f,
	    "retry_after")));
}

/*
 * The changes of state every job's last frame carried, in order, as
 * their "to" joined with spaces (each change rides on exactly one).
 */
static const char *
carried(void)
{
	static char	 out[512];
	json_t		*c;
	size_t		 i, n = 0;
	int		 k;

	out[0] = '\0';
	for (k = 0; k < ntjobs; k++) {
		if (!tjobs[k]->finished)
			continue;
		json_array_foreach(json_object_get(last(tjobs[k]),
		    "upstream_changes"), i, c) {
			n += (size_t)snprintf(out + n, sizeof out - n, "%s%s",
			    n > 0 ? " " : "", json_string_value(
			    json_object_get(c, "to")));
			ck_assert_uint_lt(n, sizeof out);
		}
	}
	return (out);
}

/*
 * A stand-in for the egress on a unix socket, served by the daemon's own
 * loop: it reads one request (head and Content-Length body) and answers
 * egress_reply, or nothing while egress_hold is set.  It keeps the last
 * request and what its token's link pointed at while it came.
 */
static struct loop_io	 egress_lio;
static int		 egress_lfd = -1;
static struct {
	struct loop_io	 io;
	int		 fd;
	char		 in[8192];
	size_t		 inlen;
} egress_conn = { .fd = -1 };
static const char	*egress_reply;
static int		 egress_hold;
static int		 egress_requests;
static char		 egress_last[8192];
static char		 egress_link[PATH_MAX];
static char		 egress_token[EGRESS_TOKEN_HEX + 1];

static void
egress_conn_close(void)
{
	if (egress_conn.fd == -1)
		return;
	loop_del(poold->loop, &egress_conn.io);
	close(egress_conn.fd);
	egress_conn.fd = -1;
}

static void
egress_conn_cb(struct loop_io *io, uint32_t events)
{
	const char	*end, *cl, *tok;
	ssize_t		 n;
	ssize_t		 len;
	char		 link[PATH_MAX];

	n = read(egress_conn.fd, egress_conn.in + egress_conn.inlen,
	    sizeof egress_conn.in - 1 - egress_conn.inlen);
	if (n <= 0) {
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			egress_conn_close();
		return;
	}
	egress_conn.inlen += (size_t)n;
	egress_conn.in[egress_conn.inlen] = '\0';
	if ((end = strstr(egress_conn.in, "\r\n\r\n")) == NULL ||
	    (cl = strcasestr(egress_conn.in, "Content-Length: ")) == NULL ||
	    strlen(end + 4) < (size_t)atoi(cl + 16))
		return;
	egress_requests++;
	snprintf(egress_last, sizeof egress_last, "%s", egress_conn.in);
	egress_link[0] = '\0';
	egress_token[0] = '\0';
	if ((tok = strstr(egress_conn.in, "ccgate-egress-")) != NULL) {
		snprintf(egress_token, sizeof egress_token, "%s", tok + 14);
		snprintf(link, sizeof link, "%s/egress/tokens/%s", state,
		    egress_token);
		if ((len = readlink(link, egress_link,
		    sizeof egress_link - 1)) > 0)
			egress_link[len] = '\0';
	}
	if (egress_hold)
		return;
	ck_assert_ptr_nonnull(egress_reply);
	ck_assert_int_eq(write(egress_conn.fd, egress_reply,
	    strlen(egress_reply)), (ssize_t)strlen(egress_reply));
	egress_conn_close();
}

static void
egress_accept_cb(struct loop_io *io, uint32_t events)
{
	int	fd;

	if ((fd = accept4(egress_lfd, NULL, NULL, SOCK_NONBLOCK |
	    SOCK_CLOEXEC)) == -1)
		return;
	egress_conn_close();
	egress_conn.fd = fd;
	egress_conn.inlen = 0;
	ck_assert_int_eq(loop_add(poold->loop, &egress_conn.io, fd, EPOLLIN,
	    egress_conn_cb, NULL), 0);
}

/* Give the daemon the stand-in egress, answering reply. */
static void
egress_start(const char *reply)
{
	struct sockaddr_un	 sun;

	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof sun.sun_path, "%s/egress.sock", state);
	ck_assert_int_ne(egress_lfd = socket(AF_UNIX, SOCK_STREAM |
	    SOCK_NONBLOCK | SOCK_CLOEXEC, 0), -1);
	ck_assert_int_eq(bind(egress_lfd, (struct sockaddr *)&sun, sizeof sun),
	    0);
	ck_assert_int_eq(listen(egress_lfd, 8), 0);
	ck_assert_int_eq(loop_add(poold->loop, &egress_lio, egress_lfd,
	    EPOLLIN, egress_accept_cb, NULL), 0);
	ck_assert_ptr_nonnull(poold->cf->egress_socket = strdup(sun.sun_path));
	egress_reply = reply;
	egress_hold = 0;
	egress_requests = 0;
}

/* Take the stand-in egress away (before teardown). */
static void
egress_stop(void)
{
	egress_conn_close();
	if (egress_lfd != -1) {
		loop_del(poold->loop, &egress_lio);
		close(egress_lfd);
		egress_lfd = -1;
	}
	free(poold->cf->egress_socket);
	poold->cf->egress_socket = NULL;
}

/* Wait for the running check's answer. */
static void
checked(void)
{
	RUN_UNTIL(poold->upstream.check == NULL);
}

#define REPLY_OK	"HTTP/1.1 200 OK\r\nContent-Type: application/json" \
	"\r\n\r\n{\"type\":\"message\",\"content\":[]}"
#define REPLY_529	"HTTP/1.1 529 \r\n\r\n{\"type\":\"error\"}"
#define REPLY_401	"HTTP/1.1 401 Unauthorized\r\n\r\n{}"
#define REPLY_500	"HTTP/1.1 500 Internal Server Error\r\n\r\n{}"
#define REPLY_EGRESS_403 "HTTP/1.1 403 Forbidden\r\n\r\n{\"type\":\"error\"," \
	"\"error\":{\"type\":\"permission_error\",\"message\":\"ccgate " \
	"egress: unknown or expired token\"}}"
#define REPLY_RATE	"HTTP/1.1 429 Too Many Requests\r\n" \
	"retry-after: 20\r\n\r\n{}"

/*
 * A CLI's report of a plan limit answers its own turn and starts a check;
 * the check's answer sets the state; once the reset passes, the daemon
 * checks again on its own and the account is ok.
 */
START_TEST(test_upstream_limit_is_checked)
{
	static char	 reply[256];
	struct tjob	*t1;
	long long	 reset = (long long)time(NULL) + 40;
	json_t		*f;

	snprintf(reply, sizeof reply, "HTTP/1.1 429 Too Many Requests\r\n"
	    "Anthropic-Ratelimit-Unified-Status:  rejected \r\n"
	    "anthropic-ratelimit-unified-reset: %lld\r\n"
	    "anthropic-ratelimit-unified-representative-claim: five_hour\r\n"
	    "retry-after: 40\r\n\r\n{\"type\":\"error\"}", reset);
	egress_start(reply);
	t1 = submit("t", C1, "upstream=limit=30", NULL);
	failed_with(t1, PROTO_E_UPSTREAM_LIMITED);
	ck_assert_int_ge(retry_of(last(t1)), 25);
	ck_assert_int_eq(poold->upstream.hints, 1);
	checked();
	ck_assert_int_eq(egress_requests, 1);
	/* The check: a one-token "ping" of the pool's default model. */
	ck_assert_ptr_nonnull(strstr(egress_last, "POST /v1/messages "
	    "HTTP/1.0\r\n"));
	ck_assert_ptr_nonnull(strstr(egress_last, "\"model\":"
	    "\"claude-sonnet-4-5\""));
	ck_assert_ptr_nonnull(strstr(egress_last, "\"max_tokens\":1"));
	ck_assert_ptr_nonnull(strstr(egress_last, "\"content\":\"ping\""));
	ck_assert_ptr_nonnull(strstr(egress_last, "\r\nx-api-key: "
	    "ccgate-egress-"));
	/* Under the daemon's own name, and its token gone with the answer. */
	ck_assert_str_eq(egress_link, "../poold");
	ck_assert_int_eq(strlen(egress_token), EGRESS_TOKEN_HEX);
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_LIMITED);
	ck_assert_int_eq(poold->upstream.reset, reset);
	ck_assert_int_eq(poold->upstream.last_check_status, 429);
	ck_assert_int_eq(poold->upstream.errors[UPSTREAM_LIMITED], 1);
	/* Refused at once until the reset, from any tenant. */
	f = refused_at_once(C2, PROTO_E_UPSTREAM_LIMITED);
	ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(f,
	    "message")), "resets at"));
	ck_assert_int_ge(retry_of(f), 35);
	advance(30000);
	ck_assert_int_ge(retry_of(refused_at_once(C2,
	    PROTO_E_UPSTREAM_LIMITED)), 5);
	ck_assert_int_eq(poold->upstream.checks, 1);
	/* The reset passes: the daemon checks on its own, with no traffic. */
	egress_reply = REPLY_OK;
	advance(11000);
	ck_assert_ptr_nonnull(poold->upstream.check);
	ck_assert_int_eq(poold->upstream.checks, 2);
	/* While it runs, jobs are refused; try again in a second. */
	ck_assert_int_eq(retry_of(refused_at_once(C2,
	    PROTO_E_UPSTREAM_LIMITED)), 1);
	checked();
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_OK);
	done(submit("u", C2, "hello", NULL));
	/* Each change rode on one frame, in order. */
	ck_assert_str_eq(carried(), "limited ok");
	ck_assert_int_eq(poold->upstream.changes, 2);
	egress_stop();
}
END_TEST

/*
 * What a hostile tenant's code writes into its CLI's stdout is only a
 * hint: the check finds the account ok, and nothing changes for anyone.
 */
START_TEST(test_upstream_a_forged_report_changes_nothing)
{
	struct tjob	*t1, *t2;

	egress_start(REPLY_OK);
	t1 = submit("t", C1, "upstream=limit=600000", NULL);
	failed_with(t1, PROTO_E_UPSTREAM_LIMITED);
	ck_assert_ptr_nonnull(poold->upstream.check);
	/* While the check runs the account is still ok: nobody waits. */
	t2 = submit("u", C2, "hello", NULL);
	checked();
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_OK);
	ck_assert_int_eq(poold->upstream.last_check_status, 200);
	done(t2);
	done(submit("u", C3, "hello", NULL));
	ck_assert_int_eq(poold->upstream.changes, 0);
	ck_assert_str_eq(carried(), "");
	/*
	 * One check at a time: two reports while a check is held make no
	 * second one.
	 */
	egress_hold = 1;
	t1 = submit("t", C1, "upstream=overloaded", NULL);
	t2 = submit("t", C4, "upstream=auth", NULL);
	failed_with(t1, PROTO_E_UPSTREAM_OVERLOADED);
	failed_with(t2, PROTO_E_UPSTREAM_CREDENTIAL);
	RUN_UNTIL(egress_requests == 2);
	ck_assert_ptr_nonnull(poold->upstream.check);
	ck_assert_int_eq(poold->upstream.hints, 3);
	egress_conn_close();
	egress_hold = 0;
	RUN_UNTIL(poold->upstream.check == NULL);
	ck_assert_int_eq(egress_requests, 2);
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_OK);
	egress_stop();
}
END_TEST

/* Without the egress there is no check: a report answers its turn only. */
START_TEST(test_upstream_without_the_egress)
{
	failed_with(submit("t", C1, "upstream=auth", NULL),
	    PROTO_E_UPSTREAM_CREDENTIAL);
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_OK);
	ck_assert_int_eq(poold->upstream.checks, 0);
	done(submit("u", C2, "hello", NULL));
}
END_TEST

START_TEST(test_upstream_credential_checked_again)
{
	json_t		*lim;
	char		*cause = NULL;

	egress_start(REPLY_401);
	failed_with(submit("t", C1, "upstream=auth", NULL),
	    PROTO_E_UPSTREAM_CREDENTIAL);
	checked();
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_CREDENTIAL);
	ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(
	    refused_at_once(C2, PROTO_E_UPSTREAM_CREDENTIAL), "message")),
	    "an operator must renew it"));
	/* Checked again every probe interval, on the daemon's own. */
	advance(60000);
	ck_assert_ptr_nonnull(poold->upstream.check);
	checked();
	ck_assert_int_eq(egress_requests, 2);
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_CREDENTIAL);
	ck_assert_int_eq(poold->upstream.errors[UPSTREAM_CREDENTIAL], 2);
	/* An operator's /admin/pool/initialize checks at once. */
	egress_reply = REPLY_OK;
	ck_assert_ptr_nonnull(lim = json_pack("{s:i, s:i}", "min_instances",
	    0, "max_instances", 4));
	ck_assert_int_eq(pool_set_limits(lim, &cause), 0);
	json_decref(lim);
	ck_assert_ptr_nonnull(poold->upstream.check);
	checked();
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_OK);
	done(submit("t", C2, "hello", NULL));
	ck_assert_str_eq(carried(), "credential_rejected ok");
	egress_stop();
}
END_TEST

START_TEST(test_upstream_overloaded_rate_and_no_answer)
{
	struct tjob	*t1;

	/* 529: overloaded for the cool-down. */
	egress_start(REPLY_529);
	failed_with(submit("t", C1, "upstream=overloaded", NULL),
	    PROTO_E_UPSTREAM_OVERLOADED);
	checked();
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_OVERLOADED);
	ck_assert_int_ge(retry_of(refused_at_once(C2,
	    PROTO_E_UPSTREAM_OVERLOADED)), 9);
	/* A bare 429: limited for its retry-after (above the cool-down). */
	egress_reply = REPLY_RATE;
	advance(10000);
	checked();
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_LIMITED);
	ck_assert_int_eq(poold->upstream.reset, 0);
	ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(
	    refused_at_once(C1, PROTO_E_UPSTREAM_LIMITED), "message")),
	    "rate-limiting"));
	ck_assert_int_ge(retry_of(refused_at_once(C1,
	    PROTO_E_UPSTREAM_LIMITED)), 19);
	/* A 500 says nothing of the account: as it was, checked later. */
	egress_reply = REPLY_500;
	advance(20000);
	checked();
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_LIMITED);
	ck_assert_int_eq(poold->upstream.last_check_status, 500);
	ck_assert_int_ge(retry_of(refused_at_once(C1,
	    PROTO_E_UPSTREAM_LIMITED)), 9);
	/* Nor does the egress refusing the check itself (not the account). */
	egress_reply = REPLY_EGRESS_403;
	advance(10000);
	checked();
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_LIMITED);
	ck_assert_int_eq(poold->upstream.last_check_status, 403);
	/* An egress that never answers: the check ends after 30 s. */
	egress_hold = 1;
	advance(10000);
	ck_assert_ptr_nonnull(poold->upstream.check);
	RUN_UNTIL(egress_requests == 5);
	advance(29000);
	ck_assert_ptr_nonnull(poold->upstream.check);
	advance(1000);
	ck_assert_ptr_null(poold->upstream.check);
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_LIMITED);
	ck_assert_int_eq(poold->upstream.last_check_status, 0);
	/* Its token is revoked with it. */
	{
		char		 link[PATH_MAX];
		struct stat	 sb;

		snprintf(link, sizeof link, "%s/egress/tokens/%s", state,
		    egress_token);
		ck_assert_int_eq(lstat(link, &sb), -1);
	}
	egress_conn_close();
	egress_hold = 0;
	egress_reply = REPLY_OK;
	advance(10000);
	checked();
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_OK);
	t1 = submit("t", C1, "hello", NULL);
	done(t1);
	ck_assert_str_eq(carried(), "overloaded limited ok");
	egress_stop();
}
END_TEST

/*
 * A tenant's long turn cannot hold the account's recovery: the check is
 * the daemon's, not a turn.
 */
START_TEST(test_upstream_a_long_turn_does_not_hold_recovery)
{
	struct tjob	*slow;

	egress_start(REPLY_529);
	slow = submit("t", C3, "hang", NULL);
	RUN_UNTIL(slow->job != NULL && slow->job->state == JOB_RUNNING);
	failed_with(submit("u", C1, "upstream=overloaded", NULL),
	    PROTO_E_UPSTREAM_OVERLOADED);
	checked();
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_OVERLOADED);
	egress_reply = REPLY_OK;
	advance(10000);
	checked();
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_OK);
	ck_assert_int_eq(slow->finished, 0);
	done(submit("u", C2, "hello", NULL));
	egress_stop();
}
END_TEST

/*
 * A model's (a tenant's) text that reads like the CLI's report of a usage
 * limit is an answer, not an upstream error: the account stays ok.
 */
START_TEST(test_upstream_text_is_not_an_error)
{
	struct tjob	*t1;

	t1 = submit("t", C1, "forged", NULL);
	done(t1);
	ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(
	    last(t1), "text")), "usage limit"));
	ck_assert_int_eq(poold->upstream.state, UPSTREAM_OK);
	ck_assert_int_eq(poold->upstream.changes, 0);
	done(submit("u", C2, "hello", NULL));
}
END_TEST

int
main(void)
{
	const TTest *const tests[] = {
		test_placement_order,
		test_a_bound_process_of_another_session_is_not_used,
		test_eviction_takes_the_oldest_idle_process,
		test_the_warm_share_holds_in_a_full_pool,
		test_tenant_and_key_caps,
		test_a_keys_own_concurrency,
		test_a_tenant_has_its_share_of_the_queue,
		test_one_conversations_turns_never_overlap,
		test_timeouts,
		test_recycled_after_its_turns,
		test_a_crash_is_retried_once,
		test_another_model_ends_the_turn,
		test_max_tokens_interrupts_the_turn,
		test_stop_sequences,
		test_bad_stops_and_content_are_refused,
		test_count_needs_the_egress,
		test_client_tools_park_and_resume,
		test_a_parked_turn_ends,
		test_a_parked_turn_is_its_keys,
		test_held_text_at_max_tokens,
		test_structured_output,
		test_a_required_call,
		test_upstream_limit_is_checked,
		test_upstream_a_forged_report_changes_nothing,
		test_upstream_without_the_egress,
		test_upstream_credential_checked_again,
		test_upstream_overloaded_rate_and_no_answer,
		test_upstream_a_long_turn_does_not_hold_recovery,
		test_upstream_text_is_not_an_error,
		NULL
	};

	return (unit_run_fixture("pool", "scheduler", tests, setup, teardown,
	    300));
}
