/*
 * Conversations: rows in MariaDB owned by a tenant, with their messages.
 * Every lookup is by (tenant, id): another tenant's conversation is not
 * found, exactly like one that does not exist.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "app.h"
#include "log.h"
#include "poolc.h"
#include "proto.h"

#define CONV_TITLE_MAX	200

/* Free what a conversation holds. */
void
conv_clear(struct conversation *c)
{
	free(c->title);
	free(c->model);
	free(c->system_prompt);
	memset(c, 0, sizeof *c);
}

/* Duplicate a possibly NULL cell. */
static char *
conv_dup(const char *s)
{
	return (s != NULL ? strdup(s) : NULL);
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
	return (0);
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
	return (0);
fail:
	conv_clear(c);
	return (-1);
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
	return (db_run(db, NULL, NULL,
	    "UPDATE conversations SET cli_session_id = ?, node = ?, "
	    "history_hash = ?, updated_at = UTC_TIMESTAMP(3) WHERE id = ?",
	    "ssss", session_id, appconf->node, history_hash, conv_id));
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
	return (db_run(db, NULL, NULL, "UPDATE conversations SET "
	    "cli_session_id = NULL, updated_at = UTC_TIMESTAMP(3) WHERE id = ?",
	    "s", c->id));
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
 * recently used if several do).  Returns like conv_load.
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
	return (conv_load(db, tenant, id, c));
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
		req_error(r, 404, NULL, "conversation not found");
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
		req_error(r, 404, NULL, "conversation not found");
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
	    (rc = conv_load(db, req_key(r)->tenant, req_route(r)->param,
	    &c)) == -1) {
		req_db_down(r);
		return;
	}
	if (rc == 1) {
		req_error(r, 404, NULL, "conversation not found");
		return;
	}
	if (perm_check(r, c.model, stream, &max_tokens) == 0)
		chat_turn(r, &c, message, max_tokens, stream);
	conv_clear(&c);
}
