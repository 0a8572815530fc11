/*
 * The /api/conversations routes: create, list, read, delete, continue.
 * The store is core/conv.c; a turn is turn.c's.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "log.h"
#include "proto.h"

/*
 * The conversation the route names (its :id), of the key's tenant, read
 * by load (conv_load, or conv_lookup where the cache may serve) into c.
 * Returns the thread's connection, or NULL with the answer sent: 503
 * when MariaDB does not answer, 404 when the tenant has no such
 * conversation.
 */
static struct db *
convapi_load(struct request *r, int (*load)(struct db *, const char *,
    const char *, struct conversation *), struct conversation *c)
{
	struct db	*db;
	int		 rc;

	if ((db = db_thread()) == NULL || (rc = load(db, req_key(r)->tenant,
	    req_route(r)->param, c)) == -1) {
		req_db_down(r);
		return (NULL);
	}
	if (rc == 1) {
		req_error(r, 404, NULL, "%s", CONV_MISSING);
		return (NULL);
	}
	return (db);
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

	if ((body = req_json_body(r, 0)) == NULL)
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

	if ((db = convapi_load(r, conv_load, &c)) == NULL)
		return;
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

	if ((db = convapi_load(r, conv_load, &c)) == NULL)
		return;
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
	if (conv_delete(db, c.id) != 0) {
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
	const char		*message;
	json_t			*body;
	long long		 max_tokens = 0;
	int			 stream = 0;

	if ((body = req_json_body(r, 1)) == NULL)
		return;
	if (input_str(r, body, "message", 1, (size_t)appconf->max_message,
	    &message) != 0 ||
	    input_int(r, body, "max_tokens", 1, 1000000, &max_tokens) != 0 ||
	    input_bool(r, body, "stream", &stream) != 0)
		return;
	if (convapi_load(r, conv_lookup, &c) == NULL)
		return;
	if (perm_check(r, c.model, stream, &max_tokens) == 0)
		chat_turn(r, &c, message, max_tokens, stream, CONV_MISSING);
	conv_clear(&c);
}
