/*
 * GET /metrics: Prometheus text format (version 0.0.4).  The counters are
 * this process's (core/counters.c; one ccgate-fcgi process per node
 * serves every thread);
 * the pool's gauges and counters are asked of ccgate-poold at scrape
 * time.  Labels are bounded: the route is its pattern from the route
 * table ("unmatched" for anything else), the status a code from 100 to
 * 599.  nginx lets only the admin allowlist reach this route.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "proto.h"

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

/*
 * The counts of every slot named like slot: a pattern the table lists
 * with several methods is one series.  Returns 0 when slot counted
 * nothing or an earlier slot has its name (its series is out already).
 */
static int
metrics_sum(const struct metrics_counts *mc, int slot,
    struct metrics_route *sum)
{
	const char	*name = mc->route[slot].name;
	int		 o, i;

	if (name == NULL)
		return (0);
	for (o = 0; o < slot; o++) {
		if (mc->route[o].name != NULL &&
		    strcmp(mc->route[o].name, name) == 0)
			return (0);
	}
	memset(sum, 0, sizeof *sum);
	sum->name = name;
	for (o = slot; o < METRICS_SLOTS; o++) {
		const struct metrics_route	*m = &mc->route[o];

		if (m->name == NULL || strcmp(m->name, name) != 0)
			continue;
		for (i = 0; i < METRICS_NSTATUS; i++)
			sum->status[i] += m->status[i];
		for (i = 0; i < METRICS_NBUCKETS; i++)
			sum->bucket[i] += m->bucket[i];
		sum->count += m->count;
		sum->sum_s += m->sum_s;
	}
	return (1);
}

/* The request counters and histograms (metrics_read's callback). */
static void
metrics_requests(const struct metrics_counts *mc, void *arg)
{
	struct metrics_buf	*b = arg;
	struct metrics_route	 m;
	const char		*name;
	uint64_t		 hits, stale;
	int			 slot, s, i;

	metrics_put(b, "# HELP ccgate_http_requests_total Requests answered, "
	    "by route pattern and status.\n"
	    "# TYPE ccgate_http_requests_total counter\n");
	for (slot = 0; slot < METRICS_SLOTS; slot++) {
		if (!metrics_sum(mc, slot, &m))
			continue;
		name = m.name;
		for (s = 0; s < METRICS_NSTATUS; s++) {
			if (m.status[s] != 0)
				metrics_put(b, "ccgate_http_requests_total{route="
				    "\"%s\",status=\"%d\"} %llu\n", name, s + 100,
				    (unsigned long long)m.status[s]);
		}
	}
	metrics_put(b, "# HELP ccgate_http_request_duration_seconds Time from "
	    "the request to its last byte, by route pattern.\n"
	    "# TYPE ccgate_http_request_duration_seconds histogram\n");
	for (slot = 0; slot < METRICS_SLOTS; slot++) {
		if (!metrics_sum(mc, slot, &m) || m.count == 0)
			continue;
		name = m.name;
		for (i = 0; i < METRICS_NBUCKETS; i++)
			metrics_put(b, "ccgate_http_request_duration_seconds_bucket"
			    "{route=\"%s\",le=\"%g\"} %llu\n", name,
			    (double)metrics_le_ms[i] / 1000.0,
			    (unsigned long long)m.bucket[i]);
		metrics_put(b, "ccgate_http_request_duration_seconds_bucket"
		    "{route=\"%s\",le=\"+Inf\"} %llu\n"
		    "ccgate_http_request_duration_seconds_sum{route=\"%s\"} "
		    "%.6f\n"
		    "ccgate_http_request_duration_seconds_count{route=\"%s\"} "
		    "%llu\n", name, (unsigned long long)m.count, name,
		    m.sum_s, name, (unsigned long long)m.count);
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
	    "ccgate_usage_records_lost_total %llu\n"
	    "# HELP ccgate_spooled_answers Answers waiting in the spool for "
	    "the database.\n# TYPE ccgate_spooled_answers gauge\n"
	    "ccgate_spooled_answers %lld\n",
	    (unsigned long long)mc->tokens_in,
	    (unsigned long long)mc->tokens_out,
	    (unsigned long long)mc->cache_read,
	    (unsigned long long)mc->cache_creation, mc->cost,
	    (unsigned long long)mc->quota_rejections,
	    (unsigned long long)mc->usage_lost, (long long)mc->spooled);
	conv_cache_counts(&hits, &stale);
	metrics_put(b, "# HELP ccgate_conversation_cache_total Turns whose "
	    "conversation came from this process's cache, and those of them "
	    "MariaDB found stale (read again).\n"
	    "# TYPE ccgate_conversation_cache_total counter\n"
	    "ccgate_conversation_cache_total{result=\"hit\"} %llu\n"
	    "ccgate_conversation_cache_total{result=\"stale\"} %llu\n",
	    (unsigned long long)hits, (unsigned long long)stale);
}

/*
 * The upstream account as ccgate-poold sees it: ccgate_upstream_state, 1
 * for the state it is in and 0 for the others, and the failed turns by
 * the upstream's error.
 */
static void
metrics_upstream(struct metrics_buf *b, json_t *up)
{
	static const char *const states[] = { "ok", "limited", "overloaded",
	    "credential_rejected", NULL };
	static const char *const types[] = { "rate_limit", "overloaded",
	    "authentication", NULL };
	const char	*now = json_string_value(json_object_get(up, "state"));
	json_t		*errs = json_object_get(up, "errors");
	int		 i;

	if (!json_is_object(up) || now == NULL)
		return;
	metrics_put(b, "# HELP ccgate_upstream_state The upstream account's "
	    "state (1: the one it is in).\n"
	    "# TYPE ccgate_upstream_state gauge\n");
	for (i = 0; states[i] != NULL; i++)
		metrics_put(b, "ccgate_upstream_state{state=\"%s\"} %d\n",
		    states[i], strcmp(now, states[i]) == 0);
	metrics_put(b, "# HELP ccgate_upstream_errors_total Turns the upstream "
	    "refused, by its error.\n"
	    "# TYPE ccgate_upstream_errors_total counter\n");
	for (i = 0; types[i] != NULL; i++)
		metrics_put(b, "ccgate_upstream_errors_total{type=\"%s\"} "
		    "%lld\n", types[i], (long long)json_integer_value(
		    json_object_get(errs, types[i])));
	metrics_put(b, "# HELP ccgate_upstream_refused_total Jobs answered at "
	    "once, without a CLI, while the account was refused.\n"
	    "# TYPE ccgate_upstream_refused_total counter\n"
	    "ccgate_upstream_refused_total %lld\n",
	    (long long)json_integer_value(json_object_get(up, "refused")));
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
	metrics_upstream(b, json_object_get(st, "upstream"));
	json_decref(st);
}

/* Each tenant's workspace use (ccgate-poold measures at most every 30 s). */
static void
metrics_workspaces(struct metrics_buf *b)
{
	json_t		*msg, *ans = NULL, *v;
	const char	*k;
	char		*cause = NULL;

	if ((msg = proto_new(PROTO_FILE_USAGE)) != NULL)
		ans = poolc_call(appconf->poold_socket, msg, 10000, &cause);
	json_decref(msg);
	free(cause);
	if (!json_is_object(json_object_get(ans, "usage"))) {
		json_decref(ans);
		return;
	}
	metrics_put(b, "# HELP ccgate_workspace_bytes The bytes of a tenant's "
	    "workspace files.\n# TYPE ccgate_workspace_bytes gauge\n");
	json_object_foreach(json_object_get(ans, "usage"), k, v) {
		metrics_put(b, "ccgate_workspace_bytes{tenant=\"%s\"} %lld\n",
		    k, (long long)json_integer_value(json_object_get(v,
		    "bytes")));
	}
	metrics_put(b, "# HELP ccgate_workspace_disk_bytes The disk a tenant's "
	    "workspace uses.\n# TYPE ccgate_workspace_disk_bytes gauge\n");
	json_object_foreach(json_object_get(ans, "usage"), k, v) {
		metrics_put(b, "ccgate_workspace_disk_bytes{tenant=\"%s\"} "
		    "%lld\n", k, (long long)json_integer_value(
		    json_object_get(v, "disk_bytes")));
	}
	metrics_put(b, "# HELP ccgate_workspace_files The files of a tenant's "
	    "workspace.\n# TYPE ccgate_workspace_files gauge\n");
	json_object_foreach(json_object_get(ans, "usage"), k, v) {
		metrics_put(b, "ccgate_workspace_files{tenant=\"%s\"} %lld\n",
		    k, (long long)json_integer_value(json_object_get(v,
		    "files")));
	}
	json_decref(ans);
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
	metrics_read(metrics_requests, &b);
	metrics_pool(&b);
	metrics_workspaces(&b);
	if (b.failed)
		req_error(r, 500, NULL, "out of memory");
	else
		req_send_text(r, 200, "text/plain; version=0.0.4", b.s);
	free(b.s);
}
