/*
 * Conversations: rows in MariaDB owned by a tenant, with their messages.
 * Every lookup is by (tenant, id): another tenant's conversation is not
 * found, exactly like one that does not exist.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core.h"
#include "log.h"

#define CONV_TITLE_MAX	200

/*
 * The conversations this process has read or written, so that a turn need
 * not read its conversation again (one round trip to MariaDB less before
 * the job starts).  A cached row is never trusted alone: the turn's first
 * write, the user's message, is an INSERT ... SELECT that stores nothing
 * unless the row still has the cached session and history hash and is not
 * deleted (conv_add_user_message).  The other columns a turn uses (tenant,
 * title, model, system prompt, creation time) never change once written.
 * Another process's turn or a deletion makes the entry stale; the INSERT
 * finds it so, and the row is read again.  Direct-mapped by the id, like
 * the key cache: a collision replaces the older entry.  Long system
 * prompts are not kept, so the cache stays within a few megabytes.
 */
#define CONV_CACHE_SIZE		1024
#define CONV_CACHE_PROMPT_MAX	4096

static struct conversation	conv_cache[CONV_CACHE_SIZE];
static pthread_mutex_t		conv_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t			conv_cache_hits, conv_cache_stale;

/* Free what a conversation holds. */
void
conv_clear(struct conversation *c)
{
	free(c->title);
	free(c->model);
	free(c->system_prompt);
	memset(c, 0, sizeof *c);
}

/* Duplicate a possibly NULL string. */
static char *
conv_dup(const char *s)
{
	return (s != NULL ? strdup(s) : NULL);
}

/* Copy a conversation, its strings too.  Returns 0, or -1 (nothing held). */
static int
conv_copy(struct conversation *to, const struct conversation *from)
{
	*to = *from;
	to->title = conv_dup(from->title);
	to->model = conv_dup(from->model);
	to->system_prompt = conv_dup(from->system_prompt);
	if ((from->title != NULL && to->title == NULL) ||
	    (from->model != NULL && to->model == NULL) ||
	    (from->system_prompt != NULL && to->system_prompt == NULL)) {
		conv_clear(to);
		return (-1);
	}
	return (0);
}

/* The cache slot of a conversation id (FNV-1a). */
static struct conversation *
conv_cache_slot(const char *id)
{
	uint32_t	h = 2166136261u;

	for (; *id != '\0'; id++)
		h = (h ^ (uint8_t)*id) * 16777619u;
	return (&conv_cache[h % CONV_CACHE_SIZE]);
}

/* Keep a copy of c (a row as MariaDB has it). */
static void
conv_cache_put(const struct conversation *c)
{
	struct conversation	*e, copy;

	if (c->system_prompt != NULL &&
	    strlen(c->system_prompt) > CONV_CACHE_PROMPT_MAX)
		return;
	if (conv_copy(&copy, c) != 0)
		return;
	copy.fresh = copy.cached = 0;
	e = conv_cache_slot(c->id);
	pthread_mutex_lock(&conv_cache_lock);
	conv_clear(e);
	*e = copy;
	pthread_mutex_unlock(&conv_cache_lock);
}

/* The tenant's conversation id from the cache into c: 0, or 1 if absent. */
static int
conv_cache_get(const char *tenant, const char *id, struct conversation *c)
{
	struct conversation	*e = conv_cache_slot(id);
	int			 rc = 1;

	pthread_mutex_lock(&conv_cache_lock);
	if (strcmp(e->id, id) == 0 && strcmp(e->tenant, tenant) == 0 &&
	    conv_copy(c, e) == 0) {
		c->cached = 1;
		conv_cache_hits++;
		rc = 0;
	}
	pthread_mutex_unlock(&conv_cache_lock);
	return (rc);
}

/*
 * Record in the cache what this process wrote to the row: its session
 * (NULL: forgotten) and history hash (NULL: unchanged).
 */
static void
conv_cache_wrote(const char *id, const char *session_id, const char *hash)
{
	struct conversation	*e = conv_cache_slot(id);

	pthread_mutex_lock(&conv_cache_lock);
	if (strcmp(e->id, id) == 0) {
		snprintf(e->cli_session_id, sizeof e->cli_session_id, "%s",
		    session_id != NULL ? session_id : "");
		if (hash != NULL)
			snprintf(e->history_hash, sizeof e->history_hash, "%s",
			    hash);
	}
	pthread_mutex_unlock(&conv_cache_lock);
}

/* Forget a conversation: deleted, or found stale (counted). */
static void
conv_cache_drop(const char *id, int stale)
{
	struct conversation	*e = conv_cache_slot(id);

	pthread_mutex_lock(&conv_cache_lock);
	if (strcmp(e->id, id) == 0)
		conv_clear(e);
	if (stale)
		conv_cache_stale++;
	pthread_mutex_unlock(&conv_cache_lock);
}

/* Forget a conversation this process may hold (changed elsewhere). */
void
conv_uncache(const char *id)
{
	conv_cache_drop(id, 0);
}

/* The cache's counters, for /metrics. */
void
conv_cache_counts(uint64_t *hits, uint64_t *stale)
{
	pthread_mutex_lock(&conv_cache_lock);
	*hits = conv_cache_hits;
	*stale = conv_cache_stale;
	pthread_mutex_unlock(&conv_cache_lock);
}

/*
 * Load the tenant's conversation id into c.  Returns 0 if found, 1 if not
 * (any id that is not a UUID is simply not found), -1 on a database error.
 */
int
conv_load(struct db *db, const char *tenant, const char *id,
    struct conversation *c)
{
	struct db_res	*res;

	memset(c, 0, sizeof *c);
	if (!util_valid_uuid(id))
		return (1);
	if (db_run(db, &res, NULL,
	    "SELECT id, tenant, title, model, system_prompt, cli_session_id, "
	    SQL_ISO("created_at") ", history_hash FROM conversations "
	    "WHERE tenant = ? AND id = ? AND deleted_at IS NULL",
	    "ss", tenant, id) != 0)
		return (-1);
	if (res->nrows != 1) {
		db_res_free(res);
		return (1);
	}
	if (db_cell(res, 0, 7) != NULL)
		snprintf(c->history_hash, sizeof c->history_hash, "%s",
		    db_cell(res, 0, 7));
	snprintf(c->id, sizeof c->id, "%s", db_cell(res, 0, 0));
	snprintf(c->tenant, sizeof c->tenant, "%s", db_cell(res, 0, 1));
	c->title = conv_dup(db_cell(res, 0, 2));
	c->model = conv_dup(db_cell(res, 0, 3));
	c->system_prompt = conv_dup(db_cell(res, 0, 4));
	if (db_cell(res, 0, 5) != NULL)
		snprintf(c->cli_session_id, sizeof c->cli_session_id, "%s",
		    db_cell(res, 0, 5));
	snprintf(c->created_at, sizeof c->created_at, "%s",
	    db_cell(res, 0, 6) != NULL ? db_cell(res, 0, 6) : "");
	db_res_free(res);
	conv_cache_put(c);
	return (0);
}

/*
 * conv_load, from this process's cache when it has the conversation: a
 * turn's lookup.  The turn's conv_add_user_message checks the cached row
 * against MariaDB's.
 */
int
conv_lookup(struct db *db, const char *tenant, const char *id,
    struct conversation *c)
{
	memset(c, 0, sizeof *c);
	if (!util_valid_uuid(id))
		return (1);
	if (conv_cache_get(tenant, id, c) == 0)
		return (0);
	return (conv_load(db, tenant, id, c));
}

/* A title from the first message: at most 80 bytes, cut on a character. */
char *
conv_title_from_message(const char *message)
{
	size_t	n = strlen(message);

	if (n > 80) {
		n = 80;
		while (n > 0 && ((unsigned char)message[n] & 0xc0) == 0x80)
			n--;
	}
	return (strndup(message, n));
}

/*
 * Create a conversation for key's tenant.  title may be NULL.  Returns 0
 * with c filled, or -1 on a database error.
 */
int
conv_insert(struct db *db, const struct apikey *key, const char *model,
    const char *system_prompt, const char *title, struct conversation *c)
{
	memset(c, 0, sizeof *c);
	if (util_uuid4(c->id) != 0)
		return (-1);
	snprintf(c->tenant, sizeof c->tenant, "%s", key->tenant);
	c->model = strdup(model != NULL ? model : appconf->default_model);
	c->system_prompt = conv_dup(system_prompt);
	c->title = conv_dup(title);
	if (c->model == NULL || (system_prompt != NULL &&
	    c->system_prompt == NULL) || (title != NULL && c->title == NULL))
		goto fail;
	conv_chain("", "system", system_prompt != NULL ? system_prompt : "",
	    c->history_hash);
	if (db_run(db, NULL, NULL,
	    "INSERT INTO conversations (id, tenant, key_id, title, model, "
	    "system_prompt, node, history_hash, created_at, updated_at) VALUES "
	    "(?, ?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(3), UTC_TIMESTAMP(3))",
	    "ssssssss", c->id, c->tenant, key->id, c->title, c->model,
	    c->system_prompt, appconf->node, c->history_hash) != 0)
		goto fail;
	c->fresh = 1;
	conv_cache_put(c);
	return (0);
fail:
	conv_clear(c);
	return (-1);
}

/*
 * Store the user's message of a turn of c.  A conversation that came from
 * the cache is checked in the same statement: the message is stored only
 * if the row is still live with the session and history hash the turn
 * will use.  If it is not, the row is read again (c's session and hash
 * are updated) and the message stored after it.  Returns 0, 1 if the
 * conversation is gone (deleted meanwhile: nothing stored), -1 on a
 * database error.
 */
int
conv_add_user_message(struct db *db, struct conversation *c,
    const char *content, const char *request_id)
{
	struct conversation	now;
	uint64_t		stored;
	int			rc;

	if (c->cached) {
		if (db_run(db, NULL, &stored,
		    "INSERT INTO messages (conversation_id, role, content, "
		    "request_id, created_at) SELECT id, 'user', ?, ?, "
		    "UTC_TIMESTAMP(3) FROM conversations WHERE id = ? AND "
		    "tenant = ? AND deleted_at IS NULL AND "
		    "cli_session_id <=> NULLIF(?, '') AND "
		    "history_hash <=> NULLIF(?, '')", "ssssss", content,
		    request_id, c->id, c->tenant, c->cli_session_id,
		    c->history_hash) != 0)
			return (-1);
		if (stored == 1)
			return (0);
		conv_cache_drop(c->id, 1);
		if ((rc = conv_load(db, c->tenant, c->id, &now)) != 0)
			return (rc);
		memcpy(c->cli_session_id, now.cli_session_id,
		    sizeof c->cli_session_id);
		memcpy(c->history_hash, now.history_hash,
		    sizeof c->history_hash);
		conv_clear(&now);
		c->cached = 0;
	}
	return (conv_add_message(db, c->id, "user", content, request_id, 0,
	    0, 0.0) == 0 ? 0 : -1);
}

/* Append a message to a conversation. */
int
conv_add_message(struct db *db, const char *conv_id, const char *role,
    const char *content, const char *request_id, long long in,
    long long out, double cost)
{
	return (db_run(db, NULL, NULL,
	    "INSERT INTO messages (conversation_id, role, content, request_id, "
	    "input_tokens, output_tokens, cost_usd, created_at) VALUES "
	    "(?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(3))", "ssssiid", conv_id,
	    role, content, request_id, in, out, cost));
}

/*
 * Append request_id's answer (the assistant's message) to a conversation,
 * unless the conversation has it already (an INSERT whose answer was lost,
 * tried again) or is deleted.
 */
int
conv_add_answer(struct db *db, const char *conv_id, const char *content,
    const char *request_id, long long in, long long out, double cost)
{
	return (db_run(db, NULL, NULL,
	    "INSERT INTO messages (conversation_id, role, content, request_id, "
	    "input_tokens, output_tokens, cost_usd, created_at) SELECT id, "
	    "'assistant', ?, ?, ?, ?, ?, UTC_TIMESTAMP(3) FROM conversations "
	    "WHERE id = ? AND deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM "
	    "messages WHERE conversation_id = ? AND request_id = ? AND role = "
	    "'assistant')", "ssiidsss", content, request_id, in, out, cost,
	    conv_id, conv_id, request_id));
}

/*
 * Record the CLI session that now holds the conversation, and the hash of
 * its history after the turn.
 */
int
conv_set_session(struct db *db, const char *conv_id, const char *session_id,
    const char *history_hash)
{
	if (db_run(db, NULL, NULL,
	    "UPDATE conversations SET cli_session_id = ?, node = ?, "
	    "history_hash = ?, updated_at = UTC_TIMESTAMP(3) WHERE id = ?",
	    "ssss", session_id, appconf->node, history_hash, conv_id) != 0)
		return (-1);
	conv_cache_wrote(conv_id, session_id, history_hash);
	return (0);
}

/* Record the hash of a conversation's history (its messages were stored). */
int
conv_set_history(struct db *db, struct conversation *c, const char *hash)
{
	if (db_run(db, NULL, NULL, "UPDATE conversations SET history_hash = ? "
	    "WHERE id = ?", "ss", hash, c->id) != 0)
		return (-1);
	snprintf(c->history_hash, sizeof c->history_hash, "%s", hash);
	conv_cache_wrote(c->id, c->cli_session_id, hash);
	return (0);
}

/*
 * Stop trusting the conversation's CLI session: a turn failed after its
 * message was stored, so the session may hold less (or more) than the
 * stored messages.  The next turn primes a new session from them.
 */
int
conv_forget_session(struct db *db, struct conversation *c)
{
	c->cli_session_id[0] = '\0';
	if (db_run(db, NULL, NULL, "UPDATE conversations SET "
	    "cli_session_id = NULL, updated_at = UTC_TIMESTAMP(3) WHERE id = ?",
	    "s", c->id) != 0)
		return (-1);
	conv_cache_wrote(c->id, NULL, NULL);
	return (0);
}

/* The next link of a history hash: hex of H(prev || role || 0 || content). */
void
conv_chain(const char *prev, const char *role, const char *content,
    char out[65])
{
	crypto_generichash_state	st;
	uint8_t				h[32];

	crypto_generichash_init(&st, NULL, 0, sizeof h);
	crypto_generichash_update(&st, (const uint8_t *)prev, strlen(prev));
	crypto_generichash_update(&st, (const uint8_t *)role, strlen(role) + 1);
	crypto_generichash_update(&st, (const uint8_t *)content,
	    strlen(content));
	crypto_generichash_final(&st, h, sizeof h);
	sodium_bin2hex(out, 65, h, sizeof h);
}

/*
 * Find the tenant's conversation whose history hashes to hash (the most
 * recently used if several do), for a turn: from the cache if this process
 * has it (conv_lookup).  Returns like conv_load.
 */
int
conv_find_history(struct db *db, const char *tenant, const char *hash,
    struct conversation *c)
{
	struct db_res	*res;
	char		 id[UUID_LEN + 1];

	memset(c, 0, sizeof *c);
	if (db_run(db, &res, NULL, "SELECT id FROM conversations WHERE "
	    "tenant = ? AND history_hash = ? AND deleted_at IS NULL ORDER BY "
	    "updated_at DESC LIMIT 1", "ss", tenant, hash) != 0)
		return (-1);
	if (res->nrows != 1) {
		db_res_free(res);
		return (1);
	}
	snprintf(id, sizeof id, "%s", db_cell(res, 0, 0));
	db_res_free(res);
	return (conv_lookup(db, tenant, id, c));
}

/* conv_delete's transaction. */
static int
conv_delete_tx(struct db *db, void *arg)
{
	const char	*id = arg;

	if (db_run(db, NULL, NULL, "DELETE FROM messages WHERE "
	    "conversation_id = ?", "s", id) != 0 ||
	    db_run(db, NULL, NULL, "UPDATE conversations SET deleted_at = "
	    "UTC_TIMESTAMP(3), cli_session_id = NULL, system_prompt = NULL, "
	    "title = NULL WHERE id = ?", "s", id) != 0 ||
	    db_run(db, NULL, NULL, "DELETE FROM idempotency_keys WHERE "
	    "conversation_id = ?", "s", id) != 0)
		return (-1);
	return (0);
}

/*
 * Delete conversation id: its messages go, its row stays as a tombstone
 * (deleted_at, nothing of its content).  Returns 0, or -1 when MariaDB
 * failed (nothing changed; db_why says what happened).
 */
int
conv_delete(struct db *db, const char *id)
{
	/* db_tx's argument is not const: the function only reads it. */
	if (db_tx(db, conv_delete_tx, (void *)(uintptr_t)id) != 0)
		return (-1);
	conv_cache_drop(id, 0);
	return (0);
}
