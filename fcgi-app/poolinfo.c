/*
 * The pool and models, as clients see them (seed 000): /api/cli-pool/stats
 * and /health, /api/models.  A client key sees every process's state but
 * the tenant and conversation only of its own; the full view is the
 * admin's (/admin/pool).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "log.h"
#include "poolc.h"
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

	if (req_authenticate(r) != 0 || (st = poolinfo_fetch(r)) == NULL)
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

	if (req_authenticate(r) != 0 || (st = poolinfo_fetch(r)) == NULL)
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

/* POST /api/cli-pool/initialize: an admin's route; client keys get 403. */
void
poolinfo_init_handle(struct request *r)
{
	if (req_authenticate(r) != 0)
		return;
	req_error(r, 403, NULL, "setting the pool's size is for administrators "
	    "(POST /admin/..., with an admin token); client keys are never "
	    "admin");
}

/* GET /api/models */
void
models_handle(struct request *r)
{
	json_t	*list;
	int	 i;

	if (req_authenticate(r) != 0)
		return;
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
