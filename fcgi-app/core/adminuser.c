/*
 * Administrators: their accounts (create, passwd, enable, disable, list),
 * logging in, and checking an admin token.  Passwords are stored as
 * Argon2id strings (libsodium crypto_pwhash_str, interactive limits);
 * failed logins are counted per user name and per client address in
 * MariaDB, so every ccgate-fcgi process sees them, and past a threshold a
 * login waits (30 s, doubling, at most 15 minutes) whatever its password.
 * An account that is disabled or whose password changed raises its
 * token_version, which refuses every token issued before.  Without an
 * admin secret (admin_secret_file) there are no logins and no tokens:
 * both answer 503.
 */
#include "config.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "core.h"
#include "log.h"

#define ADMUSER_PW_MIN		12
#define ADMUSER_PW_MAX		1024
#define ADMUSER_USER_LIMIT	5	/* failures per user name before waiting */
#define ADMUSER_IP_LIMIT	20	/* failures per address before waiting */
#define ADMUSER_HASHING		4	/* Argon2id runs at once (64 MiB each) */
#define ADMUSER_NO_SECRET	"admin logins are disabled: this server has " \
	"no admin secret (admin_secret_file)"

static sem_t		admuser_sem;
static pthread_once_t	admuser_once = PTHREAD_ONCE_INIT;
static char		admuser_dummy[crypto_pwhash_STRBYTES];

/* Set up the hashing semaphore and a dummy hash for unknown users. */
static void
admuser_init(void)
{
	if (sem_init(&admuser_sem, 0, ADMUSER_HASHING) != 0)
		fatal("sem_init");
	if (crypto_pwhash_str(admuser_dummy, "ccgate dummy password", 21,
	    crypto_pwhash_OPSLIMIT_INTERACTIVE,
	    crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0)
		fatalx("crypto_pwhash_str: out of memory");
}

/* Return 1 if a user name is acceptable: like a tenant name. */
static int
admuser_valid_name(const char *name)
{
	return (name != NULL && util_valid_tenant(name));
}

/* Hash a password into out; -1 with e set on a bad password. */
static int
admuser_hash(const char *pw, char out[crypto_pwhash_STRBYTES],
    struct op_error *e)
{
	size_t	len = pw != NULL ? strlen(pw) : 0;
	int	rc;

	if (len < ADMUSER_PW_MIN || len > ADMUSER_PW_MAX) {
		op_fail(e, 400, "password: %d to %d characters",
		    ADMUSER_PW_MIN, ADMUSER_PW_MAX);
		return (-1);
	}
	pthread_once(&admuser_once, admuser_init);
	while (sem_wait(&admuser_sem) != 0)
		;
	rc = crypto_pwhash_str(out, pw, len, crypto_pwhash_OPSLIMIT_INTERACTIVE,
	    crypto_pwhash_MEMLIMIT_INTERACTIVE);
	sem_post(&admuser_sem);
	if (rc != 0) {
		op_fail(e, 500, "out of memory hashing the password");
		return (-1);
	}
	return (0);
}

/* Check a password against a stored hash; 1 if it matches. */
static int
admuser_verify(const char *hash, const char *pw)
{
	int	ok;

	pthread_once(&admuser_once, admuser_init);
	while (sem_wait(&admuser_sem) != 0)
		;
	ok = crypto_pwhash_str_verify(hash, pw, strlen(pw)) == 0;
	sem_post(&admuser_sem);
	return (ok);
}

/* The admin's view of an account (a new reference). */
static json_t *
admuser_row_json(const struct db_res *res, size_t row)
{
	return (json_pack("{s:I, s:s, s:s, s:s, s:s?}", "id",
	    (json_int_t)strtoll(db_cell(res, row, 0), NULL, 10), "username",
	    db_cell(res, row, 1), "status", db_cell(res, row, 2), "created_at",
	    db_cell(res, row, 3), "last_login_at", db_cell(res, row, 4)));
}

#define ADMUSER_COLUMNS	"id, username, status, "			\
	SQL_ISO("created_at") ", " SQL_ISO("last_login_at")

/* Every administrator, by name. */
json_t *
admuser_list(struct db *db, struct op_error *e)
{
	struct db_res	*res;
	json_t		*list;
	size_t		 i;

	if (db_run(db, &res, NULL, "SELECT " ADMUSER_COLUMNS " FROM "
	    "admin_users ORDER BY username", "") != 0) {
		op_fail(e, 503, "the database is unavailable");
		return (NULL);
	}
	if ((list = json_array()) != NULL) {
		for (i = 0; i < res->nrows; i++)
			json_array_append_new(list, admuser_row_json(res, i));
	}
	db_res_free(res);
	if (list == NULL)
		op_fail(e, 500, "out of memory");
	return (list);
}

/* The view of user name; NULL with e set (404 if unknown). */
static json_t *
admuser_get(struct db *db, const char *name, struct op_error *e)
{
	struct db_res	*res;
	json_t		*one = NULL;

	if (db_run(db, &res, NULL, "SELECT " ADMUSER_COLUMNS " FROM "
	    "admin_users WHERE username = ?", "s", name) != 0) {
		op_fail(e, 503, "the database is unavailable");
		return (NULL);
	}
	if (res->nrows != 1)
		op_fail(e, 404, "no such administrator: %s", name);
	else if ((one = admuser_row_json(res, 0)) == NULL)
		op_fail(e, 500, "out of memory");
	db_res_free(res);
	return (one);
}

/* What admuser_create's and admuser_change's transactions need. */
struct admuser_tx {
	const struct actor	*who;
	const char		*name;
	const char		*hash;		/* NULL: no new password */
	const char		*status;	/* NULL: no new status */
	struct op_error		*e;
};

/* The status of a failure: -1 the database's (tried again), 1 a refusal. */
static int
admuser_tx_fail(const struct op_error *e)
{
	return (e->status == 503 ? -1 : 1);
}

/* admuser_create's transaction. */
static int
admuser_create_tx(struct db *db, void *arg)
{
	struct admuser_tx	*a = arg;
	json_t			*after;
	uint64_t		 affected = 0;
	int			 rc;

	a->e->status = 0;
	if (db_run(db, NULL, &affected, "INSERT IGNORE INTO admin_users "
	    "(username, password_hash, created_at) VALUES (?, ?, "
	    "UTC_TIMESTAMP())", "ss", a->name, a->hash) != 0)
		return (-1);
	if (affected != 1) {
		op_fail(a->e, 409, "administrator %s exists already", a->name);
		return (1);
	}
	if ((after = admuser_get(db, a->name, a->e)) == NULL)
		return (admuser_tx_fail(a->e));
	rc = audit_record(db, a->who, "admin.create", "admin_user", a->name,
	    NULL, after);
	json_decref(after);
	return (rc != 0 ? -1 : 0);
}

/* After a transaction: 0, or -1 with e set (a 503 saying why). */
static int
admuser_tx_end(struct db *db, int rc, struct op_error *e)
{
	if (rc < 0)
		op_fail(e, 503, "the database is unavailable: %s", db_why(db));
	return (rc == 0 ? 0 : -1);
}

/* Create administrator name with password pw. */
int
admuser_create(struct db *db, const struct actor *who, const char *name,
    const char *pw, struct op_error *e)
{
	struct admuser_tx	a = { who, name, NULL, NULL, e };
	char			hash[crypto_pwhash_STRBYTES];
	int			rc;

	if (!admuser_valid_name(name)) {
		op_fail(e, 400, "user name: 1 to 64 characters of A-Z a-z 0-9 "
		    "_ . @ -, not starting with . or -");
		return (-1);
	}
	if (admuser_hash(pw, hash, e) != 0)
		return (-1);
	a.hash = hash;
	rc = admuser_tx_end(db, db_tx(db, admuser_create_tx, &a), e);
	sodium_memzero(hash, sizeof hash);
	return (rc);
}

/* admuser_change's transaction. */
static int
admuser_change_tx(struct db *db, void *arg)
{
	struct admuser_tx	*a = arg;
	json_t			*before, *after;
	int			 rc;

	a->e->status = 0;
	if ((before = admuser_get(db, a->name, a->e)) == NULL)
		return (admuser_tx_fail(a->e));
	if (db_run(db, NULL, NULL, "UPDATE admin_users SET password_hash = "
	    "IFNULL(?, password_hash), status = IFNULL(?, status), "
	    "token_version = token_version + 1 WHERE username = ?", "sss",
	    a->hash, a->status, a->name) != 0) {
		json_decref(before);
		return (-1);
	}
	if ((after = admuser_get(db, a->name, a->e)) == NULL) {
		json_decref(before);
		return (admuser_tx_fail(a->e));
	}
	rc = audit_record(db, a->who, a->hash != NULL ? "admin.passwd" :
	    strcmp(a->status, "disabled") == 0 ? "admin.disable" :
	    "admin.enable", "admin_user", a->name, before, after) != 0 ? -1 : 0;
	json_decref(before);
	json_decref(after);
	return (rc);
}

/*
 * Change an account: a new password (pw not NULL) or a status (status
 * not NULL).  Either raises token_version, so older tokens stop working.
 */
int
admuser_change(struct db *db, const struct actor *who, const char *name,
    const char *pw, const char *status, struct op_error *e)
{
	struct admuser_tx	a = { who, name, NULL, status, e };
	char			hash[crypto_pwhash_STRBYTES];
	int			rc;

	if (pw != NULL) {
		if (admuser_hash(pw, hash, e) != 0)
			return (-1);
		a.hash = hash;
	}
	rc = admuser_tx_end(db, db_tx(db, admuser_change_tx, &a), e);
	if (pw != NULL)
		sodium_memzero(hash, sizeof hash);
	return (rc);
}

/*
 * Seconds a login by user name from address ip must still wait, from
 * the failures recorded; 0 when it may go ahead, -1 on a database error.
 */
static long long
admuser_wait(struct db *db, const char *name, const char *ip)
{
	struct db_res	*res;
	long long	 wait;

	if (db_run(db, &res, NULL, "SELECT IFNULL(MAX(CEILING(TIMESTAMPDIFF("
	    "MICROSECOND, UTC_TIMESTAMP(3), last_failure_at + INTERVAL "
	    "LEAST(900, 30 * POW(2, failures - IF(scope = 'user', ?, ?))) "
	    "SECOND) / 1000000)), 0) FROM admin_login_failures WHERE "
	    "((scope = 'user' AND subject = ?) OR (scope = 'ip' AND "
	    "subject = ?)) AND failures >= IF(scope = 'user', ?, ?) AND "
	    "last_failure_at > UTC_TIMESTAMP(3) - INTERVAL 1 DAY", "iissii",
	    (long long)ADMUSER_USER_LIMIT, (long long)ADMUSER_IP_LIMIT, name,
	    ip, (long long)ADMUSER_USER_LIMIT, (long long)ADMUSER_IP_LIMIT) !=
	    0)
		return (-1);
	wait = strtoll(db_cell(res, 0, 0) ? db_cell(res, 0, 0) : "0", NULL,
	    10);
	db_res_free(res);
	return (wait > 0 ? wait : 0);
}

/* Count a failed login for the user name and for the address. */
static void
admuser_failed(struct db *db, const char *name, const char *ip)
{
	const char	*scope[2] = { "user", "ip" }, *subj[2] = { name, ip };
	int		 i;

	for (i = 0; i < 2; i++) {
		if (db_run(db, NULL, NULL, "INSERT INTO admin_login_failures "
		    "(scope, subject, failures, last_failure_at) VALUES (?, ?, "
		    "1, UTC_TIMESTAMP(3)) ON DUPLICATE KEY UPDATE failures = "
		    "IF(last_failure_at < UTC_TIMESTAMP(3) - INTERVAL 15 MINUTE, "
		    "1, failures + 1), last_failure_at = UTC_TIMESTAMP(3)", "ss",
		    scope[i], subj[i]) != 0)
			log_warnx("cannot count a failed login: %s",
			    db_error(db));
	}
}

/*
 * Log in: check name and password from address ip.  On success write a
 * token (valid for admin_token_ttl_s) to token and the account's view to
 * *user.  Fails with 401 (the same for an unknown user and a wrong
 * password), 429 with *retry set while failures make it wait, or 503.
 */
int
admuser_login(struct db *db, const char *name, const char *pw,
    const char *ip, char *token, size_t tokenlen, json_t **user,
    long long *retry, struct op_error *e)
{
	struct db_res	*res = NULL;
	const char	*hash = admuser_dummy;
	long long	 wait, id = 0, ver = 0;
	int		 ok, rc = -1;

	*user = NULL;
	*retry = 0;
	if (!appconf->have_admin_secret) {
		op_fail(e, 503, ADMUSER_NO_SECRET);
		return (-1);
	}
	if ((wait = admuser_wait(db, name, ip)) < 0) {
		op_fail(e, 503, "the database is unavailable");
		return (-1);
	}
	if (wait > 0) {
		*retry = wait;
		op_fail(e, 429, "too many failed logins: try again in %lld s",
		    wait);
		return (-1);
	}
	if (db_run(db, &res, NULL, "SELECT id, password_hash, status, "
	    "token_version FROM admin_users WHERE username = ?", "s",
	    name) != 0) {
		op_fail(e, 503, "the database is unavailable");
		return (-1);
	}
	pthread_once(&admuser_once, admuser_init);
	if (res->nrows == 1 && db_cell(res, 0, 1) != NULL)
		hash = db_cell(res, 0, 1);
	/* An unknown user costs the same as a wrong password. */
	ok = admuser_verify(hash, pw) && hash != admuser_dummy;
	if (ok && strcmp(db_cell(res, 0, 2), "active") != 0) {
		op_fail(e, 401, "this administrator is disabled");
		goto out;
	}
	if (!ok) {
		admuser_failed(db, name, ip);
		op_fail(e, 401, "wrong user name or password");
		goto out;
	}
	id = strtoll(db_cell(res, 0, 0), NULL, 10);
	ver = strtoll(db_cell(res, 0, 3), NULL, 10);
	if (jwt_sign(appconf->admin_secret, id, name, ver,
	    (long long)time(NULL), appconf->admin_token_ttl_s, token,
	    tokenlen) != 0) {
		op_fail(e, 500, "cannot sign a token");
		goto out;
	}
	if (db_run(db, NULL, NULL, "DELETE FROM admin_login_failures WHERE "
	    "scope = 'user' AND subject = ?", "s", name) != 0 ||
	    db_run(db, NULL, NULL, "UPDATE admin_users SET last_login_at = "
	    "UTC_TIMESTAMP() WHERE id = ?", "i", id) != 0 ||
	    (*user = admuser_get(db, name, e)) == NULL) {
		op_fail(e, 503, "the database is unavailable");
		goto out;
	}
	rc = 0;
out:
	db_res_free(res);
	return (rc);
}

/*
 * Check an admin token: its signature, expiry and lifetime, and that its
 * user is still active at the same token version.  Fills who (actor name
 * "admin:<name>") and returns 0, or -1 with e set (401 or 503).
 */
int
admuser_check_token(struct db *db, const char *token, struct actor *who,
    struct op_error *e)
{
	struct db_res	*res;
	char		 name[TENANT_MAX + 1], why[128];
	long long	 id, ver;
	int		 ok;

	if (!appconf->have_admin_secret) {
		op_fail(e, 503, ADMUSER_NO_SECRET);
		return (-1);
	}
	if (jwt_verify(appconf->admin_secret, token, (long long)time(NULL),
	    appconf->admin_token_ttl_s, &id, name, sizeof name, &ver, why,
	    sizeof why) != 0) {
		op_fail(e, 401, "%s", why);
		return (-1);
	}
	if (db_run(db, &res, NULL, "SELECT status, token_version, username "
	    "FROM admin_users WHERE id = ?", "i", id) != 0) {
		op_fail(e, 503, "the database is unavailable");
		return (-1);
	}
	ok = res->nrows == 1 && strcmp(db_cell(res, 0, 0), "active") == 0 &&
	    strtoll(db_cell(res, 0, 1), NULL, 10) == ver;
	if (ok)
		snprintf(who->name, sizeof who->name, "admin:%s",
		    db_cell(res, 0, 2));
	db_res_free(res);
	if (!ok) {
		op_fail(e, 401, "the token is no longer valid (the "
		    "administrator was disabled or changed password): log in "
		    "again");
		return (-1);
	}
	return (0);
}
