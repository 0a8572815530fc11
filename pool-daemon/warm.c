/*
 * The warm target.  New conversations' arrivals are counted per profile
 * over a short moving window (warm_window_ms, in one-second buckets); a
 * profile's demand is what it may expect within one spawn time: the mean
 * arrivals in a spawn time plus twice their deviation (Poisson), or the
 * most that came within one bucket, whichever is more.  The default
 * profile's target is its demand, at least the reserved share (min_warm,
 * at most min_instances) and at most max_warm; what max_warm leaves goes
 * to the learned profiles, one process at a time to each in turn, so no
 * one profile takes it all.  A profile other than the default is learned
 * for a tenant once it recurs within the window in that tenant's new
 * conversations: one seen once is remembered (WARM_SEEN, at most
 * WARM_SEEN_TENANT of them one tenant's); at most warm_profiles are
 * learned, at most half of them (at least one) one tenant's, and one is
 * forgotten when its window is empty.  A learned profile's warm processes
 * are its tenant's only (proc->warm_for): another tenant's conversation
 * placed warm would tell it that someone uses that system prompt.
 *
 * A spawn's time is learned from the first output of jobs that waited for
 * a spawn.  Processes count as starting until their first output or one
 * spawn time, and at most max_spawning start at once.  Their memory (each
 * CLI's process tree's resident set, from /proc) is sampled in the tick;
 * a spawn is allowed only if it fits under max_pool_rss_mb, each process
 * (and the new one) counted at least at the most one process was seen to
 * use (a generous guess until one was seen).  Processes grow as they run turns:
 * a pool found above the bound sheds idle processes (pool.c).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "poold.h"

#define WARM_SPAWN_GUESS_MS	1000
#define WARM_RSS_GUESS_KB	(512 * 1024)	/* until one is measured */
#define WARM_SAMPLE_MS		500

/* The window's length in buckets (at least one, at most WARM_BUCKETS). */
static uint64_t
warm_window(void)
{
	long	ms = poold->cf->warm_window_ms;

	if (ms < WARM_BUCKET_MS)
		return (1);
	if (ms / WARM_BUCKET_MS > WARM_BUCKETS)
		return (WARM_BUCKETS);
	return ((uint64_t)(ms / WARM_BUCKET_MS));
}

/* How many profiles may be learned (warm_profiles, bounded). */
static long
warm_nprofiles(void)
{
	long	n = poold->cf->warm_profiles;

	return (n > WARM_PROFILES_MAX ? WARM_PROFILES_MAX : n);
}

/* Whether the adaptive target is on (max_warm and a window). */
static int
warm_adaptive(void)
{
	return (poold->cf->max_warm > 0 && poold->cf->warm_window_ms > 0);
}

/* A spawn's time, as estimated, in ms. */
static uint64_t
warm_spawn_ms(void)
{
	return (poold->warm.spawn_ms != 0 ? poold->warm.spawn_ms :
	    WARM_SPAWN_GUESS_MS);
}

/* Count one arrival at now. */
static void
warm_rate_add(struct warm_rate *r, uint64_t now)
{
	uint64_t	idx = now / WARM_BUCKET_MS;
	size_t		slot = (size_t)(idx % WARM_BUCKETS);

	if (r->idx[slot] != idx) {
		r->idx[slot] = idx;
		r->n[slot] = 0;
	}
	if (r->n[slot] < UINT32_MAX)
		r->n[slot]++;
}

/* Arrivals in the window, and the most in one bucket of it. */
static uint64_t
warm_rate_sum(const struct warm_rate *r, uint64_t now, uint32_t *peak)
{
	uint64_t	idx = now / WARM_BUCKET_MS, w = warm_window(), sum = 0;
	size_t		i;

	*peak = 0;
	for (i = 0; i < WARM_BUCKETS; i++) {
		if (r->n[i] == 0 || r->idx[i] > idx || idx - r->idx[i] >= w)
			continue;
		sum += r->n[i];
		if (r->n[i] > *peak)
			*peak = r->n[i];
	}
	return (sum);
}

/* The integer square root of x. */
static uint64_t
warm_isqrt(uint64_t x)
{
	uint64_t	r = 0, bit = (uint64_t)1 << 62;

	while (bit > x)
		bit >>= 2;
	while (bit != 0) {
		if (x >= r + bit) {
			x -= r + bit;
			r = (r >> 1) + bit;
		} else
			r >>= 1;
		bit >>= 2;
	}
	return (r);
}

/*
 * What a profile may expect within one spawn time: mean + 2 sd of the
 * arrivals in one spawn time at the window's rate, or the most that came
 * within one bucket; 0 if none came.
 */
static long
warm_demand(const struct warm_rate *r, uint64_t now)
{
	uint64_t	sum, milli, sd, d;
	uint32_t	peak;

	if ((sum = warm_rate_sum(r, now, &peak)) == 0)
		return (0);
	/* The mean in thousandths: sum * spawn / window. */
	milli = sum * warm_spawn_ms() * 1000 / (warm_window() * WARM_BUCKET_MS);
	sd = warm_isqrt(milli * 1000);
	d = (milli + 2 * sd + 999) / 1000;
	if (d < peak)
		d = peak;
	return (d > 1024 ? 1024 : (long)d);
}

/* A profile's hash (FNV-1a): model, system prompt, max_tokens. */
static uint64_t
warm_hash(const struct profile *pr)
{
	uint64_t	 h = 14695981039346656037ULL;
	char		 n[32];
	const char	*parts[3];
	size_t		 i, k;

	snprintf(n, sizeof n, "%ld", pr->max_tokens);
	parts[0] = pr->model;
	parts[1] = pr->system_prompt != NULL ? pr->system_prompt : "";
	parts[2] = n;
	for (i = 0; i < 3; i++) {
		for (k = 0; parts[i][k] != '\0'; k++) {
			h ^= (unsigned char)parts[i][k];
			h *= 1099511628211ULL;
		}
		h ^= 0xff;
		h *= 1099511628211ULL;
	}
	return (h);
}

/* Whether pr is the warm processes' default profile. */
int
warm_is_default(const struct profile *pr)
{
	const char	*def = poold->cf->default_model;

	return (strcmp(pr->model, def != NULL ? def : "") == 0 &&
	    pr->system_prompt == NULL && pr->tools == 0 &&
	    pr->max_tokens == 0 && pr->client_tools == NULL &&
	    pr->output_schema == NULL);
}

/*
 * Whether a warm process can be started for pr ahead of its tenant: no
 * tools (their workspace is the tenant's), no client tools or schema.
 */
static int
warm_learnable(const struct profile *pr)
{
	return (pr->tools == 0 && pr->client_tools == NULL &&
	    pr->output_schema == NULL && (pr->system_prompt == NULL ||
	    strlen(pr->system_prompt) <= WARM_PROMPT_MAX));
}

/* Count the live warm processes of a profile for a tenant ("": any). */
static long
warm_count(const struct profile *pr, const char *tenant)
{
	struct proc	*p;
	long		 n = 0;

	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (p->state == PROC_WARM && profile_equal(&p->profile, pr) &&
		    strcmp(p->warm_for, tenant) == 0)
			n++;
	}
	return (n);
}

/* Forget a learned profile. */
static void
warm_forget(struct warm_profile *wp)
{
	profile_clear(&wp->profile);
	memset(wp, 0, sizeof *wp);
}

/*
 * A profile recurred: learn it, if a slot is free (or its profile's
 * window is empty) and its tenant has not made its most recur.
 */
static void
warm_learn(const struct job *job, uint64_t first, uint64_t now, uint64_t h)
{
	struct warm_state	*w = &poold->warm;
	struct warm_profile	*wp, *slot = NULL;
	long			 max = warm_nprofiles(), cap, mine = 0;
	long			 i;
	uint32_t		 peak;

	cap = max / 2 > 1 ? max / 2 : 1;
	for (i = 0; i < max; i++) {
		wp = &w->learned[i];
		if (!wp->used) {
			if (slot == NULL)
				slot = wp;
			continue;
		}
		mine += strcmp(wp->tenant, job->tenant) == 0;
		if (slot == NULL && warm_rate_sum(&wp->rate, now, &peak) == 0 &&
		    warm_count(&wp->profile, wp->tenant) == 0)
			slot = wp;
	}
	if (mine >= cap || slot == NULL) {
		w->refused++;
		log_debug("profile of tenant %s not learned: %s", job->tenant,
		    slot == NULL ? "no room" : "its tenant's share is taken");
		return;
	}
	if (slot->used)
		warm_forget(slot);
	if (profile_copy(&slot->profile, &job->profile) != 0)
		return;
	slot->used = 1;
	slot->hash = h;
	snprintf(slot->tenant, sizeof slot->tenant, "%s", job->tenant);
	warm_rate_add(&slot->rate, first);
	warm_rate_add(&slot->rate, now);
	w->learned_n++;
	log_info("learned a profile (model %s%s) from tenant %s",
	    slot->profile.model, slot->profile.system_prompt != NULL ?
	    ", its own system prompt" : "", job->tenant);
}

/* Remember a non-default profile seen once. */
static void
warm_remember(const struct job *job, uint64_t now, uint64_t h)
{
	struct warm_seen	*s, *oldest = NULL, *mine = NULL;
	int			 i, n = 0;

	for (i = 0; i < WARM_SEEN; i++) {
		s = &poold->warm.seen[i];
		if (strcmp(s->tenant, job->tenant) == 0 && s->hash != 0) {
			n++;
			if (mine == NULL || s->at < mine->at)
				mine = s;
		}
		if (oldest == NULL || s->hash == 0 || (oldest->hash != 0 &&
		    s->at < oldest->at))
			oldest = s;
	}
	/* A tenant's new one replaces its own oldest once it has its most. */
	s = n >= WARM_SEEN_TENANT ? mine : oldest;
	s->hash = h;
	s->at = now;
	snprintf(s->tenant, sizeof s->tenant, "%s", job->tenant);
}

/* A new conversation came (a job that may take a warm process). */
void
warm_arrival(const struct job *job)
{
	struct warm_state	*w = &poold->warm;
	struct warm_profile	*wp;
	uint64_t		 now = poold_now(), h;
	long			 i;
	int			 k;

	w->arrivals++;
	if (warm_is_default(&job->profile)) {
		warm_rate_add(&w->def, now);
		warm_update();
		return;
	}
	if (!warm_learnable(&job->profile) || !warm_adaptive() ||
	    poold->cf->warm_profiles <= 0)
		return;
	for (i = 0; i < WARM_PROFILES_MAX; i++) {
		wp = &w->learned[i];
		if (wp->used && strcmp(wp->tenant, job->tenant) == 0 &&
		    profile_equal(&wp->profile, &job->profile)) {
			warm_rate_add(&wp->rate, now);
			warm_update();
			return;
		}
	}
	if ((h = warm_hash(&job->profile)) == 0)
		h = 1;
	for (k = 0; k < WARM_SEEN; k++) {
		struct warm_seen	*s = &w->seen[k];

		if (s->hash == h && strcmp(s->tenant, job->tenant) == 0 &&
		    now - s->at < warm_window() * WARM_BUCKET_MS) {
			warm_learn(job, s->at, now, h);
			memset(s, 0, sizeof *s);
			warm_update();
			return;
		}
	}
	warm_remember(job, now, h);
}

/* Work out the targets again (each arrival and each tick). */
void
warm_update(void)
{
	struct poold_config	*cf = poold->cf;
	struct warm_state	*w = &poold->warm;
	struct warm_profile	*wp;
	uint64_t		 now = poold_now();
	uint32_t		 peak;
	long			 floor = cf->min_warm, budget, i;
	int			 gave;

	if (floor > cf->min_instances)
		floor = cf->min_instances;
	w->def_demand = warm_demand(&w->def, now);
	w->def_target = floor;
	if (warm_adaptive() && w->def_demand > floor)
		w->def_target = w->def_demand < cf->max_warm ?
		    w->def_demand : (cf->max_warm > floor ? cf->max_warm : floor);
	budget = warm_adaptive() ? cf->max_warm - w->def_target : 0;
	for (i = 0; i < WARM_PROFILES_MAX; i++) {
		wp = &w->learned[i];
		if (!wp->used)
			continue;
		wp->target = 0;
		/* Forgotten once its window is empty, or beyond the bound. */
		if (i >= warm_nprofiles() || !warm_adaptive() ||
		    warm_rate_sum(&wp->rate, now, &peak) == 0) {
			log_debug("forgetting a learned profile (model %s)",
			    wp->profile.model);
			warm_forget(wp);
			continue;
		}
		wp->demand = warm_demand(&wp->rate, now);
	}
	/* What max_warm leaves, one at a time to each in turn. */
	do {
		gave = 0;
		for (i = 0; i < WARM_PROFILES_MAX && budget > 0; i++) {
			wp = &w->learned[i];
			if (wp->used && wp->target < wp->demand) {
				wp->target++;
				budget--;
				gave = 1;
			}
		}
	} while (gave && budget > 0);
}

/*
 * How many warm processes of pr for tenant ("" for any) are kept while
 * the pool has room: the default profile's target or min_instances, a
 * learned one's target, none of any other.
 */
long
warm_keep(const struct profile *pr, const char *tenant)
{
	struct warm_state	*w = &poold->warm;
	long			 i;

	if (*tenant == '\0' && warm_is_default(pr))
		return (w->def_target > poold->cf->min_instances ?
		    w->def_target : poold->cf->min_instances);
	for (i = 0; i < WARM_PROFILES_MAX; i++) {
		if (w->learned[i].used && strcmp(w->learned[i].tenant,
		    tenant) == 0 && profile_equal(&w->learned[i].profile, pr))
			return (w->learned[i].target);
	}
	return (0);
}

/*
 * The warm share made even in a full pool (idle bound processes stop for
 * it): the targets of every profile.
 */
long
warm_reserve(void)
{
	struct warm_state	*w = &poold->warm;
	long			 n = w->def_target, i;

	for (i = 0; i < WARM_PROFILES_MAX; i++) {
		if (w->learned[i].used)
			n += w->learned[i].target;
	}
	return (n);
}

/*
 * The profile that is furthest below what it keeps (the default first on
 * a tie), or NULL if none is, and in *tenant whose its warm processes are
 * ("": any).  The pointers are good until the next update.
 */
const struct profile *
warm_short(const char **tenant)
{
	static struct profile	 def;
	struct warm_state	*w = &poold->warm;
	const struct profile	*best = NULL;
	long			 gap, most = 0, i;

	memset(&def, 0, sizeof def);
	snprintf(def.model, sizeof def.model, "%s",
	    poold->cf->default_model != NULL ? poold->cf->default_model : "");
	*tenant = "";
	if ((gap = warm_keep(&def, "") - warm_count(&def, "")) > 0) {
		best = &def;
		most = gap;
	}
	for (i = 0; i < WARM_PROFILES_MAX; i++) {
		if (!w->learned[i].used)
			continue;
		gap = w->learned[i].target - warm_count(&w->learned[i].profile,
		    w->learned[i].tenant);
		if (gap > most) {
			best = &w->learned[i].profile;
			*tenant = w->learned[i].tenant;
			most = gap;
		}
	}
	return (best);
}

/* Whether p is still starting: no output yet, younger than a spawn. */
static int
warm_starting(const struct proc *p, uint64_t now)
{
	return (p->state != PROC_DYING && p->read_us == 0 &&
	    now - p->started_at < warm_spawn_ms());
}

/* Count the processes still starting. */
int
warm_spawning(void)
{
	struct proc	*p;
	uint64_t	 now = poold_now();
	int		 n = 0;

	TAILQ_FOREACH(p, &poold->procs, entry)
		n += warm_starting(p, now);
	return (n);
}

/*
 * Whether one more CLI fits under max_pool_rss_mb: each process, and the
 * new one, counted at least at the most one was seen to use (they grow to
 * that), or the guess until one that had started was seen.
 */
int
warm_mem_room(void)
{
	struct poold_config	*cf = poold->cf;
	struct warm_state	*w = &poold->warm;
	struct proc		*p;
	long long		 total, one;

	if (cf->max_pool_rss_mb <= 0)
		return (1);
	one = w->rss_peak_kb;
	if (!w->rss_known && one < WARM_RSS_GUESS_KB)
		one = WARM_RSS_GUESS_KB;
	total = one;
	TAILQ_FOREACH(p, &poold->procs, entry)
		total += p->rss_kb > one ? p->rss_kb : one;
	return (total <= (long long)cf->max_pool_rss_mb * 1024);
}

/* Whether a spawn may start now: max_spawning and memory allow it. */
int
warm_may_spawn(void)
{
	struct poold_config	*cf = poold->cf;

	if (cf->max_spawning > 0 && warm_spawning() >= cf->max_spawning)
		return (0);
	return (warm_mem_room());
}

/* Sample the CLIs' memory (at most every WARM_SAMPLE_MS); in the tick. */
void
warm_sample(void)
{
	struct warm_state	*w = &poold->warm;
	struct proc		*p;
	uint64_t		 now = poold_now();
	long			 kb, total = 0;

	warm_update();
	if (now - w->rss_at < WARM_SAMPLE_MS && w->rss_at != 0)
		return;
	w->rss_at = now;
	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (p->reaped)
			continue;
		if ((kb = proc_tree_rss_kb(p->pid)) < 0)
			continue;
		p->rss_kb = kb;
		total += kb;
		/* What a new one grows to (the guess until one started). */
		if (kb > w->rss_peak_kb)
			w->rss_peak_kb = kb;
		if (p->read_us != 0)	/* it has answered: it started */
			w->rss_known = 1;
	}
	w->rss_kb = total;
}

/* Whether the CLIs' memory, as last sampled, is above max_pool_rss_mb. */
int
warm_over_memory(void)
{
	long	max = poold->cf->max_pool_rss_mb;

	return (max > 0 && poold->warm.rss_kb > max * 1024);
}

/* A job that waited for a spawn saw its first output after ms. */
void
warm_spawn_time(uint64_t ms)
{
	struct warm_state	*w = &poold->warm;

	if (ms < 50)
		ms = 50;
	if (ms > 30000)
		ms = 30000;
	w->spawn_ms = w->spawn_ms == 0 ? ms : (w->spawn_ms * 7 + ms) / 8;
}

/* One profile's line in the statistics. */
static json_t *
warm_profile_stats(const char *name, const struct profile *pr,
    const char *tenant, const struct warm_rate *r, long demand, long target)
{
	uint32_t	peak;

	return (json_pack("{s:s, s:s, s:b, s:s, s:I, s:I, s:I, s:I}",
	    "profile", name, "model", pr->model,
	    "system_prompt", pr->system_prompt != NULL,
	    "tenant", tenant,
	    "arrivals", (json_int_t)warm_rate_sum(r, poold_now(), &peak),
	    "demand", (json_int_t)demand,
	    "target", (json_int_t)target,
	    "warm", (json_int_t)warm_count(pr, tenant)));
}

/* The warm target's statistics. */
json_t *
warm_stats(void)
{
	struct warm_state	*w = &poold->warm;
	struct profile		 def;
	json_t			*o, *list, *one;
	char			 name[32];
	long			 i;

	warm_update();
	if ((list = json_array()) == NULL)
		return (NULL);
	memset(&def, 0, sizeof def);
	snprintf(def.model, sizeof def.model, "%s",
	    poold->cf->default_model != NULL ? poold->cf->default_model : "");
	if ((one = warm_profile_stats("default", &def, "", &w->def,
	    w->def_demand, warm_keep(&def, ""))) != NULL)
		json_array_append_new(list, one);
	for (i = 0; i < WARM_PROFILES_MAX; i++) {
		if (!w->learned[i].used)
			continue;
		snprintf(name, sizeof name, "%016llx",
		    (unsigned long long)w->learned[i].hash);
		if ((one = warm_profile_stats(name, &w->learned[i].profile,
		    w->learned[i].tenant, &w->learned[i].rate,
		    w->learned[i].demand, w->learned[i].target)) != NULL)
			json_array_append_new(list, one);
	}
	o = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
	    "target", (json_int_t)warm_reserve(),
	    "spawn_ms", (json_int_t)warm_spawn_ms(),
	    "spawning", (json_int_t)warm_spawning(),
	    "pool_rss_kb", (json_int_t)w->rss_kb,
	    "process_rss_kb", (json_int_t)w->rss_peak_kb,
	    "arrivals", (json_int_t)w->arrivals,
	    "learned", (json_int_t)w->learned_n,
	    "not_learned", (json_int_t)w->refused,
	    "profiles", list);
	return (o);
}

/* Forget every learned profile (at exit). */
void
warm_free(void)
{
	long	i;

	for (i = 0; i < WARM_PROFILES_MAX; i++) {
		if (poold->warm.learned[i].used)
			warm_forget(&poold->warm.learned[i]);
	}
}
