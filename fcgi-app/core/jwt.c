/*
 * Admin tokens: compact JWTs signed with HS256 (HMAC-SHA256, libsodium's
 * crypto_auth_hmacsha256).  Only the one header this file writes is
 * accepted, so "alg":"none", RS256 confusion and any other algorithm fail
 * before the signature is looked at.  Claims:
 *
 *	iss "ccgate", aud "ccgate-admin", sub the admin's id (a string),
 *	name, ver (the user's token_version), iat, exp
 *
 * The signing key is the admin secret (admin_secret_file), a secret of
 * its own: nothing that reads the key hashing secret can sign a token.
 * A token is refused if its lifetime (exp - iat) is longer than the
 * server gives (admin_token_ttl_s), or if it was issued in the future.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core.h"

#define JWT_HEADER	"{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define JWT_ISSUER	"ccgate"
#define JWT_AUDIENCE	"ccgate-admin"
#define JWT_B64		sodium_base64_VARIANT_URLSAFE_NO_PADDING
/* How far ahead of our clock iat may be (another node's clock). */
#define JWT_SKEW_S	60

/* Base64url-encode len bytes of in onto the end of out. */
static int
jwt_b64_append(char *out, size_t outlen, const void *in, size_t len)
{
	size_t	used = strlen(out);

	if (sodium_base64_encoded_len(len, JWT_B64) > outlen - used)
		return (-1);
	sodium_bin2base64(out + used, outlen - used, in, len, JWT_B64);
	return (0);
}

/* Append a dot; returns 0, or -1 if out is full. */
static int
jwt_dot(char *out, size_t outlen)
{
	size_t	used = strlen(out);

	if (used + 2 > outlen)
		return (-1);
	out[used] = '.';
	out[used + 1] = '\0';
	return (0);
}

/*
 * Sign a token with the admin secret for admin id/name at token version
 * ver, valid for ttl seconds from now.  Returns 0, or -1 if out is too
 * small.
 */
int
jwt_sign(const uint8_t secret[32], long long id, const char *name,
    long long ver, long long now, long long ttl, char *out, size_t outlen)
{
	uint8_t	 mac[crypto_auth_hmacsha256_BYTES];
	char	 sub[32], *claims;
	json_t	*c;
	int	 rc = -1;

	snprintf(sub, sizeof sub, "%lld", id);
	c = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "iss", JWT_ISSUER,
	    "aud", JWT_AUDIENCE, "sub", sub, "name", name, "ver",
	    (json_int_t)ver, "iat", (json_int_t)now, "exp",
	    (json_int_t)(now + ttl));
	claims = c != NULL ? json_dumps(c, JSON_COMPACT) : NULL;
	json_decref(c);
	if (claims == NULL || outlen == 0)
		goto out;
	out[0] = '\0';
	if (jwt_b64_append(out, outlen, JWT_HEADER, strlen(JWT_HEADER)) != 0 ||
	    jwt_dot(out, outlen) != 0 ||
	    jwt_b64_append(out, outlen, claims, strlen(claims)) != 0)
		goto out;
	crypto_auth_hmacsha256(mac, (const unsigned char *)out, strlen(out),
	    secret);
	if (jwt_dot(out, outlen) != 0 ||
	    jwt_b64_append(out, outlen, mac, sizeof mac) != 0)
		goto out;
	rc = 0;
out:
	if (rc != 0 && outlen > 0)
		out[0] = '\0';
	free(claims);
	return (rc);
}

/*
 * Verify token with the admin secret at time now: a token lives at most
 * max_ttl seconds (exp - iat) and was not issued after now (give or take
 * JWT_SKEW_S).  On success fill *id, name (of namelen) and *ver from its
 * claims and return 0; otherwise return -1 with the reason in why.  The
 * caller still checks the user and version in MariaDB.
 */
int
jwt_verify(const uint8_t secret[32], const char *token, long long now,
    long long max_ttl, long long *id, char *name, size_t namelen,
    long long *ver, char *why, size_t whylen)
{
	uint8_t		 mac[64];
	unsigned char	*claims = NULL;
	const char	*dot1, *dot2, *sub, *nm;
	char		 expect[128];
	size_t		 maclen, clen, n;
	json_t		*c = NULL;
	json_int_t	 exp, iat, v;
	char		*end;
	int		 rc = -1;

	snprintf(why, whylen, "invalid token");
	if (token == NULL || (n = strlen(token)) > 4096 ||
	    (dot1 = strchr(token, '.')) == NULL ||
	    (dot2 = strchr(dot1 + 1, '.')) == NULL || strchr(dot2 + 1, '.'))
		return (-1);
	/* Only our own header, byte for byte. */
	expect[0] = '\0';
	if (jwt_b64_append(expect, sizeof expect, JWT_HEADER,
	    strlen(JWT_HEADER)) != 0 || (size_t)(dot1 - token) !=
	    strlen(expect) || memcmp(token, expect, strlen(expect)) != 0) {
		snprintf(why, whylen, "invalid token: only HS256 tokens of "
		    "this server are accepted");
		return (-1);
	}
	if (sodium_base642bin(mac, sizeof mac, dot2 + 1, strlen(dot2 + 1),
	    NULL, &maclen, NULL, JWT_B64) != 0 ||
	    maclen != crypto_auth_hmacsha256_BYTES) {
		snprintf(why, whylen, "invalid token: bad signature");
		return (-1);
	}
	rc = crypto_auth_hmacsha256_verify(mac, (const unsigned char *)token,
	    (unsigned long long)(dot2 - token), secret);
	if (rc != 0) {
		snprintf(why, whylen, "invalid token: bad signature");
		return (-1);
	}
	rc = -1;
	if ((claims = malloc((size_t)(dot2 - dot1))) == NULL ||
	    sodium_base642bin(claims, (size_t)(dot2 - dot1), dot1 + 1,
	    (size_t)(dot2 - dot1 - 1), NULL, &clen, NULL, JWT_B64) != 0 ||
	    (c = json_loadb((const char *)claims, clen, JSON_REJECT_DUPLICATES,
	    NULL)) == NULL || !json_is_object(c))
		goto out;
	if (json_unpack(c, "{s:s, s:I, s:I, s:I, s:s}", "sub", &sub, "exp",
	    &exp, "iat", &iat, "ver", &v, "name", &nm) != 0 ||
	    json_object_get(c, "iss") == NULL || !json_is_string(
	    json_object_get(c, "iss")) || strcmp(json_string_value(
	    json_object_get(c, "iss")), JWT_ISSUER) != 0)
		goto out;
	if (!json_is_string(json_object_get(c, "aud")) ||
	    strcmp(json_string_value(json_object_get(c, "aud")),
	    JWT_AUDIENCE) != 0) {
		snprintf(why, whylen, "invalid token: wrong audience");
		goto out;
	}
	if (exp <= now) {
		snprintf(why, whylen, "the token has expired: log in again");
		goto out;
	}
	if (iat > now + JWT_SKEW_S) {
		snprintf(why, whylen, "invalid token: issued in the future");
		goto out;
	}
	/* iat >= 0 and exp > iat first: the difference cannot overflow. */
	if (iat < 0 || exp <= iat || exp - iat > max_ttl) {
		snprintf(why, whylen, "invalid token: its lifetime (exp - "
		    "iat) must be from 1 to %lld s", max_ttl);
		goto out;
	}
	*id = strtoll(sub, &end, 10);
	if (*sub == '\0' || *end != '\0' || *id <= 0)
		goto out;
	snprintf(name, namelen, "%s", nm);
	*ver = v;
	rc = 0;
out:
	json_decref(c);
	free(claims);
	return (rc);
}
