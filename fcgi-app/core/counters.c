/*
 * The request counters of this process: by route (a slot each, given by
 * the HTTP layer's route table, with the route's pattern as its name),
 * tokens, cost, refusals and lost usage records.  http/metrics.c shows
 * them as Prometheus text.
 */
#include "config.h"

#include <pthread.h>
#include <string.h>

#include "core.h"

const long long metrics_le_ms[METRICS_NBUCKETS] = {
	5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000
};

static struct metrics_counts	metrics;
static pthread_mutex_t		metrics_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * Count one finished request of route slot (0: no route), whose pattern
 * is name (a string that lives as long as the process: the label).
 */
void
metrics_request(int slot, const char *name, int status, uint64_t duration_ms,
    long long in, long long out, long long cache_read,
    long long cache_creation, double cost)
{
	struct metrics_route	*m;
	int			 i;

	if (slot < 0 || slot >= METRICS_SLOTS)
		slot = 0;
	m = &metrics.route[slot];
	pthread_mutex_lock(&metrics_lock);
	m->name = name;
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
	pthread_mutex_unlock(&metrics_lock);
}

/* Count a request refused by a key quota. */
void
metrics_quota_rejected(void)
{
	pthread_mutex_lock(&metrics_lock);
	metrics.quota_rejections++;
	pthread_mutex_unlock(&metrics_lock);
}

/* Count a usage record that could not be written. */
void
metrics_usage_lost(void)
{
	pthread_mutex_lock(&metrics_lock);
	metrics.usage_lost++;
	pthread_mutex_unlock(&metrics_lock);
}

/* Count answers put in the spool (n > 0) or stored from it (n < 0). */
void
metrics_spool(long n)
{
	pthread_mutex_lock(&metrics_lock);
	metrics.spooled += n;
	pthread_mutex_unlock(&metrics_lock);
}

/* Let fn read the counters (while nothing counts). */
void
metrics_read(void (*fn)(const struct metrics_counts *, void *), void *arg)
{
	pthread_mutex_lock(&metrics_lock);
	fn(&metrics, arg);
	pthread_mutex_unlock(&metrics_lock);
}
