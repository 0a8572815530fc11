#!/usr/bin/env python3
"""The native client API beyond chat: conversations listed, continued and
deleted; models; the pool's statistics and health as a client sees them;
request ids (ccgate's own, the client's kept apart)."""

import json
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, texts_of, wait_for, main  # noqa: E402

stack = None


def setUpModule():
    global stack
    stack = Stack(name="api").start()
    stack.create_key("alice", user="alice")
    stack.create_key("bob", user="bob")


def tearDownModule():
    stack.stop()


def call(method, path, body=None, key="alice", **kw):
    return stack.request(method, path, body, key=stack.keys[key], **kw)


def new_conversation(message, key="alice"):
    r = call("POST", "/api/chat", {"message": message}, key=key)
    assert r.status == 200, r
    return r.json()


def transcript_of(tenant, session_id):
    for root, _, files in os.walk(stack.path("state", "tenants", tenant)):
        if session_id + ".jsonl" in files:
            return os.path.join(root, session_id + ".jsonl")
    return None


class List(unittest.TestCase):
    def test_paging_newest_first(self):
        ids = [new_conversation("list me %d" % i)["conversation_id"]
               for i in range(3)]
        first = call("GET", "/api/conversations?limit=2")
        self.assertEqual(first.status, 200, first)
        page = first.json()
        self.assertEqual([c["conversation_id"] for c in page["conversations"]],
                         [ids[2], ids[1]])
        self.assertEqual(page["conversations"][0]["title"], "list me 2")
        self.assertEqual(page["next_cursor"], ids[1])
        seen = [c["conversation_id"] for c in page["conversations"]]
        cursor = page["next_cursor"]
        while cursor:
            nxt = call("GET", "/api/conversations?limit=2&cursor=" + cursor)
            self.assertEqual(nxt.status, 200, nxt)
            seen += [c["conversation_id"] for c in nxt.json()["conversations"]]
            cursor = nxt.json()["next_cursor"]
        self.assertEqual(seen[:3], [ids[2], ids[1], ids[0]])
        self.assertEqual(len(seen), len(set(seen)), "a page repeated an item")

    def test_other_tenant_sees_none(self):
        mine = new_conversation("alice only")["conversation_id"]
        listed = call("GET", "/api/conversations?limit=100", key="bob").json()
        self.assertNotIn(mine, [c["conversation_id"]
                                for c in listed["conversations"]])

    def test_bad_parameters(self):
        for q, field in (("limit=0", "limit"), ("limit=101", "limit"),
                         ("limit=x", "limit"), ("cursor=nope", "cursor"),
                         ("cursor=%27%20OR%201%3D1", "cursor")):
            r = call("GET", "/api/conversations?" + q)
            self.assertEqual(r.status, 400, (q, r))
            self.assertTrue(r.json()["error"]["message"].startswith(field))


class Continue(unittest.TestCase):
    def test_continue_has_context(self):
        first = new_conversation("my name is Ada")
        cid = first["conversation_id"]
        r = call("POST", "/api/conversations/%s/continue" % cid,
                 {"message": "what is my name?"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["conversation_id"], cid)
        rec = [x for x in stack.mock_records()
               if texts_of(x)[-1] == ("user", "what is my name?")][-1]
        self.assertEqual(texts_of(rec)[0], ("user", "my name is Ada"))

    def test_continue_streams(self):
        cid = new_conversation("stream next")["conversation_id"]
        resp, events = stack.stream("/api/conversations/%s/continue" % cid,
                                    {"message": "go on", "stream": True},
                                    key=stack.keys["alice"])
        self.assertEqual(resp.status, 200)
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(events[-2]["conversation_id"], cid)

    def test_continue_unknown_or_foreign(self):
        cid = new_conversation("private")["conversation_id"]
        for path, key in (("/api/conversations/%s/continue" % cid, "bob"),
                          ("/api/conversations/00000000-0000-4000-8000-"
                           "000000000000/continue", "alice")):
            r = call("POST", path, {"message": "x"}, key=key)
            self.assertEqual(r.status, 404, r)
        r = call("POST", "/api/conversations/%s/continue" % cid, {})
        self.assertEqual(r.status, 400)


class Delete(unittest.TestCase):
    def test_delete_removes_messages_and_transcript(self):
        first = new_conversation("delete this")
        cid, sid = first["conversation_id"], first["session_id"]
        wait_for(lambda: transcript_of("alice", sid), 60, "the transcript")
        path = transcript_of("alice", sid)
        # Another tenant cannot delete it.
        r = call("DELETE", "/api/conversations/" + cid, key="bob")
        self.assertEqual(r.status, 404)
        self.assertTrue(os.path.exists(path))
        r = call("DELETE", "/api/conversations/" + cid)
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.body, "")
        self.assertFalse(os.path.exists(path), "the transcript is still there")
        self.assertEqual(stack.sql("SELECT COUNT(*) FROM messages WHERE "
                                   "conversation_id = '%s'" % cid), [["0"]])
        self.assertEqual(call("GET", "/api/conversations/" + cid).status, 404)
        self.assertEqual(call("DELETE", "/api/conversations/" + cid).status,
                         404)
        self.assertEqual(call("POST", "/api/chat", {
            "message": "x", "conversation_id": cid}).status, 404)
        listed = call("GET", "/api/conversations?limit=100").json()
        self.assertNotIn(cid, [c["conversation_id"]
                               for c in listed["conversations"]])
        self.assertFalse([p for p in stack.stats()["processes"]
                          if p["conversation"] == cid])


def cache_count(result):
    """ccgate-fcgi's conversation cache counter (hit or stale)."""
    return stack.metric("ccgate_conversation_cache_total", result=result)


def stored_count(cid):
    return int(stack.sql("SELECT COUNT(*) FROM messages WHERE "
                         "conversation_id = '%s'" % cid)[0][0])


def next_turn(cid, message):
    r = call("POST", "/api/chat", {"message": message,
                                   "conversation_id": cid})
    assert r.status == 200, r
    return r


def upstream_turns(text):
    """The (role, text) turns of the last upstream request whose last
    message contains text."""
    return [texts_of(x) for x in stack.mock_records()
            if text in texts_of(x)[-1][1]][-1]


class ConversationCache(unittest.TestCase):
    """ccgate-fcgi keeps the conversations it has seen, so that a turn does
    not read its conversation first; the turn's INSERT of the user's
    message checks the cached row against MariaDB's.  Another process
    (another node, an operator) changing the row must be noticed."""

    def test_later_turns_use_the_cache(self):
        cid = new_conversation("count my turns")["conversation_id"]
        hits, stale = cache_count("hit"), cache_count("stale")
        for i in range(3):
            next_turn(cid, "turn %d" % i)
        self.assertEqual(cache_count("hit"), hits + 3)
        self.assertEqual(cache_count("stale"), stale)
        self.assertEqual(upstream_turns("turn 2")[0][1], "count my turns")
        self.assertEqual(stored_count(cid), 8)

    def test_a_session_forgotten_elsewhere_is_noticed(self):
        cid = new_conversation("the password is tangerine")["conversation_id"]
        next_turn(cid, "noted?")
        # As another node does when a turn of its fails: the CLI session
        # is no longer trusted, the next turn primes one from MariaDB.
        stack.sql("UPDATE conversations SET cli_session_id = NULL "
                  "WHERE id = '%s'" % cid)
        stale = cache_count("stale")
        next_turn(cid, "what is the password?")
        self.assertEqual(cache_count("stale"), stale + 1)
        primed = upstream_turns("what is the password?")[-1][1]
        self.assertIn("[user]\nthe password is tangerine", primed)
        self.assertEqual(stored_count(cid), 6)
        # The new session is the cache's from now on: no longer stale.
        next_turn(cid, "thanks")
        self.assertEqual(cache_count("stale"), stale + 1)

    def test_a_conversation_deleted_elsewhere_is_not_found(self):
        for path in ("/api/chat", "/api/conversations/%s/continue"):
            cid = new_conversation("soon gone")["conversation_id"]
            next_turn(cid, "still here")   # cached by now
            # Deleted as another node deletes it.
            stack.sql("UPDATE conversations SET deleted_at = "
                      "UTC_TIMESTAMP(3) WHERE id = '%s'" % cid)
            records = len(stack.mock_records())
            r = call("POST", path % cid if "%s" in path else path,
                     {"message": "anyone?", "conversation_id": cid})
            self.assertEqual(r.status, 404, r)
            self.assertEqual(r.json()["error"]["message"],
                             "conversation_id: no such conversation"
                             if path == "/api/chat" else
                             "conversation not found")
            self.assertEqual(stored_count(cid), 4)
            self.assertEqual(len(stack.mock_records()), records)
            # Nor is it there to read or delete.
            self.assertEqual(call("GET", "/api/conversations/" + cid).status,
                             404)
            self.assertEqual(call("DELETE",
                                  "/api/conversations/" + cid).status, 404)


class Batch(unittest.TestCase):
    def test_items_run_at_once_and_keep_their_order(self):
        cid = new_conversation("batch base")["conversation_id"]
        # Room for every item at once, so only the batch decides the timing.
        stack.poold({"type": "set_limits", "min_instances": 3,
                     "max_instances": 12})
        wait_for(lambda: stack.stats()["processes_by_state"]["warm"] >= 3, 60,
                 "three warm processes")
        time.sleep(1.0)
        r = call("POST", "/api/chat/batch", {"messages": [
            {"message": "batch a [[mock:slow=20000]]"},
            {"message": "bad item", "max_tokens": "many"},
            {"message": "batch c [[mock:slow=20000]]", "conversation_id": cid},
            {"message": "batch d [[mock:slow=20000]]"},
            {"message": "x", "stream": True}]})
        self.assertEqual(r.status, 200, r)
        res = r.json()["results"]
        self.assertEqual([x["status"] for x in res], [200, 400, 200, 200, 400])
        self.assertTrue(res[0]["response"].endswith("batch a [[mock:slow=20000]]"))
        self.assertTrue(res[1]["error"]["message"].startswith("max_tokens"))
        self.assertEqual(res[2]["conversation_id"], cid)
        self.assertTrue(res[4]["error"]["message"].startswith("stream"))
        starts = sorted(x["time"] for x in stack.mock_records()
                        if "batch " in json.dumps(x["body"]["messages"][-1])
                        and "slow=20000" in json.dumps(x["body"]["messages"]))
        self.assertEqual(len(starts), 3)
        # Each answer takes 20 s upstream: the last item began before the
        # first could have ended, so the three ran at the same time (20 s
        # is room for a loaded machine's CLI starts, not a margin).
        self.assertLess(starts[-1] - starts[0], 20.0,
                        "the items did not run at the same time")
        stack.poold({"type": "set_limits", "min_instances": 2,
                     "max_instances": 6})
        rows = []
        wait_for(lambda: rows.extend(stack.sql(
            "SELECT status_code, output_tokens FROM usage_logs WHERE "
            "request_id = '%s'" % r.headers["x-request-id"])) or rows, 60,
            "the batch's usage row")
        self.assertEqual(rows[0][0], "200")
        self.assertEqual(int(rows[0][1]), sum(x["usage"]["output_tokens"]
                                              for x in res if x["status"] == 200))

    def test_bounds(self):
        for body in ({"messages": []}, {"messages": "x"}, {},
                     {"messages": [{"message": "x"}] * 17}):
            r = call("POST", "/api/chat/batch", body)
            self.assertEqual(r.status, 400, (body, r))
            self.assertTrue(r.json()["error"]["message"].startswith("messages"))


class Disconnect(unittest.TestCase):
    def test_client_leaving_mid_stream_cancels_the_job(self):
        import json as _json
        before = stack.stats()["totals"]["cancelled"]
        c = stack.conn()
        c.request("POST", "/api/chat", body=_json.dumps({
            "message": "long story [[mock:drip=300]] [[mock:chunks=60]]",
            "stream": True}).encode(), headers={
                "Authorization": "Bearer " + stack.keys["alice"],
                "Content-Type": "application/json"})
        r = c.getresponse()
        rid = r.getheader("x-request-id")
        got = 0
        for line in r:
            if line.startswith(b'data: {"type":"delta"'):
                got += 1
                if got == 2:
                    break
        pid = [p["pid"] for p in stack.stats()["processes"]
               if p["state"] == "busy"][0]
        c.sock.close()
        c.close()
        wait_for(lambda: stack.stats()["totals"]["cancelled"] == before + 1,
                 60, "the job to be cancelled")
        wait_for(lambda: not [p for p in stack.stats()["processes"]
                              if p["pid"] == pid], 60, "its CLI to go")
        rows = []
        wait_for(lambda: rows.extend(stack.sql(
            "SELECT status_code, error FROM usage_logs WHERE request_id = "
            "'%s'" % rid)) or rows, 60, "the usage row")
        self.assertEqual(rows[0][0], "499")
        self.assertIn("closed", rows[0][1])


class Timing(unittest.TestCase):
    def test_server_timing_splits_the_first_text(self):
        """Server-Timing says how long ccgate-fcgi took to hand the job on
        (app), how long the pool and the CLI took to the first text (pool)
        and the CLI's own part of that (cli): streamed, with the first
        delta; whole, with the answer."""
        for stream in (True, False):
            t0 = time.monotonic()
            if stream:
                r, events = stack.stream("/api/chat", {
                    "message": "timed", "stream": True},
                    key=stack.keys["alice"])
            else:
                r = call("POST", "/api/chat", {"message": "timed"})
            total = (time.monotonic() - t0) * 1000
            self.assertEqual(r.status, 200)
            m = re.fullmatch(r"app;dur=(\d+\.\d\d), pool;dur=(\d+\.\d\d), "
                             r"cli;dur=(\d+\.\d\d)",
                             r.headers.get("server-timing", ""))
            self.assertIsNotNone(m, r.headers)
            app, pool, cli = float(m[1]), float(m[2]), float(m[3])
            self.assertGreater(app, 0)
            self.assertGreater(cli, app, "the CLI takes the most")
            self.assertLess(cli, pool, "the CLI's time is part of pool's")
            self.assertLess(app + pool, total)


class ModelsAndPool(unittest.TestCase):
    def test_models(self):
        r = call("GET", "/api/models")
        self.assertEqual(r.status, 200)
        models = r.json()["models"]
        self.assertEqual([m["id"] for m in models],
                         ["claude-sonnet-4-5", "claude-haiku-4-5"])
        self.assertEqual([m["default"] for m in models], [True, False])
        self.assertEqual(stack.request("GET", "/api/models").status, 401)

    def test_pool_stats_hides_other_tenants(self):
        bobs = new_conversation("bob's", key="bob")["conversation_id"]
        alices = new_conversation("alice's")["conversation_id"]
        r = call("GET", "/api/cli-pool/stats")
        self.assertEqual(r.status, 200, r)
        st = r.json()
        self.assertGreater(st["totals"]["succeeded"], 0)
        self.assertIn("p95", st["time_to_first_event_ms"])
        convs = [p.get("conversation_id") for p in st["processes"]]
        self.assertIn(alices, convs)
        self.assertNotIn(bobs, r.body)
        self.assertNotIn("bob", r.body)

    def test_pool_health(self):
        r = call("GET", "/api/cli-pool/health")
        self.assertEqual(r.status, 200, r)
        self.assertIn(r.json()["status"], ("healthy", "degraded"))
        self.assertGreaterEqual(r.json()["pool"]["max_instances"], 1)

    def test_initialize_is_not_for_client_keys(self):
        before = stack.stats()["limits"]
        r = call("POST", "/api/cli-pool/initialize",
                 {"minInstances": 0, "maxInstances": 1})
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json()["error"]["type"], "permission_error")
        self.assertEqual(stack.stats()["limits"], before)



class ClientRequestId(unittest.TestCase):
    """A client's X-Request-Id is never ccgate's request id: answers,
    usage_logs.request_id and messages.request_id carry nginx's own, and
    the client's is kept apart in usage_logs.client_request_id."""

    def usage(self, rid):
        """(client_request_id or "NULL", status) of request rid's row."""
        rows = []
        wait_for(lambda: rows.extend(stack.sql(
            "SELECT IFNULL(client_request_id, 'NULL'), status_code FROM "
            "usage_logs WHERE request_id = '%s'" % rid)) or rows, 60,
            "the usage row of " + rid)
        self.assertEqual(len(rows), 1, rows)
        return rows[0]

    def count(self, column, value):
        return int(stack.sql("SELECT COUNT(*) FROM usage_logs WHERE %s = "
                             "'%s'" % (column, value))[0][0])

    def test_a_forged_id_is_kept_apart(self):
        r = call("POST", "/api/chat", {"message": "whose id is this?"},
                 headers={"X-Request-Id": "forged-123"})
        self.assertEqual(r.status, 200, r)
        rid = r.headers["x-request-id"]
        self.assertNotEqual(rid, "forged-123")
        self.assertRegex(rid, "^[0-9a-f]{32}$", "nginx's $request_id")
        self.assertEqual(self.usage(rid), ["forged-123", "200"])
        self.assertEqual(self.count("request_id", "forged-123"), 0)
        conv = r.json()["conversation_id"]
        self.assertEqual(stack.sql(
            "SELECT DISTINCT request_id FROM messages WHERE "
            "conversation_id = '%s'" % conv), [[rid]])
        # A stream, and a refusal, alike.
        resp, events = stack.stream("/api/chat", {
            "message": "again", "stream": True}, key=stack.keys["alice"],
            headers={"X-Request-Id": "forged-123"})
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(events[-1], "[DONE]")
        srid = resp.headers["x-request-id"]
        self.assertNotIn(srid, ("forged-123", rid))
        self.assertEqual(self.usage(srid), ["forged-123", "200"])
        r = stack.request("GET", "/api/models", key="ccg_nope",
                          headers={"X-Request-Id": "forged-123"})
        self.assertEqual(r.status, 401, r)
        self.assertNotEqual(r.headers["x-request-id"], "forged-123")
        self.assertEqual(self.usage(r.headers["x-request-id"]),
                         ["forged-123", "401"])
        self.assertEqual(self.count("request_id", "forged-123"), 0)

    def test_another_requests_id_cannot_be_replayed(self):
        first = call("GET", "/api/models").headers["x-request-id"]
        self.usage(first)
        again = call("GET", "/api/models", headers={"X-Request-Id": first})
        self.assertNotEqual(again.headers["x-request-id"], first)
        self.assertEqual(self.usage(again.headers["x-request-id"]),
                         [first, "200"])
        self.assertEqual(self.count("request_id", first), 1,
                         "one row per ccgate id, whatever clients send")

    def test_only_visible_ascii_up_to_128_is_kept(self):
        for sent, kept in (("x" * 128, "x" * 128), ("x" * 129, "NULL"),
                           ("a b", "NULL"), ("caf\xe9", "NULL"),
                           ("trace:1/2;x=\"y\"", "trace:1/2;x=\"y\""),
                           ("", "NULL")):
            r = call("GET", "/api/models", headers={"X-Request-Id": sent})
            self.assertEqual(r.status, 200, r)
            self.assertNotEqual(r.headers["x-request-id"], sent)
            self.assertEqual(self.usage(r.headers["x-request-id"])[0], kept,
                             repr(sent))

    def test_nginx_own_errors_keep_its_id(self):
        r = call("POST", "/api/chat", raw=b"x" * (3 * 1024 * 1024),
                 headers={"X-Request-Id": "forged-413"})
        self.assertEqual(r.status, 413, r)
        self.assertRegex(r.headers["x-request-id"], "^[0-9a-f]{32}$")

if __name__ == "__main__":
    main()
