/*
 * The admin API (API.md, "Admin API"): log in, keys, usage, the request
 * and error logs, the audit log.  Every route but /admin/login needs an
 * admin token (Authorization: Bearer <jwt>); client API keys are never
 * admin.  Changes go through keys.c and adminuser.c, which audit them in
 * the same transaction; this file only speaks HTTP.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "http.h"

#define ADMINAPI_ISO_MS(col)	"DATE_FORMAT(" col ", '%Y-%m-%dT%H:%i:%s.%fZ')"

/* POST /admin/login {"username","password"} */
void
adminapi_login(struct request *r)
{
	struct op_error	 e;
	struct db	*db = db_thread();
	json_t		*body, *user = NULL;
	const char	*name, *pw;
	char		 token[1024], ra[24], actor[sizeof ((struct actor *)0)->name];
	long long	 retry;

	if ((body = req_json_body(r, 1)) == NULL ||
	    input_str(r, body, "username", 1, TENANT_MAX, &name) != 0 ||
	    input_str(r, body, "password", 1, 1024, &pw) != 0)
		return;
	if (admuser_login(db, name, pw, req_ip(r), token, sizeof token,
	    &user, &retry, &e) != 0) {
		if (retry > 0) {
			snprintf(ra, sizeof ra, "%lld", retry);
			req_add_header(r, "Retry-After", ra);
		}
		req_op_fail(r, &e);
		return;
	}
	snprintf(actor, sizeof actor, "admin:%s", name);
	req_set_admin(r, actor);
	req_send_json(r, 200, json_pack("{s:b, s:s, s:s, s:I, s:o}", "success",
	    1, "token", token, "token_type", "Bearer", "expires_in",
	    (json_int_t)appconf->admin_token_ttl_s, "user", user));
	sodium_memzero(token, sizeof token);
}

/* GET /admin/me: who the token belongs to, and the models served. */
void
adminapi_me(struct request *r)
{
	const struct actor	*who = req_actor(r);
	json_t		*models;
	int		 i;

	if ((models = json_array()) == NULL) {
		req_error(r, 500, NULL, "out of memory");
		return;
	}
	for (i = 0; i < appconf->nmodels; i++)
		json_array_append_new(models, json_string(appconf->models[i]));
	req_send_json(r, 200, json_pack("{s:b, s:s, s:I, s:o, s:s}", "success",
	    1, "username", who->name + 6, "token_ttl_s",
	    (json_int_t)appconf->admin_token_ttl_s, "models", models,
	    "default_model", appconf->default_model));
}

/*
 * A query parameter as an integer in [min, max] (def when absent); on a
 * bad value the 400 is sent and -1 returned.
 */
static int
adminapi_qint(struct request *r, const char *name, long long min,
    long long max, long long def, long long *out)
{
	char		 buf[32], *end;
	const char	*v = req_query(r, name, buf, sizeof buf);

	*out = def;
	if (v == NULL)
		return (0);
	*out = strtoll(v, &end, 10);
	if (*v == '\0' || *end != '\0' || *out < min || *out > max) {
		req_error(r, 400, NULL, "%s: must be an integer from %lld to "
		    "%lld", name, min, max);
		return (-1);
	}
	return (0);
}

/* A query parameter that must be a key id, or absent. */
static int
adminapi_qkey(struct request *r, char *buf, size_t len, const char **out)
{
	*out = req_query(r, "key_id", buf, len);
	if (*out != NULL && !auth_key_id_valid(*out)) {
		req_error(r, 400, NULL, "key_id: not a key id");
		return (-1);
	}
	return (0);
}

/* The :id of a keys route, checked; 404 when it cannot be a key id. */
static const char *
adminapi_key_param(struct request *r)
{
	const char	*id = req_route(r)->param;

	if (!auth_key_id_valid(id)) {
		req_error(r, 404, NULL, "no such key: %.64s", id);
		return (NULL);
	}
	return (id);
}

/*
 * Answer a key operation: the key's view (with its new secret and signing
 * secret, shown this once, when there are) or the operation's error.
 * Takes out.
 */
static void
adminapi_key_answer(struct request *r, int rc, int status, json_t *out,
    char *secret, const struct op_error *e)
{
	if (rc != 0) {
		req_op_fail(r, e);
		return;
	}
	if (secret != NULL) {
		json_object_set_new(out, "key", json_string(secret));
		sodium_memzero(secret, KEY_LEN + 1);
	}
	req_send_json(r, status, json_pack("{s:b, s:o, s:s*}", "success", 1,
	    "key", out, "notice", secret != NULL || json_object_get(out,
	    "signing_secret") != NULL ? "the key and its signing secret are "
	    "shown only once: store them now" : NULL));
}

/* POST /admin/api-keys */
void
adminapi_keys_create(struct request *r)
{
	const struct actor	*who = req_actor(r);
	struct op_error	 e;
	json_t		*body, *out;
	char		 key[KEY_LEN + 1];
	int		 rc;

	if ((body = req_json_body(r, 1)) == NULL)
		return;
	rc = keys_create(db_thread(), who, body, key, &out, &e);
	adminapi_key_answer(r, rc, 201, out, key, &e);
}

/* GET /admin/api-keys?status=&tenant=&limit=&offset= */
void
adminapi_keys_list(struct request *r)
{
	struct op_error	 e;
	json_t		*out;
	const char	*status, *tenant;
	char		 sbuf[16], tbuf[TENANT_MAX + 1];
	long long	 limit, offset;

	if (adminapi_qint(r, "limit", 1, 1000, 100, &limit) != 0 ||
	    adminapi_qint(r, "offset", 0, 1000000000, 0, &offset) != 0)
		return;
	status = req_query(r, "status", sbuf, sizeof sbuf);
	tenant = req_query(r, "tenant", tbuf, sizeof tbuf);
	if (status != NULL && strcmp(status, "active") != 0 &&
	    strcmp(status, "suspended") != 0 && strcmp(status, "expired") !=
	    0 && strcmp(status, "revoked") != 0) {
		req_error(r, 400, NULL, "status: one of active, suspended, "
		    "expired, revoked");
		return;
	}
	if ((out = keys_list(db_thread(), status, tenant, limit, offset,
	    &e)) == NULL) {
		req_op_fail(r, &e);
		return;
	}
	json_object_set_new(out, "success", json_true());
	req_send_json(r, 200, out);
}

/* GET /admin/api-keys/:id */
void
adminapi_keys_get(struct request *r)
{
	struct op_error	 e;
	struct keyrec	 k;
	const char	*id;

	if ((id = adminapi_key_param(r)) == NULL)
		return;
	if (keys_load(db_thread(), id, 0, &k, &e) != 0) {
		req_op_fail(r, &e);
		return;
	}
	adminapi_key_answer(r, 0, 200, keys_json(&k), NULL, &e);
	keyrec_clear(&k);
}

/* PUT /admin/api-keys/:id */
void
adminapi_keys_update(struct request *r)
{
	const struct actor	*who = req_actor(r);
	struct op_error	 e;
	json_t		*body, *out;
	const char	*id;
	int		 rc;

	if ((id = adminapi_key_param(r)) == NULL ||
	    (body = req_json_body(r, 1)) == NULL)
		return;
	rc = keys_update(db_thread(), who, id, body, &out, &e);
	adminapi_key_answer(r, rc, 200, out, NULL, &e);
}

/* GET /admin/tenants/:name: a tenant's workspace limits. */
void
adminapi_tenant_get(struct request *r)
{
	struct op_error	 e;
	json_t		*out;

	if ((out = tenant_get(db_thread(), req_route(r)->param, &e)) == NULL)
		req_op_fail(r, &e);
	else
		req_send_json(r, 200, out);
}

/*
 * PUT /admin/tenants/:name: set workspace_max_bytes, workspace_max_files
 * (null: ccgate.conf's default, 0: no limit); audited.
 */
void
adminapi_tenant_update(struct request *r)
{
	struct op_error	 e;
	json_t		*body, *out;

	if ((body = req_json_body(r, 1)) == NULL)
		return;
	if (tenant_update(db_thread(), req_actor(r), req_route(r)->param, body,
	    &out, &e) != 0)
		req_op_fail(r, &e);
	else
		req_send_json(r, 200, out);
}

/*
 * DELETE /admin/tenants/:name: purge the tenant's workspace, transcripts
 * and conversations (tenant_purge); audited.
 */
void
adminapi_tenant_purge(struct request *r)
{
	struct op_error	 e;
	json_t		*out;

	if (tenant_purge(db_thread(), req_actor(r), req_route(r)->param, &out,
	    &e) != 0)
		req_op_fail(r, &e);
	else
		req_send_json(r, 200, out);
}

/* DELETE /admin/api-keys/:id: revoke. */
void
adminapi_keys_revoke(struct request *r)
{
	const struct actor	*who = req_actor(r);
	struct op_error	 e;
	json_t		*out;
	const char	*id;
	int		 rc;

	if ((id = adminapi_key_param(r)) == NULL)
		return;
	rc = keys_revoke(db_thread(), who, id, &out, &e);
	adminapi_key_answer(r, rc, 200, out, NULL, &e);
}

/* POST /admin/api-keys/:id/rotate {"grace_seconds"?} */
void
adminapi_keys_rotate(struct request *r)
{
	const struct actor	*who = req_actor(r);
	struct op_error	 e;
	json_t		*body, *out;
	const char	*id;
	char		 key[KEY_LEN + 1];
	long long	 grace = appconf->rotate_grace_s;
	int		 rc;

	if ((id = adminapi_key_param(r)) == NULL ||
	    (body = req_json_body(r, 0)) == NULL ||
	    input_int(r, body, "grace_seconds", 0, 30 * 86400, &grace) != 0)
		return;
	if (json_object_size(body) > (json_object_get(body, "grace_seconds") ?
	    1U : 0U)) {
		req_error(r, 400, NULL, "only grace_seconds may be sent");
		return;
	}
	rc = keys_rotate(db_thread(), who, id, grace, key, &out, &e);
	adminapi_key_answer(r, rc, 200, out, key, &e);
}

/* A cell as a JSON integer, real or null. */
static json_t *
adminapi_num(const struct db_res *res, size_t row, size_t col, int real)
{
	const char	*v = db_cell(res, row, col);

	if (v == NULL)
		return (json_null());
	return (real ? json_real(strtod(v, NULL)) :
	    json_integer(strtoll(v, NULL, 10)));
}

/* A cell as a JSON string or null. */
static json_t *
adminapi_str(const struct db_res *res, size_t row, size_t col)
{
	const char	*v = db_cell(res, row, col);

	return (v != NULL ? json_string(v) : json_null());
}

/*
 * GET /admin/usage?group=day|hour&key_id=&from=&to=: per key and period,
 * requests, errors, tokens, cost and latency percentiles.  The default
 * range is the last 30 days (by day) or 48 hours (by hour).
 */
void
adminapi_usage(struct request *r)
{
	struct db_res	*res;
	const char	*group, *key, *v, *fmt;
	char		 gbuf[8], kbuf[KEY_ID_LEN + 2], fbuf[32], tbuf[32];
	char		 from[32], to[32];
	json_t		*rows;
	size_t		 i;
	int		 hourly;

	if (adminapi_qkey(r, kbuf, sizeof kbuf, &key) != 0)
		return;
	group = req_query(r, "group", gbuf, sizeof gbuf);
	if (group != NULL && strcmp(group, "day") != 0 &&
	    strcmp(group, "hour") != 0) {
		req_error(r, 400, NULL, "group: day or hour");
		return;
	}
	hourly = group != NULL && strcmp(group, "hour") == 0;
	fmt = hourly ? "%Y-%m-%dT%H:00:00Z" : "%Y-%m-%d";
	from[0] = to[0] = '\0';
	if ((v = req_query(r, "from", fbuf, sizeof fbuf)) != NULL &&
	    keys_parse_time(v, from) != 0) {
		req_error(r, 400, NULL, "from: a UTC time such as "
		    "2026-11-01T00:00:00Z");
		return;
	}
	if ((v = req_query(r, "to", tbuf, sizeof tbuf)) != NULL &&
	    keys_parse_time(v, to) != 0) {
		req_error(r, 400, NULL, "to: a UTC time such as "
		    "2026-11-02T00:00:00Z");
		return;
	}
	if (db_run(db_thread(), &res, NULL,
	    "SELECT t.key_id, k.name, t.period, COUNT(*), "
	    "SUM(t.status_code >= 400), SUM(t.input_tokens), "
	    "SUM(t.output_tokens), SUM(t.total_tokens), SUM(t.cost_usd), "
	    "ROUND(MAX(t.p50)), ROUND(MAX(t.p95)), ROUND(MAX(t.p99)) FROM ("
	    "SELECT key_id, DATE_FORMAT(created_at, ?) period, status_code, "
	    "input_tokens, output_tokens, total_tokens, cost_usd, "
	    "PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY duration_ms) OVER "
	    "(PARTITION BY key_id, DATE_FORMAT(created_at, ?)) p50, "
	    "PERCENTILE_CONT(0.95) WITHIN GROUP (ORDER BY duration_ms) OVER "
	    "(PARTITION BY key_id, DATE_FORMAT(created_at, ?)) p95, "
	    "PERCENTILE_CONT(0.99) WITHIN GROUP (ORDER BY duration_ms) OVER "
	    "(PARTITION BY key_id, DATE_FORMAT(created_at, ?)) p99 "
	    "FROM usage_logs WHERE key_id IS NOT NULL AND (? IS NULL OR "
	    "key_id = ?) AND created_at >= IFNULL(STR_TO_DATE(?, "
	    SQL_ISO_FORMAT "), UTC_TIMESTAMP() - INTERVAL ? HOUR) AND "
	    "created_at < IFNULL(STR_TO_DATE(?, " SQL_ISO_FORMAT "), "
	    "UTC_TIMESTAMP() + INTERVAL 1 HOUR)) t LEFT JOIN api_keys k ON "
	    "k.id = t.key_id GROUP BY t.key_id, k.name, t.period "
	    "ORDER BY t.period, t.key_id LIMIT 10000", "sssssssis", fmt, fmt,
	    fmt, fmt, key, key, from[0] ? from : NULL,
	    (long long)(hourly ? 48 : 30 * 24), to[0] ? to : NULL) != 0) {
		req_db_down(r);
		return;
	}
	rows = json_array();
	for (i = 0; rows != NULL && i < res->nrows; i++) {
		json_array_append_new(rows, json_pack("{s:o, s:o, s:o, s:o, "
		    "s:o, s:o, s:o, s:o, s:o, s:{s:o, s:o, s:o}}",
		    "key_id", adminapi_str(res, i, 0),
		    "key_name", adminapi_str(res, i, 1),
		    "period", adminapi_str(res, i, 2),
		    "requests", adminapi_num(res, i, 3, 0),
		    "errors", adminapi_num(res, i, 4, 0),
		    "input_tokens", adminapi_num(res, i, 5, 0),
		    "output_tokens", adminapi_num(res, i, 6, 0),
		    "total_tokens", adminapi_num(res, i, 7, 0),
		    "cost_usd", adminapi_num(res, i, 8, 1),
		    "latency_ms",
		    "p50", adminapi_num(res, i, 9, 0),
		    "p95", adminapi_num(res, i, 10, 0),
		    "p99", adminapi_num(res, i, 11, 0)));
	}
	db_res_free(res);
	req_send_json(r, 200, json_pack("{s:b, s:s, s:o}", "success", 1,
	    "group", hourly ? "hour" : "day", "usage", rows));
}

/*
 * GET /admin/requests and /admin/errors: the newest requests first,
 * filtered by key_id, status, route, client_request_id; paged with
 * before (an id).
 */
static void
adminapi_log(struct request *r, int errors_only)
{
	struct db_res	*res;
	const char	*key, *route, *cid;
	char		 kbuf[KEY_ID_LEN + 2], rbuf[128];
	char		 cbuf[REQ_CLIENT_ID_MAX + 1];
	long long	 limit, before, status;
	json_t		*rows;
	size_t		 i;

	if (adminapi_qkey(r, kbuf, sizeof kbuf, &key) != 0 ||
	    adminapi_qint(r, "limit", 1, 500, 100, &limit) != 0 ||
	    adminapi_qint(r, "before", 1, INT64_MAX, 0, &before) != 0 ||
	    adminapi_qint(r, "status", 100, 599, 0, &status) != 0)
		return;
	route = req_query(r, "route", rbuf, sizeof rbuf);
	cid = req_query(r, "client_request_id", cbuf, sizeof cbuf);
	if (db_run(db_thread(), &res, NULL,
	    "SELECT id, request_id, " ADMINAPI_ISO_MS("created_at") ", key_id, "
	    "tenant, route, endpoint, method, status_code, model, "
	    "input_tokens, output_tokens, cost_usd, ttft_ms, duration_ms, "
	    "error, client_request_id FROM usage_logs WHERE (? IS NULL OR "
	    "key_id = ?) AND (? = 0 OR status_code = ?) AND (? IS NULL OR "
	    "route = ?) AND (? IS NULL OR client_request_id = ?) AND "
	    "(? = 0 OR status_code >= 400) AND (? = 0 OR id < ?) "
	    "ORDER BY id DESC LIMIT ?", "ssiissssiiii", key, key, status,
	    status, route, route, cid, cid, (long long)errors_only, before,
	    before, limit) != 0) {
		req_db_down(r);
		return;
	}
	rows = json_array();
	for (i = 0; rows != NULL && i < res->nrows; i++) {
		json_array_append_new(rows, json_pack("{s:o, s:o, s:o, s:o, "
		    "s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, "
		    "s:o, s:o}",
		    "id", adminapi_num(res, i, 0, 0),
		    "request_id", adminapi_str(res, i, 1),
		    "client_request_id", adminapi_str(res, i, 16),
		    "created_at", adminapi_str(res, i, 2),
		    "key_id", adminapi_str(res, i, 3),
		    "tenant", adminapi_str(res, i, 4),
		    "route", adminapi_str(res, i, 5),
		    "endpoint", adminapi_str(res, i, 6),
		    "method", adminapi_str(res, i, 7),
		    "status", adminapi_num(res, i, 8, 0),
		    "model", adminapi_str(res, i, 9),
		    "input_tokens", adminapi_num(res, i, 10, 0),
		    "output_tokens", adminapi_num(res, i, 11, 0),
		    "cost_usd", adminapi_num(res, i, 12, 1),
		    "ttft_ms", adminapi_num(res, i, 13, 0),
		    "duration_ms", adminapi_num(res, i, 14, 0),
		    "error", adminapi_str(res, i, 15)));
	}
	req_send_json(r, 200, json_pack("{s:b, s:o, s:o}", "success", 1,
	    "requests", rows, "next_before", res->nrows == (size_t)limit ?
	    adminapi_num(res, res->nrows - 1, 0, 0) : json_null()));
	db_res_free(res);
}

/* GET /admin/requests */
void
adminapi_requests(struct request *r)
{
	adminapi_log(r, 0);
}

/* GET /admin/errors */
void
adminapi_errors(struct request *r)
{
	adminapi_log(r, 1);
}

/* A JSON text cell parsed, or null. */
static json_t *
adminapi_jsoncell(const struct db_res *res, size_t row, size_t col)
{
	const char	*v = db_cell(res, row, col);
	json_t		*j;

	if (v == NULL || (j = json_loads(v, JSON_DECODE_ANY, NULL)) == NULL)
		return (json_null());
	return (j);
}

/* GET /admin/audit?object_id=&action=&before=&limit= */
void
adminapi_audit(struct request *r)
{
	struct db_res	*res;
	const char	*obj, *action;
	char		 obuf[72], abuf[72];
	long long	 limit, before;
	json_t		*rows;
	size_t		 i;

	if (adminapi_qint(r, "limit", 1, 500, 100, &limit) != 0 ||
	    adminapi_qint(r, "before", 1, INT64_MAX, 0, &before) != 0)
		return;
	obj = req_query(r, "object_id", obuf, sizeof obuf);
	action = req_query(r, "action", abuf, sizeof abuf);
	if (db_run(db_thread(), &res, NULL,
	    "SELECT id, " ADMINAPI_ISO_MS("created_at") ", actor, source_ip, "
	    "action, object_type, object_id, before_state, after_state FROM "
	    "audit_log WHERE (? IS NULL OR object_id = ?) AND (? IS NULL OR "
	    "action = ?) AND (? = 0 OR id < ?) ORDER BY id DESC LIMIT ?",
	    "ssssiii", obj, obj, action, action, before, before, limit) != 0) {
		req_db_down(r);
		return;
	}
	rows = json_array();
	for (i = 0; rows != NULL && i < res->nrows; i++) {
		json_array_append_new(rows, json_pack("{s:o, s:o, s:o, s:o, "
		    "s:o, s:o, s:o, s:o, s:o}",
		    "id", adminapi_num(res, i, 0, 0),
		    "created_at", adminapi_str(res, i, 1),
		    "actor", adminapi_str(res, i, 2),
		    "source_ip", adminapi_str(res, i, 3),
		    "action", adminapi_str(res, i, 4),
		    "object_type", adminapi_str(res, i, 5),
		    "object_id", adminapi_str(res, i, 6),
		    "before", adminapi_jsoncell(res, i, 7),
		    "after", adminapi_jsoncell(res, i, 8)));
	}
	req_send_json(r, 200, json_pack("{s:b, s:o, s:o}", "success", 1,
	    "audit", rows, "next_before", res->nrows == (size_t)limit ?
	    adminapi_num(res, res->nrows - 1, 0, 0) : json_null()));
	db_res_free(res);
}
