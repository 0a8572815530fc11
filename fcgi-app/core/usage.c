/*
 * Usage records, off the request path.  A finished request hands its
 * record to usage_submit, which queues it (a copy) and returns; one writer
 * thread takes what has queued, at most USAGE_BATCH at a time, and writes
 * it in one transaction, so MariaDB commits (and, with its default
 * settings, flushes its log) once per batch instead of once per request.
 *
 * Nothing accepted is dropped: a batch that fails stays queued and is
 * tried again (after USAGE_RETRY_MS); when the queue is full, the request
 * thread writes its own record, so a database that is down slows workers
 * rather than losing rows.  usage_stop flushes the queue before the
 * process exits, waiting up to USAGE_STOP_SPOOL_MS for a database that is
 * down; what is left then goes to the spool (spool.c), written at the
 * next start (without a spool, it waits USAGE_STOP_MS, then the rows are
 * lost).
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core.h"
#include "log.h"

#define USAGE_QUEUE	8192	/* records waiting at most */
#define USAGE_BATCH	256	/* records a transaction at most */
#define USAGE_WAIT_MS	100	/* gathering time before a batch is written */
#define USAGE_RETRY_MS	1000
#define USAGE_STOP_MS	30000
#define USAGE_STOP_SPOOL_MS 2000	/* then to the spool */

/* The queue, under usage_lock. */
struct usage_queue {
	pthread_t		 thread;
	struct usage_rec	*q;		/* a ring of USAGE_QUEUE */
	size_t			 head;
	size_t			 len;
	int			 stopping;
	int			 running;
};

static pthread_mutex_t		usage_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t		usage_cond = PTHREAD_COND_INITIALIZER;
static struct usage_queue	usage;

/* Free the strings a record owns. */
static void
usage_rec_clear(struct usage_rec *u)
{
	free(u->client_request_id);
	free(u->model);
	free(u->error);
	free(u->endpoint);
	memset(u, 0, sizeof *u);
}

/*
 * Insert one record (inside or outside a transaction); one already there
 * (request_id is unique: a batch whose COMMIT's answer was lost, tried
 * again) is left as it is.
 */
static int
usage_insert(struct db *db, const struct usage_rec *u)
{
	return (db_run(db, NULL, NULL,
	    "INSERT INTO usage_logs (request_id, client_request_id, key_id, "
	    "tenant, route, endpoint, method, status_code, model, "
	    "input_tokens, output_tokens, cache_read_tokens, "
	    "cache_creation_tokens, total_tokens, cost_usd, ttft_ms, "
	    "duration_ms, error, node, created_at) VALUES (?, ?, ?, ?, ?, ?, "
	    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, FROM_UNIXTIME(? / 1000)) "
	    "ON DUPLICATE KEY UPDATE request_id = request_id",
	    "sssssssisiiiiidiissi", u->request_id,
	    u->client_request_id,
	    u->key_id[0] ? u->key_id : NULL,
	    u->tenant[0] ? u->tenant : NULL, u->route, u->endpoint, u->method,
	    (long long)u->status, u->model, u->in, u->out, u->cache_read,
	    u->cache_creation, u->in + u->out, u->cost, u->ttft,
	    u->duration_ms, u->error, appconf->node, (long long)u->at_ms));
}

/* A record as JSON, for the spool; NULL when out of memory. */
static json_t *
usage_to_json(const struct usage_rec *u)
{
	return (json_pack("{s:s, s:s?, s:s, s:s, s:s, s:s, s:s?, s:s?, s:s?, "
	    "s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:I}", "request_id",
	    u->request_id, "client_request_id", u->client_request_id,
	    "key_id", u->key_id, "tenant", u->tenant, "route", u->route,
	    "method", u->method, "endpoint", u->endpoint, "model", u->model,
	    "error", u->error, "status", u->status, "in", (json_int_t)u->in,
	    "out", (json_int_t)u->out, "cache_read",
	    (json_int_t)u->cache_read, "cache_creation",
	    (json_int_t)u->cache_creation, "ttft", (json_int_t)u->ttft,
	    "duration_ms", (json_int_t)u->duration_ms, "cost", u->cost,
	    "at_ms", (json_int_t)u->at_ms));
}

/* A string member of o, or NULL. */
static const char *
usage_str(json_t *o, const char *name)
{
	return (json_string_value(json_object_get(o, name)));
}

/* An integer member of o. */
static long long
usage_int(json_t *o, const char *name)
{
	return ((long long)json_integer_value(json_object_get(o, name)));
}

/*
 * Write a spooled record (usage_to_json's object; spool.c calls it, as
 * usage_start told it) once: a row of its request id already there is
 * left as it is.  Returns 0 or -1.
 */
static int
usage_store_json(struct db *db, json_t *o)
{
	struct usage_rec	u;
	int			rc;

	memset(&u, 0, sizeof u);
	if (usage_str(o, "request_id") == NULL || usage_str(o, "route") ==
	    NULL || usage_str(o, "method") == NULL)
		return (0);	/* not a record: nothing to write */
	snprintf(u.request_id, sizeof u.request_id, "%s",
	    usage_str(o, "request_id"));
	snprintf(u.key_id, sizeof u.key_id, "%s", usage_str(o, "key_id") ?
	    usage_str(o, "key_id") : "");
	snprintf(u.tenant, sizeof u.tenant, "%s", usage_str(o, "tenant") ?
	    usage_str(o, "tenant") : "");
	snprintf(u.route, sizeof u.route, "%s", usage_str(o, "route"));
	snprintf(u.method, sizeof u.method, "%s", usage_str(o, "method"));
	/* usage_insert only reads these. */
	u.client_request_id = (char *)(uintptr_t)usage_str(o,
	    "client_request_id");
	u.endpoint = (char *)(uintptr_t)(usage_str(o, "endpoint") != NULL ?
	    usage_str(o, "endpoint") : "");
	u.model = (char *)(uintptr_t)usage_str(o, "model");
	u.error = (char *)(uintptr_t)usage_str(o, "error");
	u.status = (int)usage_int(o, "status");
	u.in = usage_int(o, "in");
	u.out = usage_int(o, "out");
	u.cache_read = usage_int(o, "cache_read");
	u.cache_creation = usage_int(o, "cache_creation");
	u.ttft = usage_int(o, "ttft");
	u.duration_ms = usage_int(o, "duration_ms");
	u.cost = json_number_value(json_object_get(o, "cost"));
	u.at_ms = (uint64_t)usage_int(o, "at_ms");
	rc = usage_insert(db, &u);
	return (rc);
}

/*
 * At exit, the database not answering: put the queue's records in the
 * spool (stored at the next start).  Returns how many could not be.
 */
static size_t
usage_spool_queue(void)
{
	struct usage_rec	*u;
	json_t			*o;
	size_t			 i, lost = 0;

	for (i = 0; i < usage.len; i++) {
		u = &usage.q[(usage.head + i) % USAGE_QUEUE];
		if ((o = usage_to_json(u)) == NULL ||
		    spool_usage(o, u->request_id) != 0)
			lost++;
		json_decref(o);
	}
	return (lost);
}

/* A batch for usage_write_tx. */
struct usage_batch {
	struct usage_rec	*recs;
	size_t			 n;
};

/* Insert a batch's records (in db_tx's transaction). */
static int
usage_write_tx(struct db *db, void *arg)
{
	struct usage_batch	*b = arg;
	size_t			 i;

	for (i = 0; i < b->n; i++) {
		if (usage_insert(db, &b->recs[i]) != 0) {
			log_warnx("usage batch: %s", db_error(db));
			return (-1);
		}
	}
	return (0);
}

/*
 * Write n records from the queue's head in one transaction (db_tx: tried
 * again at once when the server rolled it back).  Returns 0, or -1
 * (nothing was written, or a lost COMMIT's answer: the batch is tried
 * again later, and rows already there are not written twice).
 */
static int
usage_write(struct db *db, struct usage_rec *batch, size_t n)
{
	struct usage_batch	b = { batch, n };

	return (db_tx(db, usage_write_tx, &b) == 0 ? 0 : -1);
}

/* A deadline ms from now, for pthread_cond_timedwait. */
static void
usage_deadline(struct timespec *ts, long ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/*
 * Copy up to USAGE_BATCH records from the queue's head into batch (the
 * lock held); they leave the queue only once written (usage_drop).
 */
static size_t
usage_peek(struct usage_rec *batch, size_t queued)
{
	size_t	n = queued < USAGE_BATCH ? queued : USAGE_BATCH, i;

	/*
	 * cppcheck takes queued for 0: it cannot see that other threads
	 * fill the queue while the writer waits on the condition.
	 */
	/* cppcheck-suppress knownConditionTrueFalse */
	for (i = 0; i < n; i++)
		batch[i] = usage.q[(usage.head + i) % USAGE_QUEUE];
	return (n);
}

/* Free and remove n written records from the queue's head (lock held). */
static void
usage_drop(size_t n)
{
	size_t	i;

	for (i = 0; i < n; i++) {
		usage_rec_clear(&usage.q[usage.head]);
		usage.head = (usage.head + 1) % USAGE_QUEUE;
	}
	/*
	 * Empty: start again from the ring's first record, so that a writer
	 * that keeps up touches a few pages of the ring, not all 3 MB of it
	 * one request after another (which looked like a leak: resident
	 * memory growing by a record a request until the ring wrapped).
	 */
	if ((usage.len -= n) == 0)
		usage.head = 0;
}

/* The writer thread. */
static void *
usage_main(void *arg)
{
	struct usage_rec	*batch;
	struct timespec		 ts;
	struct db		*db = db_thread();
	uint64_t		 stop_deadline = 0;
	size_t			 n, i, lost;
	int			 failed = 0;

	(void)arg;
	if ((batch = calloc(USAGE_BATCH, sizeof *batch)) == NULL || db == NULL)
		fatalx("usage writer: out of memory");
	pthread_mutex_lock(&usage_lock);
	for (;;) {
		/* Gather: wait for work, then a little more for company. */
		while (usage.len == 0 && !usage.stopping)
			pthread_cond_wait(&usage_cond, &usage_lock);
		if (usage.len == 0 && usage.stopping)
			break;
		if (!usage.stopping && (failed || usage.len < USAGE_BATCH)) {
			usage_deadline(&ts, failed ? USAGE_RETRY_MS :
			    USAGE_WAIT_MS);
			while (!usage.stopping && (failed ||
			    usage.len < USAGE_BATCH) && pthread_cond_timedwait(
			    &usage_cond, &usage_lock, &ts) != ETIMEDOUT)
				;
		}
		n = usage_peek(batch, usage.len);
		pthread_mutex_unlock(&usage_lock);

		failed = usage_write(db, batch, n) != 0;

		pthread_mutex_lock(&usage_lock);
		if (!failed) {
			usage_drop(n);
			continue;
		}
		if (usage.stopping) {
			if (stop_deadline == 0)
				stop_deadline = util_now_ms() +
				    (spool_ready() ? USAGE_STOP_SPOOL_MS :
				    USAGE_STOP_MS);
			if (util_now_ms() >= stop_deadline) {
				lost = spool_ready() ? usage_spool_queue() :
				    usage.len;
				log_warnx("stopping: the database does not "
				    "answer: %zu usage records spooled, %zu "
				    "lost", usage.len - lost, lost);
				for (i = 0; i < lost; i++)
					metrics_usage_lost();
				break;
			}
			pthread_mutex_unlock(&usage_lock);
			(void)nanosleep(&(struct timespec){ 0, 200000000L },
			    NULL);
			pthread_mutex_lock(&usage_lock);
		}
	}
	pthread_mutex_unlock(&usage_lock);
	free(batch);
	db_release();
	return (NULL);
}

/* Start the writer thread. */
void
usage_start(void)
{
	if ((usage.q = calloc(USAGE_QUEUE, sizeof *usage.q)) == NULL)
		fatal("calloc");
	if (pthread_create(&usage.thread, NULL, usage_main, NULL) != 0)
		fatalx("pthread_create");
	spool_usage_writer(usage_store_json);
	usage.running = 1;
}

/* Write every queued record, then stop the writer thread. */
void
usage_stop(void)
{
	size_t	i;

	if (!usage.running)
		return;
	pthread_mutex_lock(&usage_lock);
	usage.stopping = 1;
	pthread_cond_broadcast(&usage_cond);
	pthread_mutex_unlock(&usage_lock);
	pthread_join(usage.thread, NULL);
	for (i = 0; i < USAGE_QUEUE; i++)
		usage_rec_clear(&usage.q[i]);
	free(usage.q);
	usage.q = NULL;
	usage.running = 0;
}

/*
 * Hand a record over; the queue takes its strings (u is cleared).  With
 * no writer thread (ccgate-admin, tests) or a full queue, write it here.
 */
void
usage_submit(struct usage_rec *u)
{
	struct db	*db;

	pthread_mutex_lock(&usage_lock);
	if (usage.running && !usage.stopping && usage.len < USAGE_QUEUE) {
		usage.q[(usage.head + usage.len) % USAGE_QUEUE] = *u;
		memset(u, 0, sizeof *u);
		usage.len++;
		if (usage.len == 1 || usage.len == USAGE_BATCH)
			pthread_cond_signal(&usage_cond);
		pthread_mutex_unlock(&usage_lock);
		return;
	}
	pthread_mutex_unlock(&usage_lock);
	if ((db = db_thread()) == NULL || usage_insert(db, u) != 0) {
		metrics_usage_lost();
		log_warnx("request %s: usage record lost: %s", u->request_id,
		    db != NULL ? db_error(db) : "out of memory");
	}
	usage_rec_clear(u);
}
