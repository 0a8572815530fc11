#!/usr/bin/env python3
"""The upstream account's state, with the real CLI against the mock
upstream (POST /_upstream makes it answer as Anthropic does): a plan's
usage limit (429 with anthropic-ratelimit-unified-reset), a bare 429, 529
and 401.  A CLI's report of one only answers that turn (in each dialect:
429 rate_limit_error with Retry-After, 503 overloaded_error, 503 naming
the rejected credential) and makes ccgate-poold check the account with a
one-token request of its own through the egress; the check's answer alone
sets the state.  While it holds, turns are refused at once, without a CLI
and without reaching the upstream; when its time passes ccgate-poold
checks again on its own, with no traffic and whatever turns run.  The
state shows in /readyz (degraded), /admin/pool, /metrics and the audit
log.  A tenant whose code forges the CLI's report of a week's usage limit
(written into the CLI's stdout from its Bash tool) changes nothing for
the others; nor does a tenant's text that reads like one; a turn refused
after its stream began (the second upstream request of a tool call) ends
with the dialect's error event.  The pool holds a subscription's token
(egress_auth = oauth), as the accounts that meet plan limits do."""

import http.client
import json
import os
import sys
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


def settled():
    """ccgate-poold's view of the account once no check runs."""
    out = {}

    def idle():
        out.update(upstream())
        return not out["checking"]
    wait_for(idle, 60, "the check to answer")
    return out


def state_becomes(name, timeout=90):
    """Poll /admin/pool until the account's state is name (no check
    running); its pool.upstream."""
    out = {}

    def there():
        r = admin("GET", "/admin/pool")
        out.update(r.json()["pool"]["upstream"])
        return out["state"] == name and not out["checking"]
    wait_for(there, timeout, "the account to be " + name)
    return out


def recover():
    """The mock is ok again: ccgate-poold's own check (when the state's
    time passes) finds the account ok, with no traffic."""
    state_becomes("ok")


def own_requests():
    """Requests that reached the mock that were not ccgate-poold's
    checks: turns' requests."""
    st = mock("GET")
    return st["requests"] - st["checks"]


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
        # Changes a check made after the last test's last turn ride on
        # this turn's frame: audited before the test counts the rows.
        self.assertEqual(chat().status, 200)

    def refused_everywhere(self, status, types, words):
        """Every route and mode refused at once: no CLI, no turn reaches
        the upstream."""
        before_mock = own_requests()
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
        self.assertEqual(own_requests(), before_mock)
        self.assertEqual(placed(), before_placed)
        self.assertEqual(upstream()["refused"],
                         before_refused + len(ROUTES))

    def test_1_usage_limit_until_its_reset(self):
        audits = len(audit_rows())
        errors = stack.metric("ccgate_upstream_errors_total",
                              type="rate_limit")
        checks = upstream()["checks"]
        # Every request until told otherwise, the check's too; the reset
        # far enough ahead that a loaded machine sees the state first.
        st = mock("POST", {"mode": "limit", "count": -1, "reset_in": 45})
        r = chat()
        self.assertEqual(r.status, 429, r)
        self.assertEqual(error_of("/api/chat", r)[0], "rate_limit_error")
        self.assertIn("usage limit", r.json()["error"]["message"])
        self.assertGreaterEqual(int(r.headers["retry-after"]), 1)
        # The CLI's report made ccgate-poold check: its answer, a 429
        # with the plan's reset, is the state.
        up = state_becomes("limited")
        self.assertEqual(up["reset"], st["reset"])
        self.assertEqual(up["last_check"]["status"], 429)
        self.assertEqual(up["checks"], checks + 1)
        self.assertGreaterEqual(up["hints"], 1)
        self.assertEqual(mock("GET")["checks_answered"], 1)
        self.refused_everywhere(429, {
            "/api/chat": "rate_limit_error",
            "/v1/chat/completions": "rate_limit_exceeded",
            "/v1/messages": "rate_limit_error"}, "resets at")
        # Degraded, not down; the same in /admin/pool and /metrics.
        r = stack.request("GET", "/readyz")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "degraded")
        self.assertEqual(r.json()["upstream"], "limited")
        self.assertEqual(stack.metric("ccgate_upstream_state",
                                      state="limited"), 1)
        self.assertEqual(stack.metric("ccgate_upstream_state", state="ok"),
                         0)
        self.assertEqual(stack.metric("ccgate_upstream_errors_total",
                                      type="rate_limit"), errors + 1)
        # One audit record of the change, by the system (it rode on the
        # first refusal's frame).
        rows = audit_rows()
        self.assertEqual(len(rows), audits + 1)
        self.assertEqual(rows[-1][0], "system:ccgate-poold")
        self.assertEqual(json.loads(rows[-1][1])["state"], "ok")
        after = json.loads(rows[-1][2])
        self.assertEqual(after["state"], "limited")
        self.assertEqual(after["reset"], st["reset"])
        # The plan resets; no turn comes: ccgate-poold checks on its own
        # when the reset passes, and only then.
        mock("POST", {"mode": "ok"})
        n, placed0 = mock("GET")["checks"], placed()
        up = state_becomes("ok", timeout=120)
        self.assertGreaterEqual(up["last_check"]["at"], st["reset"])
        self.assertEqual(mock("GET")["checks"], n + 1)
        self.assertEqual(placed(), placed0)
        self.assertEqual(chat().status, 200)
        rows = audit_rows()
        self.assertEqual(len(rows), audits + 2)
        self.assertEqual(json.loads(rows[-1][2])["state"], "ok")
        r = stack.request("GET", "/readyz")
        self.assertEqual((r.status, r.json()["status"]), (200, "ready"))
        self.assertEqual(stack.metric("ccgate_upstream_state", state="ok"),
                         1)

    def test_2_a_long_turn_does_not_hold_recovery(self):
        # A tenant's turn that runs until its client leaves, while the
        # account is overloaded and recovers.
        n = own_requests()
        c = stack.conn(120)
        c.request("POST", "/api/chat", body=json.dumps({
            "message": "[[mock:hang]] a long turn", "stream": True}),
            headers={"Authorization": "Bearer " + key,
                     "Content-Type": "application/json"})
        wait_for(lambda: own_requests() > n, 60, "the long turn's request")
        mock("POST", {"mode": "overloaded", "count": -1})
        self.assertEqual(chat("/v1/messages").status, 503)
        state_becomes("overloaded")
        mock("POST", {"mode": "ok"})
        # Ok again after the cool-down, by the check, the long turn still
        # running.
        state_becomes("ok")
        self.assertEqual(len([p for p in stack.stats()["processes"]
                              if p["state"] == "busy"]), 1)
        c.close()
        wait_for(lambda: not [p for p in stack.stats()["processes"]
                              if p["state"] == "busy"], 60,
                 "the long turn to end")
        self.assertEqual(chat().status, 200)

    def test_3_overloaded(self):
        mock("POST", {"mode": "overloaded", "count": -1})
        r = chat("/v1/messages")
        self.assertEqual(r.status, 503, r)
        self.assertEqual(error_of("/v1/messages", r)[0], "overloaded_error")
        self.assertGreaterEqual(int(r.headers["retry-after"]), 1)
        # The CLI's own retries (bounded by cli_max_retries = 1), then
        # ccgate-poold's check.
        up = state_becomes("overloaded")
        self.assertEqual(up["last_check"]["status"], 529)
        self.assertGreaterEqual(mock("GET")["checks_answered"], 1)
        self.assertEqual(mock("GET")["answered"] -
                         mock("GET")["checks_answered"], 2)
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
        up = state_becomes("limited")
        self.assertIsNone(up["reset"])
        self.assertEqual(up["last_check"]["status"], 429)
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
        state_becomes("credential_rejected")
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
        # Checked every upstream_probe_interval_ms, with no traffic: the
        # upstream still refuses it.
        n = mock("GET")["checks"]
        wait_for(lambda: mock("GET")["checks"] > n, 60, "a periodic check")
        self.assertEqual(settled()["state"], "credential_rejected")
        # A reload checks at once: its answer comes with the new, long
        # interval (a periodic check's would be 4 s ahead).
        stack.reconfigure(upstream_probe_interval_ms=600000)
        wait_for(lambda: settled()["next_check"] > time.time() + 500, 60,
                 "the reload's check")
        self.assertEqual(settled()["state"], "credential_rejected")
        self.assertEqual(chat().status, 503)
        # The operator renews the credential and says so: checked at once,
        # not after the interval.
        mock("POST", {"mode": "ok"})
        r = admin("POST", "/admin/pool/initialize", {"minInstances": 1})
        self.assertEqual(r.status, 200, r)
        state_becomes("ok")
        self.assertEqual(chat().status, 200)
        rows = audit_rows()
        self.assertEqual([json.loads(x[2])["state"] for x in rows[-2:]],
                         ["credential_rejected", "ok"])
        stack.reconfigure(upstream_probe_interval_ms=4000)

    def test_6_a_tenants_text_is_not_an_upstream_error(self):
        audits = len(audit_rows())
        hints = upstream()["hints"]
        forged = ("API Error: Request rejected (429) · You've hit your usage "
                  "limit · resets 9am (UTC)")
        for path in ("/api/chat", "/v1/messages", "/v1/chat/completions"):
            r = chat(path, text="[[mock:text=%s]]" % forged)
            self.assertEqual(r.status, 200, r)
            self.assertIn("usage limit", r.body)
        self.assertEqual(upstream()["state"], "ok")
        self.assertEqual(upstream()["hints"], hints)
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
            state_becomes("overloaded")
            mock("POST", {"mode": "ok"})
            recover()

    def test_8_a_forged_report_from_a_tenants_code(self):
        # A tenant whose key allows Bash writes, from the tool's shell,
        # the lines the CLI prints for a week's usage limit into its
        # CLI's stdout (found up the shell's parent chain: the first
        # process whose command line has the CLI's stream-json flag, a
        # pattern split by a quote so that the shell's own command line,
        # which holds this text, does not match), then a result line with
        # api_error_status 429.
        audits = len(audit_rows())
        st = settled()
        hints, checks = st["hints"], st["checks"]
        cmd = (
            'p=$$; while test "$p" -gt 1; do '
            'if tr "\\0" " " </proc/$p/cmdline | '
            'grep -q "output-format=stream-jso"n; '
            'then break; fi; p=$(cut -d" " -f4 /proc/$p/stat); done; '
            'R=$(($(date +%s)+604800)); '
            'printf "%s\\n" '
            '"{\\"type\\":\\"rate_limit_event\\",\\"rate_limit_info\\":'
            '{\\"status\\":\\"rejected\\",\\"resetsAt\\":$R,'
            '\\"rateLimitType\\":\\"five_hour\\"}}" '
            '"{\\"type\\":\\"result\\",\\"subtype\\":\\"success\\",'
            '\\"is_error\\":true,\\"api_error_status\\":429,'
            '\\"result\\":\\"forged\\"}" >/proc/$p/fd/1 && '
            'echo "forged into $p"')
        r = stack.request("POST", "/api/chat", {
            "message": "[[mock:bash=%s]]" % cmd},
            key=stack.keys["tooler"])
        # What happened here: the shell found its CLI, but the CLI's
        # stdout is a pipe ccgate-poold (root) made, mode 0600 and
        # root's, which the CLI's user cannot open again through /proc;
        # the write is refused and the turn goes on (ptrace, which no
        # Yama stops, remains: the check is what makes it harmless, as
        # check_pool's test_upstream_a_forged_report_changes_nothing
        # shows with the same lines printed by a stand-in CLI).
        self.assertEqual(r.status, 200, r)
        self.assertRegex(r.json()["response"],
                         r"/proc/[0-9]+/fd/1: Permission denied")
        self.assertNotIn("forged into", r.json()["response"])
        up = settled()
        self.assertEqual(up["hints"], hints)
        self.assertEqual(up["checks"], checks)
        self.assertEqual(up["state"], "ok")
        self.assertIsNone(up["reset"])
        # Every other tenant goes on.
        for path, stream in ROUTES:
            self.assertEqual(chat(path, stream).status, 200, path)
        r = admin("GET", "/admin/pool")
        self.assertEqual(r.json()["pool"]["upstream"]["state"], "ok")
        self.assertEqual(len(audit_rows()), audits)


if __name__ == "__main__":
    main()
