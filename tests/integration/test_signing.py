#!/usr/bin/env python3
"""Signed requests (require_signature): the admin flows that make, show
once and rotate a signing secret; refusals (missing, malformed, stale,
wrong, replayed) with 401 in each dialect before anything runs or is
counted; the curl-plus-openssl example and the Python client of
docs/api.md, run as they are written there."""

import hashlib
import hmac
import json
import os
import re
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, SRCDIR, main, pinned_clients  # noqa: E402

stack = None
PW = "signing-admin-password"
_token = None


def setUpModule():
    global stack
    stack = Stack(app_opts={"key_cache_ms": 0, "signature_skew_s": 120},
                  name="signing").start()
    stack.create_admin("root", PW)


def tearDownModule():
    stack.stop()


def admin(method, path, body=None):
    global _token
    if _token is None:
        _token = stack.admin_token("root", PW)
    return stack.request(method, path, body,
                         headers={"Authorization": "Bearer " + _token})


def new_key(**spec):
    spec.setdefault("name", "s%d" % time.time_ns())
    r = admin("POST", "/admin/api-keys", spec)
    assert r.status == 201, r
    return r.json()["key"]


def sign(secret, method, path, body=b"", ts=None):
    ts = str(int(time.time()) if ts is None else ts)
    text = "\n".join([ts, method, path, hashlib.sha256(body).hexdigest()])
    return ts, hmac.new(secret.encode(), text.encode(),
                        hashlib.sha256).hexdigest()


def send(k, method, path, body=None, ts=None, sig_body=None, secret=None,
         headers=None):
    """A request signed with k's secret (or secret); sig_body signs other
    bytes than those sent."""
    raw = b"" if body is None else json.dumps(body).encode()
    t, s = sign(secret or k["signing_secret"], method, path,
                raw if sig_body is None else sig_body, ts)
    h = {"X-Ccgate-Timestamp": t, "X-Ccgate-Signature": s}
    h.update(headers or {})
    return stack.request(method, path, raw=raw if body is not None else None,
                         key=k["key"], headers=h)


def upstream_count():
    return len(stack.mock_records())


def quota_requests(kid):
    rows = stack.sql("SELECT IFNULL(SUM(requests), 0) FROM key_quota_windows "
                     "WHERE key_id = '%s' AND kind = 'minute'" % kid)
    return int(rows[0][0])


def doc_block(lang, after):
    """The first ```lang block after the heading `after` in docs/api.md."""
    with open(os.path.join(SRCDIR, "docs", "api.md")) as f:
        text = f.read()
    text = text[text.index(after):]
    m = re.search(r"```" + lang + r"\n(.*?)```", text, re.S)
    return m.group(1)


class AdminFlows(unittest.TestCase):
    def test_secret_is_shown_once_derived_and_rotated(self):
        k = new_key(require_signature=True)
        self.assertTrue(k["require_signature"])
        sec = k["signing_secret"]
        self.assertRegex(sec, r"^ccs_[0-9a-f]{64}$")
        got = admin("GET", "/admin/api-keys/" + k["id"])
        self.assertNotIn("signing_secret", got.body)
        self.assertNotIn(sec[4:], got.body)
        audit = admin("GET", "/admin/audit?object_id=" + k["id"]).body
        self.assertNotIn(sec[4:], audit)
        # Only a salt is stored: no column holds the secret.
        row = stack.sql("SELECT HEX(signing_salt), LENGTH(signing_salt), "
                        "HEX(CONCAT_WS('', key_hash, signing_salt)) FROM "
                        "api_keys WHERE id = '%s'" % k["id"])[0]
        self.assertEqual(row[1], "16")
        self.assertNotIn(sec[4:].upper(), row[2])
        self.assertEqual(send(k, "GET", "/api/models").status, 200)
        # On again: no new secret; the same one still works.
        again = admin("PUT", "/admin/api-keys/" + k["id"],
                      {"require_signature": True})
        self.assertEqual(again.status, 200, again)
        self.assertNotIn("signing_secret", again.json()["key"])
        self.assertEqual(send(k, "GET", "/api/models?a=1").status, 200)
        # Rotation with grace: a new key and secret; the old pair works.
        rot = admin("POST", "/admin/api-keys/%s/rotate" % k["id"],
                    {"grace_seconds": 600})
        self.assertEqual(rot.status, 200, rot)
        nk = rot.json()["key"]
        self.assertRegex(nk["signing_secret"], r"^ccs_[0-9a-f]{64}$")
        self.assertNotEqual(nk["signing_secret"], sec)
        self.assertEqual(send(nk, "GET", "/api/models?b=1").status, 200)
        self.assertEqual(send(k, "GET", "/api/models?c=1").status, 200)
        # Without grace: the old secret stops at once.
        rot2 = admin("POST", "/admin/api-keys/%s/rotate" % k["id"],
                     {"grace_seconds": 0}).json()["key"]
        self.assertEqual(send(rot2, "GET", "/api/models?d=1").status, 200)
        self.assertEqual(send(rot2, "GET", "/api/models?e=1",
                              secret=nk["signing_secret"]).status, 401)
        # Off: unsigned requests are accepted; a rotation makes no secret.
        off = admin("PUT", "/admin/api-keys/" + k["id"],
                    {"require_signature": False}).json()["key"]
        self.assertNotIn("signing_secret", off)
        self.assertEqual(stack.request("GET", "/api/models",
                                       key=rot2["key"]).status, 200)
        self.assertEqual(stack.sql("SELECT signing_salt IS NULL FROM api_keys "
                                   "WHERE id = '%s'" % k["id"]), [["1"]])
        rot3 = admin("POST", "/admin/api-keys/%s/rotate" % k["id"],
                     {"grace_seconds": 0}).json()["key"]
        self.assertNotIn("signing_secret", rot3)
        # On again by PUT: a new secret, shown in that answer.
        on = admin("PUT", "/admin/api-keys/" + k["id"],
                   {"require_signature": True}).json()
        self.assertIn("shown only once", on["notice"])
        on = dict(on["key"], key=rot3["key"])
        self.assertEqual(stack.request("GET", "/api/models",
                                       key=rot3["key"]).status, 401)
        self.assertEqual(send(on, "GET", "/api/models?f=1").status, 200)

    def test_command_line(self):
        out = json.loads(stack.admin("key", "create", "--name", "cli-signed",
                                     "--signature", "yes", "--json").stdout)
        self.assertTrue(out["require_signature"])
        self.assertRegex(out["signing_secret"], r"^ccs_[0-9a-f]{64}$")
        self.assertEqual(send(out, "GET", "/api/models").status, 200)
        text = stack.admin("key", "rotate", out["id"], "--grace", "0").stdout
        m = re.search(r"signing secret: (ccs_[0-9a-f]{64})", text)
        self.assertIsNotNone(m, text)
        key = re.search(r"key: (ccg_\S+)", text).group(1)
        self.assertEqual(send({"key": key, "signing_secret": m.group(1)},
                              "GET", "/api/models").status, 200)
        shown = stack.admin("key", "show", out["id"]).stdout
        self.assertIn("signatures required", shown)
        self.assertNotIn("ccs_", shown)


class Refusals(unittest.TestCase):
    def test_each_refusal_runs_and_counts_nothing(self):
        k = new_key(require_signature=True,
                    usage_limit={"requests_per_minute": 1000})
        chat = {"message": "signed hello"}
        raw = json.dumps(chat).encode()
        before = upstream_count()
        now = int(time.time())
        t, s = sign(k["signing_secret"], "POST", "/api/chat", raw)
        cases = [
            ("missing", {}),
            ("no signature", {"X-Ccgate-Timestamp": t}),
            ("no timestamp", {"X-Ccgate-Signature": s}),
            ("malformed timestamp", {"X-Ccgate-Timestamp": "12:00",
                                     "X-Ccgate-Signature": s}),
            ("negative timestamp", {"X-Ccgate-Timestamp": "-5",
                                    "X-Ccgate-Signature": s}),
            ("empty fraction", {"X-Ccgate-Timestamp": t + ".",
                                "X-Ccgate-Signature": s}),
            ("long fraction", {"X-Ccgate-Timestamp": t + ".1234567890",
                               "X-Ccgate-Signature": s}),
            ("fraction not signed", {"X-Ccgate-Timestamp": t + ".5",
                                     "X-Ccgate-Signature": s}),
            ("malformed signature", {"X-Ccgate-Timestamp": t,
                                     "X-Ccgate-Signature": s[:63]}),
            ("upper-case hex", {"X-Ccgate-Timestamp": t,
                                "X-Ccgate-Signature": s.upper()}),
            ("stale", dict(zip(("X-Ccgate-Timestamp", "X-Ccgate-Signature"),
                               sign(k["signing_secret"], "POST", "/api/chat",
                                    raw, now - 1000)))),
            ("future", dict(zip(("X-Ccgate-Timestamp", "X-Ccgate-Signature"),
                                sign(k["signing_secret"], "POST",
                                     "/api/chat", raw, now + 1000)))),
            ("wrong body", dict(zip(("X-Ccgate-Timestamp",
                                     "X-Ccgate-Signature"),
                                    sign(k["signing_secret"], "POST",
                                         "/api/chat", b'{"message":"x"}')))),
            ("wrong path", dict(zip(("X-Ccgate-Timestamp",
                                     "X-Ccgate-Signature"),
                                    sign(k["signing_secret"], "POST",
                                         "/api/chat?x=1", raw)))),
            ("wrong secret", dict(zip(("X-Ccgate-Timestamp",
                                       "X-Ccgate-Signature"),
                                      sign("ccs_" + "0" * 64, "POST",
                                           "/api/chat", raw)))),
        ]
        for what, h in cases:
            r = stack.request("POST", "/api/chat", raw=raw, key=k["key"],
                              headers=h)
            self.assertEqual(r.status, 401, "%s: %r" % (what, r))
            self.assertEqual(r.json()["error"]["type"],
                             "authentication_error", what)
            self.assertFalse(r.json()["success"], what)
        self.assertEqual(upstream_count(), before, "a refused request ran")
        self.assertEqual(quota_requests(k["id"]), 0,
                         "a refused request was counted")
        # The right one runs ("v1=" accepted), once.
        h = {"X-Ccgate-Timestamp": t, "X-Ccgate-Signature": "v1=" + s}
        r = stack.request("POST", "/api/chat", raw=raw, key=k["key"],
                          headers=h)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(upstream_count(), before + 1)
        self.assertEqual(quota_requests(k["id"]), 1)
        # The same signature again, in either form: a replay.
        for sig in (s, "v1=" + s):
            r = stack.request("POST", "/api/chat", raw=raw, key=k["key"],
                              headers={"X-Ccgate-Timestamp": t,
                                       "X-Ccgate-Signature": sig})
            self.assertEqual(r.status, 401, r)
            self.assertIn("replayed", r.json()["error"]["message"])
        self.assertEqual(upstream_count(), before + 1)
        self.assertEqual(quota_requests(k["id"]), 1)
        self.assertEqual(stack.sql("SELECT COUNT(*) FROM signature_nonces "
                                   "WHERE key_id = '%s'" % k["id"]), [["1"]])

    def test_a_fraction_tells_same_second_requests_apart(self):
        k = new_key(require_signature=True)
        now = int(time.time())
        codes = []
        for frac in ("001", "002", "001"):
            t, s = sign(k["signing_secret"], "GET", "/api/models", b"",
                        "%d.%s" % (now, frac))
            codes.append(stack.request("GET", "/api/models", key=k["key"],
                                       headers={"X-Ccgate-Timestamp": t,
                                                "X-Ccgate-Signature": s})
                         .status)
        self.assertEqual(codes, [200, 200, 401])

    def test_compatible_dialects(self):
        k = new_key(require_signature=True)
        body = {"model": "claude-sonnet-4-5", "max_tokens": 64,
                "messages": [{"role": "user", "content": "compat signed"}]}
        r = stack.request("POST", "/v1/chat/completions", body, key=k["key"])
        self.assertEqual(r.status, 401, r)
        self.assertEqual(r.json()["error"]["type"], "authentication_error")
        self.assertIn("param", r.json()["error"])
        r = stack.request("POST", "/v1/messages", body, key=k["key"],
                          headers={"anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 401, r)
        self.assertEqual(r.json()["type"], "error")
        self.assertEqual(r.json()["error"]["type"], "authentication_error")
        r = send(k, "POST", "/v1/messages", body,
                 headers={"anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["type"], "message")
        r = send(k, "POST", "/v1/chat/completions", body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["object"], "chat.completion")

    def test_an_unsigned_key_ignores_signature_headers(self):
        k = new_key()
        r = stack.request("GET", "/api/models", key=k["key"], headers={
            "X-Ccgate-Timestamp": "1", "X-Ccgate-Signature": "junk"})
        self.assertEqual(r.status, 200, r)


class Uploads(unittest.TestCase):
    """An upload's body is streamed, never held: the string to sign holds
    the SHA-256 declared in X-Ccgate-Content-Sha256, and the files API
    stores nothing whose bytes do not match it."""

    def put(self, k, path, data, declared=None, signed_hash=None,
            omit=False):
        """PUT data, signed over signed_hash (the declared one by
        default), declaring declared (the data's by default)."""
        if declared is None:
            declared = hashlib.sha256(data).hexdigest()
        if signed_hash is None:
            signed_hash = declared
        uri = "/api/files/" + path
        ts = str(time.time())
        text = "\n".join([ts, "PUT", uri, signed_hash.lower()])
        h = {"X-Ccgate-Timestamp": ts,
             "X-Ccgate-Signature": hmac.new(
                 k["signing_secret"].encode(), text.encode(),
                 hashlib.sha256).hexdigest(),
             "Content-Type": "application/octet-stream"}
        if not omit:
            h["X-Ccgate-Content-Sha256"] = declared
        return stack.request("PUT", uri, raw=data, key=k["key"], headers=h)

    def get(self, k, path):
        return stack.request("GET", "/api/files/" + path, key=k["key"],
                             headers=signed_headers(k, "GET",
                                                    "/api/files/" + path))

    def listing(self, k):
        r = stack.request("GET", "/api/files?prefix=uploads", key=k["key"],
                          headers=signed_headers(k, "GET",
                                                 "/api/files?prefix=uploads"))
        self.assertEqual(r.status, 200, r)
        return sorted(f["path"] for f in r.json()["files"])

    def refused(self, r, status, text):
        self.assertEqual(r.status, status, r)
        self.assertIs(r.json()["success"], False, r)
        self.assertIn(text, r.json()["error"]["message"])

    def test_signed_put(self):
        k = new_key(require_signature=True, metadata={"user_id": "sigput"})
        data = os.urandom(100000).hex().encode()
        r = self.put(k, "uploads/good.bin", data)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json()["sha256"], hashlib.sha256(data).hexdigest())
        r = self.get(k, "uploads/good.bin")
        self.assertEqual((r.status, r.body), (200, data.decode()))
        # Upper case hex is declared as well; lower case is signed.
        r = self.put(k, "uploads/upper.bin", b"abc",
                     declared=hashlib.sha256(b"abc").hexdigest().upper())
        self.assertEqual(r.status, 201, r)
        # A missing declaration: 401 before anything is read.
        self.refused(self.put(k, "uploads/missing.bin", b"x", omit=True),
                     401, "X-Ccgate-Content-Sha256")
        # Malformed: 400.
        self.refused(self.put(k, "uploads/bad.bin", b"x", declared="zz"),
                     400, "X-Ccgate-Content-Sha256")
        # Signed and declared, but other bytes sent: nothing stored.
        other = hashlib.sha256(b"what was meant").hexdigest()
        self.refused(self.put(k, "uploads/swapped.bin", b"what was sent",
                              declared=other),
                     400, "does not match X-Ccgate-Content-Sha256")
        # The right declaration, signed over another one: 401.
        self.refused(self.put(k, "uploads/resigned.bin", b"y",
                              signed_hash=other),
                     401, "invalid signature")
        # An old body's signature cannot carry new bytes over the old file.
        self.refused(self.put(k, "uploads/good.bin", b"replaced",
                              declared=hashlib.sha256(data).hexdigest()),
                     400, "does not match")
        self.assertEqual(self.listing(k), ["uploads/good.bin",
                                           "uploads/upper.bin"])
        r = stack.request("GET", "/api/files?prefix=uploads", key=k["key"],
                          headers=signed_headers(
                              k, "GET", "/api/files?prefix=uploads"))
        sums = dict((f["path"], f["sha256"]) for f in r.json()["files"])
        self.assertEqual(sums["uploads/good.bin"],
                         hashlib.sha256(data).hexdigest())

    def multipart(self, parts, boundary="sigbound"):
        out = b""
        for name, data in parts:
            out += (b"--" + boundary.encode() + b"\r\n"
                    b"Content-Disposition: form-data; name=\"f\"; "
                    b"filename=\"" + name.encode() + b"\"\r\n\r\n" +
                    data + b"\r\n")
        return out + b"--" + boundary.encode() + b"--\r\nepilogue\r\n"

    def post(self, k, body, declared=None, sign_it=True):
        if declared is None:
            declared = hashlib.sha256(body).hexdigest()
        h = {"Content-Type": "multipart/form-data; boundary=sigbound",
             "X-Ccgate-Content-Sha256": declared}
        if sign_it:
            ts = str(time.time())
            text = "\n".join([ts, "POST", "/api/files", declared])
            h["X-Ccgate-Timestamp"] = ts
            h["X-Ccgate-Signature"] = hmac.new(
                k["signing_secret"].encode(), text.encode(),
                hashlib.sha256).hexdigest()
        return stack.request("POST", "/api/files", raw=body, key=k["key"],
                             headers=h)

    def test_signed_multipart(self):
        k = new_key(require_signature=True, metadata={"user_id": "sigmp"})
        body = self.multipart([("a.txt", b"alpha"), ("b.txt", b"beta")])
        r = self.post(k, body)
        self.assertEqual(r.status, 201, r)
        self.assertEqual([f["path"] for f in r.json()["files"]],
                         ["uploads/a.txt", "uploads/b.txt"])
        # The hash covers the framing and the epilogue too: a body whose
        # files are the same but whose epilogue differs is refused, and
        # so is one whose second part differs; neither stores a part.
        good = hashlib.sha256(
            self.multipart([("c.txt", b"gamma"), ("d.txt", b"delta")]))
        tail = self.multipart([("c.txt", b"gamma"), ("d.txt", b"delta")])
        tail = tail.replace(b"epilogue", b"EPILOGUE")
        self.refused(self.post(k, tail, declared=good.hexdigest()), 400,
                     "does not match X-Ccgate-Content-Sha256")
        swapped = self.multipart([("c.txt", b"gamma"), ("d.txt", b"DELTA")])
        self.refused(self.post(k, swapped, declared=good.hexdigest()), 400,
                     "does not match")
        self.assertEqual(self.listing(k), ["uploads/a.txt", "uploads/b.txt"])

    def test_unsigned_key_declaring_is_checked(self):
        k = new_key(metadata={"user_id": "sigplain"})
        data = b"checked in transit"
        h = {"X-Ccgate-Content-Sha256": hashlib.sha256(b"no").hexdigest()}
        r = stack.request("PUT", "/api/files/uploads/u.bin", raw=data,
                          key=k["key"], headers=h)
        self.refused(r, 400, "does not match X-Ccgate-Content-Sha256")
        h["X-Ccgate-Content-Sha256"] = hashlib.sha256(data).hexdigest()
        r = stack.request("PUT", "/api/files/uploads/u.bin", raw=data,
                          key=k["key"], headers=h)
        self.assertEqual(r.status, 201, r)
        body = self.multipart([("m.txt", b"m")])
        r = self.post(k, body, declared=hashlib.sha256(b"").hexdigest(),
                      sign_it=False)
        self.refused(r, 400, "does not match")
        r = stack.request("GET", "/api/files?prefix=uploads", key=k["key"])
        self.assertEqual([f["path"] for f in r.json()["files"]],
                         ["uploads/u.bin"])


def signed_headers(k, method, uri, body=b""):
    ts, sig = sign(k["signing_secret"], method, uri, body, time.time())
    return {"X-Ccgate-Timestamp": ts, "X-Ccgate-Signature": sig}


class WebSocket(unittest.TestCase):
    """The upgrade is signed (GET /api/ws, no body); its turns are not."""

    def socket(self, headers):
        clients = pinned_clients()
        return subprocess.Popen(
            ["node", os.path.join(SRCDIR, "tests", "integration", "ws",
                                  "wsclient.cjs"), "one",
             "wss://127.0.0.1:%d/api/ws" % stack.port,
             json.dumps({"headers": headers})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, CCGATE_CLIENTS=clients))

    def first_event(self, p):
        return json.loads(p.stdout.readline())

    def close(self, p):
        if p.poll() is None:
            try:
                p.stdin.write(json.dumps({"op": "close"}) + "\n")
                p.stdin.flush()
                p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()
                p.wait()

    def test_signed_upgrade(self):
        k = new_key(require_signature=True)
        auth = {"Authorization": "Bearer " + k["key"]}
        p = self.socket(auth)
        ev = self.first_event(p)
        self.close(p)
        self.assertEqual((ev["ev"], ev.get("status")), ("refused", 401), ev)
        t, s = sign(k["signing_secret"], "GET", "/api/ws")
        signed = dict(auth, **{"X-Ccgate-Timestamp": t,
                               "X-Ccgate-Signature": s})
        p = self.socket(signed)
        try:
            self.assertEqual(self.first_event(p)["ev"], "open")
            for n in range(2):
                p.stdin.write(json.dumps({"op": "send", "text": json.dumps(
                    {"type": "chat", "message": "ws signed %d" % n})}) + "\n")
                p.stdin.flush()
                while True:
                    ev = self.first_event(p)
                    self.assertEqual(ev["ev"], "msg", ev)
                    if ev["data"]["type"] != "delta":
                        break
                self.assertEqual(ev["data"]["type"], "done", ev)
        finally:
            self.close(p)
        # The same upgrade again: a replay.
        p = self.socket(signed)
        ev = self.first_event(p)
        self.close(p)
        self.assertEqual((ev["ev"], ev.get("status")), ("refused", 401), ev)


class DocumentedClients(unittest.TestCase):
    def test_the_python_client_of_api_md(self):
        k = new_key(require_signature=True)
        ns = {}
        exec(doc_block("python", "## Signed requests"), ns)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        base = "https://127.0.0.1:%d" % stack.port
        st, out = ns["ccgate_request"](base, k["key"], k["signing_secret"],
                                       "GET", "/api/models", context=ctx)
        self.assertEqual(st, 200, out)
        st, out = ns["ccgate_request"](base, k["key"], k["signing_secret"],
                                       "POST", "/api/chat",
                                       {"message": "python signed"},
                                       context=ctx)
        self.assertEqual(st, 200, out)
        self.assertTrue(out["success"])
        st, out = ns["ccgate_request"](base, k["key"], "ccs_" + "1" * 64,
                                       "GET", "/api/conversations?limit=5",
                                       context=ctx)
        self.assertEqual(st, 401, out)
        st, out = ns["ccgate_request"](base, k["key"], k["signing_secret"],
                                       "GET", "/api/conversations?limit=5",
                                       context=ctx)
        self.assertEqual(st, 200, out)

    def test_the_curl_example_of_api_md(self):
        k = new_key(require_signature=True)
        script = doc_block("sh", "## Signed requests")
        lines = script.splitlines()
        self.assertTrue(lines[0].startswith("KEY="))
        script = "\n".join(lines[1:])
        env = dict(os.environ, KEY=k["key"], SECRET=k["signing_secret"],
                   CCGATE_URL="https://127.0.0.1:%d" % stack.port,
                   CURL_CA_BUNDLE=stack.path("tls.crt"))
        p = subprocess.run(["sh", "-ec", script], env=env,
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertTrue(out["success"], out)


if __name__ == "__main__":
    main()
