#!/usr/bin/env python3
"""Administration through the real stack: admin login and its tokens
(expiry, tampering, disabled users, slowed-down guessing, a signing secret
of their own, bounded lifetimes), the admin API for keys with its audit
trail, usage, the request and error logs, the pool and its bounds behind
the admin allowlist, the operators' SQL views and procedures, and
ccgate-admin."""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Stack, SRCDIR, metric, wait_for,  # noqa: E402
                     within_one_window, main)

stack = None
PW = "correct horse battery staple"
TTL = 600


def setUpModule():
    global stack
    stack = Stack(app_opts={"key_cache_ms": 0, "admin_token_ttl_s": TTL},
                  name="admin").start()
    stack.create_admin("root", PW)


def tearDownModule():
    stack.stop()


_token = None


def token():
    global _token
    if _token is None:
        _token = stack.admin_token("root", PW)
    return _token


def admin(method, path, body=None, tok=None, **kw):
    h = {"Authorization": "Bearer " + (tok or token())}
    h.update(kw.pop("headers", {}))
    return stack.request(method, path, body, headers=h, **kw)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def secret_of(name):
    """The 32 bytes of a secret file (key.secret, admin.secret)."""
    with open(stack.path(name)) as f:
        return bytes.fromhex(f.read().strip())


def forge(claims, header=None, key=None):
    """A token signed the way the server signs (HMAC-SHA256 with the
    admin secret, jwt.c's exact header), with our own claims."""
    if key is None:
        key = secret_of("admin.secret")
    head = b64(json.dumps(header or {"alg": "HS256", "typ": "JWT"},
                          separators=(",", ":")).encode())
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    mac = hmac.new(key, (head + "." + body).encode(), hashlib.sha256).digest()
    return head + "." + body + "." + b64(mac)


def claims(**over):
    now = int(time.time())
    c = {"iss": "ccgate", "aud": "ccgate-admin", "sub": "1", "name": "root",
         "ver": 1, "iat": now, "exp": now + 300}
    c.update(over)
    return c


def audit_rows(object_id):
    r = admin("GET", "/admin/audit?object_id=" + object_id)
    assert r.status == 200, r
    return r.json()["audit"]


def key_count():
    return int(stack.sql("SELECT COUNT(*) FROM api_keys")[0][0])


def wait_usage(kid, n):
    """Usage rows are written after the answer: wait for n of them."""
    wait_for(lambda: stack.sql("SELECT COUNT(*) FROM usage_logs WHERE "
                               "key_id = '%s'" % kid)[0][0] == str(n),
             60, "%d usage rows of %s" % (n, kid))


def new_key(**spec):
    spec.setdefault("name", "k%d" % time.time_ns())
    r = admin("POST", "/admin/api-keys", spec)
    assert r.status == 201, r
    return r.json()["key"]


class Login(unittest.TestCase):
    def test_login_and_me(self):
        r = stack.request("POST", "/admin/login",
                          {"username": "root", "password": PW})
        self.assertEqual(r.status, 200, r)
        j = r.json()
        self.assertEqual(j["token_type"], "Bearer")
        self.assertEqual(j["expires_in"], TTL)
        self.assertEqual(j["user"]["username"], "root")
        self.assertNotIn("password", r.body)
        head, body, _ = j["token"].split(".")
        c = json.loads(base64.urlsafe_b64decode(body + "=="))
        self.assertEqual(c["exp"] - c["iat"], TTL)
        self.assertLess(abs(c["iat"] - time.time()), 60, "wall-clock time")
        # The login's usage row names the administrator as every admin
        # change does.
        rid = r.headers["x-request-id"]
        wait_for(lambda: stack.sql("SELECT tenant FROM usage_logs WHERE "
                                   "request_id = '%s'" % rid) ==
                 [["admin:root"]], 60, "the login's usage row")
        me = admin("GET", "/admin/me", tok=j["token"])
        self.assertEqual(me.status, 200, me)
        self.assertEqual(me.json()["username"], "root")

    def test_wrong_password_and_unknown_user_look_alike(self):
        a = stack.request("POST", "/admin/login",
                          {"username": "root", "password": "wrong password!"})
        b = stack.request("POST", "/admin/login",
                          {"username": "nobody", "password": "wrong password!"})
        self.assertEqual((a.status, b.status), (401, 401))
        self.assertEqual(a.json()["error"]["message"],
                         b.json()["error"]["message"])
        stack.sql("DELETE FROM admin_login_failures")

    def test_bad_login_bodies(self):
        for body, field in (({"username": "root"}, "password"),
                            ({"password": PW}, "username"),
                            ({"username": 5, "password": PW}, "username")):
            r = stack.request("POST", "/admin/login", body)
            self.assertEqual(r.status, 400, r)
            self.assertIn(field, r.json()["error"]["message"])
        r = stack.request("POST", "/admin/login", raw=b"{nope")
        self.assertEqual(r.status, 400, r)

    def test_tampered_tokens_are_refused(self):
        good = forge(claims())
        self.assertEqual(admin("GET", "/admin/me", tok=good).status, 200)
        head, body, sig = token().split(".")
        other = b64(json.dumps(claims(name="evil")).encode())
        cases = {
            "payload changed": head + "." + other + "." + sig,
            "signature cut": head + "." + body + ".",
            "alg none": b64(b'{"alg":"none","typ":"JWT"}') + "." + body + ".",
            "HS512 header": forge(claims(), {"alg": "HS512", "typ": "JWT"}),
            "other key": forge(claims(), key=b"k" * 32),
            "wrong audience": forge(claims(aud="someone-else")),
            "expired": forge(claims(iat=int(time.time()) - 600,
                                    exp=int(time.time()) - 1)),
            "old token version": forge(claims(ver=0)),
            "unknown admin": forge(claims(sub="999")),
            "garbage": "a.b.c",
        }
        for what, tok in cases.items():
            r = admin("GET", "/admin/api-keys", tok=tok)
            self.assertEqual(r.status, 401, "%s: %r" % (what, r))
            self.assertEqual(r.json()["error"]["type"], "authentication_error")
        self.assertIn("audience", admin("GET", "/admin/me", tok=cases[
            "wrong audience"]).json()["error"]["message"])
        self.assertIn("expired", admin("GET", "/admin/me", tok=cases[
            "expired"]).json()["error"]["message"])

    def test_disabled_admin_and_new_password_refuse_old_tokens(self):
        stack.create_admin("temp", PW)
        tok = stack.admin_token("temp", PW)
        self.assertEqual(admin("GET", "/admin/me", tok=tok).status, 200)
        stack.admin("user", "disable", "temp")
        self.assertEqual(admin("GET", "/admin/me", tok=tok).status, 401)
        r = stack.request("POST", "/admin/login",
                          {"username": "temp", "password": PW})
        self.assertEqual(r.status, 401, r)
        self.assertIn("disabled", r.json()["error"]["message"])
        stack.admin("user", "enable", "temp")
        self.assertEqual(admin("GET", "/admin/me", tok=tok).status, 401,
                         "a token from before the disable stays dead")
        tok = stack.admin_token("temp", PW)
        stack.admin("user", "passwd", "temp", stdin="another long password\n")
        self.assertEqual(admin("GET", "/admin/me", tok=tok).status, 401)
        self.assertEqual(stack.request("POST", "/admin/login", {
            "username": "temp", "password": PW}).status, 401)
        stack.admin_token("temp", "another long password")
        stack.sql("DELETE FROM admin_login_failures")

    def test_guessing_is_slowed_per_user(self):
        stack.create_admin("victim", PW)
        for _ in range(5):
            r = stack.request("POST", "/admin/login",
                              {"username": "victim", "password": "guess1234567"})
            self.assertEqual(r.status, 401, r)
        r = stack.request("POST", "/admin/login",
                          {"username": "victim", "password": PW})
        self.assertEqual(r.status, 429, "even the right password waits")
        self.assertGreaterEqual(int(r.headers["retry-after"]), 25)
        self.assertLessEqual(int(r.headers["retry-after"]), 30)
        # Another administrator from the same address is not held up.
        self.assertEqual(stack.request("POST", "/admin/login", {
            "username": "root", "password": PW}).status, 200)
        stack.sql("DELETE FROM admin_login_failures")
        self.assertEqual(stack.request("POST", "/admin/login", {
            "username": "victim", "password": PW}).status, 200)

    def test_guessing_is_slowed_per_address(self):
        # Twenty failures from one address, each for another user name.
        for i in range(20):
            r = stack.request("POST", "/admin/login", {
                "username": "guess%d" % i, "password": "guess1234567"})
            self.assertEqual(r.status, 401, r)
        r = stack.request("POST", "/admin/login",
                          {"username": "root", "password": PW})
        self.assertEqual(r.status, 429, "the address waits, even for root")
        self.assertIn("retry-after", r.headers)
        stack.sql("DELETE FROM admin_login_failures")
        self.assertEqual(stack.request("POST", "/admin/login", {
            "username": "root", "password": PW}).status, 200)

    def test_client_keys_are_never_admin(self):
        key = stack.create_key("client")
        routes = [("GET", "/admin/me"), ("GET", "/admin/api-keys"),
                  ("POST", "/admin/api-keys"),
                  ("GET", "/admin/api-keys/abcdefghijklmnop"),
                  ("PUT", "/admin/api-keys/abcdefghijklmnop"),
                  ("DELETE", "/admin/api-keys/abcdefghijklmnop"),
                  ("POST", "/admin/api-keys/abcdefghijklmnop/rotate"),
                  ("GET", "/admin/usage"), ("GET", "/admin/requests"),
                  ("GET", "/admin/errors"), ("GET", "/admin/pool"),
                  ("GET", "/admin/audit"),
                  ("POST", "/api/cli-pool/initialize"),
                  ("POST", "/admin/pool/initialize")]
        before = key_count()
        for method, path in routes:
            r = stack.request(method, path, {"name": "x"}, key=key)
            self.assertEqual(r.status, 403, "%s %s: %r" % (method, path, r))
            self.assertIn("never admin", r.json()["error"]["message"])
            r = stack.request(method, path, {"name": "x"},
                              headers={"x-api-key": key})
            self.assertEqual(r.status, 403, "%s %s: %r" % (method, path, r))
            r = stack.request(method, path, {"name": "x"})
            self.assertEqual(r.status, 401, "%s %s: %r" % (method, path, r))
            self.assertEqual(r.headers.get("www-authenticate"), "Bearer")
        self.assertEqual(key_count(), before)


class AdminSecret(unittest.TestCase):
    """Admin tokens are signed with admin.secret, never with anything
    derived from key.secret (which keys the API-key hashes)."""

    def test_a_token_made_from_the_key_secret_is_refused(self):
        self.assertEqual(admin("GET", "/admin/me", tok=forge(claims())).status,
                         200, "the forge mirrors jwt.c")
        key_secret = secret_of("key.secret")
        derived = hashlib.blake2b(b"ccgate admin token key v1",
                                  key=key_secret, digest_size=32).digest()
        before = stack.stats()["limits"]
        for what, key in (("the old derived key", derived),
                          ("key.secret itself", key_secret)):
            tok = forge(claims(), key=key)
            for method, path, body in (
                    ("GET", "/admin/me", None),
                    ("GET", "/admin/api-keys", None),
                    ("POST", "/admin/pool/initialize",
                     {"minInstances": 0, "maxInstances": 1}),
                    ("POST", "/api/cli-pool/initialize",
                     {"minInstances": 0, "maxInstances": 1})):
                r = admin(method, path, body, tok=tok)
                self.assertEqual(r.status, 401, "%s, %s: %r" % (what, path,
                                                                 r))
                self.assertIn("signature", r.json()["error"]["message"])
        self.assertEqual(stack.stats()["limits"], before)
        self.assertNotEqual(secret_of("admin.secret"), key_secret)

    def test_the_admin_secret_may_not_be_the_key_secret(self):
        conf = stack.path("same-secret.conf")
        with open(stack.path("ccgate.conf")) as f, open(conf, "w") as out:
            for line in f:
                if line.startswith("admin_secret_file"):
                    line = "admin_secret_file = %s\n" % stack.path(
                        "key.secret")
                out.write(line)
        for prog in ("ccgate-fcgi", "ccgate-ws"):
            r = subprocess.run([stack.bin(prog), "-n", "-f", conf],
                               capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0, prog)
            self.assertIn("key hashing secret", r.stderr)
        r = subprocess.run([stack.bin("ccgate-admin"), "-f", conf, "usage"],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("key hashing secret", r.stderr)

    def test_without_an_admin_secret_admin_answers_503(self):
        tok = token()
        secret = stack.path("admin.secret")
        os.rename(secret, secret + ".away")
        try:
            stack.stop_proc("fcgi")
            stack.start_fcgi()
            wait_for(lambda: stack.request("GET", "/healthz").status == 200,
                     60, "ccgate-fcgi back")
            with open(stack.path("fcgi.log")) as f:
                self.assertIn("no admin secret at " + secret, f.read())
            r = stack.request("POST", "/admin/login",
                              {"username": "root", "password": PW})
            self.assertEqual(r.status, 503, r)
            self.assertIn("no admin secret", r.json()["error"]["message"])
            self.assertNotIn("token", r.json())
            for t in (tok, forge(claims(), key=secret_of(
                    "admin.secret.away")), forge(claims(), key=bytes(32))):
                r = admin("GET", "/admin/me", tok=t)
                self.assertEqual(r.status, 503, r)
                self.assertIn("no admin secret", r.json()["error"]["message"])
            # The client API does not need it.
            key = stack.create_key("no-admin-secret")
            self.assertEqual(stack.request("GET", "/api/models",
                                           key=key).status, 200)
        finally:
            stack.stop_proc("fcgi")
            os.rename(secret + ".away", secret)
            stack.start_fcgi()
            wait_for(lambda: stack.request("GET", "/healthz").status == 200,
                     60, "ccgate-fcgi back")
        self.assertEqual(admin("GET", "/admin/me", tok=tok).status, 200)


class TokenLifetime(unittest.TestCase):
    """A token lives at most admin_token_ttl_s (exp - iat), however
    validly it is signed, and is not issued in the future."""

    def test_a_token_longer_than_the_ttl_is_refused(self):
        now = int(time.time())
        ok = forge(claims(iat=now - 10, exp=now - 10 + TTL))
        self.assertEqual(admin("GET", "/admin/me", tok=ok).status, 200)
        before = stack.stats()["limits"]
        for what, c in (
                ("24 h", claims(iat=now, exp=now + 86400)),
                ("one second over", claims(iat=now - 10, exp=now - 9 + TTL)),
                ("old iat, far exp", claims(iat=now - 86400, exp=now + 60)),
                ("no lifetime", claims(iat=now + 30, exp=now + 30)),
                ("issued an hour ahead", claims(iat=now + 3600,
                                                exp=now + 3600 + 60))):
            tok = forge(c)
            for method, path, body in (
                    ("GET", "/admin/me", None),
                    ("POST", "/api/cli-pool/initialize",
                     {"minInstances": 0, "maxInstances": 1})):
                r = admin(method, path, body, tok=tok)
                self.assertEqual(r.status, 401, "%s: %r" % (what, r))
                self.assertEqual(r.json()["error"]["type"],
                                 "authentication_error")
        self.assertIn("lifetime", admin("GET", "/admin/me", tok=forge(claims(
            iat=now, exp=now + 86400))).json()["error"]["message"])
        self.assertIn("future", admin("GET", "/admin/me", tok=forge(claims(
            iat=now + 3600, exp=now + 3660))).json()["error"]["message"])
        self.assertEqual(stack.stats()["limits"], before)


class Keys(unittest.TestCase):
    def test_create_shows_the_secret_once_and_it_works(self):
        r = admin("POST", "/admin/api-keys", {
            "name": "svc", "metadata": {"user_id": "team-a", "project": "p"},
            "usage_limit": {"requests_per_day": 100},
            "permissions": {"models": ["claude-haiku-4-5"], "max_tokens": 512}})
        self.assertEqual(r.status, 201, r)
        k = r.json()["key"]
        secret = k["key"]
        self.assertTrue(secret.startswith("ccg_" + k["id"] + "_"))
        self.assertEqual(k["tenant"], "team-a")
        self.assertEqual(k["usage_limit"], {"requests_per_minute": None,
                                            "requests_per_day": 100,
                                            "tokens_per_day": None,
                                            "max_concurrent_requests": None,
                                            "queue": True})
        self.assertFalse(k["require_signature"])
        self.assertNotIn("signing_secret", k)
        self.assertEqual(k["permissions"]["models"], ["claude-haiku-4-5"])
        got = admin("GET", "/admin/api-keys/" + k["id"])
        self.assertEqual(got.status, 200, got)
        self.assertNotIn(secret[21:], got.body)
        self.assertNotIn("key_hash", got.body)
        listed = admin("GET", "/admin/api-keys?tenant=team-a")
        self.assertEqual([x["id"] for x in listed.json()["keys"]], [k["id"]])
        self.assertNotIn(secret[21:], listed.body)
        m = stack.request("GET", "/v1/models", key=secret)
        self.assertEqual([x["id"] for x in m.json()["data"]],
                         ["claude-haiku-4-5"])
        a = audit_rows(k["id"])
        self.assertEqual(a[0]["action"], "key.create")
        self.assertEqual(a[0]["actor"], "admin:root")
        self.assertEqual(a[0]["source_ip"], "127.0.0.1")
        self.assertIsNone(a[0]["before"])
        self.assertEqual(a[0]["after"]["tenant"], "team-a")
        self.assertNotIn(secret[21:], json.dumps(a))

    def test_bad_bodies_create_nothing(self):
        before = key_count()
        audits = len(admin("GET", "/admin/audit?limit=500").json()["audit"])
        cases = [({}, "name"), ({"name": ""}, "name"),
                 ({"name": "x", "colour": "red"}, "colour"),
                 ({"name": "x", "status": "revoked"}, "status"),
                 ({"name": "x", "expires_at": "tomorrow"}, "expires_at"),
                 ({"name": "x", "expires_at": "2027-02-30"}, "expires_at"),
                 ({"name": "x", "usage_limit": {"requests_per_day": -1}},
                  "usage_limit.requests_per_day"),
                 ({"name": "x", "usage_limit": {"per_week": 1}},
                  "usage_limit.per_week"),
                 ({"name": "x", "usage_limit": {
                     "max_concurrent_requests": 0}},
                  "usage_limit.max_concurrent_requests"),
                 ({"name": "x", "usage_limit": {
                     "max_concurrent_requests": 10001}},
                  "usage_limit.max_concurrent_requests"),
                 ({"name": "x", "usage_limit": {
                     "max_concurrent_requests": "2"}},
                  "usage_limit.max_concurrent_requests"),
                 ({"name": "x", "usage_limit": {"queue": 0}},
                  "usage_limit.queue"),
                 ({"name": "x", "require_signature": "yes"},
                  "require_signature"),
                 ({"name": "x", "permissions": {"models": ["gpt-4"]}},
                  "permissions.models[0]"),
                 ({"name": "x", "permissions": {"allow_tools": "yes"}},
                  "permissions.allow_tools"),
                 ({"name": "x", "metadata": {"user_id": "../etc"}},
                  "metadata.user_id"),
                 ({"name": "x", "metadata": {"n": 5}}, "metadata.n")]
        for body, field in cases:
            r = admin("POST", "/admin/api-keys", body)
            self.assertEqual(r.status, 400, "%r: %r" % (body, r))
            self.assertIn(field, r.json()["error"]["message"], body)
        r = admin("POST", "/admin/api-keys", raw=b'{"name":"x","name":"y"}')
        self.assertEqual(r.status, 400, r)
        self.assertEqual(key_count(), before)
        self.assertEqual(len(admin("GET", "/admin/audit?limit=500").json()[
            "audit"]), audits)

    def test_update_suspend_activate_and_permissions_apply(self):
        k = new_key()
        secret, kid = k["key"], k["id"]
        chat = {"message": "hello"}
        self.assertEqual(stack.request("POST", "/api/chat", chat,
                                       key=secret).status, 200)
        r = admin("PUT", "/admin/api-keys/" + kid, {"status": "suspended"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["key"]["status"], "suspended")
        r = stack.request("POST", "/api/chat", chat, key=secret)
        self.assertEqual(r.status, 401, r)
        self.assertIn("suspended", r.json()["error"]["message"])
        admin("PUT", "/admin/api-keys/" + kid, {
            "status": "active", "permissions": {"allow_streaming": False},
            "usage_limit": {"requests_per_minute": 50},
            "expires_at": "2099-01-01T00:00:00Z", "name": "renamed"})
        r = stack.request("POST", "/api/chat", dict(chat, stream=True),
                          key=secret)
        self.assertEqual(r.status, 403, r)
        self.assertEqual(stack.request("POST", "/api/chat", chat,
                                       key=secret).status, 200)
        got = admin("GET", "/admin/api-keys/" + kid).json()["key"]
        self.assertEqual(got["name"], "renamed")
        self.assertEqual(got["expires_at"], "2099-01-01T00:00:00Z")
        self.assertEqual(got["usage_limit"]["requests_per_minute"], 50)
        self.assertIsNotNone(got["last_used_at"])
        r = admin("PUT", "/admin/api-keys/" + kid,
                  {"expires_at": "2020-01-01"})
        self.assertEqual(r.json()["key"]["status"], "expired")
        listed = admin("GET", "/admin/api-keys?status=expired").json()["keys"]
        self.assertIn(kid, [x["id"] for x in listed])
        listed = admin("GET", "/admin/api-keys?status=active").json()["keys"]
        self.assertNotIn(kid, [x["id"] for x in listed])
        r = stack.request("POST", "/api/chat", chat, key=secret)
        self.assertEqual(r.status, 401, r)
        self.assertIn("expired", r.json()["error"]["message"])
        acts = [a["action"] for a in audit_rows(kid)]
        self.assertEqual(acts, ["key.update"] * 3 + ["key.create"])
        last = audit_rows(kid)[0]
        self.assertEqual(last["before"]["expires_at"], "2099-01-01T00:00:00Z")
        self.assertEqual(last["after"]["expires_at"], "2020-01-01T00:00:00Z")
        # user_id owns the conversations: it never changes.
        r = admin("PUT", "/admin/api-keys/" + kid,
                  {"metadata": {"user_id": "someone"}})
        self.assertEqual(r.status, 400, r)
        self.assertIn("metadata.user_id", r.json()["error"]["message"])

    def test_concurrency_limits_round_trip(self):
        k = new_key(usage_limit={"max_concurrent_requests": 3,
                                 "queue": False})
        self.assertEqual(k["usage_limit"]["max_concurrent_requests"], 3)
        self.assertFalse(k["usage_limit"]["queue"])
        self.assertEqual(stack.sql(
            "SELECT max_concurrent_requests, queue_when_busy FROM api_keys "
            "WHERE id = '%s'" % k["id"]), [["3", "0"]])
        r = admin("PUT", "/admin/api-keys/" + k["id"], {
            "usage_limit": {"max_concurrent_requests": None}})
        self.assertEqual(r.status, 200, r)
        got = admin("GET", "/admin/api-keys/" + k["id"]).json()["key"]
        self.assertIsNone(got["usage_limit"]["max_concurrent_requests"])
        self.assertFalse(got["usage_limit"]["queue"])   # untouched
        r = admin("PUT", "/admin/api-keys/" + k["id"], {
            "usage_limit": {"queue": True, "max_concurrent_requests": 10000}})
        self.assertEqual(r.json()["key"]["usage_limit"],
                         {"requests_per_minute": None,
                          "requests_per_day": None, "tokens_per_day": None,
                          "max_concurrent_requests": 10000, "queue": True})
        a = audit_rows(k["id"])[0]
        self.assertEqual(a["before"]["usage_limit"]["max_concurrent_requests"],
                         None)
        self.assertEqual(a["after"]["usage_limit"]["max_concurrent_requests"],
                         10000)

    def test_rotate_with_and_without_grace(self):
        k = new_key()
        old, kid = k["key"], k["id"]
        r = admin("POST", "/admin/api-keys/%s/rotate" % kid,
                  {"grace_seconds": 600})
        self.assertEqual(r.status, 200, r)
        new = r.json()["key"]["key"]
        self.assertNotEqual(new, old)
        self.assertTrue(new.startswith("ccg_" + kid + "_"))
        self.assertIsNotNone(r.json()["key"]["previous_secret_valid_until"])
        for key in (old, new):
            self.assertEqual(stack.request("GET", "/api/models",
                                           key=key).status, 200)
        r = admin("POST", "/admin/api-keys/%s/rotate" % kid,
                  {"grace_seconds": 0})
        newer = r.json()["key"]["key"]
        self.assertEqual(stack.request("GET", "/api/models",
                                       key=newer).status, 200)
        for key in (old, new):
            self.assertEqual(stack.request("GET", "/api/models",
                                           key=key).status, 401)
        r = admin("POST", "/admin/api-keys/%s/rotate" % kid,
                  {"grace_seconds": -5})
        self.assertEqual(r.status, 400, r)
        a = audit_rows(kid)
        self.assertEqual([x["action"] for x in a[:2]], ["key.rotate"] * 2)
        for secret in (old, new, newer):
            self.assertNotIn(secret[21:], json.dumps(a))

    def test_revoke_is_final(self):
        k = new_key()
        r = admin("DELETE", "/admin/api-keys/" + k["id"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["key"]["status"], "revoked")
        r = stack.request("GET", "/api/models", key=k["key"])
        self.assertEqual(r.status, 401)
        self.assertIn("revoked", r.json()["error"]["message"])
        for method, path, body in (
                ("PUT", "/admin/api-keys/" + k["id"], {"status": "active"}),
                ("POST", "/admin/api-keys/%s/rotate" % k["id"], {}),
                ("DELETE", "/admin/api-keys/" + k["id"], None)):
            r = admin(method, path, body)
            self.assertEqual(r.status, 409, r)
        self.assertEqual(stack.request("GET", "/api/models",
                                       key=k["key"]).status, 401)

    def test_unknown_and_malformed_ids(self):
        for kid in ("abcdefghijklmnop", "short", "ABCDEFGHIJKLMNOP",
                    "abcdefghijklmno1", "%27%20OR%201%3D1", "a" * 80):
            for method in ("GET", "PUT", "DELETE"):
                r = admin(method, "/admin/api-keys/" + kid, {"name": "x"})
                self.assertEqual(r.status, 404, "%s %s %r" % (method, kid, r))
        r = admin("GET", "/admin/api-keys?status=bogus")
        self.assertEqual(r.status, 400, r)
        r = admin("GET", "/admin/api-keys?limit=0")
        self.assertEqual(r.status, 400, r)


class Logs(unittest.TestCase):
    def test_usage_requests_and_errors(self):
        k = new_key()
        secret, kid = k["key"], k["id"]
        rids = []
        for i in range(3):
            r = stack.request("POST", "/api/chat", {"message": "u%d" % i},
                              key=secret)
            self.assertEqual(r.status, 200, r)
            rids.append(r.headers["x-request-id"])
        bad = stack.request("POST", "/api/chat", raw=b"{", key=secret)
        self.assertEqual(bad.status, 400)
        wait_usage(kid, 4)
        want = stack.sql("SELECT COUNT(*), SUM(input_tokens), "
                         "SUM(output_tokens), SUM(status_code >= 400) FROM "
                         "usage_logs WHERE key_id = '%s'" % kid)[0]
        for group in ("day", "hour"):
            r = admin("GET", "/admin/usage?group=%s&key_id=%s" % (group, kid))
            self.assertEqual(r.status, 200, r)
            rows = r.json()["usage"]
            self.assertEqual(len(rows), 1, rows)
            u = rows[0]
            self.assertEqual(u["key_id"], kid)
            self.assertEqual(u["key_name"], k["name"])
            self.assertEqual([u["requests"], u["input_tokens"],
                              u["output_tokens"], u["errors"]],
                             [int(x) for x in want])
            self.assertEqual(u["requests"], 4)
            self.assertEqual(u["errors"], 1)
            lat = u["latency_ms"]
            self.assertLessEqual(lat["p50"], lat["p95"])
            self.assertLessEqual(lat["p95"], lat["p99"])
        r = admin("GET", "/admin/usage?from=2000-01-01&to=2000-01-02")
        self.assertEqual(r.json()["usage"], [])
        for q in ("group=week", "from=yesterday", "key_id=x';--"):
            self.assertEqual(admin("GET", "/admin/usage?" + q).status, 400, q)

        r = admin("GET", "/admin/requests?key_id=" + kid)
        self.assertEqual(r.status, 200, r)
        reqs = r.json()["requests"]
        self.assertEqual([x["status"] for x in reqs], [400, 200, 200, 200])
        self.assertEqual([x["request_id"] for x in reqs[1:]], rids[::-1])
        self.assertEqual(reqs[1]["route"], "/api/chat")
        page = admin("GET", "/admin/requests?limit=2&key_id=" + kid).json()
        self.assertEqual(len(page["requests"]), 2)
        rest = admin("GET", "/admin/requests?limit=2&key_id=%s&before=%d" % (
            kid, page["next_before"])).json()["requests"]
        self.assertEqual([x["request_id"] for x in rest], rids[1::-1])
        errs = admin("GET", "/admin/errors?key_id=" + kid).json()["requests"]
        self.assertEqual(len(errs), 1)
        self.assertEqual(errs[0]["status"], 400)
        self.assertIn("invalid JSON", errs[0]["error"])
        only = admin("GET", "/admin/requests?status=400&key_id=" + kid)
        self.assertEqual(len(only.json()["requests"]), 1)
        # Reading the logs is not itself logged; changes are.
        n = stack.sql("SELECT COUNT(*) FROM usage_logs WHERE route LIKE "
                      "'/admin/%' AND method = 'GET'")[0][0]
        self.assertEqual(n, "0")

    def test_pool_and_initialize(self):
        k = new_key(metadata={"user_id": "pooluser"})
        self.assertEqual(stack.request("POST", "/api/chat", {
            "message": "hi"}, key=k["key"]).status, 200)
        r = admin("GET", "/admin/pool")
        self.assertEqual(r.status, 200, r)
        procs = r.json()["pool"]["processes"]
        self.assertIn("pooluser", [p.get("tenant") for p in procs])
        before = stack.stats()["limits"]
        r = admin("POST", "/api/cli-pool/initialize",
                  {"minInstances": 1, "maxInstances": 5})
        self.assertEqual(r.status, 200, r)
        lim = stack.stats()["limits"]
        self.assertEqual((lim["min_instances"], lim["max_instances"]), (1, 5))
        a = audit_rows("cli-pool")[0]
        self.assertEqual(a["action"], "pool.limits")
        self.assertEqual(a["after"], {"min_instances": 1, "max_instances": 5})
        for bad in ({"minInstances": 4, "maxInstances": 2},
                    {"maxInstances": 0}, {"minInstances": "2"}, {}):
            r = admin("POST", "/api/cli-pool/initialize", bad)
            self.assertEqual(r.status, 400, "%r %r" % (bad, r))
        self.assertEqual(stack.stats()["limits"]["max_instances"], 5)
        admin("POST", "/api/cli-pool/initialize", {
            "minInstances": before["min_instances"],
            "maxInstances": before["max_instances"]})


class PoolBoundsAllowlist(unittest.TestCase):
    """The pool's bounds (POST /admin/pool/initialize and its old path
    /api/cli-pool/initialize) are for the admin allowlist's addresses
    only, and still need an admin token there."""

    PATHS = ("/admin/pool/initialize", "/api/cli-pool/initialize")

    def audits(self):
        return stack.sql("SELECT COUNT(*) FROM audit_log WHERE "
                         "object_id = 'cli-pool'")[0][0]

    def test_outside_the_allowlist_nothing_changes(self):
        before, audited = stack.stats()["limits"], self.audits()
        body = {"minInstances": 0, "maxInstances": 1}
        for path in self.PATHS:
            for variant in (path, path + "?x=1", path.replace("/", "//", 1)):
                r = admin("POST", variant, body, source="127.0.0.2")
                self.assertEqual(r.status, 403, "%s: %r" % (variant, r))
                self.assertEqual(r.json()["error"]["type"],
                                 "permission_error")
                self.assertEqual(r.headers.get("content-type"),
                                 "application/json")
            # Nor without a token, nor with a client key.
            r = stack.request("POST", path, body, source="127.0.0.2")
            self.assertEqual(r.status, 403, r)
            r = stack.request("POST", path, body, source="127.0.0.2",
                              key=stack.create_key("far-%d" % len(path)))
            self.assertEqual(r.status, 403, r)
            self.assertNotIn("never admin", r.body, "nginx's own 403")
        self.assertEqual(stack.stats()["limits"], before)
        self.assertEqual(self.audits(), audited)
        # The client API is still open to that address.
        self.assertEqual(stack.request("GET", "/healthz",
                                       source="127.0.0.2").status, 200)

    def test_inside_the_allowlist_both_paths_work_with_a_token(self):
        before = stack.stats()["limits"]
        try:
            for i, path in enumerate(self.PATHS):
                r = stack.request("POST", path, {"maxInstances": 5 + i})
                self.assertEqual(r.status, 401, r)
                r = admin("POST", path, {"maxInstances": 5 + i})
                self.assertEqual(r.status, 200, r)
                self.assertEqual(stack.stats()["limits"]["max_instances"],
                                 5 + i)
                self.assertEqual(audit_rows("cli-pool")[0]["after"][
                    "max_instances"], 5 + i)
        finally:
            admin("POST", "/admin/pool/initialize", {
                "minInstances": before["min_instances"],
                "maxInstances": before["max_instances"]})


def scrape(source="127.0.0.1", path="/metrics"):
    """GET path from a source address: (status, content type, text)."""
    r = stack.request("GET", path, source=source)
    return r.status, r.headers.get("content-type"), r.body


class Metrics(unittest.TestCase):
    def test_counters_histograms_and_pool(self):
        # The per-minute window is the UTC minute: start with time left in
        # it, so that the fifth request meets the same window as the first.
        within_one_window(20)
        k = new_key(usage_limit={"requests_per_minute": 4})
        _, _, before = scrape()
        for _ in range(3):
            self.assertEqual(stack.request("GET", "/api/models",
                                           key=k["key"]).status, 200)
        self.assertEqual(stack.request("GET", "/api/models",
                                       key="ccg_nope").status, 401)
        r = stack.request("POST", "/api/chat", {"message": "count me"},
                          key=k["key"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(stack.request("GET", "/api/models",
                                       key=k["key"]).status, 429)
        usage = r.json()["usage"]

        def delta(text, name, **labels):
            return metric(text, name, **labels) - metric(before, name,
                                                         **labels)

        def settled():
            _, _, now = scrape()
            return delta(now, "ccgate_http_request_duration_seconds_count",
                         route="/api/models") == 5
        wait_for(settled, 60, "the metrics of five requests")
        status, ctype, now = scrape()
        self.assertEqual(status, 200)
        self.assertTrue(ctype.startswith("text/plain; version=0.0.4"))
        self.assertEqual(delta(now, "ccgate_http_requests_total",
                               route="/api/models", status="200"), 3)
        self.assertEqual(delta(now, "ccgate_http_requests_total",
                               route="/api/models", status="401"), 1)
        self.assertEqual(delta(now, "ccgate_http_requests_total",
                               route="/api/models", status="429"), 1)
        self.assertEqual(delta(now, "ccgate_quota_rejections_total"), 1)
        self.assertEqual(delta(now, "ccgate_tokens_total", kind="input"),
                         usage["input_tokens"])
        self.assertEqual(delta(now, "ccgate_tokens_total", kind="output"),
                         usage["output_tokens"])
        inf = metric(now, "ccgate_http_request_duration_seconds_bucket",
                     route="/api/chat", le="+Inf")
        self.assertEqual(inf, metric(
            now, "ccgate_http_request_duration_seconds_count",
            route="/api/chat"))
        self.assertLessEqual(metric(
            now, "ccgate_http_request_duration_seconds_bucket",
            route="/api/chat", le="0.005"), inf)
        self.assertEqual(metric(now, "ccgate_pool_up"), 1)
        self.assertGreaterEqual(metric(now, "ccgate_pool_max_instances"), 1)
        self.assertIn('ccgate_pool_processes{state="warm"}', now)
        self.assertGreaterEqual(metric(now, "ccgate_pool_events_total",
                                       event="jobs"), 1)
        # Unmatched paths share one label: no unbounded series.
        stack.request("GET", "/no/such/path/%d" % time.time_ns())
        self.assertNotIn("/no/such/path", scrape()[2])

    def test_only_the_admin_allowlist_may_scrape(self):
        status, ctype, body = scrape(source="127.0.0.2")
        self.assertEqual(status, 403)
        self.assertEqual(json.loads(body)["error"]["type"],
                         "permission_error")
        self.assertNotIn("ccgate_", body)
        self.assertEqual(scrape(source="127.0.0.1")[0], 200)
        # The client API is not limited to the admin allowlist.
        self.assertEqual(scrape(source="127.0.0.2", path="/healthz")[0], 200)


class OperatorSQL(unittest.TestCase):
    def test_views_procedures_and_analyst_role(self):
        within_one_window(30, period=86400)
        k = new_key(usage_limit={"requests_per_day": 10})
        kid = k["key"][4:20]
        stack.request("POST", "/api/chat", {"message": "x"}, key=k["key"])
        wait_usage(kid, 1)
        daily = stack.sql("SELECT requests FROM v_key_usage_daily WHERE "
                          "key_id = '%s'" % kid)
        self.assertEqual(daily, [["1"]])
        q = stack.sql("SELECT requests_per_day, requests_today FROM "
                      "v_key_quota_status WHERE key_id = '%s'" % kid)
        self.assertEqual(q, [["10", "1"]])
        stack.sql("SELECT * FROM v_recent_errors")
        conv = stack.sql("SELECT messages FROM v_tenant_conversations WHERE "
                         "tenant = 'key-%s'" % kid)
        self.assertEqual(conv, [["2"]])
        stack.sql("CALL set_key_limits('%s', 5, NULL, 1000)" % kid)
        got = admin("GET", "/admin/api-keys/" + kid).json()["key"]
        self.assertEqual(got["usage_limit"], {"requests_per_minute": 5,
                                              "requests_per_day": None,
                                              "tokens_per_day": 1000,
                                              "max_concurrent_requests": None,
                                              "queue": True})
        stack.sql("CALL suspend_key('%s')" % kid)
        self.assertEqual(stack.request("GET", "/api/models",
                                       key=k["key"]).status, 401)
        acts = [(a["action"], a["actor"]) for a in audit_rows(kid)[:2]]
        self.assertEqual(acts, [("key.suspend", "sql:root@localhost"),
                                ("key.limits", "sql:root@localhost")])
        with self.assertRaises(subprocess.CalledProcessError):
            stack.sql("CALL suspend_key('nosuchkeyatall00')")
        # The analysts' role reads the views, not secrets or messages.
        with open(os.path.join(SRCDIR, "sql", "roles.sql")) as f:
            stack.sql(f.read())
        stack.sql("CREATE USER IF NOT EXISTS 'ana'@'localhost' IDENTIFIED BY "
                  "'ana-pw'; GRANT ccgate_analyst TO 'ana'@'localhost'; "
                  "SET DEFAULT ROLE ccgate_analyst FOR 'ana'@'localhost'")

        def as_analyst(q):
            return subprocess.run(
                ["mariadb", "--no-defaults", "--protocol=socket",
                 "--socket=" + stack.path("db", "mysqld.sock"), "-uana",
                 "-pana-pw", "-N", "-B", "ccgate", "-e", q],
                capture_output=True, text=True)
        for view in ("v_key_usage_daily", "v_key_quota_status",
                     "v_recent_errors", "v_tenant_conversations"):
            r = as_analyst("SELECT COUNT(*) FROM %s" % view)
            self.assertEqual(r.returncode, 0, r.stderr)
        for q in ("SELECT key_hash FROM api_keys",
                  "SELECT signing_salt FROM api_keys",
                  "SELECT content FROM messages",
                  "SELECT password_hash FROM admin_users",
                  "UPDATE api_keys SET name = 'x'"):
            r = as_analyst(q)
            self.assertNotEqual(r.returncode, 0, q)
            self.assertIn("denied", r.stderr, q)


class CommandLine(unittest.TestCase):
    def test_key_commands_json_and_audit(self):
        out = json.loads(stack.admin("key", "create", "--name", "cli1",
                                     "--user", "cliuser", "--rpd", "9",
                                     "--models", "claude-haiku-4-5",
                                     "--json").stdout)
        kid, secret = out["id"], out["key"]
        self.assertEqual(out["usage_limit"]["requests_per_day"], 9)
        shown = json.loads(stack.admin("key", "show", kid, "--json").stdout)
        self.assertNotIn("key", shown)
        upd = json.loads(stack.admin("key", "update", kid, "--rpd", "none",
                                     "--streaming", "no", "--json").stdout)
        self.assertIsNone(upd["usage_limit"]["requests_per_day"])
        self.assertFalse(upd["permissions"]["allow_streaming"])
        upd = json.loads(stack.admin("key", "update", kid, "--max-concurrent",
                                     "2", "--queue", "no", "--json").stdout)
        self.assertEqual(upd["usage_limit"]["max_concurrent_requests"], 2)
        self.assertFalse(upd["usage_limit"]["queue"])
        text = stack.admin("key", "show", kid).stdout
        self.assertIn("concurrency 2", text)
        self.assertIn("429 at the cap", text)
        upd = json.loads(stack.admin("key", "update", kid, "--max-concurrent",
                                     "none", "--queue", "yes",
                                     "--json").stdout)
        self.assertIsNone(upd["usage_limit"]["max_concurrent_requests"])
        self.assertTrue(upd["usage_limit"]["queue"])
        r = stack.admin("key", "update", kid, "--max-concurrent", "0",
                        check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("max_concurrent_requests", r.stderr)
        rot = json.loads(stack.admin("key", "rotate", kid, "--grace", "0",
                                     "--json").stdout)
        self.assertEqual(stack.request("GET", "/api/models",
                                       key=secret).status, 401)
        self.assertEqual(stack.request("GET", "/api/models",
                                       key=rot["key"]).status, 200)
        listed = json.loads(stack.admin("key", "list", "--user", "cliuser",
                                        "--json").stdout)
        self.assertEqual([x["id"] for x in listed], [kid])
        stack.admin("key", "revoke", kid)
        self.assertEqual(stack.request("GET", "/api/models",
                                       key=rot["key"]).status, 401)
        acts = [(a["action"], a["actor"].split(":")[0]) for a in
                audit_rows(kid)]
        self.assertEqual(acts, [("key.revoke", "cli"), ("key.rotate", "cli"),
                                ("key.update", "cli"), ("key.update", "cli"),
                                ("key.update", "cli"), ("key.create", "cli")])
        for args, text in ((["key", "show", "nosuchkeyatall00"], "no such key"),
                           (["key", "update", kid, "--name", "x"], "revoked"),
                           (["key", "create", "--name", "x", "--models",
                             "gpt-4"], "permissions.models"),
                           (["user", "create", "shorty"], "password")):
            r = stack.admin(*args, stdin="short\n", check=False)
            self.assertEqual(r.returncode, 1, args)
            self.assertIn(text, r.stderr, args)
        r = stack.admin("key", "frobnicate", check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage:", r.stderr)

    def test_users_usage_and_purge(self):
        users = json.loads(stack.admin("user", "list", "--json").stdout)
        self.assertIn("root", [u["username"] for u in users])
        self.assertNotIn("password", json.dumps(users))
        k = new_key()
        kid = k["id"]
        stack.request("GET", "/api/models", key=k["key"])
        wait_usage(kid, 1)
        usage = json.loads(stack.admin("usage", "--key", kid,
                                       "--json").stdout)
        self.assertEqual([u["requests"] for u in usage], [1])
        # Purge: old usage rows, long-deleted conversations, expired keys.
        stack.sql("INSERT INTO usage_logs (request_id, key_id, route, "
                  "endpoint, method, status_code, duration_ms, created_at) "
                  "VALUES ('old', '%s', '/x', '/x', 'GET', 200, 1, "
                  "UTC_TIMESTAMP() - INTERVAL 100 DAY)" % kid)
        stack.sql("INSERT INTO conversations (id, tenant, model, created_at, "
                  "updated_at, deleted_at) VALUES ('00000000-0000-4000-8000-"
                  "000000000001', 't', 'm', UTC_TIMESTAMP(), UTC_TIMESTAMP(), "
                  "UTC_TIMESTAMP() - INTERVAL 40 DAY)")
        stack.sql("UPDATE api_keys SET expires_at = UTC_TIMESTAMP() - "
                  "INTERVAL 1 HOUR WHERE id = '%s'" % kid)
        stack.sql("INSERT INTO signature_nonces VALUES ('%s', REPEAT('a', 32), "
                  "UTC_TIMESTAMP() - INTERVAL 1 SECOND), ('%s', "
                  "REPEAT('b', 32), UTC_TIMESTAMP() + INTERVAL 1 HOUR)"
                  % (kid, kid))
        stack.sql("INSERT INTO idempotency_keys (key_id, idem_key, "
                  "request_sha256, state, request_id, lease_until, status, "
                  "created_at, expires_at) VALUES ('%s', 'old', "
                  "REPEAT('a', 32), 'done', 'r1', UTC_TIMESTAMP() - INTERVAL "
                  "2 DAY, 200, UTC_TIMESTAMP() - INTERVAL 2 DAY, "
                  "UTC_TIMESTAMP() - INTERVAL 1 DAY), ('%s', 'new', "
                  "REPEAT('a', 32), 'done', 'r2', UTC_TIMESTAMP(), 200, "
                  "UTC_TIMESTAMP(), UTC_TIMESTAMP() + INTERVAL 1 DAY)"
                  % (kid, kid))
        out = json.loads(stack.admin("purge", "--json").stdout)
        self.assertEqual(out["signature_nonces"], 1)
        self.assertEqual(out["idempotency_keys"], 1)
        self.assertEqual(stack.sql("SELECT idem_key FROM idempotency_keys "
                                   "WHERE key_id = '%s'" % kid), [["new"]])
        self.assertEqual(out["usage_rows"], 1)
        self.assertEqual(out["conversations"], 1)
        self.assertGreaterEqual(out["keys_expired"], 1)
        self.assertEqual(stack.sql("SELECT status FROM api_keys WHERE id = "
                                   "'%s'" % kid), [["expired"]])
        self.assertEqual(audit_rows(kid)[0]["action"], "key.expire")
        self.assertEqual(stack.sql("SELECT COUNT(*) FROM usage_logs WHERE "
                                   "request_id = 'old'"), [["0"]])
        again = json.loads(stack.admin("purge", "--json").stdout)
        self.assertEqual((again["usage_rows"], again["conversations"],
                          again["keys_expired"]), (0, 0, 0))


if __name__ == "__main__":
    main()
