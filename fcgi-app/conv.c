/*
 * Conversations: rows in MariaDB owned by a tenant, with their messages.
 * Every lookup is by (tenant, id): another tenant's conversation is not
 * found, exactly like one that does not exist.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "log.h"

#define CONV_TITLE_MAX	200
#define CONV_ISO(col)	"DATE_FORMAT(" col ", '%Y-%m-%dT%H:%i:%sZ')"

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
	    CONV_ISO("created_at") " FROM conversations "
	    "WHERE tenant = ? AND id = ? AND deleted_at IS NULL",
	    "ss", tenant, id) != 0)
		return (-1);
	if (res->nrows != 1) {
		db_res_free(res);
		return (1);
	}
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
	if (db_run(db, NULL, NULL,
	    "INSERT INTO conversations (id, tenant, key_id, title, model, "
	    "system_prompt, node, created_at, updated_at) VALUES "
	    "(?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(3), UTC_TIMESTAMP(3))",
	    "sssssss", c->id, c->tenant, key->id, c->title, c->model,
	    c->system_prompt, appconf->node) != 0)
		goto fail;
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

/* Record the CLI session that now holds the conversation. */
int
conv_set_session(struct db *db, const char *conv_id, const char *session_id)
{
	return (db_run(db, NULL, NULL,
	    "UPDATE conversations SET cli_session_id = ?, node = ?, "
	    "updated_at = UTC_TIMESTAMP(3) WHERE id = ?", "sss", session_id,
	    appconf->node, conv_id));
}

/* Answer a database failure. */
static void
conv_db_down(struct request *r)
{
	req_add_header(r, "Retry-After", "5");
	req_error(r, 503, NULL, "the database is unavailable; retry shortly");
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
	if ((db = db_thread()) == NULL || conv_insert(db, req_key(r), model,
	    sp, title, &c) != 0) {
		conv_db_down(r);
		return;
	}
	/* Read it back for created_at; conv_load refills c. */
	snprintf(id, sizeof id, "%s", c.id);
	conv_clear(&c);
	if (conv_load(db, req_key(r)->tenant, id, &c) != 0) {
		conv_clear(&c);
		conv_db_down(r);
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
		conv_db_down(r);
		return;
	}
	if (rc == 1) {
		req_error(r, 404, NULL, "conversation not found");
		return;
	}
	if (db_run(db, &res, NULL,
	    "SELECT role, content, " CONV_ISO("created_at") ", input_tokens, "
	    "output_tokens, cost_usd FROM messages WHERE conversation_id = ? "
	    "ORDER BY id", "s", c.id) != 0) {
		conv_clear(&c);
		conv_db_down(r);
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
