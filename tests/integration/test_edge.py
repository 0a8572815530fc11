#!/usr/bin/env python3
"""nginx at the edge, with the template's real limits: per-address and
per-key request rates and per-address connections answered 429 in JSON,
the API and admin allowlists, the client address taken from trusted
proxies only, HSTS, the JSON access log with its logrotate script, and
whose request id it records (nginx's own; a client's kept apart)."""

import concurrent.futures
import gzip
import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SRCDIR, Stack, wait_for, main  # noqa: E402

stack = None
PW = "edge admin password"


def setUpModule():
    global stack
    stack = Stack(
        app_opts={"key_cache_ms": 0, "sse_heartbeat_ms": 300},
        nginx_opts={"RATE_PER_IP": "2r/s", "BURST_PER_IP": "30",
                    "RATE_PER_KEY": "1r/s", "BURST_PER_KEY": "3",
                    "CONN_PER_IP": "3"},
        edge_files={
            # The API for 127.0.0.1 and 127.0.0.3 only; admin also for a
            # documentation address a trusted proxy may forward.
            "api-allow.conf": "default 0;\n127.0.0.1 1;\n127.0.0.3 1;\n"
                              "127.0.0.4 1;\n",
            "admin-allow.conf": "default 0;\n127.0.0.1 1;\n"
                                "198.51.100.7 1;\n",
            "trusted-proxies.conf": "set_real_ip_from 127.0.0.1;\n"},
        name="edge").start()
    stack.create_admin("edge", PW)


def tearDownModule():
    stack.stop()


def get(path, source="127.0.0.1", headers=None, method="GET", body=None):
    """A request from a source address: (status, headers, body)."""
    r = stack.request(method, path, raw=body, headers=headers, source=source)
    return r.status, r.headers, r.body


class Limits(unittest.TestCase):
    def test_per_address_rate(self):
        # 127.0.0.3: its own address bucket (burst 30 at 2 r/s).  Each
        # request is a new TLS connection (30-40 ms here), so the bucket
        # lets one more through every 0.5 s: count against the time taken
        # rather than expect a given request to be refused.
        t0 = time.monotonic()
        answers = [get("/healthz", source="127.0.0.3") for _ in range(45)]
        elapsed = time.monotonic() - t0
        statuses = [a[0] for a in answers]
        self.assertIn(429, statuses)
        self.assertGreaterEqual(statuses.count(200), 30)
        self.assertLessEqual(statuses.count(200), 32 + 2 * elapsed,
                             "burst 30 and 2 r/s over %.2f s" % elapsed)
        # What a refused client is told.
        _, headers, body = next(a for a in answers if a[0] == 429)
        self.assertEqual(json.loads(body)["error"]["type"],
                         "rate_limit_error")
        self.assertIn("retry-after", headers)
        # Another address is not held up.
        self.assertEqual(get("/healthz", source="127.0.0.4")[0], 200)

    def test_per_key_rate_from_one_address(self):
        a = stack.create_key("edge-a")
        b = stack.create_key("edge-b")
        auth = lambda k: {"Authorization": "Bearer " + k}  # noqa: E731
        got = [get("/api/models", headers=auth(a))[0] for _ in range(8)]
        self.assertIn(429, got, "key a over 1 r/s, burst 3")
        self.assertEqual(got[:4], [200] * 4)
        # Key b, same address, same moment: its own bucket.
        self.assertEqual(get("/api/models", headers=auth(b))[0], 200)
        # x-api-key counts as the same key id.
        self.assertEqual(get("/api/models", headers={"x-api-key": a})[0], 429)
        # Sending a second key in x-api-key does not escape the Bearer's
        # bucket: ccgate-fcgi uses the Bearer key, and so does the limit.
        h = dict(auth(a), **{"x-api-key": b})
        self.assertEqual(get("/api/models", headers=h)[0], 429)
        time.sleep(4.5)
        self.assertEqual(get("/api/models", headers=auth(a))[0], 200)

    def test_connections_per_address(self):
        key = stack.create_key("edge-conn")
        h = {"Authorization": "Bearer " + key,
             "Content-Type": "application/json"}
        body = json.dumps({"message": "hold [[mock:slow=2500]]"})
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            futs = [ex.submit(get, "/api/chat", "127.0.0.4", h, "POST", body)
                    for _ in range(6)]
            statuses = sorted(f.result()[0] for f in futs)
        self.assertEqual(statuses.count(200), 3, statuses)
        self.assertEqual(statuses.count(429), 3, statuses)


class Streams(unittest.TestCase):
    def test_heartbeats_keep_a_slow_stream_alive(self):
        """Nothing comes from upstream for 2 s: the client still gets a
        comment line every sse_heartbeat_ms, through nginx unbuffered."""
        key = stack.create_key("edge-stream")
        c = stack.conn(timeout=30)
        try:
            c.request("POST", "/api/chat", body=json.dumps({
                "message": "wait [[mock:slow=2000]]", "stream": True}),
                headers={"Authorization": "Bearer " + key,
                         "Content-Type": "application/json"})
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            lines = [ln.decode().rstrip("\n") for ln in r]
        finally:
            c.close()
        first_data = next(i for i, ln in enumerate(lines)
                          if ln.startswith("data: "))
        beats = [ln for ln in lines[:first_data] if ln == ": keep-alive"]
        self.assertGreaterEqual(len(beats), 3, lines[:first_data])
        self.assertEqual(lines[-2], "data: [DONE]")
        done = json.loads([ln for ln in lines if '"done"' in ln][0][6:])
        self.assertTrue(done["success"])


class Allowlists(unittest.TestCase):
    def test_api_allowlist(self):
        status, _, body = get("/healthz", source="127.0.0.2")
        self.assertEqual(status, 403)
        self.assertEqual(json.loads(body)["error"]["type"],
                         "permission_error")
        self.assertEqual(get("/healthz", source="127.0.0.1")[0], 200)

    def test_trusted_proxy_gives_the_client_address(self):
        # From the trusted proxy (127.0.0.1), X-Forwarded-For names the
        # client: an allowed admin address, recorded as the failure's.
        login = json.dumps({"username": "edge", "password": "wrong pass"})
        status, _, _ = get("/admin/login", headers={
            "X-Forwarded-For": "198.51.100.7",
            "Content-Type": "application/json"}, method="POST", body=login)
        self.assertEqual(status, 401)
        rows = stack.sql("SELECT subject FROM admin_login_failures WHERE "
                         "scope = 'ip'")
        self.assertEqual(rows, [["198.51.100.7"]])
        stack.sql("DELETE FROM admin_login_failures")
        # From an untrusted address the header is ignored: 127.0.0.4
        # claiming to forward for 127.0.0.1 is still not an admin.
        status, _, _ = get("/admin/login", source="127.0.0.4", headers={
            "X-Forwarded-For": "127.0.0.1",
            "Content-Type": "application/json"}, method="POST", body=login)
        self.assertEqual(status, 403)
        # And a forwarded address outside the API allowlist is refused.
        status, _, _ = get("/healthz", headers={
            "X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(status, 403)

    def test_paths_nginx_and_ccgate_read_apart(self):
        # nginx decodes and resolves these to another location than the
        # raw path ccgate routes on: /admin/tenants/..%2F..%2Fhealthz is
        # /healthz to nginx's admin allowlist, an admin route to the raw
        # path.  ccgate refuses every such path with its own 400, from an
        # address outside the admin allowlist (127.0.0.3) or inside it.
        for source in ("127.0.0.3", "127.0.0.1"):
            for method, path in (
                    ("DELETE", "/admin/tenants/..%2F..%2Fhealthz"),
                    ("DELETE", "/admin/tenants/..%2f..%2fhealthz"),
                    ("GET", "/admin/api-keys/%2e%2e/%2e%2e/healthz")):
                with self.subTest(source=source, path=path):
                    status, _, body = get(path, source=source,
                                          method=method)
                    self.assertEqual(status, 400, body)
                    err = json.loads(body)
                    self.assertIs(err["success"], False)
                    self.assertIn("invalid path", err["error"]["message"])

    def test_hsts(self):
        for path in ("/healthz", "/admin/", "/no/such/route"):
            _, headers, _ = get(path, source="127.0.0.1")
            self.assertEqual(headers.get("strict-transport-security"),
                             "max-age=63072000", path)


class AccessLog(unittest.TestCase):
    def lines(self, name="access.log"):
        path = stack.path("log", name)
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt") as f:
            return [json.loads(line) for line in f]

    def request_ids(self, name="access.log"):
        return [e["request_id"] for e in self.lines(name)]

    def logged(self, key):
        _, headers, _ = get("/api/models", source="127.0.0.4",
                            headers={"Authorization": "Bearer " + key})
        rid = headers["x-request-id"]
        wait_for(lambda: rid in self.request_ids(), 60, "the log line")
        return rid

    def rotate(self):
        conf = stack.path("logrotate.conf")
        subprocess.run([os.path.join(SRCDIR, "deploy", "render"),
                        os.path.join(SRCDIR, "deploy", "logrotate",
                                     "ccgate.in"), conf,
                        "LOGDIR=" + stack.path("log"),
                        "NGINX_PID=" + stack.path("nginx-tmp", "nginx.pid")],
                       check=True)
        r = subprocess.run(["logrotate", "-f", "-s",
                            stack.path("logrotate.state"), conf],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_json_lines_rotated_and_reopened(self):
        key = stack.create_key("edge-log")
        rid = self.logged(key)
        e = [x for x in self.lines() if x["request_id"] == rid][0]
        self.assertEqual((e["status"], e["method"], e["uri"],
                          e["remote_addr"]),
                         (200, "GET", "/api/models", "127.0.0.4"))
        self.assertEqual(e["key_id"], key.split("_")[1])
        self.assertIsInstance(e["request_time"], float)
        self.assertIsInstance(e["body_bytes_sent"], int)
        # The key's public id is there; its secret is nowhere.
        with open(stack.path("log", "access.log")) as f:
            self.assertNotIn(key.split("_", 2)[2], f.read())

        # Rotated: the old lines move to access.log.1 and nginx, told by
        # the script's postrotate, writes the next ones to a new file.
        self.rotate()
        self.assertIn(rid, self.request_ids("access.log.1"))
        time.sleep(1.1)                 # the per-key rate: 1 r/s
        rid2 = self.logged(key)
        self.assertNotIn(rid, self.request_ids())
        self.assertNotIn(rid2, self.request_ids("access.log.1"))
        # One rotation later the older file is compressed.
        self.rotate()
        self.assertIn(rid, self.request_ids("access.log.2.gz"))
        self.assertIn(rid2, self.request_ids("access.log.1"))



class RequestIdInTheLog(unittest.TestCase):
    def line_of(self, rid):
        def find():
            with open(stack.path("log", "access.log")) as f:
                return [e for e in map(json.loads, f)
                        if e["request_id"] == rid]
        found = []
        wait_for(lambda: found.extend(find()) or found, 60, "the log line")
        return found[0]

    def test_the_log_has_nginx_id_and_the_clients_apart(self):
        for sent, kept in (("forged-log-1", "forged-log-1"),
                           ("not usable", ""), ("y" * 129, "")):
            status, headers, _ = get("/healthz", source="127.0.0.4",
                                     headers={"X-Request-Id": sent})
            self.assertEqual(status, 200)
            rid = headers["x-request-id"]
            self.assertRegex(rid, "^[0-9a-f]{32}$")
            e = self.line_of(rid)
            self.assertEqual(e["client_request_id"], kept, repr(sent))
        # nginx's own refusals too (the API allowlist's 403).
        status, headers, _ = get("/healthz", source="127.0.0.2",
                                 headers={"X-Request-Id": "forged-log-2"})
        self.assertEqual(status, 403)
        rid = headers["x-request-id"]
        self.assertNotEqual(rid, "forged-log-2")
        self.assertEqual(self.line_of(rid)["client_request_id"],
                         "forged-log-2")

if __name__ == "__main__":
    main()
