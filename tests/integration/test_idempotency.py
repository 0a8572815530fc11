#!/usr/bin/env python3
"""Idempotency-Key on the chat routes (native, OpenAI, Anthropic; whole
answers and streams): a retry gets the first answer again and runs
nothing (the mock upstream's request count proves it), another body gets
409 in the route's dialect, another API key never meets this one's keys,
a running first attempt gets 409, a refused or failed one is not kept, a
dead process's claim is taken over after its lease."""

import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Stack, SRCDIR, wait_for, main, pinned_clients,  # noqa: E402
                     texts_of)

stack = None
CLIENTS = None
MODEL = "claude-sonnet-4-5"
MAX_ANSWER = 8192
KEY_BYTES = 32768
AV = {"anthropic-version": "2023-06-01"}


def setUpModule():
    global stack, CLIENTS
    CLIENTS = pinned_clients()
    stack = Stack(app_opts={"key_cache_ms": 0,
                            "idempotency_max_answer": MAX_ANSWER,
                            "idempotency_key_bytes": KEY_BYTES},
                  name="idem").start()
    stack.create_key("alice", user="alice")
    stack.create_key("bob", user="bob")
    stack.create_key("dave", user="dave")
    # Limits, so that admitted requests are counted in key_quota_windows.
    stack.admin("key", "update", stack.keys["alice"][4:20], "--rpd",
                "1000000")


def tearDownModule():
    stack.stop()


def upstream():
    return len(stack.mock_records())


def post(path, body, ikey=None, key="alice", headers=None):
    h = dict(headers or {})
    if ikey is not None:
        h["Idempotency-Key"] = ikey
    return stack.request("POST", path, body, key=stack.keys[key], headers=h)


def no_heartbeats(text):
    return "".join(line for line in text.splitlines(True)
                   if not line.startswith(":"))


def quota_requests(key):
    kid = stack.keys[key][4:20]
    rows = stack.sql("SELECT IFNULL(SUM(requests), 0) FROM key_quota_windows "
                     "WHERE key_id = '%s' AND kind = 'day'" % kid)
    return int(rows[0][0])


def uniq(tag):
    return "%s-%d" % (tag, time.time_ns())


class Native(unittest.TestCase):
    def test_replay_conflict_and_no_charge(self):
        ik = uniq("n1")
        body = {"message": "idem native " + ik}
        n0, q0 = upstream(), quota_requests("alice")
        first = post("/api/chat", body, ik)
        self.assertEqual(first.status, 200, first)
        self.assertNotIn("idempotent-replayed", first.headers)
        self.assertEqual(upstream(), n0 + 1)
        self.assertEqual(quota_requests("alice"), q0 + 1)
        again = post("/api/chat", body, ik)
        self.assertEqual(again.status, 200, again)
        self.assertEqual(again.body, first.body)
        self.assertEqual(again.headers["idempotent-replayed"], "true")
        self.assertEqual(again.headers["content-type"],
                         first.headers["content-type"])
        self.assertEqual(again.headers["x-ccgate-conversation-id"],
                         first.headers["x-ccgate-conversation-id"])
        self.assertNotEqual(again.headers["x-request-id"],
                            first.headers["x-request-id"])
        self.assertEqual(upstream(), n0 + 1, "the replay ran a turn")
        self.assertEqual(quota_requests("alice"), q0 + 1,
                         "the replay was counted")
        other = post("/api/chat", {"message": "another body"}, ik)
        self.assertEqual(other.status, 409, other)
        self.assertEqual(other.json()["error"]["type"], "idempotency_error")
        self.assertFalse(other.json()["success"])
        # The same body on another route is another request too.
        cid = first.headers["x-ccgate-conversation-id"]
        cont = post("/api/conversations/%s/continue" % cid, body, ik)
        self.assertEqual(cont.status, 409, cont)
        self.assertEqual(upstream(), n0 + 1)
        # The conversation holds one turn, not two.
        conv = stack.request("GET", "/api/conversations/" + cid,
                             key=stack.keys["alice"]).json()
        self.assertEqual(len(conv["messages"]), 2, conv)

    def test_another_api_key_runs_its_own_turn(self):
        ik = uniq("shared")
        body = {"message": "same key two tenants " + ik}
        n0 = upstream()
        a = post("/api/chat", body, ik, key="alice")
        b = post("/api/chat", body, ik, key="bob")
        self.assertEqual((a.status, b.status), (200, 200), (a, b))
        self.assertNotIn("idempotent-replayed", b.headers)
        self.assertNotEqual(a.headers["x-ccgate-conversation-id"],
                            b.headers["x-ccgate-conversation-id"])
        self.assertEqual(upstream(), n0 + 2)
        # Each replays its own.
        a2 = post("/api/chat", body, ik, key="alice")
        b2 = post("/api/chat", body, ik, key="bob")
        self.assertEqual((a2.body, b2.body), (a.body, b.body))
        self.assertEqual(upstream(), n0 + 2)

    def test_stream_replays_the_same_bytes(self):
        ik = uniq("ns")
        body = {"message": "idem stream [[mock:chunks=4]] " + ik,
                "stream": True}
        n0 = upstream()
        first = post("/api/chat", body, ik)
        self.assertEqual(first.status, 200, first)
        self.assertEqual(first.headers["content-type"], "text/event-stream")
        again = post("/api/chat", body, ik)
        self.assertEqual(again.status, 200, again)
        self.assertEqual(again.headers["content-type"], "text/event-stream")
        self.assertEqual(again.headers["idempotent-replayed"], "true")
        self.assertEqual(no_heartbeats(again.body), no_heartbeats(first.body))
        self.assertIn("data: ", again.body)
        self.assertEqual(upstream(), n0 + 1)

    def test_continue_route(self):
        c = stack.request("POST", "/api/conversations", {},
                          key=stack.keys["alice"])
        self.assertEqual(c.status, 201, c)
        cid = c.json()["conversation_id"]
        ik = uniq("cont")
        body = {"message": "continue once " + ik}
        n0 = upstream()
        first = post("/api/conversations/%s/continue" % cid, body, ik)
        again = post("/api/conversations/%s/continue" % cid, body, ik)
        self.assertEqual((first.status, again.status), (200, 200))
        self.assertEqual(again.body, first.body)
        self.assertEqual(upstream(), n0 + 1)

    def test_bad_keys(self):
        for bad in ("x" * 256, ""):
            r = post("/api/chat", {"message": "bad key"}, bad)
            self.assertEqual(r.status, 400, r)
            self.assertIn("Idempotency-Key", r.json()["error"]["message"])
        r = post("/api/chat", {"message": "long key ok"}, "y" * 255)
        self.assertEqual(r.status, 200, r)


class Compatible(unittest.TestCase):
    def test_openai_sdk(self):
        ik = uniq("oa")
        env = dict(os.environ, CCGATE_URL="https://127.0.0.1:%d" % stack.port,
                   CCGATE_KEY=stack.keys["alice"], CCGATE_CLIENTS=CLIENTS,
                   NODE_EXTRA_CA_CERTS=stack.path("tls.crt"))
        n0 = upstream()
        arg = {"key": ik, "messages": [{"role": "user",
                                        "content": "openai idem " + ik}],
               "other": [{"role": "user", "content": "other " + ik}]}
        p = subprocess.run(["node", os.path.join(
            SRCDIR, "tests", "integration", "sdk", "openai_client.cjs"),
            "idem", json.dumps(arg)], capture_output=True, text=True,
            env=env, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual(out["again"], out["first"])
        self.assertEqual(out["again_id"], out["first_id"])
        self.assertEqual(out["replayed"], "true")
        self.assertEqual(out["conflict"], {"status": 409,
                                           "type": "idempotency_error"})
        self.assertEqual(upstream(), n0 + 1)

    def test_openai_stream_and_conflict_shape(self):
        ik = uniq("oas")
        body = {"model": MODEL, "stream": True, "messages": [
            {"role": "user", "content": "oa stream [[mock:chunks=3]] " + ik}]}
        n0 = upstream()
        first = post("/v1/chat/completions", body, ik)
        again = post("/v1/chat/completions", body, ik)
        self.assertEqual((first.status, again.status), (200, 200))
        self.assertEqual(no_heartbeats(again.body), no_heartbeats(first.body))
        self.assertIn("data: [DONE]", again.body)
        self.assertEqual(upstream(), n0 + 1)
        body["stream"] = False
        r = post("/v1/chat/completions", body, ik)
        self.assertEqual(r.status, 409, r)
        e = r.json()["error"]
        self.assertEqual(e["type"], "idempotency_error")
        self.assertIn("param", e)

    def test_anthropic(self):
        ik = uniq("an")
        body = {"model": MODEL, "max_tokens": 100, "messages": [
            {"role": "user", "content": "anthropic idem " + ik}]}
        n0 = upstream()
        first = post("/v1/messages", body, ik, headers=AV)
        again = post("/v1/messages", body, ik, headers=AV)
        self.assertEqual((first.status, again.status), (200, 200))
        self.assertEqual(again.body, first.body)
        self.assertEqual(again.headers["idempotent-replayed"], "true")
        body["stream"] = True
        ik2 = uniq("ans")
        s1 = post("/v1/messages", body, ik2, headers=AV)
        s2 = post("/v1/messages", body, ik2, headers=AV)
        self.assertEqual((s1.status, s2.status), (200, 200))
        self.assertIn("event: message_stop", s2.body)
        self.assertEqual(no_heartbeats(s2.body), no_heartbeats(s1.body))
        self.assertEqual(upstream(), n0 + 2)
        body["max_tokens"] = 50
        r = post("/v1/messages", body, ik2, headers=AV)
        self.assertEqual(r.status, 409, r)
        self.assertEqual(r.json()["type"], "error")
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")


class Lifecycle(unittest.TestCase):
    def row(self, ik, key="alice"):
        return stack.sql("SELECT state, status FROM idempotency_keys WHERE "
                         "key_id = '%s' AND idem_key = '%s'"
                         % (stack.keys[key][4:20], ik))

    def test_running_then_gone_client_lets_the_key_go(self):
        ik = uniq("run")
        raw = json.dumps({"message": "hang here [[mock:hang]] " + ik}).encode()
        c = stack.conn(timeout=120)
        c.request("POST", "/api/chat", body=raw, headers={
            "Authorization": "Bearer " + stack.keys["alice"],
            "Content-Type": "application/json", "Idempotency-Key": ik})
        wait_for(lambda: self.row(ik) == [["running", "NULL"]], 30,
                 "the claim")
        r = stack.request("POST", "/api/chat", raw=raw,
                          key=stack.keys["alice"],
                          headers={"Idempotency-Key": ik})
        self.assertEqual(r.status, 409, r)
        self.assertEqual(r.headers["retry-after"], "1")
        self.assertIn("retry later", r.json()["error"]["message"])
        c.close()   # the client leaves: 499, not kept
        wait_for(lambda: self.row(ik) == [], 60, "the key let go")

    def test_refused_and_failed_answers_are_not_kept(self):
        # 5xx from the upstream: the retry runs.
        ik = uniq("fail")
        body = {"message": "fails [[mock:fail=400]] " + ik}
        n0 = upstream()
        r = post("/api/chat", body, ik)
        self.assertGreaterEqual(r.status, 500, r)
        self.assertEqual(self.row(ik), [])
        n1 = upstream()
        self.assertGreater(n1, n0)
        r2 = post("/api/chat", body, ik)
        self.assertNotIn("idempotent-replayed", r2.headers)
        self.assertGreater(upstream(), n1, "the retry did not run")
        # 429 from the key's quota: not kept; the kept answer still
        # replays, since a replay spends no quota.
        key = stack.create_key("rpd1-%d" % time.time_ns())
        kid = key[4:20]
        stack.admin("key", "update", kid, "--rpd", "1")
        ok = stack.request("POST", "/api/chat", {"message": "one " + ik},
                           key=key, headers={"Idempotency-Key": "a"})
        self.assertEqual(ok.status, 200, ok)
        no = stack.request("POST", "/api/chat", {"message": "two " + ik},
                           key=key, headers={"Idempotency-Key": "b"})
        self.assertEqual(no.status, 429, no)
        self.assertEqual(stack.sql("SELECT idem_key, state FROM "
                                   "idempotency_keys WHERE key_id = '%s'"
                                   % kid), [["a", "done"]])
        again = stack.request("POST", "/api/chat", {"message": "one " + ik},
                              key=key, headers={"Idempotency-Key": "a"})
        self.assertEqual(again.status, 200, again)
        self.assertEqual(again.body, ok.body)

    def test_a_dead_claim_is_taken_over_after_its_lease(self):
        kid = stack.keys["alice"][4:20]
        body = json.dumps({"message": "orphan " + uniq("o")}).encode()
        fp = hashlib.sha256(b"POST\n/api/chat\n" + body).hexdigest()
        for ik, lease in (("live-" + fp[:8], "+ INTERVAL 1 HOUR"),
                          ("dead-" + fp[:8], "- INTERVAL 1 SECOND")):
            stack.sql("INSERT INTO idempotency_keys (key_id, idem_key, "
                      "request_sha256, state, request_id, lease_until, "
                      "created_at, expires_at) VALUES ('%s', '%s', "
                      "UNHEX('%s'), 'running', 'planted', UTC_TIMESTAMP() "
                      "%s, UTC_TIMESTAMP(), UTC_TIMESTAMP() + INTERVAL 1 "
                      "DAY)" % (kid, ik, fp, lease))
        n0 = upstream()
        live = stack.request("POST", "/api/chat", raw=body,
                             key=stack.keys["alice"],
                             headers={"Idempotency-Key": "live-" + fp[:8]})
        self.assertEqual(live.status, 409, live)
        self.assertEqual(upstream(), n0)
        dead = stack.request("POST", "/api/chat", raw=body,
                             key=stack.keys["alice"],
                             headers={"Idempotency-Key": "dead-" + fp[:8]})
        self.assertEqual(dead.status, 200, dead)
        self.assertEqual(upstream(), n0 + 1)
        self.assertEqual(self.row("dead-" + fp[:8]), [["done", "200"]])

    def test_a_request_past_its_lease_leaves_the_retrys_claim_alone(self):
        ik = uniq("lease")
        raw = json.dumps({"message": "lease " + ik}).encode()
        kid = stack.keys["alice"][4:20]

        def owner():
            return stack.sql("SELECT request_id FROM idempotency_keys WHERE "
                             "key_id = '%s' AND idem_key = '%s'" % (kid, ik))
        # The first request's upstream answer never comes: it runs until
        # its client leaves.  (Its retry, the same body, is answered.)
        stack.mock_control(mode="hang")
        try:
            c = stack.conn(timeout=120)
            c.request("POST", "/api/chat", body=raw, headers={
                "Authorization": "Bearer " + stack.keys["alice"],
                "Content-Type": "application/json", "Idempotency-Key": ik})
            wait_for(lambda: any(texts_of(x)[-1:] == [("user", "lease " +
                                                        ik)]
                                 for x in stack.mock_records()), 60,
                     "the first request's turn upstream")
        finally:
            stack.mock_control(mode="normal")
        self.assertEqual([r[0] for r in self.row(ik)], ["running"])
        first_owner = owner()
        # As if its lease ran out (its process taken for dead): a retry
        # takes the key over and runs.
        stack.sql("UPDATE idempotency_keys SET lease_until = UTC_TIMESTAMP()"
                  " - INTERVAL 1 SECOND WHERE key_id = '%s' AND idem_key = "
                  "'%s'" % (kid, ik))
        def gone():
            return int(stack.sql("SELECT COUNT(*) FROM usage_logs WHERE "
                                 "key_id = '%s' AND status_code = 499"
                                 % kid)[0][0])
        gone0 = gone()
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            retry = ex.submit(stack.request, "POST", "/api/chat", raw=raw,
                              key=stack.keys["alice"],
                              headers={"Idempotency-Key": ik})
            wait_for(lambda: owner() not in ([], first_owner), 60,
                     "the retry to take the key over")
            # The first was alive after all; its client leaves now: its
            # end (499, not kept) must not delete the retry's claim.
            c.close()
            # Its usage row is written after its transport finished.
            wait_for(lambda: gone() == gone0 + 1, 60,
                     "the first request's end")
            retry = retry.result()
        self.assertEqual(retry.status, 200, retry)
        self.assertEqual(self.row(ik), [["done", "200"]])
        n0 = upstream()
        again = stack.request("POST", "/api/chat", raw=raw,
                              key=stack.keys["alice"],
                              headers={"Idempotency-Key": ik})
        self.assertEqual(again.headers.get("idempotent-replayed"), "true")
        self.assertEqual(again.body, retry.body)
        self.assertEqual(upstream(), n0)

    def test_a_deleted_conversation_takes_its_answers(self):
        ik = uniq("del")
        body = {"message": "to be deleted " + ik}
        first = post("/api/chat", body, ik)
        self.assertEqual(first.status, 200, first)
        cid = first.headers["x-ccgate-conversation-id"]
        self.assertEqual(self.row(ik), [["done", "200"]])
        r = stack.request("DELETE", "/api/conversations/" + cid,
                          key=stack.keys["alice"])
        self.assertIn(r.status, (200, 204), r)
        self.assertEqual(self.row(ik), [])
        n0 = upstream()
        again = post("/api/chat", body, ik)
        self.assertEqual(again.status, 200, again)
        self.assertNotIn("idempotent-replayed", again.headers)
        self.assertEqual(upstream(), n0 + 1)

    def test_an_answer_too_large_to_keep_is_not_run_twice(self):
        ik = uniq("big")
        body = {"message": "big [[mock:chunks=300]] " + ik, "stream": True}
        n0 = upstream()
        first = post("/api/chat", body, ik)
        self.assertEqual(first.status, 200, first)
        self.assertGreater(len(first.body), MAX_ANSWER)
        again = post("/api/chat", body, ik)
        self.assertEqual(again.status, 409, again)
        self.assertIn("too large", again.json()["error"]["message"])
        self.assertEqual(upstream(), n0 + 1)

    def test_a_keys_kept_answers_are_bounded(self):
        # A key without request limits could keep idempotency_max_answer
        # per request for the whole window: what one key keeps is
        # bounded (idempotency_key_bytes).  Past it, an answer is not
        # kept, and its retry gets 409: never run twice.
        def kept():
            return int(stack.sql(
                "SELECT IFNULL(SUM(body_bytes), 0) FROM idempotency_keys "
                "WHERE key_id = '%s'" % stack.keys["dave"][4:20])[0][0])
        sent = []
        while True:
            ik = uniq("fill")
            body = {"message": "fill [[mock:chunks=120]] " + ik,
                    "stream": True}
            r = post("/api/chat", body, ik, key="dave")
            self.assertEqual(r.status, 200, r)
            self.assertLess(len(r.body), MAX_ANSWER)
            sent.append((ik, body, r))
            if self.row(ik, "dave")[0][1] == "200" and stack.sql(
                    "SELECT body IS NULL FROM idempotency_keys WHERE "
                    "idem_key = '%s'" % ik) == [["1"]]:
                break
            self.assertLess(len(sent), 40)
        self.assertGreaterEqual(len(sent), 3)
        self.assertLessEqual(kept(), KEY_BYTES)
        self.assertGreater(kept() + len(sent[-1][2].body), KEY_BYTES)
        n0 = upstream()
        ik, body, _ = sent[-1]
        again = post("/api/chat", body, ik, key="dave")
        self.assertEqual(again.status, 409, again)
        self.assertIn("idempotency_key_bytes", again.json()["error"][
            "message"])
        # The answers kept before it still replay; nothing ran.
        ik, body, first = sent[0]
        again = post("/api/chat", body, ik, key="dave")
        self.assertEqual(again.status, 200, again)
        self.assertEqual(again.headers.get("idempotent-replayed"), "true")
        self.assertEqual(again.body, first.body)
        self.assertEqual(upstream(), n0)
        # Another key is not held by this one's answers.
        ik = uniq("other")
        self.assertEqual(post("/api/chat", {"message": "mine " + ik}, ik,
                              key="bob").status, 200)
        self.assertEqual(self.row(ik, "bob"), [["done", "200"]])
        self.assertEqual(stack.sql(
            "SELECT body IS NULL FROM idempotency_keys WHERE idem_key = "
            "'%s'" % ik), [["0"]])
        # Deleting a conversation gives its answer's room back.
        cid = sent[0][2].headers["x-ccgate-conversation-id"]
        before = kept()
        r = stack.request("DELETE", "/api/conversations/" + cid,
                          key=stack.keys["dave"])
        self.assertIn(r.status, (200, 204), r)
        self.assertLess(kept(), before)
        ik = uniq("room")
        r = post("/api/chat", {"message": "room again " + ik}, ik,
                 key="dave")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(stack.sql(
            "SELECT body IS NULL FROM idempotency_keys WHERE idem_key = "
            "'%s'" % ik), [["0"]])

    def test_concurrent_retries_run_once(self):
        ik = uniq("race")
        body = {"message": "race " + ik}
        n0 = upstream()
        out = []

        def one():
            out.append(post("/api/chat", body, ik))
        ts = [threading.Thread(target=one) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(upstream(), n0 + 1)
        codes = sorted(r.status for r in out)
        self.assertEqual(set(codes) - {200, 409}, set(), codes)
        bodies = {r.body for r in out if r.status == 200}
        self.assertEqual(len(bodies), 1)


if __name__ == "__main__":
    main()
