/*
 * The upstream account, as the CLIs' failed turns report it.  Every CLI
 * of the pool spends one account (one credential, in the egress), so a
 * plan's usage limit (429 with a reset time), an overloaded upstream
 * (529) or a rejected credential (401) holds for every tenant: once a turn
 * reports one, new jobs are answered at once, without a CLI, until the
 * state may have passed; then one job is let through as a probe, and the
 * others are still refused until it ends (done: ok again; the same error:
 * the state again).
 *
 * The state is set only from the structured fields the CLI prints for an
 * API error (the result's is_error and api_error_status, its
 * rate_limit_event), never from text: a model, and so a tenant, can make
 * the CLI print any text, not those fields.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "log.h"
#include "poold.h"

/* The longest a reset time may lie ahead (a week). */
#define UPSTREAM_MAX_WAIT_MS	(7LL * 24 * 3600 * 1000)

static const char *const upstream_names[UPSTREAM_NSTATES] = {
	"ok", "limited", "overloaded", "credential_rejected"
};

/* The name of a state, as stats and metrics give it. */
const char *
upstream_state_name(enum upstream_state s)
{
	if ((int)s < 0 || s >= UPSTREAM_NSTATES)
		return ("ok");
	return (upstream_names[s]);
}

/* The seconds until the next probe may run (at least 1). */
static long long
upstream_wait_s(void)
{
	struct upstream	*u = &poold->upstream;
	uint64_t	 now = poold_now();

	if (u->probing || u->until <= now)
		return (1);
	return ((long long)((u->until - now + 999) / 1000));
}

/* The pool error code and the client's message for the state. */
static const char *
upstream_code(char *msg, size_t len)
{
	struct upstream	*u = &poold->upstream;
	char		 when[32];
	time_t		 t;
	struct tm	 tm;

	switch (u->state) {
	case UPSTREAM_LIMITED:
		t = (time_t)u->reset;
		if (u->reset > 0 && gmtime_r(&t, &tm) != NULL &&
		    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm) > 0)
			snprintf(msg, len, "the service's upstream account has "
			    "reached its usage limit; it resets at %s", when);
		else
			snprintf(msg, len, "the upstream is rate-limiting the "
			    "service's account; retry in %lld s",
			    upstream_wait_s());
		return (PROTO_E_UPSTREAM_LIMITED);
	case UPSTREAM_OVERLOADED:
		snprintf(msg, len, "the upstream is overloaded; retry in %lld s",
		    upstream_wait_s());
		return (PROTO_E_UPSTREAM_OVERLOADED);
	case UPSTREAM_CREDENTIAL:
		snprintf(msg, len, "the service's upstream credential was "
		    "rejected; an operator must renew it");
		return (PROTO_E_UPSTREAM_CREDENTIAL);
	case UPSTREAM_OK:
		break;
	}
	snprintf(msg, len, "the upstream failed");
	return (PROTO_E_UPSTREAM);
}

/* The fields of a refused or failed job's error frame: code, message... */
static json_t *
upstream_frame(void)
{
	char		 msg[256];
	const char	*code;

	code = upstream_code(msg, sizeof msg);
	return (json_pack("{s:s, s:s, s:I}", "code", code, "message", msg,
	    "retry_after", (json_int_t)upstream_wait_s()));
}

/*
 * Keep a change of state until a job's last frame carries it to a
 * ccgate-fcgi process (upstream_take), which audits it: the job that saw
 * the change may have lost its client.
 */
static void
upstream_keep(json_t *change)
{
	struct upstream	*u = &poold->upstream;

	if (change == NULL)
		return;
	if (u->pending == NULL && (u->pending = json_array()) == NULL) {
		json_decref(change);
		return;
	}
	if (json_array_size(u->pending) >= UPSTREAM_MAX_PENDING) {
		log_warnx("upstream account: a change of state no ccgate-fcgi "
		    "took is dropped from the audit");
		(void)json_array_remove(u->pending, 0);
	}
	if (json_array_append_new(u->pending, change) != 0)
		log_warnx("upstream account: out of memory for the audit");
}

/*
 * The changes of state not yet handed on (a new reference to an array),
 * or NULL; they are the caller's to deliver, or to give back with
 * upstream_untake if the frame carrying them could not be sent.
 */
json_t *
upstream_take(void)
{
	struct upstream	*u = &poold->upstream;
	json_t		*out = u->pending;

	u->pending = NULL;
	if (out != NULL && json_array_size(out) == 0) {
		json_decref(out);
		return (NULL);
	}
	return (out);
}

/* Give back changes whose frame was not sent (oldest first again). */
void
upstream_untake(json_t *changes)
{
	struct upstream	*u = &poold->upstream;
	json_t		*later = u->pending;
	json_t		*c;
	size_t		 i;

	u->pending = NULL;
	json_array_foreach(changes, i, c) {
		upstream_keep(json_incref(c));
	}
	json_array_foreach(later, i, c) {
		upstream_keep(json_incref(c));
	}
	json_decref(later);
}

/*
 * Move to state s (the upstream's status, the reset epoch or 0, the
 * earliest next probe in ms from now); a change is kept for the audit.
 */
static void
upstream_set(enum upstream_state s, int status, long long reset,
    long long wait_ms)
{
	struct upstream		*u = &poold->upstream;
	enum upstream_state	 from = u->state;
	long long		 wall = (long long)time(NULL);

	if (wait_ms < 0)
		wait_ms = 0;
	if (wait_ms > UPSTREAM_MAX_WAIT_MS)
		wait_ms = UPSTREAM_MAX_WAIT_MS;
	u->state = s;
	u->status = status;
	u->reset = reset;
	u->until = poold_now() + (uint64_t)wait_ms;
	if (from == s)
		return;
	u->since = wall;
	u->changes++;
	if (s == UPSTREAM_OK)
		log_info("upstream account: ok again (was %s)",
		    upstream_state_name(from));
	else
		log_warnx("upstream account: %s (status %d), next try in "
		    "%lld s", upstream_state_name(s), status,
		    (wait_ms + 999) / 1000);
	upstream_keep(json_pack("{s:s, s:s, s:i, s:o, s:I, s:I}", "from",
	    upstream_state_name(from), "to", upstream_state_name(s), "status",
	    status, "reset", reset > 0 ? json_integer(reset) : json_null(),
	    "serial", (json_int_t)u->changes, "at", (json_int_t)wall));
}

/*
 * May job run (1), or is it refused (0, with *refusal the fields of its
 * error frame)?  While the state holds, jobs are refused; once its time
 * passes, one job is the probe and the others wait for its outcome.
 */
int
upstream_admit(struct job *job, json_t **refusal)
{
	struct upstream	*u = &poold->upstream;

	*refusal = NULL;
	if (job->probe || u->state == UPSTREAM_OK)
		return (1);
	if (!u->probing && poold_now() >= u->until) {
		job->probe = 1;
		u->probing = 1;
		u->probes++;
		log_info("job %s probes the upstream account (%s)", job->id,
		    upstream_state_name(u->state));
		return (1);
	}
	u->refused++;
	*refusal = upstream_frame();
	return (0);
}

/*
 * A turn ended in error (m, its result line): if the CLI says the
 * upstream refused the account (429, 529, 401), set the state and
 * return the error frame's fields (code, message, retry_after), with *code
 * the pool error code.  NULL for any other error.
 */
json_t *
upstream_failed(struct job *job, const struct cli_msg *m, const char **code)
{
	struct poold_config	*cf = poold->cf;
	struct upstream		*u = &poold->upstream;
	json_t			*f;
	long long		 wall = (long long)time(NULL), wait;

	if (!m->is_error)
		return (NULL);
	if (job->probe) {
		job->probe = 0;
		u->probing = 0;
	}
	switch (m->error_status) {
	case 429:
		u->errors[UPSTREAM_LIMITED]++;
		if (job->resets_at > wall) {
			wait = (job->resets_at - wall) * 1000;
			upstream_set(UPSTREAM_LIMITED, 429, job->resets_at,
			    wait);
		} else {
			wait = job->retry_ms > cf->upstream_cooldown_ms ?
			    job->retry_ms : cf->upstream_cooldown_ms;
			upstream_set(UPSTREAM_LIMITED, 429, 0, wait);
		}
		break;
	case 529:
		u->errors[UPSTREAM_OVERLOADED]++;
		upstream_set(UPSTREAM_OVERLOADED, 529, 0,
		    cf->upstream_cooldown_ms);
		break;
	case 401:
		u->errors[UPSTREAM_CREDENTIAL]++;
		upstream_set(UPSTREAM_CREDENTIAL, 401, 0,
		    cf->upstream_probe_interval_ms);
		break;
	default:
		return (NULL);
	}
	if ((f = upstream_frame()) == NULL)
		return (NULL);
	*code = json_string_value(json_object_get(f, "code"));
	return (f);
}

/* A turn ended well: if it was the probe, the account is ok again. */
void
upstream_succeeded(struct job *job)
{
	struct upstream	*u = &poold->upstream;

	if (!job->probe)
		return;
	job->probe = 0;
	u->probing = 0;
	upstream_set(UPSTREAM_OK, 200, 0, 0);
}

/*
 * A job ends (any way): if it was the probe and said nothing of the
 * account (cancelled, timed out, another error), the next job probes.
 */
void
upstream_job_end(struct job *job)
{
	if (job->probe) {
		job->probe = 0;
		poold->upstream.probing = 0;
	}
}

/*
 * An operator acted (a reload, /admin/pool/initialize): a refused account
 * is tried again with the next job, not after its wait.
 */
void
upstream_probe_now(const char *why)
{
	struct upstream	*u = &poold->upstream;

	if (u->state == UPSTREAM_OK)
		return;
	log_info("upstream account %s: probing with the next job (%s)",
	    upstream_state_name(u->state), why);
	u->until = poold_now();
}

/* The account's state for the stats answer. */
json_t *
upstream_stats(void)
{
	struct upstream	*u = &poold->upstream;
	long long	 wall = (long long)time(NULL);
	uint64_t	 now = poold_now();

	return (json_pack("{s:s, s:o, s:o, s:o, s:I, s:b, s:i, s:I, s:I, s:I, "
	    "s:{s:I, s:I, s:I}}",
	    "state", upstream_state_name(u->state),
	    "since", u->since > 0 ? json_integer(u->since) : json_null(),
	    "reset", u->reset > 0 ? json_integer(u->reset) : json_null(),
	    "next_probe", u->state == UPSTREAM_OK ? json_null() :
	    json_integer(wall + (u->until > now ? (long long)((u->until - now +
	    999) / 1000) : 0)),
	    "retry_after", (json_int_t)(u->state == UPSTREAM_OK ? 0 :
	    upstream_wait_s()),
	    "probing", u->probing,
	    "last_status", u->status,
	    "changes", (json_int_t)u->changes,
	    "refused", (json_int_t)u->refused,
	    "probes", (json_int_t)u->probes,
	    "errors",
	    "rate_limit", (json_int_t)u->errors[UPSTREAM_LIMITED],
	    "overloaded", (json_int_t)u->errors[UPSTREAM_OVERLOADED],
	    "authentication", (json_int_t)u->errors[UPSTREAM_CREDENTIAL]));
}
