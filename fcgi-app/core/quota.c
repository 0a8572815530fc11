/*
 * Quotas: requests per minute and per day, tokens per day, per key, in
 * UTC windows kept in MariaDB (key_quota_windows).  A request is admitted
 * by conditional upserts in one transaction (db_tx: tried again when the
 * server rolls it back, as a Galera certification conflict does): a window's row changes only
 * while it has room, so the affected-row count decides, atomically for any
 * number of ccgate-fcgi processes.  Tokens are charged when a turn ends,
 * from the CLI's own usage; a day whose tokens are spent admits nothing
 * more until midnight UTC.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core.h"
#include "log.h"

#define QUOTA_NONE	(1LL << 62)	/* "unlimited" inside SQL */
/* A reservation outlives its turn's timeout by this much. */
#define QUOTA_GRACE_S		600
/* Retry-After while turns in flight hold what the day has left. */
#define QUOTA_HELD_RETRY_S	5
/* Seconds until the next minute and the next UTC midnight. */
static void
quota_resets(long *minute, long *day)
{
	time_t	now = time(NULL);

	*minute = 60 - (long)(now % 60);
	*day = 86400 - (long)(now % 86400);
}

/* What quota_admit's transaction needs and says. */
struct quota_admit_tx {
	const struct apikey	*k;
	long long		 rpd, tpd;
	long			 minute, day;
	long			*retry_after;
	char			*why;
	size_t			 len;
};

/* quota_admit's transaction: 0 admitted, 1 refused, -1 failed. */
static int
quota_admit_tx(struct db *db, void *arg)
{
	struct quota_admit_tx	*a = arg;
	const struct apikey	*k = a->k;
	uint64_t		 affected;

	if (k->rpm > 0) {
		if (db_run(db, NULL, &affected,
		    "INSERT INTO key_quota_windows (key_id, kind, window_start, "
		    "requests) VALUES (?, 'minute', DATE_FORMAT(UTC_TIMESTAMP(), "
		    "'%Y-%m-%d %H:%i:00'), 1) ON DUPLICATE KEY UPDATE requests = "
		    "IF(requests < ?, requests + 1, requests)", "si", k->id,
		    k->rpm) != 0)
			return (-1);
		if (affected == 0) {
			*a->retry_after = a->minute;
			snprintf(a->why, a->len, "requests_per_minute limit of "
			    "%lld reached", k->rpm);
			return (1);
		}
	}
	if (db_run(db, NULL, &affected,
	    "INSERT INTO key_quota_windows (key_id, kind, window_start, "
	    "requests) VALUES (?, 'day', UTC_DATE(), 1) ON DUPLICATE KEY "
	    "UPDATE requests = IF(requests < ? AND tokens < ?, requests + 1, "
	    "requests)", "sii", k->id, a->rpd, a->tpd) != 0)
		return (-1);
	if (affected == 0) {
		*a->retry_after = a->day;
		if (k->tpd >= 0)
			snprintf(a->why, a->len, "the day's requests or tokens "
			    "for this key are spent (requests_per_day %lld, "
			    "tokens_per_day %lld)", k->rpd, k->tpd);
		else
			snprintf(a->why, a->len, "requests_per_day limit of "
			    "%lld reached", k->rpd);
		return (1);
	}
	return (0);
}

/*
 * Admit one request of key k.  Returns 0 if admitted, 1 if a limit is
 * reached (*retry_after and why are set), -1 on a database error (after
 * db_tx's tries: db_why says what happened).
 */
int
quota_admit(const struct apikey *k, long *retry_after, char *why, size_t len)
{
	struct quota_admit_tx	a;

	if (k->rpm < 0 && k->rpd < 0 && k->tpd < 0)
		return (0);
	a.k = k;
	a.rpd = k->rpd < 0 ? QUOTA_NONE : k->rpd;
	a.tpd = k->tpd < 0 ? QUOTA_NONE : k->tpd;
	a.retry_after = retry_after;
	a.why = why;
	a.len = len;
	quota_resets(&a.minute, &a.day);
	if (k->rpm == 0) {
		*retry_after = a.minute;
		snprintf(why, len, "requests_per_minute is 0 for this key");
		return (1);
	}
	if (a.rpd == 0 || a.tpd == 0) {
		*retry_after = a.day;
		snprintf(why, len, "%s is 0 for this key", a.rpd == 0 ?
		    "requests_per_day" : "tokens_per_day");
		return (1);
	}
	return (db_tx(db_thread(), quota_admit_tx, &a));
}

/* One reservation of a dead turn to close (quota_reclaim). */
struct quota_reclaim_tx {
	const struct apikey	*k;
	const char		*rid;
	uint64_t		 closed;
};

/* Charge and close one reservation of a dead turn. */
static int
quota_reclaim_tx(struct db *db, void *arg)
{
	struct quota_reclaim_tx	*a = arg;
	uint64_t		 affected;

	if (db_run(db, NULL, &affected, "UPDATE key_quota_windows w "
	    "JOIN quota_reservations q ON q.key_id = ? AND "
	    "q.request_id = ? AND w.key_id = q.key_id AND w.kind = "
	    "'day' AND w.window_start = q.day SET w.reserved = "
	    "IF(w.reserved > q.tokens, w.reserved - q.tokens, 0), "
	    "w.tokens = w.tokens + q.tokens", "ss", a->k->id, a->rid) != 0 ||
	    db_run(db, NULL, &a->closed, "DELETE FROM quota_reservations "
	    "WHERE key_id = ? AND request_id = ?", "ss", a->k->id,
	    a->rid) != 0)
		return (-1);
	return (0);
}

/*
 * Close the reservations of key k that outlived their turn (a ccgate-fcgi
 * process that died mid-turn never settled them): each is charged what it
 * held, as an abandoned turn is, since the upstream may have been asked.
 * Returns how many.
 */
static int
quota_reclaim(struct db *db, const struct apikey *k)
{
	struct quota_reclaim_tx	 a;
	struct db_res		*res;
	size_t			 i;
	int			 n = 0;

	if (db_run(db, &res, NULL, "SELECT request_id FROM quota_reservations "
	    "WHERE key_id = ? AND expires_at <= UTC_TIMESTAMP() LIMIT 64", "s",
	    k->id) != 0)
		return (0);
	for (i = 0; i < res->nrows; i++) {
		a.k = k;
		a.rid = db_cell(res, i, 0);
		a.closed = 0;
		if (db_tx(db, quota_reclaim_tx, &a) != 0)
			break;
		n += a.closed > 0;
	}
	db_res_free(res);
	if (n > 0)
		log_info("key %s: %d reservations of dead turns charged what "
		    "they held", k->id, n);
	return (n);
}

/* What quota_reserve's transaction needs and says. */
struct quota_reserve_tx {
	const struct apikey	*k;
	const char		*rid;
	long long		 want;
	long long		*out;
	int			 exact;
	long long		 prompt;
	long long		*est;
	long long		 used;
	long long		 held;
};

/*
 * quota_reserve's transaction: lock the key's day row, decide, hold.
 * Returns 0 (reserved: *out and *est set), 1 (refused: used and held
 * set), or -1.  The day is read once, from the locked row, so a turn
 * admitted a moment before midnight holds, and is later charged, on the
 * day it was decided on.
 */
static int
quota_reserve_tx(struct db *db, void *arg)
{
	struct quota_reserve_tx	*a = arg;
	const struct apikey	*k = a->k;
	struct db_res		*res = NULL;
	char			 day[16];
	uint64_t		 affected = 0;
	long long		 room;

	*a->out = a->want;
	if (db_run(db, NULL, NULL, "INSERT INTO key_quota_windows (key_id, "
	    "kind, window_start) VALUES (?, 'day', UTC_DATE()) ON DUPLICATE "
	    "KEY UPDATE key_id = key_id", "s", k->id) != 0 ||
	    db_run(db, &res, NULL, "SELECT tokens, reserved, "
	    "DATE_FORMAT(window_start, '%Y-%m-%d') FROM key_quota_windows "
	    "WHERE key_id = ? AND kind = 'day' AND window_start = UTC_DATE() "
	    "FOR UPDATE", "s", k->id) != 0)
		return (-1);
	if (res->nrows != 1) {		/* midnight came between the two */
		db_res_free(res);
		return (DB_TX_AGAIN);
	}
	a->used = atoll(db_cell(res, 0, 0));
	a->held = atoll(db_cell(res, 0, 1));
	snprintf(day, sizeof day, "%s", db_cell(res, 0, 2));
	db_res_free(res);
	room = k->tpd - a->used - a->held - a->prompt;
	/* Without a max_tokens of its own a turn takes what is left, up to out. */
	if (!a->exact && room < *a->out)
		*a->out = room;
	*a->est = a->prompt + (*a->out > 0 ? *a->out : 1);
	if (*a->out < 1 || room < *a->out)
		return (1);
	if (db_run(db, NULL, &affected, "UPDATE key_quota_windows SET "
	    "reserved = reserved + ? WHERE key_id = ? AND kind = 'day' AND "
	    "window_start = ?", "iss", *a->est, k->id, day) != 0)
		return (-1);
	if (affected != 1)
		return (DB_TX_AGAIN);
	if (db_run(db, NULL, NULL, "INSERT INTO quota_reservations (key_id, "
	    "request_id, day, tokens, expires_at) VALUES (?, ?, ?, ?, "
	    "UTC_TIMESTAMP() + INTERVAL ? SECOND)", "sssii", k->id, a->rid, day,
	    *a->est, (long long)appconf->job_timeout_ms / 1000 +
	    QUOTA_GRACE_S) != 0)
		return (-1);
	return (0);
}

/*
 * Reserve tokens of key k's day (with a token limit) for the turn of
 * request rid, before it runs: its output, *out tokens (exact: the turn's
 * max_tokens; else quota_reserve_tokens, or what the day has left if less:
 * then *out says how much), and its prompt's estimate.  The day's tokens,
 * every reservation in flight and this one must fit in tokens_per_day,
 * decided with the day's row locked, so concurrent turns (in any process,
 * on any node) cannot all pass.  Returns 0 if reserved (*est: what is
 * held; 0 if the key has no token limit), 1 if refused (*retry_after, 0
 * for "waiting cannot help", and why are set), -1 on a database error
 * (db_why says what happened).
 */
int
quota_reserve(const struct apikey *k, const char *rid, long long *out,
    int exact, long long prompt, long long *est, long *retry_after,
    char *why, size_t len)
{
	struct quota_reserve_tx	 a;
	struct db		*db = db_thread();
	long long		 want = *out, need;
	long			 minute, day;
	int			 rc;

	*est = 0;
	if (k->tpd < 0)
		return (0);
	a.k = k;
	a.rid = rid;
	a.want = want;
	a.out = out;
	a.exact = exact;
	a.prompt = prompt;
	a.est = est;
	a.used = a.held = 0;
	rc = db_tx(db, quota_reserve_tx, &a);
	/* Refused: unless dead turns' holds close, once. */
	if (rc == 1 && a.held > 0 && quota_reclaim(db, k) > 0)
		rc = db_tx(db, quota_reserve_tx, &a);
	if (rc != 1)
		return (rc);
	*est = 0;
	quota_resets(&minute, &day);
	need = prompt + (exact ? want : 1);
	if (exact && need > k->tpd) {
		*retry_after = 0;
		snprintf(why, len, "tokens_per_day: this turn reserves %lld "
		    "tokens (its max_tokens and its prompt's size), more than "
		    "the key's whole day (%lld): lower max_tokens", need,
		    k->tpd);
		return (1);
	}
	/* Spent for the day, or waiting on turns in flight to settle. */
	*retry_after = a.used + need > k->tpd ? day : QUOTA_HELD_RETRY_S;
	snprintf(why, len, "tokens_per_day: this turn needs %s%lld tokens "
	    "(its %s and its prompt's size); the key's day has %lld of %lld "
	    "left, %lld of them held by turns in flight", exact ? "" :
	    "at least ", need, exact ? "max_tokens" : "answer",
	    a.used < k->tpd ? k->tpd - a.used : 0, k->tpd, a.held);
	return (1);
}

/* What quota_settle's transaction needs and says. */
struct quota_settle_tx {
	const struct apikey	*k;
	const char		*rid;
	int			 held;
	long long		 tokens;
	uint64_t		 affected;
};

/*
 * quota_settle's transaction.  The tokens go to the day the turn was
 * admitted in (its reservation's).  A reservation closed meanwhile as a
 * dead turn's was charged what it held then: nothing more is charged.
 * Without a reservation the tokens go to today.
 */
static int
quota_settle_tx(struct db *db, void *arg)
{
	struct quota_settle_tx	*a = arg;
	const struct apikey	*k = a->k;

	a->affected = 0;
	if (a->held && (db_run(db, NULL, &a->affected, "UPDATE "
	    "key_quota_windows w JOIN quota_reservations q ON q.key_id = ? "
	    "AND q.request_id = ? AND w.key_id = q.key_id AND w.kind = 'day' "
	    "AND w.window_start = q.day SET w.reserved = IF(w.reserved > "
	    "q.tokens, w.reserved - q.tokens, 0), w.tokens = w.tokens + ?",
	    "ssi", k->id, a->rid, a->tokens) != 0 ||
	    db_run(db, NULL, NULL, "DELETE FROM quota_reservations WHERE "
	    "key_id = ? AND request_id = ?", "ss", k->id, a->rid) != 0))
		return (-1);
	if (!a->held && a->tokens > 0 && db_run(db, NULL, NULL, "INSERT INTO "
	    "key_quota_windows (key_id, kind, window_start, tokens) VALUES "
	    "(?, 'day', UTC_DATE(), ?) ON DUPLICATE KEY UPDATE tokens = "
	    "tokens + VALUES(tokens)", "si", k->id, a->tokens) != 0)
		return (-1);
	return (0);
}

/*
 * Settle the turn of request rid: its reservation (if held) is closed
 * and the tokens it used are charged, in one transaction, tried again
 * only when the server rolled it back (db_tx: a deadlock, a Galera
 * certification conflict): a COMMIT whose answer was lost may have been
 * applied, and is not repeated.  Called when the turn ends, however it
 * ends.
 */
void
quota_settle(const struct apikey *k, const char *rid, int held,
    long long tokens)
{
	struct quota_settle_tx	 a;
	struct db		*db = db_thread();

	if (k->tpd < 0 && !held)
		return;
	a.k = k;
	a.rid = rid;
	a.held = held;
	a.tokens = tokens;
	if (db_tx(db, quota_settle_tx, &a) == 0) {
		if (held && a.affected == 0)
			log_info("key %s: request %s settled after its "
			    "reservation was closed as a dead turn's", k->id,
			    rid);
		return;
	}
	log_warnx("key %s: request %s not settled (%lld tokens): %s; its "
	    "reservation is charged what it held when it expires", k->id, rid,
	    tokens, db_error(db));
}
