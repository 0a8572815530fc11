/*
 * Quotas: requests per minute and per day, tokens per day, per key, in
 * UTC windows kept in MariaDB (key_quota_windows).  A request is admitted
 * by conditional upserts in one transaction: a window's row changes only
 * while it has room, so the affected-row count decides, atomically for any
 * number of ccgate-fcgi processes.  Tokens are charged when a turn ends,
 * from the CLI's own usage; a day whose tokens are spent admits nothing
 * more until midnight UTC.
 */
#include "config.h"

#include <stdio.h>
#include <time.h>

#include "core.h"
#include "log.h"

#define QUOTA_NONE	(1LL << 62)	/* "unlimited" inside SQL */

/* Seconds until the next minute and the next UTC midnight. */
static void
quota_resets(long *minute, long *day)
{
	time_t	now = time(NULL);

	*minute = 60 - (long)(now % 60);
	*day = 86400 - (long)(now % 86400);
}

/*
 * Admit one request of key k.  Returns 0 if admitted, 1 if a limit is
 * reached (*retry_after and why are set), -1 on a database error.
 */
int
quota_admit(const struct apikey *k, long *retry_after, char *why, size_t len)
{
	struct db	*db;
	long long	rpd = k->rpd < 0 ? QUOTA_NONE : k->rpd;
	long long	tpd = k->tpd < 0 ? QUOTA_NONE : k->tpd;
	uint64_t	affected;
	long		minute, day;

	if (k->rpm < 0 && k->rpd < 0 && k->tpd < 0)
		return (0);
	quota_resets(&minute, &day);
	if (k->rpm == 0) {
		*retry_after = minute;
		snprintf(why, len, "requests_per_minute is 0 for this key");
		return (1);
	}
	if (rpd == 0 || tpd == 0) {
		*retry_after = day;
		snprintf(why, len, "%s is 0 for this key", rpd == 0 ?
		    "requests_per_day" : "tokens_per_day");
		return (1);
	}
	if (db_begin(db = db_thread()) != 0)
		return (-1);
	if (k->rpm > 0) {
		if (db_run(db, NULL, &affected,
		    "INSERT INTO key_quota_windows (key_id, kind, window_start, "
		    "requests) VALUES (?, 'minute', DATE_FORMAT(UTC_TIMESTAMP(), "
		    "'%Y-%m-%d %H:%i:00'), 1) ON DUPLICATE KEY UPDATE requests = "
		    "IF(requests < ?, requests + 1, requests)", "si", k->id,
		    k->rpm) != 0)
			goto fail;
		if (affected == 0) {
			*retry_after = minute;
			snprintf(why, len, "requests_per_minute limit of %lld "
			    "reached", k->rpm);
			goto over;
		}
	}
	if (db_run(db, NULL, &affected,
	    "INSERT INTO key_quota_windows (key_id, kind, window_start, "
	    "requests) VALUES (?, 'day', UTC_DATE(), 1) ON DUPLICATE KEY "
	    "UPDATE requests = IF(requests < ? AND tokens < ?, requests + 1, "
	    "requests)", "sii", k->id, rpd, tpd) != 0)
		goto fail;
	if (affected == 0) {
		*retry_after = day;
		if (k->tpd >= 0)
			snprintf(why, len, "the day's requests or tokens for "
			    "this key are spent (requests_per_day %lld, "
			    "tokens_per_day %lld)", k->rpd, k->tpd);
		else
			snprintf(why, len, "requests_per_day limit of %lld "
			    "reached", k->rpd);
		goto over;
	}
	if (db_commit(db) != 0)
		return (-1);
	return (0);
over:
	if (db_rollback(db) != 0)
		return (-1);
	return (1);
fail:
	(void)db_rollback(db);
	return (-1);
}

/* Charge a finished turn's tokens to the key's day (with a token limit). */
void
quota_charge(const struct apikey *k, long long tokens)
{
	if (k->tpd < 0 || tokens <= 0)
		return;
	if (db_run(db_thread(), NULL, NULL,
	    "INSERT INTO key_quota_windows (key_id, kind, window_start, tokens) "
	    "VALUES (?, 'day', UTC_DATE(), ?) ON DUPLICATE KEY UPDATE tokens = "
	    "tokens + VALUES(tokens)", "si", k->id, tokens) != 0)
		log_warnx("key %s: %lld tokens not charged", k->id, tokens);
}
