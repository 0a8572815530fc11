#!/usr/bin/env python3
"""The whole chain, real: nginx -> ccgate-fcgi -> ccgate-poold -> claude CLI
-> mock upstream, with MariaDB.  What a client and an operator would check."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import wait_for, Stack, UUID_RE, texts_of, main  # noqa: E402

IDLE_MS = 2500
stack = None


def setUpModule():
    global stack
    # The idle timeout is short only in the test of it: elsewhere a slow
    # machine's pause between two turns must not stop the process.
    stack = Stack({"idle_timeout_ms": 600000}, name="backbone").start()
    stack.create_key("alice", user="alice")
    stack.create_key("bob", user="bob")


def tearDownModule():
    stack.stop()


def chat(body, key="alice", **kw):
    return stack.request("POST", "/api/chat", body, key=stack.keys[key], **kw)


def usage_row(request_id):
    rows = stack.sql("SELECT status_code, input_tokens, output_tokens, "
                     "key_id, route, model, error FROM usage_logs WHERE "
                     "request_id = '%s'" % request_id)
    return rows


def wait_usage(request_id, n=1):
    """The usage row is written just after the answer: wait for it."""
    deadline = time.time() + 60
    while time.time() < deadline:
        rows = usage_row(request_id)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    return usage_row(request_id)


def record_for(text):
    """The mock's record of the request whose last user turn is text."""
    for rec in reversed(stack.mock_records()):
        turns = texts_of(rec)
        if turns and turns[-1] == ("user", text):
            return rec
    raise AssertionError("the upstream never saw %r" % text)


class Health(unittest.TestCase):
    def test_healthz(self):
        r = stack.request("GET", "/healthz")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"status": "ok"})
        self.assertTrue(r.headers.get("x-request-id"))

    def test_readyz(self):
        r = stack.request("GET", "/readyz")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "ready")

    def test_migrate_twice_changes_nothing(self):
        out = stack._run([stack.bin("ccgate-admin"), "-f",
                          stack.path("ccgate.conf"), "migrate"]).stdout
        self.assertIn("0 applied", out)
        self.assertIn("applied 001_initial.sql", stack.migrate_output)


class Chat(unittest.TestCase):
    def test_non_stream(self):
        r = chat({"message": "hello non-stream"})
        self.assertEqual(r.status, 200, r)
        b = r.json()
        self.assertIs(b["success"], True)
        self.assertRegex(b["response"], r"^mock reply #\d+: hello non-stream$")
        self.assertRegex(b["conversation_id"], UUID_RE)
        self.assertRegex(b["session_id"], UUID_RE)
        self.assertEqual(b["model"], "claude-sonnet-4-5")
        rec = record_for("hello non-stream")
        self.assertEqual(rec["response"]["text"], b["response"])
        self.assertEqual(b["usage"]["input_tokens"],
                         rec["response"]["usage"]["input_tokens"])
        self.assertEqual(b["usage"]["output_tokens"],
                         rec["response"]["usage"]["output_tokens"])
        self.assertEqual(b["usage"]["total_tokens"],
                         b["usage"]["input_tokens"] + b["usage"]["output_tokens"])
        self.assertGreater(b["usage"]["cost_usd"], 0)
        self.assertGreaterEqual(b["duration_ms"], 0)
        rows = wait_usage(r.headers["x-request-id"])
        self.assertEqual(len(rows), 1)
        status, tin, tout, key_id, route, model, _ = rows[0]
        self.assertEqual((status, int(tin), int(tout), route, model),
                         ("200", b["usage"]["input_tokens"],
                          b["usage"]["output_tokens"], "/api/chat",
                          "claude-sonnet-4-5"))
        self.assertEqual("ccg_%s_" % key_id, stack.keys["alice"][:21])

    def test_stream(self):
        resp, events = stack.stream("/api/chat", {
            "message": "hello stream [[mock:chunks=12]]", "stream": True},
            key=stack.keys["alice"])
        self.assertEqual(resp.status, 200, resp)
        self.assertTrue(resp.headers["content-type"].startswith(
            "text/event-stream"))
        self.assertEqual(events[-1], "[DONE]")
        done = events[-2]
        self.assertEqual(done["type"], "done")
        deltas = [e["text"] for e in events[:-2]]
        self.assertTrue(all(e["type"] == "delta" for e in events[:-2]))
        self.assertEqual(len(deltas), 12)
        self.assertEqual("".join(deltas), done["response"])
        rec = record_for("hello stream [[mock:chunks=12]]")
        self.assertEqual(done["response"], rec["response"]["text"])
        self.assertEqual(done["usage"]["output_tokens"],
                         rec["response"]["usage"]["output_tokens"])
        rows = wait_usage(resp.headers["x-request-id"])
        self.assertEqual(rows[0][0], "200")
        self.assertEqual(int(rows[0][2]), done["usage"]["output_tokens"])

    def test_second_turn_has_context_and_reuses_process(self):
        first = chat({"message": "remember the word heliotrope"}).json()
        cid = first["conversation_id"]
        before = stack.stats()
        second = chat({"message": "which word?", "conversation_id": cid})
        self.assertEqual(second.status, 200, second)
        after = stack.stats()
        turns = texts_of(record_for("which word?"))
        self.assertEqual(turns[0], ("user", "remember the word heliotrope"))
        self.assertEqual(turns[1], ("assistant", first["response"]))
        self.assertEqual(turns[2], ("user", "which word?"))
        self.assertEqual(after["placed"]["bound"],
                         before["placed"]["bound"] + 1)
        self.assertEqual(after["totals"]["spawned"] - before["totals"]["spawned"],
                         0, "the second turn must not spawn a CLI")
        self.assertEqual(second.json()["session_id"], first["session_id"])

        # Stored history: both turns, in order.
        conv = stack.request("GET", "/api/conversations/" + cid,
                             key=stack.keys["alice"]).json()
        self.assertEqual([(m["role"], m["content"]) for m in conv["messages"]],
                         [("user", "remember the word heliotrope"),
                          ("assistant", first["response"]),
                          ("user", "which word?"),
                          ("assistant", second.json()["response"])])
        self.assertEqual(conv["messages"][1]["usage"]["output_tokens"],
                         first["usage"]["output_tokens"])

    def test_turn_after_idle_timeout_resumes(self):
        first = chat({"message": "the secret is 4711"}).json()
        cid = first["conversation_id"]
        pids = [p["pid"] for p in stack.stats()["processes"]
                if p["conversation"] == cid]
        self.assertEqual(len(pids), 1)
        # Stopped once idle for IDLE_MS (at a tick: when, on a loaded
        # machine, is the daemon's business; that it is, the test's).
        stack.reconfigure(idle_timeout_ms=IDLE_MS)
        try:
            wait_for(lambda: not [p for p in stack.stats()["processes"]
                                  if p["conversation"] == cid], 60,
                     "the idle process to be stopped")
        finally:
            stack.reconfigure(idle_timeout_ms=600000)
        before = stack.stats()
        r = chat({"message": "what is the secret?", "conversation_id": cid})
        self.assertEqual(r.status, 200, r)
        after = stack.stats()
        self.assertEqual(after["placed"]["resumed"],
                         before["placed"]["resumed"] + 1)
        turns = texts_of(record_for("what is the secret?"))
        self.assertEqual(turns[0], ("user", "the secret is 4711"))
        self.assertEqual(r.json()["session_id"], first["session_id"])
        new = [p for p in after["processes"] if p["conversation"] == cid]
        self.assertNotEqual(new[0]["pid"], pids[0])


class Conversations(unittest.TestCase):
    def test_create_and_get(self):
        r = stack.request("POST", "/api/conversations",
                          {"title": "plans", "system_prompt": "Be brief."},
                          key=stack.keys["alice"])
        self.assertEqual(r.status, 201, r)
        cid = r.json()["conversation_id"]
        self.assertRegex(cid, UUID_RE)
        g = stack.request("GET", "/api/conversations/" + cid,
                          key=stack.keys["alice"])
        self.assertEqual(g.status, 200, g)
        self.assertEqual(g.json()["title"], "plans")
        self.assertEqual(g.json()["messages"], [])
        c = chat({"message": "first words", "conversation_id": cid})
        self.assertEqual(c.status, 200, c)
        rec = record_for("first words")
        system = rec["body"].get("system")
        text = system if isinstance(system, str) else " ".join(
            b.get("text", "") for b in system or [])
        self.assertIn("Be brief.", text)

    def test_other_tenant_gets_404(self):
        cid = chat({"message": "alice private"}).json()["conversation_id"]
        before = stack.sql("SELECT COUNT(*) FROM messages")[0][0]
        g = stack.request("GET", "/api/conversations/" + cid,
                          key=stack.keys["bob"])
        self.assertEqual(g.status, 404, g)
        self.assertEqual(g.json()["error"]["type"], "not_found_error")
        c = chat({"message": "intrude", "conversation_id": cid}, key="bob")
        self.assertEqual(c.status, 404, c)
        self.assertEqual(stack.sql("SELECT COUNT(*) FROM messages")[0][0],
                         before, "a refused request stored a message")

    def test_unknown_ids_404(self):
        for cid in ("00000000-0000-4000-8000-000000000000", "nope",
                    "x" * 300, "1%27%20OR%201=1"):
            g = stack.request("GET", "/api/conversations/" + cid,
                              key=stack.keys["alice"])
            self.assertEqual(g.status, 404, (cid, g))
            self.assertIs(g.json()["success"], False)


class Errors(unittest.TestCase):
    def test_missing_key(self):
        r = stack.request("POST", "/api/chat", {"message": "x"})
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json()["error"]["type"], "authentication_error")

    def test_bad_keys(self):
        good = stack.keys["alice"]
        for key in ("nonsense", good[:-1] + ("A" if good[-1] != "A" else "B"),
                    "ccg_aaaaaaaaaaaaaaaa_" + "A" * 43):
            r = stack.request("POST", "/api/chat", {"message": "x"}, key=key)
            self.assertEqual(r.status, 401, key)
            self.assertEqual(r.json()["error"]["message"], "invalid API key")

    def test_x_api_key_header(self):
        r = stack.request("POST", "/api/chat", {"message": "via x-api-key"},
                          headers={"x-api-key": stack.keys["alice"]})
        self.assertEqual(r.status, 200, r)

    def test_bad_json(self):
        before = stack.sql("SELECT COUNT(*) FROM conversations")[0][0]
        r = chat(None, raw=b'{"message": "x",')
        self.assertEqual(r.status, 400, r)
        self.assertIn("invalid JSON", r.json()["error"]["message"])
        for body, field in (({}, "message"), ({"message": 7}, "message"),
                            ({"message": ""}, "message"),
                            ({"message": "x", "stream": "yes"}, "stream"),
                            ({"message": "x", "max_tokens": -1}, "max_tokens"),
                            ({"message": "x", "model": "gpt-4"}, "model")):
            r = chat(body)
            self.assertEqual(r.status, 400, (body, r))
            self.assertTrue(r.json()["error"]["message"].startswith(field),
                            r.json())
        r = chat(None, raw=b'{"message": "a", "message": "b"}')
        self.assertEqual(r.status, 400, r)
        r = chat(None, raw=b'[' * 100 + b']' * 100)
        self.assertEqual(r.status, 400, r)
        r = chat(None, raw=b'{"message": "\xff\xfe"}')
        self.assertEqual(r.status, 400, r)
        self.assertEqual(stack.sql("SELECT COUNT(*) FROM conversations")[0][0],
                         before, "bad input created a conversation")

    def test_unknown_route_and_method(self):
        r = stack.request("GET", "/api/nothing", key=stack.keys["alice"])
        self.assertEqual(r.status, 404)
        self.assertIs(r.json()["success"], False)
        r = stack.request("GET", "/api/chat", key=stack.keys["alice"])
        self.assertEqual(r.status, 405)
        self.assertEqual(r.headers["allow"], "POST")

    def test_body_over_nginx_limit_is_json_413(self):
        r = chat(None, raw=b'{"message":"' + b"a" * (3 * 1024 * 1024) + b'"}')
        self.assertEqual(r.status, 413)
        self.assertEqual(r.json()["error"]["type"], "request_too_large")

    def test_every_request_has_one_usage_row(self):
        r = stack.request("POST", "/api/chat", {"message": "x"},
                          key="ccg_aaaaaaaaaaaaaaaa_" + "A" * 43)
        rows = wait_usage(r.headers["x-request-id"])
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0][0], "401")
        self.assertEqual(rows[0][3], "NULL")


class UsageOnShutdown(unittest.TestCase):
    def test_queued_usage_rows_are_written_when_fcgi_stops(self):
        """Usage rows wait in a queue for the batch writer; stopping
        ccgate-fcgi right after a burst of requests loses none of them."""
        key = stack.create_key("burst")
        kid = key[4:20]
        ids = []
        c = stack.conn()
        try:
            for _ in range(60):
                c.request("GET", "/api/models",
                          headers={"Authorization": "Bearer " + key})
                r = c.getresponse()
                r.read()
                self.assertEqual(r.status, 200)
                ids.append(r.getheader("X-Request-Id"))
        finally:
            c.close()
        stack.stop_proc("fcgi")
        rows = stack.sql("SELECT request_id FROM usage_logs WHERE key_id = "
                         "'%s'" % kid)
        self.assertEqual(sorted(x[0] for x in rows), sorted(ids))
        stack.start_fcgi()
        wait_for(lambda: stack.request("GET", "/healthz").status == 200, 60,
                 "ccgate-fcgi back")


class PoolDown(unittest.TestCase):
    """Runs last (alphabetical class order is not relied on: it restarts)."""

    def test_pool_daemon_down_gives_503_then_recovers(self):
        stack.stop_proc("poold")
        self.assertFalse([p for p in stack.leftovers()
                          if "claude" in p[1]], "CLIs survived poold")
        r = chat({"message": "while down"})
        self.assertEqual(r.status, 503, r)
        self.assertIn("retry-after", r.headers)
        self.assertIs(r.json()["success"], False)
        rows = wait_usage(r.headers["x-request-id"])
        self.assertEqual(rows[0][0], "503")
        ready = stack.request("GET", "/readyz")
        self.assertEqual(ready.status, 503)
        stack.start_poold()
        r = chat({"message": "after restart"})
        self.assertEqual(r.status, 200, r)


if __name__ == "__main__":
    main()
