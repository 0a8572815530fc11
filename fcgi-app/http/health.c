/*
 * Health: /healthz answers while the process runs; /readyz only when
 * MariaDB and the pool daemon both answer (what a load balancer and
 * systemd's readiness checks want).
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
	json_t		*ping, *ans = NULL;
	char		*cause = NULL;
	int		 db_ok, pool_ok;

	db_ok = db_ping(db_thread()) == 0;
	db_release();	/* the pool daemon may take its time */
	if ((ping = proto_new(PROTO_PING)) != NULL)
		ans = poolc_call(appconf->poold_socket, ping, 2000, &cause);
	pool_ok = ans != NULL && strcmp(proto_type(ans), PROTO_OK) == 0;
	free(cause);
	json_decref(ping);
	json_decref(ans);
	if (!db_ok || !pool_ok)
		req_add_header(r, "Retry-After", "5");
	req_send_json(r, db_ok && pool_ok ? 200 : 503, json_pack(
	    "{s:s, s:s, s:s}", "status", db_ok && pool_ok ? "ready" :
	    "not ready", "database", db_ok ? "ok" : "unavailable", "pool",
	    pool_ok ? "ok" : "unavailable"));
}
