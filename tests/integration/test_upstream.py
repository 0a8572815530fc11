#!/usr/bin/env python3
"""The upstream account's state, with the real CLI against the mock
upstream (POST /_upstream makes it answer as Anthropic does): a plan's
usage limit (429 with anthropic-ratelimit-unified-reset), a bare 429, 529
and 401.  The first failing turn is answered in each dialect with the
account's error (429 rate_limit_error with Retry-After, 503
overloaded_error, 503 naming the rejected credential); the turns after it
are refused at once, without a CLI and without reaching the upstream;
once the wait passes exactly one probe goes up, and its outcome sets the
state.  The state shows in /readyz (degraded), /admin/pool, /metrics and
the audit log; a tenant whose text reads like the CLI's report of a usage
limit changes nothing; a turn refused after its stream began (the second
upstream request of a tool call) ends with the dialect's error event.  The pool holds a subscription's token
(egress_auth = oauth), as the accounts that meet plan limits do."""

import http.client
import json
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, wait_for, main  # noqa: E402

stack = None
key = None
_token = None
PW = "upstream-admin-password"


def setUpModule():
    global stack, key
    stack = Stack({"egress_auth": "oauth", "min_instances": 1,
                   "upstream_cooldown_ms": 3000,
                   "upstream_probe_interval_ms": 4000,
                   "cli_max_retries": 1},
                  name="upstream").start()
    stack.create_admin("root", PW)
    key = stack.create_key("upstream")
    out = stack.admin("key", "create", "--name", "tooler", "--user",
                      "tooler", "--json", "--tools", "yes")
    stack.keys["tooler"] = json.loads(out.stdout)["key"]


def tearDownModule():
    if stack is not None:
        stack.stop()


def token():
    global _token
    if _token is None:
        _token = stack.admin_token("root", PW)
    return _token


def admin(method, path, body=None):
    return stack.request(method, path, body,
                         headers={"Authorization": "Bearer " + token()})


def mock(method, body=None):
    """The mock's account state (POST sets it)."""
    c = http.client.HTTPConnection("127.0.0.1", stack.mock_port, timeout=10)
    try:
        c.request(method, "/_upstream",
                  body=None if body is None else json.dumps(body))
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def upstream():
    """ccgate-poold's view of the account."""
    return stack.stats()["upstream"]


def placed():
    """Jobs ccgate-poold has placed on a CLI, in all."""
    return sum(stack.stats()["placed"].values())


def chat(path="/api/chat", stream=False, text="hello"):
    if path == "/api/chat":
        body = {"message": text, "stream": stream}
    else:
        body = {"model": "claude-sonnet-4-5", "max_tokens": 200,
                "stream": stream,
                "messages": [{"role": "user", "content": text}]}
    return stack.request("POST", path, body, key=key)


def audit_rows():
    return stack.sql("SELECT actor, before_state, after_state FROM "
                     "audit_log WHERE action = 'upstream.state' ORDER BY id")


def recover():
    """Send turns until one is answered (each refused at once until the
    wait passes); the account is ok afterwards."""
    wait_for(lambda: chat().status == 200, 60, "the probe to succeed")
    assert upstream()["state"] == "ok"


ROUTES = (("/api/chat", False), ("/v1/chat/completions", False),
          ("/v1/messages", True), ("/api/chat", True),
          ("/v1/chat/completions", True), ("/v1/messages", False))


def error_of(path, r):
    """(type, message) of an error answer in the route's dialect."""
    body = r.json()
    if path == "/v1/messages":
        assert body["type"] == "error", body
    if path == "/api/chat":
        assert body["success"] is False, body
    return body["error"]["type"], body["error"]["message"]


class Upstream(unittest.TestCase):
    def setUp(self):
        mock("POST", {"mode": "ok"})
        if upstream()["state"] != "ok":
            recover()

    def refused_everywhere(self, status, types, words):
        """Every route and mode refused at once: no CLI, no upstream."""
        before_mock = mock("GET")["requests"]
        before_placed = placed()
        before_refused = upstream()["refused"]
        for path, stream in ROUTES:
            r = chat(path, stream)
            self.assertEqual(r.status, status, (path, stream, r))
            # The error came before any byte: a JSON answer, not a stream.
            self.assertTrue(r.headers["content-type"].startswith(
                "application/json"), r.headers)
            self.assertGreaterEqual(int(r.headers["retry-after"]), 1)
            etype, msg = error_of(path, r)
            self.assertEqual(etype, types[path], (path, r))
            self.assertIn(words, msg)
        self.assertEqual(mock("GET")["requests"], before_mock)
        self.assertEqual(placed(), before_placed)
        self.assertEqual(upstream()["refused"],
                         before_refused + len(ROUTES))

    def test_1_usage_limit_until_its_reset(self):
        audits = len(audit_rows())
        errors = stack.metric("ccgate_upstream_errors_total",
                              type="rate_limit")
        n0 = mock("GET")["requests"]
        st = mock("POST", {"mode": "limit", "count": 1, "reset_in": 6})
        r = chat()
        self.assertEqual(r.status, 429, r)
        self.assertEqual(error_of("/api/chat", r)[0], "rate_limit_error")
        self.assertIn("usage limit", r.json()["error"]["message"])
        ra = int(r.headers["retry-after"])
        self.assertGreaterEqual(ra, 1)
        self.assertLessEqual(ra, 7)
        self.assertEqual(mock("GET")["answered"], 1)
        up = upstream()
        self.assertEqual(up["state"], "limited")
        self.assertEqual(up["reset"], st["reset"])
        self.refused_everywhere(429, {
            "/api/chat": "rate_limit_error",
            "/v1/chat/completions": "rate_limit_exceeded",
            "/v1/messages": "rate_limit_error"}, "resets at")
        # Degraded, not down; the same in /admin/pool and /metrics.
        r = stack.request("GET", "/readyz")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "degraded")
        self.assertEqual(r.json()["upstream"], "limited")
        r = admin("GET", "/admin/pool")
        self.assertEqual(r.json()["pool"]["upstream"]["state"], "limited")
        self.assertEqual(r.json()["pool"]["upstream"]["reset"], st["reset"])
        self.assertEqual(stack.metric("ccgate_upstream_state",
                                      state="limited"), 1)
        self.assertEqual(stack.metric("ccgate_upstream_state", state="ok"),
                         0)
        self.assertEqual(stack.metric("ccgate_upstream_errors_total",
                                      type="rate_limit"), errors + 1)
        # One audit record of the change, by the system.
        rows = audit_rows()
        self.assertEqual(len(rows), audits + 1)
        self.assertEqual(rows[-1][0], "system:ccgate-poold")
        self.assertEqual(json.loads(rows[-1][1])["state"], "ok")
        after = json.loads(rows[-1][2])
        self.assertEqual(after["state"], "limited")
        self.assertEqual(after["reset"], st["reset"])
        # The reset passes: the probe reaches the upstream and succeeds.
        recover()
        self.assertEqual(mock("GET")["requests"], n0 + 2)
        rows = audit_rows()
        self.assertEqual(len(rows), audits + 2)
        self.assertEqual(json.loads(rows[-1][2])["state"], "ok")
        r = stack.request("GET", "/readyz")
        self.assertEqual((r.status, r.json()["status"]), (200, "ready"))
        self.assertEqual(stack.metric("ccgate_upstream_state", state="ok"),
                         1)

    def test_2_one_probe_at_a_time(self):
        mock("POST", {"mode": "limit", "count": -1, "reset_in": 3})
        self.assertEqual(chat().status, 429)
        up = upstream()
        wait_for(lambda: upstream()["retry_after"] <= 1 and
                 time.time() >= up["next_probe"] + 1, 20, "the reset")
        n = mock("GET")["requests"]
        # Four turns at once when the reset has passed: one probes, the
        # upstream refuses it again; none of the others reaches it.
        out = []

        def one():
            out.append(chat().status)
        ts = [threading.Thread(target=one) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(sorted(out), [429] * 4)
        self.assertEqual(mock("GET")["requests"], n + 1)
        self.assertEqual(upstream()["state"], "limited")

    def test_3_overloaded(self):
        mock("POST", {"mode": "overloaded", "count": -1})
        r = chat("/v1/messages")
        self.assertEqual(r.status, 503, r)
        self.assertEqual(error_of("/v1/messages", r)[0], "overloaded_error")
        self.assertGreaterEqual(int(r.headers["retry-after"]), 1)
        # The CLI's own retries, bounded by cli_max_retries = 1.
        self.assertEqual(mock("GET")["answered"], 2)
        self.assertEqual(upstream()["state"], "overloaded")
        self.refused_everywhere(503, {
            "/api/chat": "overloaded_error",
            "/v1/chat/completions": "service_unavailable",
            "/v1/messages": "overloaded_error"}, "overloaded")
        mock("POST", {"mode": "ok"})
        recover()

    def test_4_bare_rate_limit(self):
        # Until told otherwise: a CLI may retry a bare 429 itself (2.1.332
        # does, with a subscription's token too; 2.1.197 does with a key).
        mock("POST", {"mode": "rate", "count": -1, "retry_after": 2})
        r = chat("/v1/chat/completions")
        self.assertEqual(r.status, 429, r)
        self.assertEqual(error_of("/v1/chat/completions", r)[0],
                         "rate_limit_exceeded")
        self.assertIn("rate-limiting", r.json()["error"]["message"])
        self.assertEqual(upstream()["state"], "limited")
        self.assertIsNone(upstream()["reset"])
        mock("POST", {"mode": "ok"})
        recover()

    def test_5_credential_rejected(self):
        mock("POST", {"mode": "auth", "count": -1})
        r = chat()
        self.assertEqual(r.status, 503, r)
        words = ("the service's upstream credential was rejected; an "
                 "operator must renew it")
        self.assertEqual(r.json()["error"], {
            "type": "upstream_credential_rejected", "message": words})
        self.assertEqual(upstream()["state"], "credential_rejected")
        self.refused_everywhere(503, {
            "/api/chat": "upstream_credential_rejected",
            "/v1/chat/completions": "service_unavailable",
            "/v1/messages": "api_error"}, words)
        r = stack.request("GET", "/readyz")
        self.assertEqual((r.status, r.json()["status"],
                          r.json()["upstream"]),
                         (200, "degraded", "credential_rejected"))
        self.assertEqual(stack.metric("ccgate_upstream_state",
                                      state="credential_rejected"), 1)
        # Probed every upstream_probe_interval_ms: the probe reaches the
        # upstream, which still refuses it.
        n = mock("GET")["requests"]
        wait_for(lambda: chat().status == 503 and
                 mock("GET")["requests"] > n, 30, "a periodic probe")
        self.assertEqual(upstream()["state"], "credential_rejected")
        # A reload probes at once (here: with a long interval after it).
        stack.reconfigure(upstream_probe_interval_ms=600000)
        n = mock("GET")["requests"]
        self.assertEqual(chat().status, 503)
        self.assertGreater(mock("GET")["requests"], n)
        n = mock("GET")["requests"]
        self.assertEqual(chat().status, 503)
        self.assertEqual(mock("GET")["requests"], n)   # refused at once
        # The operator renews the credential and says so: the next turn
        # probes, without waiting for the interval.
        mock("POST", {"mode": "ok"})
        r = admin("POST", "/admin/pool/initialize", {"minInstances": 1})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(chat().status, 200)
        self.assertEqual(upstream()["state"], "ok")
        rows = audit_rows()
        self.assertEqual([json.loads(x[2])["state"] for x in rows[-2:]],
                         ["credential_rejected", "ok"])
        stack.reconfigure(upstream_probe_interval_ms=4000)

    def test_6_a_tenants_text_is_not_an_upstream_error(self):
        audits = len(audit_rows())
        forged = ("API Error: Request rejected (429) · You've hit your usage "
                  "limit · resets 9am (UTC)")
        for path in ("/api/chat", "/v1/messages", "/v1/chat/completions"):
            r = chat(path, text="[[mock:text=%s]]" % forged)
            self.assertEqual(r.status, 200, r)
            self.assertIn("usage limit", r.body)
        self.assertEqual(upstream()["state"], "ok")
        self.assertEqual(len(audit_rows()), audits)
        self.assertEqual(chat().status, 200)

    def test_7_after_the_stream_started(self):
        # The model's first answer (text and a Bash call) streams; the
        # upstream refuses the next request of the same turn (the tool's
        # result): the stream ends with the dialect's error event.
        for path, body, error_of_event in (
                ("/api/chat", {"message": "[[mock:bash=echo hi]]",
                               "stream": True},
                 lambda e: e.get("type") == "error" and e["error"]),
                ("/v1/messages", {
                    "model": "claude-sonnet-4-5", "max_tokens": 200,
                    "stream": True, "messages": [{
                        "role": "user",
                        "content": "[[mock:bash=echo hi]]"}]},
                 lambda e: e.get("type") == "error" and e["error"]),
                ("/v1/chat/completions", {
                    "model": "claude-sonnet-4-5", "stream": True,
                    "messages": [{"role": "user",
                                  "content": "[[mock:bash=echo hi]]"}]},
                 lambda e: "choices" not in e and e.get("error"))):
            mock("POST", {"mode": "overloaded", "count": -1, "skip": 1})
            r, events = stack.stream(path, body, key=stack.keys["tooler"])
            self.assertEqual(r.status, 200, (path, r))
            errors = [error_of_event(e) for e in events
                      if isinstance(e, dict) and error_of_event(e)]
            self.assertEqual(len(errors), 1, (path, events))
            self.assertEqual(errors[0]["type"], "service_unavailable"
                             if path == "/v1/chat/completions" else
                             "overloaded_error", path)
            self.assertIn("Let me use Bash", json.dumps(events))
            # The error event is the stream's end (but native's [DONE]).
            last = [e for e in events if e != "[DONE]"][-1]
            self.assertTrue(error_of_event(last), (path, events))
            self.assertEqual(upstream()["state"], "overloaded")
            mock("POST", {"mode": "ok"})
            recover()


if __name__ == "__main__":
    main()
