/*
 * The pool and models, as clients see them (seed 000): /api/cli-pool/stats
 * and /health, /api/models.  A client key sees every process's state but
 * the tenant and conversation only of its own; the full view is the
 * admin's (/admin/pool), and so are the pool's bounds
 * (/admin/pool/initialize).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "log.h"
#include "proto.h"

/* Ask the pool daemon for its statistics; NULL (answered 503) if down. */
static json_t *
poolinfo_fetch(struct request *r)
{
	json_t	*msg, *ans;
	char	*cause = NULL;

	if ((msg = proto_new(PROTO_STATS)) == NULL) {
		req_error(r, 500, NULL, "out of memory");
		return (NULL);
	}
	ans = poolc_call(appconf->poold_socket, msg, 5000, &cause);
	json_decref(msg);
	if (ans == NULL || strcmp(proto_type(ans), PROTO_STATS) != 0) {
		log_warnx("pool stats: %s", cause != NULL ? cause : "refused");
		free(cause);
		json_decref(ans);
		req_add_header(r, "Retry-After", "5");
		req_error(r, 503, NULL, "the CLI pool is unavailable");
		return (NULL);
	}
	return (ans);
}

/* GET /api/cli-pool/stats */
void
poolinfo_stats_handle(struct request *r)
{
	const char	*tenant;
	json_t		*st, *procs, *p, *mine;
	size_t		 i;

	if ((st = poolinfo_fetch(r)) == NULL)
		return;
	tenant = req_key(r)->tenant;
	procs = json_array();
	json_array_foreach(json_object_get(st, "processes"), i, p) {
		mine = json_pack("{s:O, s:O, s:O, s:O, s:O}", "pid",
		    json_object_get(p, "pid"), "state", json_object_get(p,
		    "state"), "age_ms", json_object_get(p, "age_ms"), "turns",
		    json_object_get(p, "turns"), "rss_kb", json_object_get(p,
		    "rss_kb"));
		if (mine == NULL)
			continue;
		if (strcmp(json_string_value(json_object_get(p, "tenant")) ?
		    json_string_value(json_object_get(p, "tenant")) : "",
		    tenant) == 0)
			json_object_set(mine, "conversation_id",
			    json_object_get(p, "conversation"));
		json_array_append_new(procs, mine);
	}
	req_send_json(r, 200, json_pack("{s:b, s:O, s:O, s:O, s:O, s:O, s:O, "
	    "s:O, s:O, s:O, s:o}", "success", 1,
	    "limits", json_object_get(st, "limits"),
	    "totals", json_object_get(st, "totals"),
	    "placed", json_object_get(st, "placed"),
	    "processes_by_state", json_object_get(st, "processes_by_state"),
	    "utilisation", json_object_get(st, "utilisation"),
	    "queue_length", json_object_get(st, "queue_length"),
	    "queue_wait_ms", json_object_get(st, "queue_wait_ms"),
	    "time_to_first_event_ms", json_object_get(st,
	    "time_to_first_event_ms"),
	    "job_duration_ms", json_object_get(st, "job_duration_ms"),
	    "processes", procs));
	json_decref(st);
}

/*
 * GET /api/cli-pool/health: "healthy" when there is room for a new
 * conversation now, "degraded" when work waits in the queue or every
 * instance is taken, 503 when the pool daemon does not answer.
 */
void
poolinfo_health_handle(struct request *r)
{
	json_t		*st, *by, *lim;
	json_int_t	 total, busy, max, queued;
	const char	*status;

	if ((st = poolinfo_fetch(r)) == NULL)
		return;
	by = json_object_get(st, "processes_by_state");
	lim = json_object_get(st, "limits");
	total = json_integer_value(json_object_get(by, "total"));
	busy = json_integer_value(json_object_get(by, "busy"));
	max = json_integer_value(json_object_get(lim, "max_instances"));
	queued = json_integer_value(json_object_get(st, "queue_length"));
	if (json_is_true(json_object_get(st, "draining")))
		status = "draining";
	else if (queued > 0 || busy >= max)
		status = "degraded";
	else
		status = "healthy";
	req_send_json(r, 200, json_pack("{s:b, s:s, s:{s:I, s:I, s:I, s:I, "
	    "s:I}, s:O}", "success", 1, "status", status, "pool", "processes",
	    total, "busy", busy, "warm", json_integer_value(json_object_get(by,
	    "warm")), "max_instances", max, "queue_length", queued,
	    "uptime_ms", json_object_get(st, "uptime_ms")));
	json_decref(st);
}

/*
 * Every tenant's workspace use, {tenant: {bytes, files, disk_bytes,
 * partial}} (ccgate-poold measures them at most every 30 s); {} if it
 * does not answer.
 */
json_t *
poolinfo_workspaces(void)
{
	json_t	*msg, *ans, *u;
	char	*cause = NULL;

	if ((msg = proto_new(PROTO_FILE_USAGE)) == NULL)
		return (json_object());
	ans = poolc_call(appconf->poold_socket, msg, 10000, &cause);
	json_decref(msg);
	free(cause);
	u = json_object_get(ans, "usage");
	u = json_is_object(u) ? json_incref(u) : json_object();
	json_decref(ans);
	return (u);
}

/* GET /admin/pool: every process, with its tenant and conversation. */
void
poolinfo_admin_handle(struct request *r)
{
	json_t		*st;

	if ((st = poolinfo_fetch(r)) == NULL)
		return;
	json_object_del(st, "v");
	json_object_del(st, "type");
	req_send_json(r, 200, json_pack("{s:b, s:o, s:o}", "success", 1,
	    "pool", st, "workspaces", poolinfo_workspaces()));
}

/*
 * POST /admin/pool/initialize and its old path /api/cli-pool/initialize
 * {"minInstances","maxInstances"} (seed 000): set the pool's bounds at run
 * time.  Administrators only: a client key gets 403, and nginx serves
 * both paths only to the admin allowlist.  The change is audited (the
 * pool daemon holds the state, so the audit row follows the daemon's
 * answer).
 */
void
poolinfo_init_handle(struct request *r)
{
	const struct actor	*who = req_actor(r);
	json_t		*body, *st, *msg = NULL, *ans = NULL, *before, *after;
	long long	 min = -1, max = -1;
	char		*cause = NULL;

	if ((body = req_json_body(r, 1)) == NULL ||
	    input_int(r, body, "minInstances", 0, 1024, &min) != 0 ||
	    input_int(r, body, "maxInstances", 1, 1024, &max) != 0)
		return;
	if (min < 0 && max < 0) {
		req_error(r, 400, NULL, "minInstances or maxInstances: "
		    "required");
		return;
	}
	if ((st = poolinfo_fetch(r)) == NULL)
		return;
	before = json_object_get(st, "limits");
	if ((msg = json_pack("{s:i, s:s}", "v", PROTO_VERSION, "type",
	    PROTO_SET_LIMITS)) == NULL)
		goto nomem;
	json_object_set_new(msg, "min_instances", json_integer(min >= 0 ? min :
	    json_integer_value(json_object_get(before, "min_instances"))));
	json_object_set_new(msg, "max_instances", json_integer(max >= 0 ? max :
	    json_integer_value(json_object_get(before, "max_instances"))));
	ans = poolc_call(appconf->poold_socket, msg, 5000, &cause);
	if (ans == NULL) {
		req_add_header(r, "Retry-After", "5");
		req_error(r, 503, NULL, "the CLI pool is unavailable");
		goto out;
	}
	if (strcmp(proto_type(ans), PROTO_OK) != 0) {
		req_error(r, 400, NULL, "%s", json_string_value(
		    json_object_get(ans, "message")) ? json_string_value(
		    json_object_get(ans, "message")) : "refused");
		goto out;
	}
	after = json_pack("{s:O, s:O}", "min_instances", json_object_get(msg,
	    "min_instances"), "max_instances", json_object_get(msg,
	    "max_instances"));
	if (after == NULL || audit_record(db_thread(), who, "pool.limits",
	    "pool", "cli-pool", before, after) != 0)
		log_warnx("pool limits set by %s, but not audited", who->name);
	req_send_json(r, 200, json_pack("{s:b, s:o}", "success", 1, "limits",
	    after != NULL ? after : json_null()));
	goto out;
nomem:
	req_error(r, 500, NULL, "out of memory");
out:
	free(cause);
	json_decref(ans);
	json_decref(msg);
	json_decref(st);
}

/* GET /api/models */
void
models_handle(struct request *r)
{
	json_t	*list;
	int	 i;

	if ((list = json_array()) == NULL) {
		req_error(r, 500, NULL, "out of memory");
		return;
	}
	for (i = 0; i < appconf->nmodels; i++) {
		if (!auth_model_allowed(req_key(r), appconf->models[i]))
			continue;
		json_array_append_new(list, json_pack("{s:s, s:b}", "id",
		    appconf->models[i], "default",
		    strcmp(appconf->models[i], appconf->default_model) == 0));
	}
	req_send_json(r, 200, json_pack("{s:b, s:o}", "success", 1, "models",
	    list));
}
