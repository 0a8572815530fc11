/*
 * Tenants as administrators manage them: the limits of a tenant's
 * workspace (sql/009_tenant_limits.sql), read by the files API and set by
 * the admin API and ccgate-admin, each change audited.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "proto.h"

/* A column's value: -1 for SQL NULL. */
static long long
tenant_cell(const struct db_res *res, size_t col)
{
	const char	*v = db_cell(res, 0, col);

	return (v == NULL ? -1 : strtoll(v, NULL, 10));
}

/*
 * Tenant t's workspace limits (0: none), its own or ccgate.conf's.
 * Returns -1 if the database does not answer.
 */
int
tenant_limits(struct db *db, const char *t, long long *max_bytes,
    long long *max_files)
{
	struct db_res	*res = NULL;
	long long	 b = -1, f = -1;

	if (db_run(db, &res, NULL, "SELECT workspace_max_bytes, "
	    "workspace_max_files FROM tenant_limits WHERE tenant = ?", "s",
	    t) != 0)
		return (-1);
	if (res->nrows > 0) {
		b = tenant_cell(res, 0);
		f = tenant_cell(res, 1);
	}
	db_res_free(res);
	*max_bytes = b >= 0 ? b : appconf->workspace_max_bytes;
	*max_files = f >= 0 ? f : appconf->workspace_max_files;
	return (0);
}

/* Tenant t's view: its limits, and which are its own. */
static json_t *
tenant_view(struct db *db, const char *t)
{
	struct db_res	*res = NULL;
	long long	 b = -1, f = -1;
	json_t		*o;

	if (db_run(db, &res, NULL, "SELECT workspace_max_bytes, "
	    "workspace_max_files FROM tenant_limits WHERE tenant = ?", "s",
	    t) != 0)
		return (NULL);
	if (res->nrows > 0) {
		b = tenant_cell(res, 0);
		f = tenant_cell(res, 1);
	}
	db_res_free(res);
	o = json_pack("{s:s, s:I, s:I, s:b, s:b}", "tenant", t,
	    "workspace_max_bytes", (json_int_t)(b >= 0 ? b :
	    appconf->workspace_max_bytes), "workspace_max_files",
	    (json_int_t)(f >= 0 ? f : appconf->workspace_max_files),
	    "workspace_max_bytes_default", b < 0, "workspace_max_files_default",
	    f < 0);
	return (o);
}

/* Tenant t as an administrator sees it; NULL with e set. */
json_t *
tenant_get(struct db *db, const char *t, struct op_error *e)
{
	json_t	*o;

	if (!util_valid_tenant(t)) {
		op_fail(e, 400, "invalid tenant name");
		return (NULL);
	}
	if ((o = tenant_view(db, t)) == NULL)
		op_fail(e, 503, "the database is unavailable");
	return (o);
}

/*
 * One limit of spec: absent (keep *v), null (-1: the default) or an
 * integer of at least 0 (0: no limit).
 */
static int
tenant_field(json_t *spec, const char *name, long long *v,
    struct op_error *e)
{
	json_t	*j = json_object_get(spec, name);

	if (j == NULL)
		return (0);
	if (json_is_null(j)) {
		*v = -1;
		return (0);
	}
	if (!json_is_integer(j) || json_integer_value(j) < 0) {
		op_fail(e, 400, "%s: an integer of at least 0 (0: no limit), "
		    "or null for the default", name);
		return (-1);
	}
	*v = json_integer_value(j);
	return (0);
}

/*
 * Set tenant t's limits from spec (workspace_max_bytes,
 * workspace_max_files), audited as who; *out gets the tenant's view.
 */
int
tenant_update(struct db *db, const struct actor *who, const char *t,
    json_t *spec, json_t **out, struct op_error *e)
{
	struct db_res	*res = NULL;
	json_t		*before;
	long long	 b = -1, f = -1;
	const char	*k;
	json_t		*v;

	*out = NULL;
	if (!util_valid_tenant(t)) {
		op_fail(e, 400, "invalid tenant name");
		return (-1);
	}
	if (!json_is_object(spec)) {
		op_fail(e, 400, "the body must be an object");
		return (-1);
	}
	json_object_foreach(spec, k, v) {
		if (strcmp(k, "workspace_max_bytes") != 0 &&
		    strcmp(k, "workspace_max_files") != 0) {
			op_fail(e, 400, "unknown field %s", k);
			return (-1);
		}
	}
	if (db_begin(db) != 0) {
		op_fail(e, 503, "the database is unavailable");
		return (-1);
	}
	if (db_run(db, &res, NULL, "SELECT workspace_max_bytes, "
	    "workspace_max_files FROM tenant_limits WHERE tenant = ? "
	    "FOR UPDATE", "s", t) != 0)
		goto fail;
	if (res->nrows > 0) {
		b = tenant_cell(res, 0);
		f = tenant_cell(res, 1);
	}
	db_res_free(res);
	if ((before = tenant_view(db, t)) == NULL)
		goto fail;
	if (tenant_field(spec, "workspace_max_bytes", &b, e) != 0 ||
	    tenant_field(spec, "workspace_max_files", &f, e) != 0) {
		json_decref(before);
		(void)db_rollback(db);
		return (-1);
	}
	if (db_run(db, NULL, NULL, "INSERT INTO tenant_limits (tenant, "
	    "workspace_max_bytes, workspace_max_files, updated_at) VALUES "
	    "(?, IF(? < 0, NULL, ?), IF(? < 0, NULL, ?), UTC_TIMESTAMP()) "
	    "ON DUPLICATE KEY UPDATE workspace_max_bytes = "
	    "VALUES(workspace_max_bytes), workspace_max_files = "
	    "VALUES(workspace_max_files), updated_at = VALUES(updated_at)",
	    "siiii", t, b, b, f, f) != 0 ||
	    (*out = tenant_view(db, t)) == NULL ||
	    audit_record(db, who, "tenant.update", "tenant", t, before,
	    *out) != 0) {
		json_decref(before);
		goto fail;
	}
	json_decref(before);
	if (db_commit(db) != 0)
		goto fail;
	return (0);
fail:
	(void)db_rollback(db);
	json_decref(*out);
	*out = NULL;
	op_fail(e, 503, "the database is unavailable");
	return (-1);
}

/*
 * Purge tenant t: ccgate-poold kills its processes and removes its folder
 * (workspace, uploads, every transcript), then its conversations and
 * their messages go, audited as tenant.purge with what was removed.  Its
 * keys and limits stay (revoke the keys first, or it can start again).
 * *out gets {tenant, conversations, folder}.
 */
int
tenant_purge(struct db *db, const struct actor *who, const char *t,
    json_t **out, struct op_error *e)
{
	struct db_res	*res = NULL;
	json_t		*msg, *ans;
	const char	*type;
	char		*cause = NULL;
	long long	 nconv = 0;
	uint64_t	 gone = 0;
	int		 folder;

	*out = NULL;
	if (!util_valid_tenant(t)) {
		op_fail(e, 400, "invalid tenant name");
		return (-1);
	}
	if ((msg = json_pack("{s:i, s:s, s:s}", "v", PROTO_VERSION, "type",
	    PROTO_TENANT_PURGE, "tenant", t)) == NULL) {
		op_fail(e, 500, "out of memory");
		return (-1);
	}
	ans = poolc_call(appconf->poold_socket, msg, 60000, &cause);
	json_decref(msg);
	if (ans == NULL || (type = proto_type(ans)) == NULL ||
	    strcmp(type, PROTO_OK) != 0) {
		op_fail(e, 503, "the pool daemon did not purge the tenant's "
		    "folder: %s", cause != NULL ? cause : ans != NULL ?
		    json_string_value(json_object_get(ans, "message")) : "?");
		free(cause);
		json_decref(ans);
		return (-1);
	}
	folder = json_is_true(json_object_get(ans, "removed"));
	json_decref(ans);
	if (db_begin(db) != 0)
		goto fail;
	if (db_run(db, &res, NULL, "SELECT COUNT(*) FROM conversations WHERE "
	    "tenant = ? AND deleted_at IS NULL", "s", t) != 0)
		goto fail;
	if (res->nrows > 0 && db_cell(res, 0, 0) != NULL)
		nconv = strtoll(db_cell(res, 0, 0), NULL, 10);
	db_res_free(res);
	if (db_run(db, NULL, NULL, "DELETE FROM idempotency_keys WHERE "
	    "conversation_id IN (SELECT id FROM conversations WHERE "
	    "tenant = ?)", "s", t) != 0 ||
	    db_run(db, NULL, &gone, "DELETE FROM conversations WHERE "
	    "tenant = ?", "s", t) != 0)
		goto fail;
	if ((*out = json_pack("{s:s, s:I, s:I, s:b}", "tenant", t,
	    "conversations", (json_int_t)nconv, "rows", (json_int_t)gone,
	    "folder", folder)) == NULL ||
	    audit_record(db, who, "tenant.purge", "tenant", t, NULL,
	    *out) != 0 || db_commit(db) != 0)
		goto fail;
	return (0);
fail:
	(void)db_rollback(db);
	json_decref(*out);
	*out = NULL;
	op_fail(e, 503, "the database is unavailable (the tenant's folder is "
	    "gone; purge again)");
	return (-1);
}
