/*
 * GET /metrics: Prometheus text format (version 0.0.4).  Counters live in
 * this process (one ccgate-fcgi process per node serves every thread);
 * the pool's gauges and counters are asked of ccgate-poold at scrape
 * time.  Labels are bounded: the route is its pattern from the route
 * table ("unmatched" for anything else), the status a code from 100 to
 * 599.  nginx lets only the admin allowlist reach this route.
 */
#include "config.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "poolc.h"
#include "proto.h"

#define METRICS_NBUCKETS	13
#define METRICS_NSTATUS		500	/* 100 to 599 */

static const long long metrics_le_ms[METRICS_NBUCKETS] = {
	5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000
};

struct metrics_route {
	uint64_t	status[METRICS_NSTATUS];
	uint64_t	bucket[METRICS_NBUCKETS];
	uint64_t	count;
	double		sum_s;
};

static struct {
	pthread_mutex_t		lock;
	struct metrics_route	route[ROUTE_MAX];
	uint64_t		tokens_in, tokens_out, cache_read, cache_creation;
	double			cost;
	uint64_t		quota_rejections;
	uint64_t		usage_lost;
} metrics = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* Count one finished request. */
void
metrics_request(enum route_id id, int status, uint64_t duration_ms,
    long long in, long long out, long long cache_read,
    long long cache_creation, double cost)
{
	struct metrics_route	*m;
	int			 i;

	if ((int)id < 0 || id >= ROUTE_MAX)
		id = ROUTE_NONE;
	m = &metrics.route[id];
	pthread_mutex_lock(&metrics.lock);
	if (status >= 100 && status <= 599)
		m->status[status - 100]++;
	for (i = 0; i < METRICS_NBUCKETS; i++) {
		if ((long long)duration_ms <= metrics_le_ms[i])
			m->bucket[i]++;
	}
	m->count++;
	m->sum_s += (double)duration_ms / 1000.0;
	metrics.tokens_in += (uint64_t)(in > 0 ? in : 0);
	metrics.tokens_out += (uint64_t)(out > 0 ? out : 0);
	metrics.cache_read += (uint64_t)(cache_read > 0 ? cache_read : 0);
	metrics.cache_creation += (uint64_t)(cache_creation > 0 ?
	    cache_creation : 0);
	metrics.cost += cost;
	pthread_mutex_unlock(&metrics.lock);
}

/* Count a request refused by a key quota. */
void
metrics_quota_rejected(void)
{
	pthread_mutex_lock(&metrics.lock);
	metrics.quota_rejections++;
	pthread_mutex_unlock(&metrics.lock);
}

/* Count a usage record that could not be written. */
void
metrics_usage_lost(void)
{
	pthread_mutex_lock(&metrics.lock);
	metrics.usage_lost++;
	pthread_mutex_unlock(&metrics.lock);
}

/* A growing text buffer. */
struct metrics_buf {
	char	*s;
	size_t	 len;
	size_t	 cap;
	int	 failed;
};

/* Append formatted text. */
static void __attribute__((format(printf, 2, 3)))
metrics_put(struct metrics_buf *b, const char *fmt, ...)
{
	va_list	 ap;
	char	*ns;
	int	 n;

	if (b->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->failed = 1;
			return;
		}
		if ((size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		if ((ns = realloc(b->s, b->cap * 2 + (size_t)n)) == NULL) {
			b->failed = 1;
			return;
		}
		b->s = ns;
		b->cap = b->cap * 2 + (size_t)n;
	}
}

/* The request counters and histograms. */
static void
metrics_requests(struct metrics_buf *b)
{
	struct metrics_route	*m;
	const char		*name;
	uint64_t		 hits, stale;
	int			 id, s, i;

	metrics_put(b, "# HELP ccgate_http_requests_total Requests answered, "
	    "by route pattern and status.\n"
	    "# TYPE ccgate_http_requests_total counter\n");
	for (id = 0; id < ROUTE_MAX; id++) {
		name = route_name((enum route_id)id);
		for (s = 0; s < METRICS_NSTATUS; s++) {
			if (metrics.route[id].status[s] != 0)
				metrics_put(b, "ccgate_http_requests_total{route="
				    "\"%s\",status=\"%d\"} %llu\n", name, s + 100,
				    (unsigned long long)
				    metrics.route[id].status[s]);
		}
	}
	metrics_put(b, "# HELP ccgate_http_request_duration_seconds Time from "
	    "the request to its last byte, by route pattern.\n"
	    "# TYPE ccgate_http_request_duration_seconds histogram\n");
	for (id = 0; id < ROUTE_MAX; id++) {
		m = &metrics.route[id];
		if (m->count == 0)
			continue;
		name = route_name((enum route_id)id);
		for (i = 0; i < METRICS_NBUCKETS; i++)
			metrics_put(b, "ccgate_http_request_duration_seconds_bucket"
			    "{route=\"%s\",le=\"%g\"} %llu\n", name,
			    (double)metrics_le_ms[i] / 1000.0,
			    (unsigned long long)m->bucket[i]);
		metrics_put(b, "ccgate_http_request_duration_seconds_bucket"
		    "{route=\"%s\",le=\"+Inf\"} %llu\n"
		    "ccgate_http_request_duration_seconds_sum{route=\"%s\"} "
		    "%.6f\n"
		    "ccgate_http_request_duration_seconds_count{route=\"%s\"} "
		    "%llu\n", name, (unsigned long long)m->count, name,
		    m->sum_s, name, (unsigned long long)m->count);
	}
	metrics_put(b, "# HELP ccgate_tokens_total Tokens the CLI reported, by "
	    "kind.\n# TYPE ccgate_tokens_total counter\n"
	    "ccgate_tokens_total{kind=\"input\"} %llu\n"
	    "ccgate_tokens_total{kind=\"output\"} %llu\n"
	    "ccgate_tokens_total{kind=\"cache_read\"} %llu\n"
	    "ccgate_tokens_total{kind=\"cache_creation\"} %llu\n"
	    "# HELP ccgate_cost_usd_total Cost the CLI reported.\n"
	    "# TYPE ccgate_cost_usd_total counter\n"
	    "ccgate_cost_usd_total %.6f\n"
	    "# HELP ccgate_quota_rejections_total Requests refused by a key "
	    "quota (429).\n# TYPE ccgate_quota_rejections_total counter\n"
	    "ccgate_quota_rejections_total %llu\n"
	    "# HELP ccgate_usage_records_lost_total Usage records that could "
	    "not be written.\n# TYPE ccgate_usage_records_lost_total counter\n"
	    "ccgate_usage_records_lost_total %llu\n",
	    (unsigned long long)metrics.tokens_in,
	    (unsigned long long)metrics.tokens_out,
	    (unsigned long long)metrics.cache_read,
	    (unsigned long long)metrics.cache_creation, metrics.cost,
	    (unsigned long long)metrics.quota_rejections,
	    (unsigned long long)metrics.usage_lost);
	conv_cache_counts(&hits, &stale);
	metrics_put(b, "# HELP ccgate_conversation_cache_total Turns whose "
	    "conversation came from this process's cache, and those of them "
	    "MariaDB found stale (read again).\n"
	    "# TYPE ccgate_conversation_cache_total counter\n"
	    "ccgate_conversation_cache_total{result=\"hit\"} %llu\n"
	    "ccgate_conversation_cache_total{result=\"stale\"} %llu\n",
	    (unsigned long long)hits, (unsigned long long)stale);
}

/* The pool daemon's gauges and counters (ccgate_pool_up 0 if down). */
static void
metrics_pool(struct metrics_buf *b)
{
	json_t		*msg, *st = NULL, *v;
	const char	*k;
	char		*cause = NULL;

	if ((msg = proto_new(PROTO_STATS)) != NULL)
		st = poolc_call(appconf->poold_socket, msg, 2000, &cause);
	json_decref(msg);
	free(cause);
	metrics_put(b, "# HELP ccgate_pool_up Whether ccgate-poold answered.\n"
	    "# TYPE ccgate_pool_up gauge\nccgate_pool_up %d\n", st != NULL &&
	    strcmp(proto_type(st), PROTO_STATS) == 0);
	if (st == NULL || strcmp(proto_type(st), PROTO_STATS) != 0) {
		json_decref(st);
		return;
	}
	metrics_put(b, "# HELP ccgate_pool_processes CLI processes, by state."
	    "\n# TYPE ccgate_pool_processes gauge\n");
	json_object_foreach(json_object_get(st, "processes_by_state"), k, v) {
		if (strcmp(k, "total") != 0 && json_is_integer(v))
			metrics_put(b, "ccgate_pool_processes{state=\"%s\"} "
			    "%lld\n", k, (long long)json_integer_value(v));
	}
	metrics_put(b, "# HELP ccgate_pool_queue_length Jobs waiting for a "
	    "process.\n# TYPE ccgate_pool_queue_length gauge\n"
	    "ccgate_pool_queue_length %lld\n"
	    "# HELP ccgate_pool_max_instances The pool's bound.\n"
	    "# TYPE ccgate_pool_max_instances gauge\n"
	    "ccgate_pool_max_instances %lld\n"
	    "# HELP ccgate_pool_min_instances Warm processes kept.\n"
	    "# TYPE ccgate_pool_min_instances gauge\n"
	    "ccgate_pool_min_instances %lld\n"
	    "# HELP ccgate_pool_events_total The pool's counters (jobs and "
	    "their outcomes, spawns, exits).\n"
	    "# TYPE ccgate_pool_events_total counter\n",
	    (long long)json_integer_value(json_object_get(st, "queue_length")),
	    (long long)json_integer_value(json_object_get(json_object_get(st,
	    "limits"), "max_instances")),
	    (long long)json_integer_value(json_object_get(json_object_get(st,
	    "limits"), "min_instances")));
	json_object_foreach(json_object_get(st, "totals"), k, v) {
		if (json_is_integer(v))
			metrics_put(b, "ccgate_pool_events_total{event=\"%s\"} "
			    "%lld\n", k, (long long)json_integer_value(v));
	}
	json_decref(st);
}

/* GET /metrics */
void
metrics_handle(struct request *r)
{
	struct metrics_buf	b = { NULL, 0, 16384, 0 };

	if ((b.s = malloc(b.cap)) == NULL) {
		req_error(r, 500, NULL, "out of memory");
		return;
	}
	b.s[0] = '\0';
	pthread_mutex_lock(&metrics.lock);
	metrics_requests(&b);
	pthread_mutex_unlock(&metrics.lock);
	metrics_pool(&b);
	if (b.failed)
		req_error(r, 500, NULL, "out of memory");
	else
		req_send_text(r, 200, "text/plain; version=0.0.4", b.s);
	free(b.s);
}
