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
 * and the server answers with "ccgate" alone, never echoing the key.
 */
#include "config.h"

#include <string.h>
#include <strings.h>

#include "app.h"

#define WS_KEY_PROTOCOL	"ccgate.key."

/*
 * The key offered in a Sec-WebSocket-Protocol list (hdr, may be NULL),
 * copied into buf; NULL if none is offered.
 */
const char *
auth_ws_protocol_key(const char *hdr, char *buf, size_t len)
{
	const size_t	 plen = sizeof WS_KEY_PROTOCOL - 1;
	const char	*p, *end;
	size_t		 n;

	for (p = hdr; p != NULL && *p != '\0'; p = *end ? end + 1 : end) {
		while (*p == ' ' || *p == '\t')
			p++;
		end = p + strcspn(p, ",");
		n = (size_t)(end - p);
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n <= plen || strncasecmp(p, WS_KEY_PROTOCOL, plen) != 0)
			continue;
		if (n - plen >= len)
			return (NULL);
		memcpy(buf, p + plen, n - plen);
		buf[n - plen] = '\0';
		return (buf);
	}
	return (NULL);
}

/* GET /api/ws, as nginx's auth_request: may this key open a socket? */
void
ws_auth_handle(struct request *r)
{
	struct apikey	*k;

	if (req_authenticate_key(r) != 0)
		return;
	k = req_key(r);
	if (!k->allow_streaming) {
		req_error(r, 403, NULL, "this key may not stream, and a "
		    "WebSocket always streams");
		return;
	}
	req_send_empty(r, 204);
}
