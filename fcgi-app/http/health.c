/*
 * Health: /healthz answers while the process runs; /readyz only when
 * MariaDB and the pool daemon both answer (what a load balancer and
 * systemd's readiness checks want).  An upstream account that refuses
 * turns (limited, overloaded, its credential rejected) leaves /readyz 200
 * with status "degraded": another node of the same account would fare no
 * better, and the node still answers (at once, with the reason).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "proto.h"

/* GET /healthz */
void
health_live(struct request *r)
{
	req_send_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/* GET /readyz */
void
health_ready(struct request *r)
{
	json_t		*ping, *ans = NULL, *body;
	char		*cause = NULL;
	const char	*up = NULL;
	int		 db_ok, pool_ok, degraded, pos, nhosts, galera;

	db_ok = db_ping(db_thread()) == 0;
	db_release();	/* the pool daemon may take its time */
	if ((ping = proto_new(PROTO_PING)) != NULL)
		ans = poolc_call(appconf->poold_socket, ping, 2000, &cause);
	pool_ok = ans != NULL && strcmp(proto_type(ans), PROTO_OK) == 0;
	if (pool_ok)
		up = json_string_value(json_object_get(ans, "upstream"));
	degraded = up != NULL && strcmp(up, "ok") != 0;
	free(cause);
	json_decref(ping);
	if (!db_ok || !pool_ok)
		req_add_header(r, "Retry-After", "5");
	body = json_pack("{s:s, s:s, s:s}", "status", !db_ok || !pool_ok ?
	    "not ready" : degraded ? "degraded" : "ready", "database", db_ok ?
	    "ok" : "unavailable", "pool", pool_ok ? "ok" : "unavailable");
	/*
	 * Which of db_hosts is in use, by its position: /readyz is public
	 * (any client of the site reaches it), so it names no host; the log
	 * says which host a position is, and every failover.
	 */
	db_host_in_use(&pos, &nhosts, &galera);
	if (body != NULL && nhosts > 1)
		json_object_set_new(body, "database_host", json_pack("{s:i, "
		    "s:i}", "position", pos, "of", nhosts));
	if (body != NULL && galera)
		json_object_set_new(body, "database_galera", json_true());
	if (body != NULL && up != NULL && (strcmp(up, "ok") == 0 ||
	    strcmp(up, "limited") == 0 || strcmp(up, "overloaded") == 0 ||
	    strcmp(up, "credential_rejected") == 0))
		json_object_set_new(body, "upstream", json_string(up));
	json_decref(ans);
	req_send_json(r, db_ok && pool_ok ? 200 : 503, body);
}
