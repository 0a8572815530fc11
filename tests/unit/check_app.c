/*
 * Unit tests: key format and hashing, routes, JSON depth, dialects, admin
 * tokens, client request ids, database hosts (db_hosts) and their settings.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "http.h"
#include "unit.h"

START_TEST(test_key_format)
{
	char	key[KEY_LEN + 1], id[KEY_ID_LEN + 1], id2[KEY_ID_LEN + 1];
	char	bad[KEY_LEN + 1];

	ck_assert_int_eq(auth_key_generate(key, id), 0);
	ck_assert_uint_eq(strlen(key), KEY_LEN);
	ck_assert_int_eq(strncmp(key, "ccg_", 4), 0);
	ck_assert_int_eq(auth_key_parse(key, id2), 0);
	ck_assert_str_eq(id, id2);

	memcpy(bad, key, sizeof bad);
	bad[0] = 'x';
	ck_assert_int_eq(auth_key_parse(bad, id2), -1);
	memcpy(bad, key, sizeof bad);
	bad[20] = '-';			/* the separator */
	ck_assert_int_eq(auth_key_parse(bad, id2), -1);
	memcpy(bad, key, sizeof bad);
	bad[5] = 'A';			/* ids are lower case base32 */
	ck_assert_int_eq(auth_key_parse(bad, id2), -1);
	memcpy(bad, key, sizeof bad);
	bad[30] = '\'';			/* outside base64url */
	ck_assert_int_eq(auth_key_parse(bad, id2), -1);
	ck_assert_int_eq(auth_key_parse(NULL, id2), -1);
	ck_assert_int_eq(auth_key_parse("", id2), -1);
	ck_assert_int_eq(auth_key_parse("ccg_", id2), -1);
	key[KEY_LEN - 1] = '\0';	/* one short */
	ck_assert_int_eq(auth_key_parse(key, id2), -1);
}
END_TEST

START_TEST(test_key_hash)
{
	uint8_t	s1[32], s2[32], h1[32], h2[32], h3[32];
	char	key[KEY_LEN + 1], id[KEY_ID_LEN + 1];

	memset(s1, 1, sizeof s1);
	memset(s2, 2, sizeof s2);
	ck_assert_int_eq(auth_key_generate(key, id), 0);
	auth_key_hash(s1, key, h1);
	auth_key_hash(s1, key, h2);
	auth_key_hash(s2, key, h3);
	ck_assert_int_eq(memcmp(h1, h2, 32), 0);
	ck_assert_int_ne(memcmp(h1, h3, 32), 0);	/* keyed */
	key[KEY_LEN - 1] ^= 1;
	auth_key_hash(s1, key, h2);
	ck_assert_int_ne(memcmp(h1, h2, 32), 0);
}
END_TEST

START_TEST(test_two_keys_differ)
{
	char	k1[KEY_LEN + 1], k2[KEY_LEN + 1];
	char	i1[KEY_ID_LEN + 1], i2[KEY_ID_LEN + 1];

	ck_assert_int_eq(auth_key_generate(k1, i1), 0);
	ck_assert_int_eq(auth_key_generate(k2, i2), 0);
	ck_assert_str_ne(k1, k2);
	ck_assert_str_ne(i1, i2);
}
END_TEST

/*
 * Match a route and check the outcome: the handler it runs and who may
 * call it, or the status of no route (handler NULL).
 */
typedef void route_handler(struct request *);

static void
/* cppcheck-suppress constParameter ; it is a function */
expect_route(const char *m, const char *p, route_handler *handler,
    enum access access, int status, const char *param)
{
	struct route	r;

	route_match(&http_routes, m, p, &r);
	ck_assert_msg((r.def != NULL ? r.def->handler : NULL) == handler,
	    "%s %s: not the expected handler", m, p);
	if (r.def != NULL) {
		ck_assert_int_eq(r.def->access, access);
		ck_assert_str_eq(r.name, r.def->pattern);
		ck_assert_ptr_eq(&http_routes.rows[r.slot - 1], r.def);
	} else
		ck_assert_int_eq(r.slot, 0);
	ck_assert_int_eq(r.status, status);
	if (param != NULL)
		ck_assert_str_eq(r.param, param);
}

START_TEST(test_routes)
{
	struct route	r;
	char		long_id[300];

	expect_route("GET", "/healthz", health_live, ACCESS_ANYONE, 0, NULL);
	expect_route("POST", "/api/chat", chat_handle, ACCESS_KEY, 0, NULL);
	expect_route("POST", "/api/conversations", conv_create_handle,
	    ACCESS_KEY, 0, NULL);
	expect_route("GET", "/api/conversations/abc", conv_get_handle,
	    ACCESS_KEY, 0, "abc");
	expect_route("DELETE", "/api/conversations/abc", conv_delete_handle,
	    ACCESS_KEY, 0, "abc");
	expect_route("GET", "/api/chat", NULL, 0, 405, NULL);
	expect_route("POST", "/api/chat/", NULL, 0, 404, NULL);
	expect_route("GET", "/api/conversations/", NULL, 0, 404, NULL);
	expect_route("GET", "/api/conversations/a/b", NULL, 0, 404, NULL);
	expect_route("GET", "/", NULL, 0, 404, NULL);
	expect_route("GET", "", NULL, 0, 404, NULL);
	/* The admin plane needs an admin token; login and health nothing. */
	expect_route("POST", "/admin/login", adminapi_login, ACCESS_ANYONE, 0,
	    NULL);
	expect_route("GET", "/admin/api-keys/k1", adminapi_keys_get,
	    ACCESS_ADMIN, 0, "k1");
	/* The pool's bounds: the admin path and its old one, both admin. */
	expect_route("POST", "/admin/pool/initialize", poolinfo_init_handle,
	    ACCESS_ADMIN, 0, NULL);
	expect_route("POST", "/api/cli-pool/initialize", poolinfo_init_handle,
	    ACCESS_ADMIN, 0, NULL);
	expect_route("GET", "/admin/pool/initialize", NULL, 0, 405, NULL);
	/* The WebSocket upgrade's check spends no quota. */
	expect_route("GET", "/api/ws", ws_auth_handle, ACCESS_KEY_ONLY, 0,
	    NULL);
	route_match(&http_routes, "DELETE", "/api/chat", &r);
	ck_assert_str_eq(r.allow, "POST");
	ck_assert_int_eq(r.dialect, DIALECT_NATIVE);
	route_match(&http_routes, "PATCH", "/api/conversations/x", &r);
	ck_assert_str_eq(r.allow, "GET, DELETE");
	route_match(&http_routes, "GET", "/v1/nothing", &r);
	ck_assert_int_eq(r.dialect, DIALECT_OPENAI);
	route_match(&http_routes, "GET", "/v1/messages/x", &r);
	ck_assert_int_eq(r.dialect, DIALECT_ANTHROPIC);
	route_match(&http_routes, "POST", "/v1/messages", &r);
	ck_assert_ptr_eq(r.def->handler, anthropic_messages_handle);
	ck_assert_int_eq(r.dialect, DIALECT_ANTHROPIC);
	/* An over-long id still matches, with the id left empty (404). */
	memset(long_id, 'a', sizeof long_id);
	memcpy(long_id, "/api/conversations/", 19);
	long_id[sizeof long_id - 1] = '\0';
	expect_route("GET", long_id, conv_get_handle, ACCESS_KEY, 0, "");
	/* The files API: "*" takes the rest of the path, never nothing. */
	expect_route("GET", "/api/files", files_list_handle, ACCESS_KEY, 0,
	    NULL);
	expect_route("GET", "/api/files/a/b/c.txt", files_get_handle,
	    ACCESS_KEY, 0, NULL);
	expect_route("PUT", "/api/files/x", files_put_handle, ACCESS_KEY, 0,
	    NULL);
	expect_route("DELETE", "/api/files/a/b", files_delete_handle,
	    ACCESS_KEY, 0, NULL);
	expect_route("GET", "/api/files/", NULL, 0, 404, NULL);
	route_match(&http_routes, "PUT", "/api/files", &r);
	ck_assert_ptr_null(r.def);
	ck_assert_int_eq(r.status, 405);
	/*
	 * What nginx and ccgate could read differently is refused before any
	 * row: encoded '/' and '\\', dot segments literal or encoded.
	 */
	expect_route("DELETE", "/admin/tenants/..%2F..%2Fapi", NULL, 0, 400,
	    NULL);
	route_match(&http_routes, "DELETE", "/admin/tenants/..%2f..%2fapi", &r);
	ck_assert_int_eq(r.status, 400);
	ck_assert_int_eq(r.dialect, DIALECT_NATIVE);
	ck_assert_ptr_nonnull(strstr(r.why, "encoded '/'"));
	route_match(&http_routes, "GET", "/api/../admin/usage", &r);
	ck_assert_int_eq(r.status, 400);
	ck_assert_ptr_nonnull(strstr(r.why, "'.' or '..'"));
	expect_route("GET", "/api/files/a%5Cb", NULL, 0, 400, NULL);
	expect_route("GET", "/api/files/a%5cb", NULL, 0, 400, NULL);
	expect_route("GET", "/api/files/a%2fb", NULL, 0, 400, NULL);
	expect_route("GET", "/api/files/./a", NULL, 0, 400, NULL);
	expect_route("GET", "/api/files/a/.", NULL, 0, 400, NULL);
	expect_route("GET", "/api/files/%2e%2e/x", NULL, 0, 400, NULL);
	expect_route("GET", "/api/files/.%2E/x", NULL, 0, 400, NULL);
	expect_route("GET", "/api/files/%2E", NULL, 0, 400, NULL);
	expect_route("GET", "/admin/../admin/usage", NULL, 0, 400, NULL);
	expect_route("POST", "/v1/./chat/completions", NULL, 0, 400, NULL);
	/* Dots that are no segment of their own, and other escapes, route. */
	expect_route("GET", "/api/files/a..b", files_get_handle, ACCESS_KEY,
	    0, NULL);
	expect_route("GET", "/api/files/.../x", files_get_handle, ACCESS_KEY,
	    0, NULL);
	expect_route("GET", "/api/files/x.%2e%2e", files_get_handle,
	    ACCESS_KEY, 0, NULL);
	expect_route("GET", "/api/files/a%20b%25", files_get_handle,
	    ACCESS_KEY, 0, NULL);
	expect_route("GET", "/api/files/a%2", files_get_handle, ACCESS_KEY, 0,
	    NULL);
	ck_assert_ptr_null(route_path_bad("/api/conversations/"
	    "0b9f6a5e-1c2d-4e3f-8a9b-0c1d2e3f4a5b"));
}
END_TEST

/* A workspace file's path: what util_file_path lets through. */
START_TEST(test_file_path)
{
	static const char *const good[] = { "a", "uploads/x.txt",
	    "projects/p/src/main.c", "a b/c d", "caf\xc3\xa9", "a..b", "x.",
	    NULL };
	static const char *const bad[] = { "", "/etc/passwd", "..", "a/..",
	    "../a", "a/./b", ".", "a//b", "a/", ".claude/settings.json",
	    "a/.git/config", "a\tb", "a\nb", "a\x7f", NULL };
	char		 name[300], path[1100];
	size_t		 i;

	for (i = 0; good[i] != NULL; i++)
		ck_assert_msg(util_file_path(good[i], strlen(good[i])) == NULL,
		    "%s refused", good[i]);
	for (i = 0; bad[i] != NULL; i++)
		ck_assert_msg(util_file_path(bad[i], strlen(bad[i])) != NULL,
		    "%s allowed", bad[i]);
	ck_assert_ptr_nonnull(util_file_path("a\0b", 3));
	memset(name, 'n', sizeof name);
	name[255] = '\0';
	ck_assert_ptr_null(util_file_path(name, 255));
	name[255] = 'n';
	name[256] = '\0';
	ck_assert_ptr_nonnull(util_file_path(name, 256));
	memset(path, 'p', sizeof path);
	for (i = 200; i < sizeof path; i += 201)
		path[i] = '/';
	ck_assert_ptr_null(util_file_path(path, 1024));
	ck_assert_ptr_nonnull(util_file_path(path, 1025));
}
END_TEST

/*
 * Every row of the table: a handler, its own counter slot, rows of one
 * pattern next to each other, and each row reached by its own method and
 * pattern (no row hidden behind another).
 */
START_TEST(test_route_table)
{
	static const char *const methods[] = { "GET", "POST", "PUT", "DELETE",
	    "PATCH" };
	const struct route_def	*d;
	struct route		 r;
	char			 path[128];
	const char		*c;
	size_t			 i, j, k, o;
	int			 hits;

	ck_assert_uint_gt(http_routes.n, 30);
	ck_assert_uint_lt(http_routes.n, METRICS_SLOTS);
	for (i = 0; i < http_routes.n; i++) {
		d = &http_routes.rows[i];
		ck_assert_ptr_nonnull(d->handler);
		for (j = i + 2; j < http_routes.n; j++) {
			if (strcmp(http_routes.rows[j].pattern, d->pattern) == 0)
				ck_assert_str_eq(http_routes.rows[j - 1].pattern,
				    d->pattern);
		}
		for (c = d->pattern, o = 0; *c != '\0' && o + 2 < sizeof path;
		    c++) {
			if (*c == ':') {
				path[o++] = 'x';
				c += strcspn(c, "/") - 1;
			} else
				path[o++] = *c;
		}
		path[o] = '\0';
		for (k = 0, hits = 0; k < sizeof methods / sizeof methods[0];
		    k++) {
			route_match(&http_routes, methods[k], path, &r);
			if (r.def == d) {
				ck_assert_int_eq(r.slot, (int)i + 1);
				hits++;
			}
		}
		ck_assert_msg(hits == 1, "%s %s: reached %d times", d->method,
		    d->pattern, hits);
	}
}
END_TEST

START_TEST(test_json_depth)
{
	const char	*ok = "{\"a\":[{\"b\":\"[[[[[[[[\"}]}";
	const char	*deep = "[[[[[[[[[[]]]]]]]]]]";
	const char	*esc = "{\"a\":\"\\\"[[[[[[[[[[\"}";

	ck_assert_int_eq(req_json_depth_ok(ok, strlen(ok), 3), 0);
	ck_assert_int_eq(req_json_depth_ok(deep, strlen(deep), 9), -1);
	ck_assert_int_eq(req_json_depth_ok(deep, strlen(deep), 10), 0);
	ck_assert_int_eq(req_json_depth_ok(esc, strlen(esc), 1), 0);
}
END_TEST

START_TEST(test_dialects)
{
	json_t	*e;

	e = dialect_error(DIALECT_NATIVE, "not_found_error", "gone");
	ck_assert(json_is_false(json_object_get(e, "success")));
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(e,
	    "error"), "message")), "gone");
	json_decref(e);
	e = dialect_error(DIALECT_OPENAI, "invalid_request_error", "bad");
	ck_assert(json_is_null(json_object_get(json_object_get(e, "error"),
	    "param")));
	json_decref(e);
	e = dialect_error(DIALECT_ANTHROPIC, "overloaded_error", "busy");
	ck_assert_str_eq(json_string_value(json_object_get(e, "type")),
	    "error");
	json_decref(e);
	ck_assert_str_eq(dialect_error_type(DIALECT_NATIVE, 401),
	    "authentication_error");
	ck_assert_str_eq(dialect_error_type(DIALECT_OPENAI, 429),
	    "rate_limit_exceeded");
	ck_assert_str_eq(dialect_error_type(DIALECT_ANTHROPIC, 503),
	    "overloaded_error");
}
END_TEST

START_TEST(test_title)
{
	char	*t;
	char	 long_msg[200];

	t = conv_title_from_message("short");
	ck_assert_str_eq(t, "short");
	free(t);
	/* 79 ASCII bytes then a 2-byte character: cut before it. */
	memset(long_msg, 'a', 79);
	memcpy(long_msg + 79, "\xc3\xa9tail", 7);
	t = conv_title_from_message(long_msg);
	ck_assert_uint_eq(strlen(t), 79);
	free(t);
}
END_TEST

START_TEST(test_jwt)
{
	uint8_t		 secret[32], other[32];
	char		 tok[1024], bad[1024], name[64], why[128], *dot;
	long long	 id = 0, ver = 0;

	memset(secret, 7, sizeof secret);
	memset(other, 8, sizeof other);
	ck_assert_int_eq(jwt_sign(secret, 42, "ops", 3, 1000000, 900, tok,
	    sizeof tok), 0);
	ck_assert_int_eq(jwt_verify(secret, tok, 1000899, 900, &id, name,
	    sizeof name, &ver, why, sizeof why), 0);
	ck_assert_int_eq(id, 42);
	ck_assert_int_eq(ver, 3);
	ck_assert_str_eq(name, "ops");
	/* Expired at exp, not a second later. */
	ck_assert_int_eq(jwt_verify(secret, tok, 1000900, 900, &id, name,
	    sizeof name, &ver, why, sizeof why), -1);
	ck_assert_ptr_nonnull(strstr(why, "expired"));
	/* Another server's secret. */
	ck_assert_int_eq(jwt_verify(other, tok, 1000001, 900, &id, name,
	    sizeof name, &ver, why, sizeof why), -1);
	/* Every single changed byte is refused. */
	for (size_t i = 0; i < strlen(tok); i++) {
		memcpy(bad, tok, sizeof bad);
		bad[i] = bad[i] == 'A' ? 'B' : 'A';
		ck_assert_int_eq(jwt_verify(secret, bad, 1000001, 900, &id, name,
		    sizeof name, &ver, why, sizeof why), -1);
	}
	/* alg "none" with the signature dropped. */
	dot = strrchr(tok, '.');
	memcpy(bad, "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", 36);
	snprintf(bad + 35, sizeof bad - 35, "%.*s.", (int)(dot - strchr(tok,
	    '.')), strchr(tok, '.'));
	ck_assert_int_eq(jwt_verify(secret, bad, 1000001, 900, &id, name,
	    sizeof name, &ver, why, sizeof why), -1);
	ck_assert_int_eq(jwt_verify(secret, "", 1000001, 900, &id, name,
	    sizeof name, &ver, why, sizeof why), -1);
	ck_assert_int_eq(jwt_verify(secret, "a.b.c.d", 1000001, 900, &id, name,
	    sizeof name, &ver, why, sizeof why), -1);
	ck_assert_int_eq(jwt_sign(secret, 42, "ops", 3, 1000000, 900, tok,
	    20), -1);
}
END_TEST

/* A token of jwt.c's header and the given claims, signed with secret. */
static void
jwt_make(const uint8_t secret[32], const char *claims, char *out,
    size_t outlen)
{
	static const char	 head[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	const int		 v = sodium_base64_VARIANT_URLSAFE_NO_PADDING;
	uint8_t			 mac[crypto_auth_hmacsha256_BYTES];
	size_t			 n;

	sodium_bin2base64(out, outlen, (const unsigned char *)head,
	    strlen(head), v);
	n = strlen(out);
	out[n++] = '.';
	sodium_bin2base64(out + n, outlen - n, (const unsigned char *)claims,
	    strlen(claims), v);
	crypto_auth_hmacsha256(mac, (const unsigned char *)out, strlen(out),
	    secret);
	n = strlen(out);
	out[n++] = '.';
	sodium_bin2base64(out + n, outlen - n, mac, sizeof mac, v);
}

/*
 * Sign a token issued at iat for ttl seconds and verify it at now against
 * a server that gives max_ttl; the verdict, and why in why.
 */
static int
jwt_try(const uint8_t secret[32], long long iat, long long ttl,
    long long now, long long max_ttl, char *why, size_t whylen)
{
	char		tok[1024], name[64];
	long long	id = 0, ver = 0;

	ck_assert_int_eq(jwt_sign(secret, 42, "ops", 3, iat, ttl, tok,
	    sizeof tok), 0);
	return (jwt_verify(secret, tok, now, max_ttl, &id, name, sizeof name,
	    &ver, why, whylen));
}

START_TEST(test_jwt_lifetime)
{
	uint8_t		 secret[32];
	char		 tok[1024], name[64], why[128];
	long long	 id = 0, ver = 0;

	memset(secret, 7, sizeof secret);
	/* Signed with the secret, but for longer than the server gives. */
	ck_assert_int_eq(jwt_try(secret, 1000000, 86400, 1000001, 900, why,
	    sizeof why), -1);
	ck_assert_ptr_nonnull(strstr(why, "lifetime"));
	ck_assert_int_eq(jwt_try(secret, 1000000, 86400, 1000001, 86400, why,
	    sizeof why), 0);
	/* One second over, and exactly the lifetime. */
	ck_assert_int_eq(jwt_try(secret, 1000000, 901, 1000001, 900, why,
	    sizeof why), -1);
	ck_assert_int_eq(jwt_try(secret, 1000000, 900, 1000001, 900, why,
	    sizeof why), 0);
	/* No lifetime at all, or a negative one. */
	ck_assert_int_eq(jwt_try(secret, 1000000, 0, 999999, 900, why,
	    sizeof why), -1);
	ck_assert_int_eq(jwt_try(secret, 1000000, -5, 999990, 900, why,
	    sizeof why), -1);
	/* Issued in the future: a minute of skew is allowed, not more. */
	ck_assert_int_eq(jwt_try(secret, 1000060, 900, 1000000, 900, why,
	    sizeof why), 0);
	ck_assert_int_eq(jwt_try(secret, 1000061, 900, 1000000, 900, why,
	    sizeof why), -1);
	ck_assert_ptr_nonnull(strstr(why, "future"));
	/* A negative iat with a far exp must not overflow exp - iat. */
	jwt_make(secret, "{\"iss\":\"ccgate\",\"aud\":\"ccgate-admin\","
	    "\"sub\":\"42\",\"name\":\"ops\",\"ver\":3,"
	    "\"iat\":-9000000000000000000,\"exp\":9000000000000000000}", tok,
	    sizeof tok);
	ck_assert_int_eq(jwt_verify(secret, tok, 1000000, 900, &id, name,
	    sizeof name, &ver, why, sizeof why), -1);
	/* The same claims with sane times pass: only the times failed. */
	jwt_make(secret, "{\"iss\":\"ccgate\",\"aud\":\"ccgate-admin\","
	    "\"sub\":\"42\",\"name\":\"ops\",\"ver\":3,"
	    "\"iat\":1000000,\"exp\":1000900}", tok, sizeof tok);
	ck_assert_int_eq(jwt_verify(secret, tok, 1000000, 900, &id, name,
	    sizeof name, &ver, why, sizeof why), 0);
}
END_TEST

START_TEST(test_client_request_id)
{
	char	id[REQ_CLIENT_ID_MAX + 2];

	ck_assert_int_eq(req_client_id_ok("forged-123"), 1);
	ck_assert_int_eq(req_client_id_ok("trace:1/2;x=\"y\"~!"), 1);
	ck_assert_int_eq(req_client_id_ok(""), 0);
	ck_assert_int_eq(req_client_id_ok("a b"), 0);
	ck_assert_int_eq(req_client_id_ok("a\tb"), 0);
	ck_assert_int_eq(req_client_id_ok("a\r\nSet-Cookie:x"), 0);
	ck_assert_int_eq(req_client_id_ok("a\x7f"), 0);
	ck_assert_int_eq(req_client_id_ok("caf\xc3\xa9"), 0);
	memset(id, 'x', sizeof id);
	id[REQ_CLIENT_ID_MAX] = '\0';
	ck_assert_int_eq(req_client_id_ok(id), 1);
	id[REQ_CLIENT_ID_MAX] = 'x';
	id[REQ_CLIENT_ID_MAX + 1] = '\0';
	ck_assert_int_eq(req_client_id_ok(id), 0);
}
END_TEST

START_TEST(test_parse_time)
{
	char	out[32];

	ck_assert_int_eq(keys_parse_time("2027-01-31T10:20:30Z", out), 0);
	ck_assert_str_eq(out, "2027-01-31T10:20:30Z");
	ck_assert_int_eq(keys_parse_time("2027-01-31 10:20:30", out), 0);
	ck_assert_str_eq(out, "2027-01-31T10:20:30Z");
	ck_assert_int_eq(keys_parse_time("2028-02-29", out), 0);
	ck_assert_str_eq(out, "2028-02-29T00:00:00Z");
	ck_assert_int_eq(keys_parse_time("2027-02-29", out), -1);
	ck_assert_int_eq(keys_parse_time("2100-02-29", out), -1);
	ck_assert_int_eq(keys_parse_time("2027-04-31", out), -1);
	ck_assert_int_eq(keys_parse_time("2027-01-31T24:00:00Z", out), -1);
	ck_assert_int_eq(keys_parse_time("2027-1-31", out), -1);
	ck_assert_int_eq(keys_parse_time("2027-01-31T10:20:30+01", out), -1);
	ck_assert_int_eq(keys_parse_time("tomorrow", out), -1);
	ck_assert_int_eq(keys_parse_time("", out), -1);
}
END_TEST

/* Write text to a new temporary file; its name goes to path. */
static void
conf_file(char *path, const char *text)
{
	int	fd;

	strcpy(path, "/tmp/check_app_confXXXXXX");
	ck_assert_int_ne(fd = mkstemp(path), -1);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	ck_assert_int_eq(close(fd), 0);
}

START_TEST(test_db_hosts)
{
	static const char *const bad[] = { "", " , ", "a:", "a:0", "a:65536",
	    "a:12x", "[::1", "[::1]x", ":3306",
	    "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17" };
	struct app_config	*cf;
	struct db_host		 h[DB_MAX_HOSTS];
	char			 path[64], *cause = NULL;
	size_t			 i;
	int			 pos, n, galera;

	conf_file(path, "db_hosts = 10.0.0.1:3307, [::1]:3308 host3\n"
	    "db_sync_wait = 0\ndb_failback_s = 5\n"
	    "key_secret_file = /nonexistent/k\n"
	    "admin_secret_file = /nonexistent/a\n");
	cf = appconf_load(path, &cause);
	ck_assert_ptr_nonnull(cf);
	ck_assert_str_eq(cf->db_hosts, "10.0.0.1:3307, [::1]:3308 host3");
	ck_assert_int_eq(cf->db_sync_wait, 0);
	ck_assert_int_eq(cf->db_failback_s, 5);
	ck_assert_str_eq(cf->spool_dir, LOCALSTATEDIR "/lib/ccgate/fcgi-spool");
	unlink(path);
	/* Nothing connected yet: the first host is the one in use. */
	appconf = cf;
	db_host_in_use(&pos, &n, &galera);
	ck_assert_int_eq(pos, 1);
	ck_assert_int_eq(n, 3);
	ck_assert_int_eq(galera, 0);
	ck_assert_str_eq(db_why(NULL), "no database connection came free");

	/* The list: names, ports, db_port where none is given. */
	ck_assert_int_eq(appconf_hosts_parse("a.example:3307, [::1]:3308 host3\t"
	    "10.0.0.9,fe80::1", 3306, h, &cause), 5);
	ck_assert_str_eq(h[0].name, "a.example");
	ck_assert_int_eq(h[0].port, 3307);
	ck_assert_str_eq(h[1].name, "::1");
	ck_assert_int_eq(h[1].port, 3308);
	ck_assert_str_eq(h[2].name, "host3");
	ck_assert_int_eq(h[2].port, 3306);
	ck_assert_str_eq(h[3].name, "10.0.0.9");
	ck_assert_str_eq(h[4].name, "fe80::1");
	ck_assert_int_eq(h[4].port, 3306);
	for (i = 0; i < 5; i++)
		free(h[i].name);
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		cause = NULL;
		ck_assert_msg(appconf_hosts_parse(bad[i], 3306, h, &cause) == -1,
		    "%s", bad[i]);
		ck_assert_ptr_nonnull(cause);
		free(cause);
	}
	cause = NULL;
	conf_file(path, "db_hosts = a:99999\n");
	ck_assert_ptr_null(appconf_load(path, &cause));
	ck_assert_ptr_nonnull(strstr(cause, "db_hosts"));
	free(cause);
	cause = NULL;
	unlink(path);

	/* db_sync_wait is -1 (Galera: 1) to 15. */
	conf_file(path, "db_sync_wait = 16\n");
	ck_assert_ptr_null(appconf_load(path, &cause));
	free(cause);
	cause = NULL;
	unlink(path);
	conf_file(path, "db_failback_s = 0\n");
	ck_assert_ptr_null(appconf_load(path, &cause));
	free(cause);
	unlink(path);
}
END_TEST

int
main(void)
{
	const TTest *const tests[] = {
		test_key_format,
		test_key_hash,
		test_two_keys_differ,
		test_routes,
		test_file_path,
		test_route_table,
		test_json_depth,
		test_dialects,
		test_title,
		test_jwt,
		test_jwt_lifetime,
		test_client_request_id,
		test_parse_time,
		test_db_hosts,
		NULL
	};

	if (sodium_init() < 0)
		return (1);
	return (unit_run("app", "core", tests));
}
