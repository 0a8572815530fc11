/*
 * Key management, shared by the admin API (adminapi.c) and ccgate-admin:
 * create, show, list, update, rotate, revoke.  Each change runs in one
 * transaction with its audit record (audit.c), so a change is never
 * without its record nor a record without its change.
 *
 * A key as administrators see it (seed 002), never with its secret or
 * hash:
 *	{"id","prefix","name","tenant","status","created_at","expires_at",
 *	 "last_used_at","usage_limit":{"requests_per_minute",
 *	 "requests_per_day","tokens_per_day","max_concurrent_requests",
 *	 "queue"},"permissions":{"models","max_tokens","allow_streaming",
 *	 "allow_tools"},"require_signature","metadata":{...},
 *	 "previous_secret_valid_until"}
 * null means unlimited (limits), every model (models), no cap
 * (max_tokens).  A change that makes a signing secret (require_signature
 * turned on, or a rotation of a key that requires signatures) adds
 * "signing_secret" to the answer, shown that once; it is never in the
 * audit log, and never stored: only its salt is (auth_signing_secret).
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core.h"

#define KEYS_COLUMNS							\
	"id, name, tenant, status, " SQL_ISO("created_at") ", "	\
	SQL_ISO("expires_at") ", " SQL_ISO("last_used_at") ", "	\
	"IFNULL(requests_per_minute, -1), IFNULL(requests_per_day, -1), " \
	"IFNULL(tokens_per_day, -1), models, IFNULL(max_tokens, -1), "	\
	"allow_streaming, allow_tools, metadata, "			\
	"IF(prev_valid_until > UTC_TIMESTAMP(), "			\
	SQL_ISO("prev_valid_until") ", NULL), "			\
	"expires_at IS NOT NULL AND expires_at <= UTC_TIMESTAMP(), "	\
	"IFNULL(max_concurrent_requests, -1), queue_when_busy, "	\
	"require_signature"
/* The status a client sees: an active key past expires_at is expired. */
#define KEYS_STATUS							\
	"IF(status = 'active' AND expires_at <= UTC_TIMESTAMP(), "	\
	"'expired', status)"
#define KEYS_MAX_META	16
#define KEYS_MAX_LIST	1000

/* Set an error with its HTTP status. */
void
op_fail(struct op_error *e, int status, const char *fmt, ...)
{
	va_list	ap;

	e->status = status;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof e->msg, fmt, ap);
	va_end(ap);
}

/* Free what a key record owns. */
void
keyrec_clear(struct keyrec *k)
{
	json_decref(k->models);
	json_decref(k->metadata);
	memset(k, 0, sizeof *k);
}

/* A cell as a long long (NULL gives def). */
static long long
keys_ll(const struct db_res *res, size_t row, size_t col, long long def)
{
	const char	*v = db_cell(res, row, col);

	return (v != NULL ? strtoll(v, NULL, 10) : def);
}

/* Copy a cell (NULL gives "") into buf. */
static void
keys_cpy(char *buf, size_t len, const struct db_res *res, size_t row,
    size_t col)
{
	const char	*v = db_cell(res, row, col);

	snprintf(buf, len, "%s", v != NULL ? v : "");
}

/* Fill k from row of a result of KEYS_COLUMNS. */
static void
keys_from_row(struct keyrec *k, const struct db_res *res, size_t row)
{
	const char	*v;

	memset(k, 0, sizeof *k);
	keys_cpy(k->id, sizeof k->id, res, row, 0);
	keys_cpy(k->name, sizeof k->name, res, row, 1);
	keys_cpy(k->tenant, sizeof k->tenant, res, row, 2);
	keys_cpy(k->status, sizeof k->status, res, row, 3);
	keys_cpy(k->created_at, sizeof k->created_at, res, row, 4);
	keys_cpy(k->expires_at, sizeof k->expires_at, res, row, 5);
	keys_cpy(k->last_used_at, sizeof k->last_used_at, res, row, 6);
	k->rpm = keys_ll(res, row, 7, -1);
	k->rpd = keys_ll(res, row, 8, -1);
	k->tpd = keys_ll(res, row, 9, -1);
	if ((v = db_cell(res, row, 10)) != NULL)
		k->models = json_loads(v, 0, NULL);
	k->max_tokens = keys_ll(res, row, 11, -1);
	k->allow_streaming = keys_ll(res, row, 12, 1) != 0;
	k->allow_tools = keys_ll(res, row, 13, 0) != 0;
	if ((v = db_cell(res, row, 14)) != NULL)
		k->metadata = json_loads(v, 0, NULL);
	if (!json_is_object(k->metadata)) {
		json_decref(k->metadata);
		k->metadata = json_object();
	}
	keys_cpy(k->prev_until, sizeof k->prev_until, res, row, 15);
	k->time_expired = keys_ll(res, row, 16, 0) != 0;
	k->max_concurrent = keys_ll(res, row, 17, -1);
	k->queue = keys_ll(res, row, 18, 1) != 0;
	k->require_signature = keys_ll(res, row, 19, 0) != 0;
}

/*
 * Load key id into k (FOR UPDATE inside a transaction if lock).  Returns
 * 0, or -1 with e set: 404 for an unknown key, 503 for the database.
 */
int
keys_load(struct db *db, const char *id, int lock, struct keyrec *k,
    struct op_error *e)
{
	struct db_res	*res;
	int		 rc;

	memset(k, 0, sizeof *k);
	rc = lock ? db_run(db, &res, NULL, "SELECT " KEYS_COLUMNS " FROM "
	    "api_keys WHERE id = ? FOR UPDATE", "s", id) : db_run(db, &res,
	    NULL, "SELECT " KEYS_COLUMNS " FROM api_keys WHERE id = ?", "s", id);
	if (rc != 0) {
		op_fail(e, 503, "the database is unavailable");
		return (-1);
	}
	if (res->nrows != 1) {
		db_res_free(res);
		op_fail(e, 404, "no such key: %s", id);
		return (-1);
	}
	keys_from_row(k, res, 0);
	db_res_free(res);
	return (0);
}

/* A limit as JSON: null for unlimited. */
static json_t *
keys_limit(long long v)
{
	return (v < 0 ? json_null() : json_integer(v));
}

/* The administrators' view of a key (a new reference). */
json_t *
keys_json(const struct keyrec *k)
{
	const char	*status = k->status;
	char		 prefix[KEY_ID_LEN + 8];

	if (strcmp(status, "active") == 0 && k->time_expired)
		status = "expired";
	snprintf(prefix, sizeof prefix, KEY_PREFIX "%s_", k->id);
	return (json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s?, s:s?, "
	    "s:{s:o, s:o, s:o, s:o, s:b}, s:{s:O?, s:o, s:b, s:b}, s:b, s:O, "
	    "s:s?}",
	    "id", k->id, "prefix", prefix, "name", k->name, "tenant", k->tenant,
	    "status", status, "created_at", k->created_at,
	    "expires_at", k->expires_at[0] ? k->expires_at : NULL,
	    "last_used_at", k->last_used_at[0] ? k->last_used_at : NULL,
	    "usage_limit",
	    "requests_per_minute", keys_limit(k->rpm),
	    "requests_per_day", keys_limit(k->rpd),
	    "tokens_per_day", keys_limit(k->tpd),
	    "max_concurrent_requests", keys_limit(k->max_concurrent),
	    "queue", k->queue,
	    "permissions",
	    "models", k->models,
	    "max_tokens", k->max_tokens < 0 ? json_null() :
	    json_integer(k->max_tokens),
	    "allow_streaming", k->allow_streaming,
	    "allow_tools", k->allow_tools,
	    "require_signature", k->require_signature,
	    "metadata", k->metadata,
	    "previous_secret_valid_until", k->prev_until[0] ? k->prev_until :
	    NULL));
}

/*
 * Parse a time "YYYY-MM-DDTHH:MM:SSZ", "YYYY-MM-DD HH:MM:SS" or
 * "YYYY-MM-DD" into the canonical "YYYY-MM-DDTHH:MM:SSZ" (UTC).
 */
int
keys_parse_time(const char *s, char out[32])
{
	static const int	mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30,
				    31, 30, 31 };
	int			y, mo, d, h = 0, mi = 0, sec = 0, n = 0;
	size_t			len = strlen(s);

	if (len == 10) {
		if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3)
			return (-1);
	} else if (len == 19 || (len == 20 && s[19] == 'Z')) {
		if ((s[10] != 'T' && s[10] != ' ') || sscanf(s,
		    "%4d-%2d-%2d%*c%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec,
		    &n) != 6)
			return (-1);
	} else
		return (-1);
	if (n != 10 && n != 19)
		return (-1);
	if (s[4] != '-' || s[7] != '-' || y < 1970 || y > 9999 || mo < 1 ||
	    mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 ||
	    sec > 59 || h < 0 || mi < 0 || sec < 0 ||
	    (mo == 2 && d == 29 && (y % 4 != 0 || (y % 100 == 0 &&
	    y % 400 != 0))))
		return (-1);
	snprintf(out, 32, "%04u-%02u-%02uT%02u:%02u:%02uZ", (unsigned)y % 10000,
	    (unsigned)mo % 100, (unsigned)d % 100, (unsigned)h % 100,
	    (unsigned)mi % 100, (unsigned)sec % 100);
	return (0);
}

/* A limit from JSON: null is unlimited, else an integer in [0, max]. */
static int
keys_get_limit(json_t *v, const char *name, long long max, long long *out,
    struct op_error *e)
{
	if (json_is_null(v)) {
		*out = -1;
		return (0);
	}
	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    json_integer_value(v) > max) {
		op_fail(e, 400, "%s: must be null (unlimited) or an integer "
		    "from 0 to %lld", name, max);
		return (-1);
	}
	*out = json_integer_value(v);
	return (0);
}

/* Return 1 if model is one ccgate.conf lists. */
static int
keys_model_known(const char *model)
{
	int	i;

	for (i = 0; i < appconf->nmodels; i++) {
		if (strcmp(appconf->models[i], model) == 0)
			return (1);
	}
	return (0);
}

/* Apply "usage_limit" to k. */
static int
keys_apply_limits(struct keyrec *k, json_t *lim, struct op_error *e)
{
	const char	*f;
	json_t		*v;

	if (!json_is_object(lim)) {
		op_fail(e, 400, "usage_limit: must be an object");
		return (-1);
	}
	json_object_foreach(lim, f, v) {
		if (strcmp(f, "requests_per_minute") == 0) {
			if (keys_get_limit(v, "usage_limit.requests_per_minute",
			    4294967295LL, &k->rpm, e) != 0)
				return (-1);
		} else if (strcmp(f, "requests_per_day") == 0) {
			if (keys_get_limit(v, "usage_limit.requests_per_day",
			    4294967295LL, &k->rpd, e) != 0)
				return (-1);
		} else if (strcmp(f, "tokens_per_day") == 0) {
			if (keys_get_limit(v, "usage_limit.tokens_per_day",
			    (long long)1e15, &k->tpd, e) != 0)
				return (-1);
		} else if (strcmp(f, "max_concurrent_requests") == 0) {
			if (!json_is_null(v) && (!json_is_integer(v) ||
			    json_integer_value(v) < 1 ||
			    json_integer_value(v) > 10000)) {
				op_fail(e, 400, "usage_limit.max_concurrent_"
				    "requests: must be null (unlimited) or an "
				    "integer from 1 to 10000");
				return (-1);
			}
			k->max_concurrent = json_is_null(v) ? -1 :
			    json_integer_value(v);
		} else if (strcmp(f, "queue") == 0) {
			if (!json_is_boolean(v)) {
				op_fail(e, 400, "usage_limit.queue: must be true "
				    "(wait for a free turn) or false (429 at "
				    "once)");
				return (-1);
			}
			k->queue = json_is_true(v);
		} else {
			op_fail(e, 400, "usage_limit.%s: unknown field (known: "
			    "requests_per_minute, requests_per_day, "
			    "tokens_per_day, max_concurrent_requests, queue)",
			    f);
			return (-1);
		}
	}
	return (0);
}

/* Apply "permissions" to k. */
static int
keys_apply_perms(struct keyrec *k, json_t *perm, struct op_error *e)
{
	const char	*f;
	json_t		*v, *m;
	size_t		 i;

	if (!json_is_object(perm)) {
		op_fail(e, 400, "permissions: must be an object");
		return (-1);
	}
	json_object_foreach(perm, f, v) {
		if (strcmp(f, "models") == 0) {
			if (!json_is_null(v) && !json_is_array(v)) {
				op_fail(e, 400, "permissions.models: must be "
				    "null (every model) or an array of names");
				return (-1);
			}
			json_array_foreach(v, i, m) {
				if (!json_is_string(m) ||
				    !keys_model_known(json_string_value(m))) {
					op_fail(e, 400, "permissions.models[%zu]: "
					    "not a model this gateway serves "
					    "(see GET /v1/models)", i);
					return (-1);
				}
			}
			json_decref(k->models);
			k->models = json_is_null(v) ? NULL : json_incref(v);
		} else if (strcmp(f, "max_tokens") == 0) {
			if (keys_get_limit(v, "permissions.max_tokens",
			    4294967295LL, &k->max_tokens, e) != 0)
				return (-1);
		} else if (strcmp(f, "allow_streaming") == 0 ||
		    strcmp(f, "allow_tools") == 0) {
			if (!json_is_boolean(v)) {
				op_fail(e, 400, "permissions.%s: must be true "
				    "or false", f);
				return (-1);
			}
			if (f[6] == 's')
				k->allow_streaming = json_is_true(v);
			else
				k->allow_tools = json_is_true(v);
		} else {
			op_fail(e, 400, "permissions.%s: unknown field (known: "
			    "models, max_tokens, allow_streaming, "
			    "allow_tools)", f);
			return (-1);
		}
	}
	return (0);
}

/*
 * Apply "metadata": string values only, at most KEYS_MAX_META of them.
 * user_id names the tenant, so it is set at creation and never changed.
 */
static int
keys_apply_meta(struct keyrec *k, json_t *meta, int creating,
    struct op_error *e)
{
	const char	*f, *old;
	json_t		*v, *copy;

	if (!json_is_object(meta) || json_object_size(meta) > KEYS_MAX_META) {
		op_fail(e, 400, "metadata: must be an object of at most %d "
		    "strings", KEYS_MAX_META);
		return (-1);
	}
	json_object_foreach(meta, f, v) {
		if (strlen(f) > 64 || !json_is_string(v) ||
		    json_string_length(v) > 500 ||
		    strlen(json_string_value(v)) != json_string_length(v)) {
			op_fail(e, 400, "metadata.%.64s: must be a string of at "
			    "most 500 bytes (names at most 64)", f);
			return (-1);
		}
	}
	v = json_object_get(meta, "user_id");
	old = json_string_value(json_object_get(k->metadata, "user_id"));
	if (v != NULL && creating && !util_valid_tenant(json_string_value(v))) {
		op_fail(e, 400, "metadata.user_id: 1 to 64 characters of A-Z "
		    "a-z 0-9 _ . @ -, not starting with . or -");
		return (-1);
	}
	if (!creating && (v != NULL ? old == NULL || strcmp(old,
	    json_string_value(v)) != 0 : old != NULL)) {
		op_fail(e, 400, "metadata.user_id: fixed when the key is "
		    "created (it owns the key's conversations)");
		return (-1);
	}
	if ((copy = json_deep_copy(meta)) == NULL) {
		op_fail(e, 500, "out of memory");
		return (-1);
	}
	json_decref(k->metadata);
	k->metadata = copy;
	return (0);
}

/*
 * Apply a change (the body of a create or an update) to k, checking every
 * field; on a bad one nothing is stored and e names it.
 */
int
keys_apply(struct keyrec *k, json_t *spec, int creating, struct op_error *e)
{
	const char	*f, *s;
	json_t		*v;

	if (!json_is_object(spec)) {
		op_fail(e, 400, "the body must be an object");
		return (-1);
	}
	json_object_foreach(spec, f, v) {
		if (strcmp(f, "name") == 0) {
			s = json_string_value(v);
			if (s == NULL || *s == '\0' || json_string_length(v) >
			    100 || strlen(s) != json_string_length(v)) {
				op_fail(e, 400, "name: must be a string of 1 to "
				    "100 bytes");
				return (-1);
			}
			snprintf(k->name, sizeof k->name, "%s", s);
		} else if (strcmp(f, "status") == 0) {
			s = json_string_value(v);
			if (s == NULL || (strcmp(s, "active") != 0 &&
			    strcmp(s, "suspended") != 0)) {
				op_fail(e, 400, "status: must be \"active\" or "
				    "\"suspended\" (revoke with DELETE)");
				return (-1);
			}
			snprintf(k->status, sizeof k->status, "%s", s);
		} else if (strcmp(f, "expires_at") == 0) {
			if (json_is_null(v))
				k->expires_at[0] = '\0';
			else if (!json_is_string(v) || keys_parse_time(
			    json_string_value(v), k->expires_at) != 0) {
				op_fail(e, 400, "expires_at: must be null or a "
				    "UTC time such as \"2027-01-31T00:00:00Z\"");
				return (-1);
			}
		} else if (strcmp(f, "usage_limit") == 0) {
			if (keys_apply_limits(k, v, e) != 0)
				return (-1);
		} else if (strcmp(f, "permissions") == 0) {
			if (keys_apply_perms(k, v, e) != 0)
				return (-1);
		} else if (strcmp(f, "metadata") == 0) {
			if (keys_apply_meta(k, v, creating, e) != 0)
				return (-1);
		} else if (strcmp(f, "require_signature") == 0) {
			if (!json_is_boolean(v)) {
				op_fail(e, 400, "require_signature: must be true "
				    "or false");
				return (-1);
			}
			/* Turning it on makes a secret; on again does not. */
			if (json_is_true(v) && !k->require_signature)
				k->new_signing = 1;
			if (!json_is_true(v))
				k->new_signing = 0;
			k->require_signature = json_is_true(v);
		} else {
			op_fail(e, 400, "%.64s: unknown field (known: name, "
			    "status, expires_at, usage_limit, permissions, "
			    "require_signature, metadata)", f);
			return (-1);
		}
	}
	if (creating && k->name[0] == '\0') {
		op_fail(e, 400, "name: required");
		return (-1);
	}
	return (0);
}

/* A number for a nullable column: NULL when negative (unlimited). */
static const char *
keys_num(char *buf, size_t len, long long v)
{
	if (v < 0)
		return (NULL);
	snprintf(buf, len, "%lld", v);
	return (buf);
}

/*
 * Write k's signing salt: a new one (its secret to k->signing_secret)
 * when k->new_signing, none when signing is off.
 */
static int
keys_store_signing(struct db *db, struct keyrec *k, struct op_error *e)
{
	uint8_t	salt[16];
	int	rc = 0;

	if (!k->require_signature)
		rc = db_run(db, NULL, NULL, "UPDATE api_keys SET signing_salt = "
		    "NULL, prev_signing_salt = NULL WHERE id = ?", "s", k->id);
	else if (k->new_signing) {
		if (!appconf->have_secret) {
			op_fail(e, 500, "no key secret: create %s first",
			    appconf->key_secret_file);
			return (-1);
		}
		randombytes_buf(salt, sizeof salt);
		auth_signing_secret(k->id, salt, k->signing_secret);
		rc = db_run(db, NULL, NULL, "UPDATE api_keys SET signing_salt = "
		    "? WHERE id = ?", "bs", salt, sizeof salt, k->id);
		k->new_signing = 0;
	}
	if (rc != 0) {
		sodium_memzero(k->signing_secret, sizeof k->signing_secret);
		op_fail(e, 503, "the database is unavailable");
		return (-1);
	}
	return (0);
}

/* Add a signing secret made by this change to the answer (shown once). */
static void
keys_add_signing(struct keyrec *k, json_t *out)
{
	if (k->signing_secret[0] == '\0' || out == NULL)
		return;
	json_object_set_new(out, "signing_secret",
	    json_string(k->signing_secret));
	sodium_memzero(k->signing_secret, sizeof k->signing_secret);
}

/* Write k's changeable columns back (inside the caller's transaction). */
static int
keys_store(struct db *db, struct keyrec *k, struct op_error *e)
{
	char	 rpm[24], rpd[24], tpd[24], mt[24], mc[24], *models = NULL;
	char	*meta;
	int	 rc;

	meta = json_dumps(k->metadata, JSON_COMPACT);
	if (k->models != NULL)
		models = json_dumps(k->models, JSON_COMPACT);
	if (meta == NULL || (k->models != NULL && models == NULL)) {
		free(meta);
		free(models);
		op_fail(e, 500, "out of memory");
		return (-1);
	}
	rc = db_run(db, NULL, NULL, "UPDATE api_keys SET name = ?, status = ?, "
	    "expires_at = STR_TO_DATE(?, " SQL_ISO_FORMAT "), "
	    "requests_per_minute = ?, requests_per_day = ?, tokens_per_day = ?, "
	    "models = ?, max_tokens = ?, allow_streaming = ?, allow_tools = ?, "
	    "max_concurrent_requests = ?, queue_when_busy = ?, "
	    "require_signature = ?, "
	    "metadata = ? WHERE id = ?", "ssssssssiisiiss", k->name, k->status,
	    k->expires_at[0] ? k->expires_at : NULL,
	    keys_num(rpm, sizeof rpm, k->rpm), keys_num(rpd, sizeof rpd, k->rpd),
	    keys_num(tpd, sizeof tpd, k->tpd), models,
	    keys_num(mt, sizeof mt, k->max_tokens),
	    (long long)k->allow_streaming, (long long)k->allow_tools,
	    keys_num(mc, sizeof mc, k->max_concurrent), (long long)k->queue,
	    (long long)k->require_signature, meta, k->id);
	free(meta);
	free(models);
	if (rc != 0) {
		op_fail(e, 503, "the database is unavailable");
		return (-1);
	}
	return (keys_store_signing(db, k, e));
}

/*
 * The status of a transaction function's failure: -1 for the database's
 * (db_tx tries it again if the server rolled it back), 1 for a refusal
 * (e says which, nothing is tried again).
 */
static int
keys_tx_fail(const struct op_error *e)
{
	return (e->status == 503 ? -1 : 1);
}

/* After db_tx failed (-1): a 503 that says what the database did. */
static void
keys_tx_503(struct db *db, struct op_error *e)
{
	op_fail(e, 503, "the database is unavailable: %s", db_why(db));
}

/* What keys_create's transaction needs. */
struct keys_create_tx {
	struct keyrec		*k;
	const uint8_t		*hash;
	const struct actor	*who;
	json_t			**out;
	struct op_error		*e;
};

/* keys_create's transaction: insert, read back, audit. */
static int
keys_create_tx(struct db *db, void *arg)
{
	struct keys_create_tx	*a = arg;
	struct keyrec		 saved;

	json_decref(*a->out);
	*a->out = NULL;
	a->e->status = 0;
	if (db_run(db, NULL, NULL, "INSERT INTO api_keys (id, name, key_hash, "
	    "tenant, status, created_at) VALUES (?, ?, ?, ?, 'active', "
	    "UTC_TIMESTAMP())", "ssbs", a->k->id, a->k->name, a->hash,
	    (size_t)32, a->k->tenant) != 0)
		return (-1);
	if (keys_store(db, a->k, a->e) != 0)
		return (keys_tx_fail(a->e));
	/* Read it back for its times, then audit in the same transaction. */
	if (keys_load(db, a->k->id, 0, &saved, a->e) != 0)
		return (keys_tx_fail(a->e));
	*a->out = keys_json(&saved);
	keyrec_clear(&saved);
	if (*a->out == NULL) {
		op_fail(a->e, 500, "out of memory");
		return (1);
	}
	if (audit_record(db, a->who, "key.create", "api_key", a->k->id, NULL,
	    *a->out) != 0)
		return (-1);
	return (0);
}

/*
 * Create a key from spec (name required; metadata.user_id names its
 * tenant, else the key is its own).  The whole key goes to key, shown
 * once; *out gets the key's view.  Returns 0 or -1 with e set.
 */
int
keys_create(struct db *db, const struct actor *who, json_t *spec,
    char key[KEY_LEN + 1], json_t **out, struct op_error *e)
{
	struct keys_create_tx	 ct;
	struct keyrec		 k;
	uint8_t			 hash[32];
	const char		*user;
	int			 rc = -1;

	*out = NULL;
	memset(&k, 0, sizeof k);
	k.rpm = k.rpd = k.tpd = k.max_tokens = k.max_concurrent = -1;
	k.queue = 1;
	k.allow_streaming = 1;
	snprintf(k.status, sizeof k.status, "active");
	k.metadata = json_object();
	if (keys_apply(&k, spec, 1, e) != 0)
		goto out;
	if (!appconf->have_secret) {
		op_fail(e, 500, "no key secret: create %s first",
		    appconf->key_secret_file);
		goto out;
	}
	if (auth_key_generate(key, k.id) != 0) {
		op_fail(e, 500, "cannot generate a key");
		goto out;
	}
	user = json_string_value(json_object_get(k.metadata, "user_id"));
	if (user != NULL)
		snprintf(k.tenant, sizeof k.tenant, "%s", user);
	else
		snprintf(k.tenant, sizeof k.tenant, "key-%s", k.id);
	auth_key_hash(appconf->key_secret, key, hash);
	ct.k = &k;
	ct.hash = hash;
	ct.who = who;
	ct.out = out;
	ct.e = e;
	if ((rc = db_tx(db, keys_create_tx, &ct)) != 0) {
		if (rc < 0)
			keys_tx_503(db, e);
		rc = -1;
		goto out;
	}
	keys_add_signing(&k, *out);
	rc = 0;
out:
	sodium_memzero(hash, sizeof hash);
	sodium_memzero(k.signing_secret, sizeof k.signing_secret);
	if (rc != 0) {
		json_decref(*out);
		*out = NULL;
		sodium_memzero(key, KEY_LEN + 1);
	}
	keyrec_clear(&k);
	return (rc);
}

/* What keys_change's transaction needs and keeps. */
struct keys_change_tx {
	const struct actor	*who;
	const char		*id;
	const char		*action;
	int			(*change)(struct db *, struct keyrec *, void *,
				    struct op_error *);
	void			*arg;
	struct keyrec		 k;
	int			 loaded;
	json_t			**out;
	struct op_error		*e;
};

/* keys_change's transaction: load locked, change, store, audit. */
static int
keys_change_tx(struct db *db, void *arg)
{
	struct keys_change_tx	*a = arg;
	struct keyrec		 after;
	json_t			*before;
	int			 rc;

	json_decref(*a->out);
	*a->out = NULL;
	a->e->status = 0;
	if (a->loaded) {
		sodium_memzero(a->k.signing_secret, sizeof a->k.signing_secret);
		keyrec_clear(&a->k);
		a->loaded = 0;
	}
	if (keys_load(db, a->id, 1, &a->k, a->e) != 0)
		return (keys_tx_fail(a->e));
	a->loaded = 1;
	if (strcmp(a->k.status, "revoked") == 0) {
		op_fail(a->e, 409, "key %s is revoked: a revoked key never "
		    "changes", a->id);
		return (1);
	}
	if ((before = keys_json(&a->k)) == NULL) {
		op_fail(a->e, 500, "out of memory");
		return (1);
	}
	if (a->change(db, &a->k, a->arg, a->e) != 0 ||
	    keys_store(db, &a->k, a->e) != 0 ||
	    keys_load(db, a->id, 0, &after, a->e) != 0) {
		json_decref(before);
		return (keys_tx_fail(a->e));
	}
	*a->out = keys_json(&after);
	keyrec_clear(&after);
	rc = 0;
	if (*a->out == NULL) {
		op_fail(a->e, 500, "out of memory");
		rc = 1;
	} else if (audit_record(db, a->who, a->action, "api_key", a->id,
	    before, *a->out) != 0)
		rc = -1;
	json_decref(before);
	return (rc);
}

/*
 * The common shape of a change: load key id locked, let change() alter
 * it, store, audit "action" with the views before and after, commit, in
 * one transaction (db_tx: tried again if the server rolled it back).
 * *out gets the view after.
 */
static int
keys_change(struct db *db, const struct actor *who, const char *id,
    const char *action, int (*change)(struct db *, struct keyrec *, void *,
    struct op_error *), void *arg, json_t **out, struct op_error *e)
{
	struct keys_change_tx	a;
	int			rc;

	*out = NULL;
	memset(&a, 0, sizeof a);
	a.who = who;
	a.id = id;
	a.action = action;
	a.change = change;
	a.arg = arg;
	a.out = out;
	a.e = e;
	if ((rc = db_tx(db, keys_change_tx, &a)) == 0)
		keys_add_signing(&a.k, *out);
	else {
		if (rc < 0)
			keys_tx_503(db, e);
		json_decref(*out);
		*out = NULL;
	}
	if (a.loaded) {
		sodium_memzero(a.k.signing_secret, sizeof a.k.signing_secret);
		keyrec_clear(&a.k);
	}
	return (rc == 0 ? 0 : -1);
}

/* keys_change callback of an update: apply the body. */
static int
keys_update_cb(struct db *db, struct keyrec *k, void *arg,
    struct op_error *e)
{
	(void)db;
	return (keys_apply(k, arg, 0, e));
}

/* Update key id from spec (any of the fields keys_apply knows). */
int
keys_update(struct db *db, const struct actor *who, const char *id,
    json_t *spec, json_t **out, struct op_error *e)
{
	return (keys_change(db, who, id, "key.update", keys_update_cb, spec,
	    out, e));
}

/* keys_change callback of a revocation. */
static int
keys_revoke_cb(struct db *db, struct keyrec *k, void *arg,
    struct op_error *e)
{
	(void)arg;
	snprintf(k->status, sizeof k->status, "revoked");
	if (db_run(db, NULL, NULL, "UPDATE api_keys SET prev_key_hash = NULL, "
	    "prev_valid_until = NULL WHERE id = ?", "s", k->id) != 0) {
		op_fail(e, 503, "the database is unavailable");
		return (-1);
	}
	return (0);
}

/* Revoke key id: it is refused from now on (within key_cache_ms). */
int
keys_revoke(struct db *db, const struct actor *who, const char *id,
    json_t **out, struct op_error *e)
{
	return (keys_change(db, who, id, "key.revoke", keys_revoke_cb, NULL,
	    out, e));
}

struct keys_rotation {
	char		*key;
	long long	 grace_s;
};

/* keys_change callback of a rotation: new secret, old one in grace. */
static int
keys_rotate_cb(struct db *db, struct keyrec *k, void *arg,
    struct op_error *e)
{
	struct keys_rotation	*rot = arg;
	uint8_t			 hash[32];
	int			 rc;

	if (auth_key_make(k->id, rot->key) != 0) {
		op_fail(e, 500, "cannot generate a key");
		return (-1);
	}
	auth_key_hash(appconf->key_secret, rot->key, hash);
	/* A key that requires signatures gets a new signing secret too. */
	rc = db_run(db, NULL, NULL, "UPDATE api_keys SET prev_key_hash = "
	    "IF(? > 0, key_hash, NULL), prev_valid_until = IF(? > 0, "
	    "UTC_TIMESTAMP() + INTERVAL ? SECOND, NULL), key_hash = ?, "
	    "prev_signing_salt = IF(? > 0, signing_salt, NULL) "
	    "WHERE id = ?", "iiibis", rot->grace_s, rot->grace_s, rot->grace_s,
	    hash, sizeof hash, rot->grace_s, k->id);
	k->new_signing = k->require_signature;
	sodium_memzero(hash, sizeof hash);
	if (rc != 0) {
		op_fail(e, 503, "the database is unavailable");
		return (-1);
	}
	return (0);
}

/*
 * Rotate key id: a new secret (written to key, shown once); the old one
 * keeps working for grace_s seconds (0: stops at once).
 */
int
keys_rotate(struct db *db, const struct actor *who, const char *id,
    long long grace_s, char key[KEY_LEN + 1], json_t **out,
    struct op_error *e)
{
	struct keys_rotation	rot = { key, grace_s };

	if (!appconf->have_secret) {
		op_fail(e, 500, "no key secret: create %s first",
		    appconf->key_secret_file);
		return (-1);
	}
	if (grace_s < 0 || grace_s > 30 * 86400) {
		op_fail(e, 400, "grace_seconds: must be from 0 to %d",
		    30 * 86400);
		return (-1);
	}
	if (keys_change(db, who, id, "key.rotate", keys_rotate_cb, &rot, out,
	    e) != 0) {
		sodium_memzero(key, KEY_LEN + 1);
		return (-1);
	}
	return (0);
}

/*
 * List keys, newest first: status (as keys_json shows it) and tenant
 * filter when not NULL.
 * Returns {"keys":[...],"total":N} or NULL with e set.
 */
json_t *
keys_list(struct db *db, const char *status, const char *tenant,
    long long limit, long long offset, struct op_error *e)
{
	struct db_res	*res = NULL, *cnt = NULL;
	struct keyrec	 k;
	json_t		*list = NULL, *one;
	size_t		 i;

	if (limit < 1 || limit > KEYS_MAX_LIST)
		limit = KEYS_MAX_LIST;
	if (db_run(db, &res, NULL, "SELECT " KEYS_COLUMNS " FROM api_keys "
	    "WHERE (? IS NULL OR " KEYS_STATUS " = ?) AND (? IS NULL OR "
	    "tenant = ?) ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
	    "ssssii", status, status, tenant, tenant, limit, offset) != 0 ||
	    db_run(db, &cnt, NULL, "SELECT COUNT(*) FROM api_keys WHERE "
	    "(? IS NULL OR " KEYS_STATUS " = ?) AND (? IS NULL OR tenant = ?)",
	    "ssss", status, status, tenant, tenant) != 0) {
		op_fail(e, 503, "the database is unavailable");
		goto out;
	}
	if ((list = json_array()) == NULL)
		goto nomem;
	for (i = 0; i < res->nrows; i++) {
		keys_from_row(&k, res, i);
		one = keys_json(&k);
		keyrec_clear(&k);
		if (one == NULL || json_array_append_new(list, one) != 0)
			goto nomem;
	}
	one = json_pack("{s:o, s:I}", "keys", list, "total",
	    (json_int_t)keys_ll(cnt, 0, 0, 0));
	list = NULL;
	if (one == NULL)
		goto nomem;
	db_res_free(res);
	db_res_free(cnt);
	return (one);
nomem:
	op_fail(e, 500, "out of memory");
out:
	json_decref(list);
	db_res_free(res);
	db_res_free(cnt);
	return (NULL);
}
