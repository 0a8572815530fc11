/*
 * The WebSocket upgrade's key check.  nginx asks ccgate-fcgi (auth_request)
 * before it hands GET /api/ws to ccgate-ws, so a bad key never upgrades:
 * 204 lets the upgrade through, 401 and 403 reach the client as they are.
 * The quotas are not spent here: each turn on the socket is admitted (and
 * its key checked again) by ccgate-ws like a request of its own.
 *
 * A browser cannot set headers on a WebSocket; it offers the key as a
 * subprotocol instead, next to the protocol itself:
 *
 *	new WebSocket(url, ["ccgate", "ccgate.key." + key])
 *
 * and the server answers with "ccgate" alone, never echoing the key
 * (request.c reads it: req_ws_protocol_key).
 */
#include "config.h"

#include <string.h>
#include <strings.h>

#include "http.h"

/* GET /api/ws, as nginx's auth_request: may this key open a socket? */
void
ws_auth_handle(struct request *r)
{
	struct apikey	*k;

	k = req_key(r);
	if (!k->allow_streaming) {
		req_error(r, 403, NULL, "this key may not stream, and a "
		    "WebSocket always streams");
		return;
	}
	req_send_empty(r, 204);
}
