/*
 * API keys.  A key is "ccg_" + a 16-character public id ([a-z2-7]) + "_" +
 * 43 characters of base64url secret (32 random bytes):
 *
 *	ccg_abcdefgh234567ab_<43 characters>
 *
 * The public id finds the row; the whole key is checked against a keyed
 * BLAKE2b hash (libsodium crypto_generichash, keyed with the server secret,
 * so a stolen database alone cannot be used to test guesses offline) with
 * a constant-time compare.  The key itself is never stored.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "core.h"
#include "log.h"

/*
 * Verified keys, per process, for key_cache_ms: keyed by the keyed hash of
 * the presented key (never the key), holding what the check found.  Only
 * successful checks are cached, so a revoked or suspended key is refused
 * within key_cache_ms of the change.
 */
#define AUTH_CACHE_SIZE	1024

struct auth_cache_entry {
	uint8_t		hash[32];
	uint64_t	expires_ms;
	struct apikey	key;
};

static struct auth_cache_entry	auth_cache[AUTH_CACHE_SIZE];
static pthread_mutex_t		auth_cache_lock = PTHREAD_MUTEX_INITIALIZER;

/* Find a fresh entry for hash; copy it to out.  Returns 1 on a hit. */
static int
auth_cache_get(const uint8_t hash[32], struct apikey *out)
{
	struct auth_cache_entry	*e;
	int			 hit = 0;

	if (appconf->key_cache_ms <= 0)
		return (0);
	e = &auth_cache[(hash[0] | (size_t)hash[1] << 8) % AUTH_CACHE_SIZE];
	pthread_mutex_lock(&auth_cache_lock);
	if (e->expires_ms > util_now_ms() &&
	    sodium_memcmp(e->hash, hash, 32) == 0) {
		*out = e->key;
		hit = 1;
	}
	pthread_mutex_unlock(&auth_cache_lock);
	return (hit);
}

/* Remember a verified key. */
static void
auth_cache_put(const uint8_t hash[32], const struct apikey *key)
{
	struct auth_cache_entry	*e;

	if (appconf->key_cache_ms <= 0)
		return;
	e = &auth_cache[(hash[0] | (size_t)hash[1] << 8) % AUTH_CACHE_SIZE];
	pthread_mutex_lock(&auth_cache_lock);
	memcpy(e->hash, hash, 32);
	e->key = *key;
	e->expires_ms = util_now_ms() + (uint64_t)appconf->key_cache_ms;
	pthread_mutex_unlock(&auth_cache_lock);
}

#define KEY_ID_ALPHABET		"abcdefghijklmnopqrstuvwxyz234567"
#define KEY_SECRET_ALPHABET	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

/* Return 1 if id is a key's public id: KEY_ID_LEN base32 characters. */
int
auth_key_id_valid(const char *id)
{
	return (strlen(id) == KEY_ID_LEN &&
	    strspn(id, KEY_ID_ALPHABET) == KEY_ID_LEN);
}

/*
 * Check a key's format and copy its public id into id.  Returns 0 or -1;
 * nothing about a malformed key is looked up.
 */
int
auth_key_parse(const char *key, char id[KEY_ID_LEN + 1])
{
	size_t	i;

	if (key == NULL || strlen(key) != KEY_LEN ||
	    strncmp(key, KEY_PREFIX, 4) != 0 || key[4 + KEY_ID_LEN] != '_')
		return (-1);
	memcpy(id, key + 4, KEY_ID_LEN);
	id[KEY_ID_LEN] = '\0';
	if (!auth_key_id_valid(id))
		return (-1);
	for (i = 5 + KEY_ID_LEN; i < KEY_LEN; i++) {
		if (strchr(KEY_SECRET_ALPHABET, key[i]) == NULL)
			return (-1);
	}
	return (0);
}

/* The keyed hash of a whole key. */
void
auth_key_hash(const uint8_t secret[32], const char *key, uint8_t out[32])
{
	crypto_generichash(out, 32, (const unsigned char *)key, strlen(key),
	    secret, 32);
}

/*
 * Make a new random secret for the public id id: the whole key goes to
 * key.  Rotation keeps a key's id and changes its secret.
 */
int
auth_key_make(const char *id, char key[KEY_LEN + 1])
{
	uint8_t	raw[32];
	char	b64[64];

	if (sodium_init() < 0 || strlen(id) != KEY_ID_LEN)
		return (-1);
	randombytes_buf(raw, sizeof raw);
	sodium_bin2base64(b64, sizeof b64, raw, sizeof raw,
	    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	sodium_memzero(raw, sizeof raw);
	if (strlen(b64) != KEY_SECRET_LEN)
		return (-1);
	memcpy(key, KEY_PREFIX, 4);
	memcpy(key + 4, id, KEY_ID_LEN);
	key[4 + KEY_ID_LEN] = '_';
	memcpy(key + 5 + KEY_ID_LEN, b64, KEY_SECRET_LEN);
	key[KEY_LEN] = '\0';
	sodium_memzero(b64, sizeof b64);
	return (0);
}

/* Make a new random key with a new public id; returns 0 or -1. */
int
auth_key_generate(char key[KEY_LEN + 1], char id[KEY_ID_LEN + 1])
{
	size_t	i;

	if (sodium_init() < 0)
		return (-1);
	for (i = 0; i < KEY_ID_LEN; i++)
		id[i] = KEY_ID_ALPHABET[randombytes_uniform(32)];
	id[KEY_ID_LEN] = '\0';
	return (auth_key_make(id, key));
}

/* A client-facing message for an authentication result. */
const char *
auth_strerror(enum auth_result r)
{
	switch (r) {
	case AUTH_OK:
		return ("ok");
	case AUTH_MISSING:
		return ("no API key: send Authorization: Bearer <key> or "
		    "x-api-key: <key>");
	case AUTH_MALFORMED:
	case AUTH_UNKNOWN:
		return ("invalid API key");
	case AUTH_SUSPENDED:
		return ("this API key is suspended");
	case AUTH_EXPIRED:
		return ("this API key has expired");
	case AUTH_REVOKED:
		return ("this API key has been revoked");
	case AUTH_DB_ERROR:
		return ("the key store is unavailable");
	}
	return ("invalid API key");
}

/*
 * Check a presented key.  On AUTH_OK, out describes the key.  A key whose
 * previous secret is still in its rotation grace period is accepted too.
 * Only a key not in the cache takes a database connection.
 */
enum auth_result
auth_check(const char *key, struct apikey *out)
{
	struct db	*db;
	struct db_res	*res = NULL;
	uint8_t		 hash[32];
	const char	*status, *h, *prev;
	char		 id[KEY_ID_LEN + 1];
	enum auth_result r = AUTH_UNKNOWN;
	int		 match;

	memset(out, 0, sizeof *out);
	if (key == NULL || *key == '\0')
		return (AUTH_MISSING);
	if (auth_key_parse(key, id) != 0)
		return (AUTH_MALFORMED);
	auth_key_hash(appconf->key_secret, key, hash);
	if (auth_cache_get(hash, out)) {
		sodium_memzero(hash, sizeof hash);
		return (AUTH_OK);
	}
	db = db_thread();
	if (db_run(db, &res, NULL,
	    "SELECT key_hash, tenant, name, status, "
	    "expires_at IS NOT NULL AND expires_at <= UTC_TIMESTAMP(), "
	    "IF(prev_valid_until > UTC_TIMESTAMP(), prev_key_hash, NULL), "
	    "IFNULL(requests_per_minute, -1), IFNULL(requests_per_day, -1), "
	    "IFNULL(tokens_per_day, -1), models, IFNULL(max_tokens, 0), "
	    "allow_streaming, allow_tools, "
	    "IFNULL(max_concurrent_requests, -1), queue_when_busy, "
	    "require_signature, signing_salt, "
	    "IF(prev_valid_until > UTC_TIMESTAMP(), prev_signing_salt, NULL) "
	    "FROM api_keys WHERE id = ?", "s",
	    id) != 0) {
		r = AUTH_DB_ERROR;
		goto out;
	}
	if (res->nrows != 1)
		goto out;
	h = db_cell(res, 0, 0);
	prev = db_cell(res, 0, 5);
	match = h != NULL && res->lens[0] == 32 &&
	    sodium_memcmp(h, hash, 32) == 0;
	if (!match && prev != NULL && res->lens[5] == 32)
		match = sodium_memcmp(prev, hash, 32) == 0;
	if (!match)
		goto out;
	status = db_cell(res, 0, 3);
	if (status != NULL && strcmp(status, "revoked") == 0)
		r = AUTH_REVOKED;
	else if (status != NULL && strcmp(status, "suspended") == 0)
		r = AUTH_SUSPENDED;
	else if ((status != NULL && strcmp(status, "expired") == 0) ||
	    strcmp(db_cell(res, 0, 4) ? db_cell(res, 0, 4) : "0", "1") == 0)
		r = AUTH_EXPIRED;
	else
		r = AUTH_OK;
	snprintf(out->id, sizeof out->id, "%s", id);
	snprintf(out->tenant, sizeof out->tenant, "%s", db_cell(res, 0, 1));
	snprintf(out->name, sizeof out->name, "%s", db_cell(res, 0, 2));
	snprintf(out->status, sizeof out->status, "%s",
	    status != NULL ? status : "");
	out->rpm = strtoll(db_cell(res, 0, 6) ? db_cell(res, 0, 6) : "-1",
	    NULL, 10);
	out->rpd = strtoll(db_cell(res, 0, 7) ? db_cell(res, 0, 7) : "-1",
	    NULL, 10);
	out->tpd = strtoll(db_cell(res, 0, 8) ? db_cell(res, 0, 8) : "-1",
	    NULL, 10);
	if (db_cell(res, 0, 9) != NULL)
		snprintf(out->models, sizeof out->models, "%s",
		    db_cell(res, 0, 9));
	out->max_tokens = strtoll(db_cell(res, 0, 10) ? db_cell(res, 0, 10) :
	    "0", NULL, 10);
	out->allow_streaming = db_cell(res, 0, 11) == NULL ||
	    strcmp(db_cell(res, 0, 11), "0") != 0;
	out->allow_tools = db_cell(res, 0, 12) != NULL &&
	    strcmp(db_cell(res, 0, 12), "1") == 0;
	out->max_concurrent = strtoll(db_cell(res, 0, 13) ?
	    db_cell(res, 0, 13) : "-1", NULL, 10);
	out->queue = db_cell(res, 0, 14) == NULL ||
	    strcmp(db_cell(res, 0, 14), "0") != 0;
	out->require_signature = db_cell(res, 0, 15) != NULL &&
	    strcmp(db_cell(res, 0, 15), "1") == 0;
	if (db_cell(res, 0, 16) != NULL && res->lens[16] == 16) {
		memcpy(out->signing_salt, db_cell(res, 0, 16), 16);
		out->have_signing_salt = 1;
	}
	if (db_cell(res, 0, 17) != NULL && res->lens[17] == 16) {
		memcpy(out->prev_signing_salt, db_cell(res, 0, 17), 16);
		out->have_prev_signing_salt = 1;
	}
	if (r == AUTH_OK)
		auth_cache_put(hash, out);
	if (r == AUTH_OK && db_run(db, NULL, NULL,
	    "UPDATE api_keys SET last_used_at = UTC_TIMESTAMP() WHERE id = ? "
	    "AND (last_used_at IS NULL OR "
	    "last_used_at < UTC_TIMESTAMP() - INTERVAL 10 SECOND)",
	    "s", id) != 0)
		log_warnx("cannot record last_used_at of key %s", id);
out:
	sodium_memzero(hash, sizeof hash);
	db_res_free(res);
	return (r);
}

/*
 * The signing secret of key id with salt: "ccs_" and the hex of a keyed
 * BLAKE2b (under the server's key_secret) of a label, the id and the salt.
 * Only the salt is stored, so the database alone gives no secret.
 */
void
auth_signing_secret(const char *id, const uint8_t salt[16],
    char out[SIGNING_SECRET_LEN + 1])
{
	crypto_generichash_state	st;
	uint8_t				raw[32];

	crypto_generichash_init(&st, appconf->key_secret, 32, sizeof raw);
	crypto_generichash_update(&st, (const unsigned char *)
	    "ccgate-signing-v1", 17);
	crypto_generichash_update(&st, (const unsigned char *)id, strlen(id));
	crypto_generichash_update(&st, salt, 16);
	crypto_generichash_final(&st, raw, sizeof raw);
	memcpy(out, "ccs_", 4);
	sodium_bin2hex(out + 4, SIGNING_SECRET_LEN - 4 + 1, raw, sizeof raw);
	sodium_memzero(raw, sizeof raw);
	sodium_memzero(&st, sizeof st);
}

/* Return 1 if the key may use model (no list means every model). */
int
auth_model_allowed(const struct apikey *k, const char *model)
{
	json_t	*list, *v;
	size_t	 i;
	int	 ok = 0;

	if (k->models[0] == '\0')
		return (1);
	if ((list = json_loads(k->models, 0, NULL)) == NULL ||
	    !json_is_array(list)) {
		json_decref(list);
		return (0);	/* a broken list allows nothing */
	}
	json_array_foreach(list, i, v) {
		if (json_is_string(v) && strcmp(json_string_value(v), model) == 0)
			ok = 1;
	}
	json_decref(list);
	return (ok);
}
