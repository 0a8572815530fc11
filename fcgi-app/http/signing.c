/*
 * Signed requests.  A key with require_signature must sign every request:
 *
 *	X-Ccgate-Timestamp: <Unix seconds>
 *	X-Ccgate-Signature: <64 lowercase hex digits>
 *
 * the HMAC-SHA256, keyed with the key's signing secret (its text, as it
 * was shown), of
 *
 *	timestamp "\n" METHOD "\n" path-with-query "\n" hex(SHA-256(body))
 *
 * where path-with-query is the request target exactly as sent
 * (REQUEST_URI) and the body is the bytes sent (none: the SHA-256 of "").
 * A route whose body is streamed, never held (ROUTE_NO_BODY: the files
 * API's uploads), signs instead the SHA-256 the client declares in
 * X-Ccgate-Content-Sha256 (required there, in lowercase hex in the
 * string to sign); files.c hashes the bytes as they stream and refuses
 * the upload, before anything is stored, when they differ (as AWS SigV4's
 * x-amz-content-sha256).
 * The timestamp may carry a fraction ("1795190400.125"), signed as sent.
 * "v1=" before the hex is accepted too.  A timestamp further than
 * signature_skew_s from the clock is stale; a signature already seen
 * (table signature_nonces, shared by every ccgate-fcgi process) is a
 * replay.  Each is refused with 401 before the quotas are spent and
 * before any turn runs.  The secret is never stored: auth.c derives it
 * from the key's salt under key_secret.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "http.h"
#include "log.h"

#define SIGN_TS_MAX	20

/*
 * Parse a timestamp: Unix seconds, 1 to 18 ASCII digits, and optionally
 * "." and 1 to 9 digits of a fraction (so that two identical requests in
 * one second sign differently).  Returns 0 or -1.
 */
static int
sign_parse_ts(const char *s, long long *out)
{
	size_t	n = strspn(s, "0123456789"), f;

	if (n == 0 || n > 18)
		return (-1);
	if (s[n] == '.') {
		f = strspn(s + n + 1, "0123456789");
		if (f == 0 || f > 9 || s[n + 1 + f] != '\0')
			return (-1);
	} else if (s[n] != '\0')
		return (-1);
	*out = strtoll(s, NULL, 10);
	return (0);
}

/* Parse a signature: optional "v1=", 64 lowercase hex digits. */
static int
sign_parse_sig(const char *s, uint8_t out[32])
{
	size_t	bin_len;

	if (strncmp(s, "v1=", 3) == 0)
		s += 3;
	if (strlen(s) != 64 || strspn(s, "0123456789abcdef") != 64)
		return (-1);
	if (sodium_hex2bin(out, 32, s, 64, NULL, &bin_len, NULL) != 0 ||
	    bin_len != 32)
		return (-1);
	return (0);
}

/*
 * The body's SHA-256 a client declares in X-Ccgate-Content-Sha256 (64 hex
 * digits, either case) into out: 1, 0 if it sent none, -1 if malformed.
 */
int
sign_content_sha256(struct request *r, uint8_t out[32])
{
	const char	*s = req_header(r, "HTTP_X_CCGATE_CONTENT_SHA256");
	size_t		 bin_len;

	if (s == NULL)
		return (0);
	if (strlen(s) != 64 ||
	    strspn(s, "0123456789abcdefABCDEF") != 64 ||
	    sodium_hex2bin(out, 32, s, 64, NULL, &bin_len, NULL) != 0 ||
	    bin_len != 32)
		return (-1);
	return (1);
}

/*
 * The HMAC of the request under the secret made from salt; declared is
 * the body's SHA-256 (that of the bytes held, or the one declared for a
 * streamed body).
 */
static void
sign_mac(struct request *r, const char *ts, const uint8_t salt[16],
    const uint8_t h[32], uint8_t mac[32])
{
	crypto_auth_hmacsha256_state	 st;
	const struct apikey		*k = req_key(r);
	const char			*uri, *method;
	char				 secret[SIGNING_SECRET_LEN + 1];
	char				 hex[65];

	sodium_bin2hex(hex, sizeof hex, h, 32);
	if ((uri = req_param(r, "REQUEST_URI")) == NULL)
		uri = "";
	if ((method = req_param(r, "REQUEST_METHOD")) == NULL)
		method = "";
	auth_signing_secret(k->id, salt, secret);
	crypto_auth_hmacsha256_init(&st, (const unsigned char *)secret,
	    SIGNING_SECRET_LEN);
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)ts,
	    strlen(ts));
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)"\n", 1);
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)method,
	    strlen(method));
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)"\n", 1);
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)uri,
	    strlen(uri));
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)"\n", 1);
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)hex, 64);
	crypto_auth_hmacsha256_final(&st, mac);
	sodium_memzero(secret, sizeof secret);
	sodium_memzero(&st, sizeof st);
}

/* Refuse a request's signature with 401 in its dialect. */
static int
sign_refuse(struct request *r, const char *why)
{
	enum dialect	d = req_route(r)->dialect;

	if (d == DIALECT_NATIVE || d == DIALECT_OPENAI)
		req_add_header(r, "WWW-Authenticate", "Bearer");
	req_error(r, 401, NULL, "%s", why);
	return (-1);
}

/*
 * Check the signature of a request whose key requires one.  Returns 0,
 * or -1 with the answer (401, or 503 without the database) sent.
 */
int
sign_check(struct request *r)
{
	const struct apikey	*k = req_key(r);
	const struct route_def	*d = req_route(r)->def;
	const char		*ts_s, *sig_s, *body;
	uint8_t			 sig[32], mac[32], h[32];
	size_t			 len;
	long long		 ts, now = (long long)time(NULL), left;
	uint64_t		 fresh = 0;
	int			 ok;

	ts_s = req_header(r, "HTTP_X_CCGATE_TIMESTAMP");
	sig_s = req_header(r, "HTTP_X_CCGATE_SIGNATURE");
	if (ts_s == NULL || sig_s == NULL)
		return (sign_refuse(r, "this key requires signed requests: "
		    "send X-Ccgate-Timestamp and X-Ccgate-Signature"));
	if (sign_parse_ts(ts_s, &ts) != 0 || sign_parse_sig(sig_s, sig) != 0)
		return (sign_refuse(r, "malformed signature: "
		    "X-Ccgate-Timestamp is Unix seconds (a fraction allowed), "
		    "X-Ccgate-Signature 64 lowercase hex digits"));
	if (ts < now - appconf->signature_skew_s ||
	    ts > now + appconf->signature_skew_s)
		return (sign_refuse(r, "stale signature: X-Ccgate-Timestamp "
		    "is too far from the server's clock"));
	if (!k->have_signing_salt)
		return (sign_refuse(r, "this key has no signing secret: "
		    "turn require_signature off and on again"));
	if (d != NULL && (d->flags & ROUTE_NO_BODY)) {
		/* A streamed body: files.c holds it to what is declared. */
		switch (sign_content_sha256(r, h)) {
		case 0:
			return (sign_refuse(r, "a signed upload must declare "
			    "its body's SHA-256 in X-Ccgate-Content-Sha256"));
		case -1:
			req_error(r, 400, NULL, "malformed "
			    "X-Ccgate-Content-Sha256: 64 hex digits");
			return (-1);
		}
	} else {
		body = req_body(r, &len);
		crypto_hash_sha256(h, (const unsigned char *)body, len);
	}
	sign_mac(r, ts_s, k->signing_salt, h, mac);
	ok = sodium_memcmp(mac, sig, 32) == 0;
	if (!ok && k->have_prev_signing_salt) {
		sign_mac(r, ts_s, k->prev_signing_salt, h, mac);
		ok = sodium_memcmp(mac, sig, 32) == 0;
	}
	sodium_memzero(mac, sizeof mac);
	if (!ok)
		return (sign_refuse(r, "invalid signature"));
	/* Remember it while its timestamp is acceptable. */
	left = ts + appconf->signature_skew_s - now + 1;
	if (db_run(db_thread(), NULL, &fresh, "INSERT IGNORE INTO "
	    "signature_nonces (key_id, sig, expires_at) VALUES (?, ?, "
	    "UTC_TIMESTAMP() + INTERVAL ? SECOND)", "sbi", k->id, sig,
	    sizeof sig, left) != 0) {
		req_db_down(r);
		return (-1);
	}
	if (fresh != 1)
		return (sign_refuse(r, "replayed signature: each signed "
		    "request is accepted once"));
	return (0);
}
