/*
 * The upstream account.  Every CLI of the pool spends one account (one
 * credential, in the egress), so a plan's usage limit (429 with a reset
 * time), an overloaded upstream (529) or a rejected credential (401, 403)
 * holds for every tenant: while it does, new jobs are answered at once,
 * without a CLI.
 *
 * Only ccgate-poold's own check decides the state: a one-token request of
 * its own (POST /v1/messages with the pool's default model, "ping") sent
 * through the egress under its own name (count.c), whose status and
 * headers (retry-after, anthropic-ratelimit-unified-status and -reset)
 * set it.  A CLI's report of an upstream error is a hint, never the state:
 * a tenant whose key allows tools runs code as the CLI's user and can
 * write any line into the CLI's stdout, so the report answers that
 * tenant's own turn and starts a check, nothing more.  A check runs when
 * a CLI reports an error, when the state's time passes (so the account
 * recovers with no traffic) and when an operator acts; never two at once,
 * none longer than UPSTREAM_CHECK_MS.  The check uses the pool's default
 * model: a limit of one model (a plan's seven_day_opus) that a tenant's
 * turn met refuses that tenant's turn, not every tenant.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "log.h"
#include "poold.h"

/* The longest a reset time may lie ahead (a week). */
#define UPSTREAM_MAX_WAIT_MS	(7LL * 24 * 3600 * 1000)
/* The longest a check may take: then it has no answer. */
#define UPSTREAM_CHECK_MS	30000
/* The check's model when the pool names none (ccgate.conf's default). */
#define UPSTREAM_CHECK_MODEL	"claude-sonnet-4-5"
/* The most of a check's answer kept (its head is what counts). */
#define UPSTREAM_CHECK_MAX	(64 * 1024)

static const char *const upstream_names[UPSTREAM_NSTATES] = {
	"ok", "limited", "overloaded", "credential_rejected"
};

static void	upstream_check(const char *);

/* The name of a state, as stats and metrics give it. */
const char *
upstream_state_name(enum upstream_state s)
{
	if ((int)s < 0 || s >= UPSTREAM_NSTATES)
		return ("ok");
	return (upstream_names[s]);
}

/* The seconds until the next check may end the state (at least 1). */
static long long
upstream_wait_s(void)
{
	struct upstream	*u = &poold->upstream;
	uint64_t	 now = poold_now();

	if (u->check != NULL || u->until <= now)
		return (1);
	return ((long long)((u->until - now + 999) / 1000));
}

/*
 * The pool error code and the client's message for state s (reset: a
 * plan's reset epoch or 0; wait: the seconds to retry in).
 */
static const char *
upstream_code(enum upstream_state s, long long reset, long long wait,
    char *msg, size_t len)
{
	char		 when[32];
	time_t		 t;
	struct tm	 tm;

	switch (s) {
	case UPSTREAM_LIMITED:
		t = (time_t)reset;
		if (reset > 0 && gmtime_r(&t, &tm) != NULL &&
		    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm) > 0)
			snprintf(msg, len, "the service's upstream account has "
			    "reached its usage limit; it resets at %s", when);
		else
			snprintf(msg, len, "the upstream is rate-limiting the "
			    "service's account; retry in %lld s", wait);
		return (PROTO_E_UPSTREAM_LIMITED);
	case UPSTREAM_OVERLOADED:
		snprintf(msg, len, "the upstream is overloaded; retry in %lld s",
		    wait);
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

/* The fields of an error frame for state s: code, message, retry_after. */
static json_t *
upstream_frame(enum upstream_state s, long long reset, long long wait)
{
	char		 msg[256];
	const char	*code;

	if (wait < 1)
		wait = 1;
	code = upstream_code(s, reset, wait, msg, sizeof msg);
	return (json_pack("{s:s, s:s, s:I}", "code", code, "message", msg,
	    "retry_after", (json_int_t)wait));
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
 * earliest next check in ms from now); a change is kept for the audit.
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
		log_warnx("upstream account: %s (status %d), next check in "
		    "%lld s", upstream_state_name(s), status,
		    (wait_ms + 999) / 1000);
	upstream_keep(json_pack("{s:s, s:s, s:i, s:o, s:I, s:I}", "from",
	    upstream_state_name(from), "to", upstream_state_name(s), "status",
	    status, "reset", reset > 0 ? json_integer(reset) : json_null(),
	    "serial", (json_int_t)u->changes, "at", (json_int_t)wall));
}

/*
 * The wait a 429 asks for: until a rejected plan limit's reset (epoch,
 * returned in *reset), else the larger of its retry-after (ms) and the
 * cool-down.
 */
static long long
upstream_limit_wait(int rejected, long long resets_at, long long retry_ms,
    long long *reset)
{
	struct poold_config	*cf = poold->cf;
	long long		 wall = (long long)time(NULL);

	*reset = 0;
	if (rejected && resets_at > wall) {
		if ((resets_at - wall) * 1000 > UPSTREAM_MAX_WAIT_MS)
			resets_at = wall + UPSTREAM_MAX_WAIT_MS / 1000;
		*reset = resets_at;
		return ((resets_at - wall) * 1000);
	}
	return (retry_ms > cf->upstream_cooldown_ms ? retry_ms :
	    cf->upstream_cooldown_ms);
}

/*
 * A check's answer (status 0: none): the only thing that sets the state.
 * 200 ok; 429 limited (until a rejected plan limit's reset, else for
 * retry-after or the cool-down); 529 overloaded; 401 or 403 the
 * credential rejected; anything else leaves the state as it is, to be
 * checked again after the cool-down.
 */
static void
upstream_answer(void *arg, int status, const char *head, const char *body,
    size_t len)
{
	struct poold_config	*cf = poold->cf;
	struct upstream		*u = &poold->upstream;
	char			 v[64], *end;
	long long		 resets_at = 0, retry_ms = 0, reset, wait;
	int			 rejected = 0;

	u->check = NULL;	/* count.c frees it */
	u->last_check = (long long)time(NULL);
	u->last_check_status = status;
	log_info("upstream account: the check answered %d", status);
	switch (status) {
	case 200:
		upstream_set(UPSTREAM_OK, 200, 0, 0);
		break;
	case 429:
		u->errors[UPSTREAM_LIMITED]++;
		if (count_header(head, "anthropic-ratelimit-unified-status", v,
		    sizeof v) == 0 && strcmp(v, "rejected") == 0)
			rejected = 1;
		if (count_header(head, "anthropic-ratelimit-unified-reset", v,
		    sizeof v) == 0) {
			resets_at = strtoll(v, &end, 10);
			if (end == v || *end != '\0')
				resets_at = 0;
		}
		if (count_header(head, "retry-after", v, sizeof v) == 0) {
			retry_ms = strtoll(v, &end, 10);
			if (end == v || *end != '\0' || retry_ms < 0 ||
			    retry_ms > UPSTREAM_MAX_WAIT_MS / 1000)
				retry_ms = 0;
			retry_ms *= 1000;
		}
		wait = upstream_limit_wait(rejected, resets_at, retry_ms,
		    &reset);
		upstream_set(UPSTREAM_LIMITED, 429, reset, wait);
		break;
	case 529:
		u->errors[UPSTREAM_OVERLOADED]++;
		upstream_set(UPSTREAM_OVERLOADED, 529, 0,
		    cf->upstream_cooldown_ms);
		break;
	case 403:
		/*
		 * Only the upstream's authentication_error is the credential's;
		 * the egress's own refusal (of poold's token, of the path) or a
		 * permission error (the check's model) is this host's set-up.
		 */
		if (body == NULL || memmem(body, len, "ccgate egress",
		    strlen("ccgate egress")) != NULL || memmem(body, len,
		    "authentication_error", strlen("authentication_error")) ==
		    NULL) {
			log_warnx("upstream account: a 403 of the check that "
			    "is not the credential's: %.*s", (int)(len > 200 ?
			    200 : len), body != NULL ? body : "");
			u->until = poold_now() +
			    (uint64_t)cf->upstream_cooldown_ms;
			break;
		}
		/* FALLTHROUGH */
	case 401:
		u->errors[UPSTREAM_CREDENTIAL]++;
		upstream_set(UPSTREAM_CREDENTIAL, status, 0,
		    cf->upstream_probe_interval_ms);
		break;
	default:
		/* No word of the account: as it was, checked again later. */
		u->until = poold_now() + (uint64_t)cf->upstream_cooldown_ms;
		break;
	}
}

/*
 * Start a check of the account (why: for the log) unless one runs or
 * the daemon has no egress to send it through.
 */
static void
upstream_check(const char *why)
{
	struct poold_config	*cf = poold->cf;
	struct upstream		*u = &poold->upstream;
	json_t			*body;
	char			*cause = NULL;

	if (u->check != NULL || cf->egress_socket == NULL || poold->stopping)
		return;
	body = json_pack("{s:s, s:i, s:[{s:s, s:s}]}", "model",
	    cf->default_model != NULL ? cf->default_model :
	    UPSTREAM_CHECK_MODEL,
	    "max_tokens", 1, "messages", "role", "user", "content", "ping");
	/* A subscription's token answers only what speaks as Claude Code. */
	if (body != NULL && cf->egress_oauth && json_object_set_new(body,
	    "system", json_string("You are Claude Code, Anthropic's official "
	    "CLI for Claude.")) != 0) {
		json_decref(body);
		body = NULL;
	}
	if (body == NULL) {
		log_warnx("upstream account: no check: out of memory");
		u->until = poold_now() + (uint64_t)cf->upstream_cooldown_ms;
		return;
	}
	u->checks++;
	u->check_started = poold_now();
	log_info("upstream account %s: checking it (%s)",
	    upstream_state_name(u->state), why);
	u->check = count_message(body, UPSTREAM_CHECK_MAX, upstream_answer,
	    NULL, &cause);
	json_decref(body);
	if (u->check == NULL) {
		log_warnx("upstream account: no check: %s", cause);
		free(cause);
		u->last_check = (long long)time(NULL);
		u->last_check_status = 0;
		u->until = poold_now() + (uint64_t)cf->upstream_cooldown_ms;
	}
}

/*
 * Once per tick: a check that took too long has no answer; a state whose
 * time has passed is checked (so it ends with no traffic too).
 */
void
upstream_tick(void)
{
	struct upstream	*u = &poold->upstream;
	uint64_t	 now = poold_now();

	if (u->check != NULL && now - u->check_started >= UPSTREAM_CHECK_MS) {
		log_warnx("upstream account: the check had no answer in %d s",
		    UPSTREAM_CHECK_MS / 1000);
		count_cancel(u->check);
		u->check = NULL;
		upstream_answer(NULL, 0, "", "", 0);
	}
	if (u->state != UPSTREAM_OK && u->check == NULL && now >= u->until)
		upstream_check("its wait has passed");
}

/*
 * May job run (1), or is it refused (0, with *refusal the fields of its
 * error frame)?  While the state holds, jobs are refused; once its time
 * passes, a check starts and jobs are refused (retry in 1 s) until it
 * answers.  A check that runs while the account is ok refuses nothing.
 */
int
upstream_admit(struct job *job, json_t **refusal)
{
	struct upstream	*u = &poold->upstream;

	*refusal = NULL;
	if (u->state == UPSTREAM_OK)
		return (1);
	if (u->check == NULL && poold_now() >= u->until)
		upstream_check("its wait has passed");
	u->refused++;
	*refusal = upstream_frame(u->state, u->reset, upstream_wait_s());
	return (0);
}

/*
 * A turn ended in error (m, its result line).  If the CLI says the
 * upstream refused it (429, 529, 401), answer that turn with the error
 * it reports (the fields of its error frame: code, message, retry_after;
 * *code the pool error code) and check the account; NULL for any other
 * error.  What a CLI prints may be a tenant's forgery: it never sets the
 * account's state.
 */
json_t *
upstream_failed(struct job *job, const struct cli_msg *m, const char **code)
{
	struct poold_config	*cf = poold->cf;
	struct upstream		*u = &poold->upstream;
	enum upstream_state	 s;
	json_t			*f;
	long long		 reset = 0, wait;

	if (!m->is_error)
		return (NULL);
	switch (m->error_status) {
	case 429:
		s = UPSTREAM_LIMITED;
		wait = upstream_limit_wait(job->resets_at > 0, job->resets_at,
		    job->retry_ms, &reset);
		break;
	case 529:
		s = UPSTREAM_OVERLOADED;
		wait = cf->upstream_cooldown_ms;
		break;
	case 401:
		s = UPSTREAM_CREDENTIAL;
		wait = cf->upstream_probe_interval_ms;
		break;
	default:
		return (NULL);
	}
	u->hints++;
	log_info("job %s: the CLI reports upstream status %d: a hint, "
	    "checked", job->id, m->error_status);
	upstream_check("a CLI reported an upstream error");
	if ((f = upstream_frame(s, reset, (wait + 999) / 1000)) == NULL)
		return (NULL);
	*code = json_string_value(json_object_get(f, "code"));
	return (f);
}

/*
 * An operator acted (a reload, /admin/pool/initialize): a refused account
 * is checked at once, not after its wait.
 */
void
upstream_probe_now(const char *why)
{
	struct upstream	*u = &poold->upstream;

	if (u->state == UPSTREAM_OK)
		return;
	u->until = poold_now();
	upstream_check(why);
}

/* The daemon stops: a running check is dropped, its token revoked. */
void
upstream_free(void)
{
	struct upstream	*u = &poold->upstream;

	if (u->check != NULL) {
		count_cancel(u->check);
		u->check = NULL;
	}
	json_decref(u->pending);
	u->pending = NULL;
}

/* The account's state for the stats answer. */
json_t *
upstream_stats(void)
{
	struct upstream	*u = &poold->upstream;
	long long	 wall = (long long)time(NULL);
	uint64_t	 now = poold_now();

	return (json_pack("{s:s, s:o, s:o, s:o, s:I, s:b, s:o, s:i, s:I, s:I, "
	    "s:I, s:I, s:{s:I, s:I, s:I}}",
	    "state", upstream_state_name(u->state),
	    "since", u->since > 0 ? json_integer(u->since) : json_null(),
	    "reset", u->reset > 0 ? json_integer(u->reset) : json_null(),
	    "next_check", u->state == UPSTREAM_OK ? json_null() :
	    json_integer(wall + (u->until > now ? (long long)((u->until - now +
	    999) / 1000) : 0)),
	    "retry_after", (json_int_t)(u->state == UPSTREAM_OK ? 0 :
	    upstream_wait_s()),
	    "checking", u->check != NULL,
	    "last_check", u->last_check > 0 ? json_pack("{s:I, s:i}", "at",
	    (json_int_t)u->last_check, "status", u->last_check_status) :
	    json_null(),
	    "last_status", u->status,
	    "changes", (json_int_t)u->changes,
	    "refused", (json_int_t)u->refused,
	    "checks", (json_int_t)u->checks,
	    "hints", (json_int_t)u->hints,
	    "errors",
	    "rate_limit", (json_int_t)u->errors[UPSTREAM_LIMITED],
	    "overloaded", (json_int_t)u->errors[UPSTREAM_OVERLOADED],
	    "authentication", (json_int_t)u->errors[UPSTREAM_CREDENTIAL]));
}
