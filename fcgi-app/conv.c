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

#include "app.h"
#include "log.h"
#include "poolc.h"
#include "proto.h"

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

/* The JSON form of a conversation (without messages). */
static json_t *
conv_json(const struct conversation *c)
{
	return (json_pack("{s:b, s:s, s:s?, s:s?, s:s?, s:s}", "success", 1,
	    "conversation_id", c->id, "title", c->title, "model", c->model,
	    "system_prompt", c->system_prompt, "created_at", c->created_at));
}

/* POST /api/conversations */
void
conv_create_handle(struct request *r)
{
	struct conversation	 c;
	struct db		*db;
	const char		*model, *sp, *title;
	char			 id[UUID_LEN + 1];
	json_t			*body;

	if (req_authenticate(r) != 0 || (body = req_json_body(r, 0)) == NULL)
		return;
	if (input_model(r, body, &model) != 0 ||
	    input_str(r, body, "system_prompt", 0,
	    (size_t)appconf->max_message, &sp) != 0 ||
	    input_str(r, body, "title", 0, CONV_TITLE_MAX, &title) != 0)
		return;
	if (model != NULL && !auth_model_allowed(req_key(r), model)) {
		req_error(r, 403, NULL, "model: this key may not use \"%s\"",
		    model);
		return;
	}
	if ((db = db_thread()) == NULL || conv_insert(db, req_key(r), model,
	    sp, title, &c) != 0) {
		req_db_down(r);
		return;
	}
	/* Read it back for created_at; conv_load refills c. */
	snprintf(id, sizeof id, "%s", c.id);
	conv_clear(&c);
	if (conv_load(db, req_key(r)->tenant, id, &c) != 0) {
		conv_clear(&c);
		req_db_down(r);
		return;
	}
	req_send_json(r, 201, conv_json(&c));
	conv_clear(&c);
}

/* GET /api/conversations/:id */
void
conv_get_handle(struct request *r)
{
	struct conversation	 c;
	struct db_res		*res = NULL;
	struct db		*db;
	json_t			*out, *msgs, *m;
	size_t			 i;
	int			 rc;

	if (req_authenticate(r) != 0)
		return;
	if ((db = db_thread()) == NULL ||
	    (rc = conv_load(db, req_key(r)->tenant, req_route(r)->param,
	    &c)) == -1) {
		req_db_down(r);
		return;
	}
	if (rc == 1) {
		req_error(r, 404, NULL, "%s", CONV_MISSING);
		return;
	}
	if (db_run(db, &res, NULL,
	    "SELECT role, content, " SQL_ISO("created_at") ", input_tokens, "
	    "output_tokens, cost_usd FROM messages WHERE conversation_id = ? "
	    "ORDER BY id", "s", c.id) != 0) {
		conv_clear(&c);
		req_db_down(r);
		return;
	}
	out = conv_json(&c);
	msgs = json_array();
	for (i = 0; out != NULL && msgs != NULL && i < res->nrows; i++) {
		m = json_pack("{s:s, s:s, s:s}", "role", db_cell(res, i, 0),
		    "content", db_cell(res, i, 1) ? db_cell(res, i, 1) : "",
		    "created_at", db_cell(res, i, 2));
		if (m == NULL)
			continue;
		if (strcmp(db_cell(res, i, 0), "assistant") == 0)
			json_object_set_new(m, "usage", json_pack(
			    "{s:I, s:I, s:f}", "input_tokens",
			    (json_int_t)strtoll(db_cell(res, i, 3) ?
			    db_cell(res, i, 3) : "0", NULL, 10),
			    "output_tokens", (json_int_t)strtoll(
			    db_cell(res, i, 4) ? db_cell(res, i, 4) : "0", NULL,
			    10), "cost_usd", strtod(db_cell(res, i, 5) ?
			    db_cell(res, i, 5) : "0", NULL)));
		json_array_append_new(msgs, m);
	}
	if (out != NULL && msgs != NULL)
		json_object_set_new(out, "messages", msgs);
	else
		json_decref(msgs);
	db_res_free(res);
	conv_clear(&c);
	req_send_json(r, 200, out);
}

#define CONV_LIST_DEFAULT	20
#define CONV_LIST_MAX		100

/*
 * GET /api/conversations?limit=N&cursor=ID: the tenant's conversations,
 * newest first.  The cursor is the id of the last one of the previous
 * page; next_cursor is null on the last page.
 */
void
conv_list_handle(struct request *r)
{
	struct db_res	*res = NULL;
	struct db	*db;
	const char	*tenant;
	char		 buf[128], *end;
	const char	*cursor, *lim;
	json_t		*list, *out;
	long		 limit = CONV_LIST_DEFAULT;
	size_t		 i, n;
	int		 rc;

	if (req_authenticate(r) != 0)
		return;
	tenant = req_key(r)->tenant;
	if ((lim = req_query(r, "limit", buf, sizeof buf)) != NULL) {
		limit = strtol(lim, &end, 10);
		if (*lim == '\0' || *end != '\0' || limit < 1 ||
		    limit > CONV_LIST_MAX) {
			req_error(r, 400, NULL, "limit: must be an integer from "
			    "1 to %d", CONV_LIST_MAX);
			return;
		}
	}
	cursor = req_query(r, "cursor", buf, sizeof buf);
	if (cursor != NULL && !util_valid_uuid(cursor)) {
		req_error(r, 400, NULL, "cursor: not a cursor from this list");
		return;
	}
	if ((db = db_thread()) == NULL) {
		req_db_down(r);
		return;
	}
	if (cursor != NULL)
		rc = db_run(db, &res, NULL,
		    "SELECT c.id, c.title, c.model, " SQL_ISO("c.created_at")
		    ", " SQL_ISO("c.updated_at") " FROM conversations c, "
		    "conversations k WHERE k.id = ? AND k.tenant = ? AND "
		    "c.tenant = ? AND c.deleted_at IS NULL AND (c.created_at < "
		    "k.created_at OR (c.created_at = k.created_at AND c.id < k.id)) "
		    "ORDER BY c.created_at DESC, c.id DESC LIMIT ?", "sssi",
		    cursor, tenant, tenant, (long long)limit + 1);
	else
		rc = db_run(db, &res, NULL,
		    "SELECT id, title, model, " SQL_ISO("created_at") ", "
		    SQL_ISO("updated_at") " FROM conversations WHERE tenant = ? "
		    "AND deleted_at IS NULL ORDER BY created_at DESC, id DESC "
		    "LIMIT ?", "si", tenant, (long long)limit + 1);
	if (rc != 0) {
		req_db_down(r);
		return;
	}
	n = res->nrows > (size_t)limit ? (size_t)limit : res->nrows;
	list = json_array();
	for (i = 0; list != NULL && i < n; i++)
		json_array_append_new(list, json_pack("{s:s, s:s?, s:s, s:s, "
		    "s:s}", "conversation_id", db_cell(res, i, 0), "title",
		    db_cell(res, i, 1), "model", db_cell(res, i, 2),
		    "created_at", db_cell(res, i, 3), "updated_at",
		    db_cell(res, i, 4)));
	out = json_pack("{s:b, s:o, s:s?}", "success", 1, "conversations",
	    list, "next_cursor", res->nrows > (size_t)limit ?
	    db_cell(res, n - 1, 0) : NULL);
	db_res_free(res);
	req_send_json(r, 200, out);
}

/*
 * DELETE /api/conversations/:id: the pool stops the conversation's process
 * and removes its transcript first; only then are its messages deleted, so
 * a pool that does not answer leaves everything as it was.
 */
void
conv_delete_handle(struct request *r)
{
	struct conversation	 c;
	struct db		*db;
	json_t			*msg, *ans = NULL;
	char			*cause = NULL;
	int			 rc;

	if (req_authenticate(r) != 0)
		return;
	if ((db = db_thread()) == NULL ||
	    (rc = conv_load(db, req_key(r)->tenant, req_route(r)->param,
	    &c)) == -1) {
		req_db_down(r);
		return;
	}
	if (rc == 1) {
		req_error(r, 404, NULL, "%s", CONV_MISSING);
		return;
	}
	msg = json_pack("{s:i, s:s, s:s, s:s, s:s?}", "v", PROTO_VERSION,
	    "type", PROTO_DELETE, "tenant", c.tenant, "conversation", c.id,
	    "session_id", c.cli_session_id[0] != '\0' ? c.cli_session_id :
	    NULL);
	if (msg != NULL)
		ans = poolc_call(appconf->poold_socket, msg, 10000, &cause);
	json_decref(msg);
	if (ans == NULL || strcmp(proto_type(ans), PROTO_OK) != 0) {
		log_warnx("delete %s: pool: %s", c.id, cause != NULL ? cause :
		    "refused");
		free(cause);
		json_decref(ans);
		conv_clear(&c);
		req_add_header(r, "Retry-After", "5");
		req_error(r, 503, NULL, "the CLI pool is unavailable; nothing "
		    "was deleted");
		return;
	}
	json_decref(ans);
	if (db_begin(db) != 0 ||
	    db_run(db, NULL, NULL, "DELETE FROM messages WHERE "
	    "conversation_id = ?", "s", c.id) != 0 ||
	    db_run(db, NULL, NULL, "UPDATE conversations SET deleted_at = "
	    "UTC_TIMESTAMP(3), cli_session_id = NULL, system_prompt = NULL, "
	    "title = NULL WHERE id = ?", "s", c.id) != 0 ||
	    db_commit(db) != 0) {
		(void)db_rollback(db);
		conv_clear(&c);
		req_db_down(r);
		return;
	}
	conv_cache_drop(c.id, 0);
	conv_clear(&c);
	req_send_empty(r, 204);
}

/* POST /api/conversations/:id/continue: a turn of that conversation. */
void
conv_continue_handle(struct request *r)
{
	struct conversation	 c;
	struct db		*db;
	const char		*message;
	json_t			*body;
	long long		 max_tokens = 0;
	int			 stream = 0, rc;

	if (req_authenticate(r) != 0 || (body = req_json_body(r, 1)) == NULL)
		return;
	if (input_str(r, body, "message", 1, (size_t)appconf->max_message,
	    &message) != 0 ||
	    input_int(r, body, "max_tokens", 1, 1000000, &max_tokens) != 0 ||
	    input_bool(r, body, "stream", &stream) != 0)
		return;
	if ((db = db_thread()) == NULL ||
	    (rc = conv_lookup(db, req_key(r)->tenant, req_route(r)->param,
	    &c)) == -1) {
		req_db_down(r);
		return;
	}
	if (rc == 1) {
		req_error(r, 404, NULL, "%s", CONV_MISSING);
		return;
	}
	if (perm_check(r, c.model, stream, &max_tokens) == 0)
		chat_turn(r, &c, message, max_tokens, stream, CONV_MISSING);
	conv_clear(&c);
}
