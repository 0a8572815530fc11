#!/usr/bin/env python3
"""Key status, permissions and quotas, in every dialect: suspended, expired
and revoked keys; allowed models, streaming and the max_tokens cap;
requests per minute and per day and tokens per day, enforced atomically
under concurrency, with Retry-After; running jobs per key; streams
sharing a small pool of MariaDB connections.  Key attributes are set in
SQL, as an operator would before the admin API exists."""

import concurrent.futures
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, main, wait_for, within_one_window  # noqa: E402

stack = None
n = 0
CACHE_MS = 1500
DB_CONNECTIONS = 3


def setUpModule():
    global stack
    # Few database connections for many threads: every test here, the
    # quota transactions under concurrency among them, shares them.
    stack = Stack(app_opts={"key_cache_ms": CACHE_MS,
                            "cors_origins": "https://app.example",
                            "threads": 32,
                            "db_connections": DB_CONNECTIONS},
                  name="limits").start()


def tearDownModule():
    stack.stop()


def new_key(**attrs):
    """A fresh key with the given api_keys columns set."""
    global n
    n += 1
    key = stack.create_key("limits%d" % n, user="limits%d" % n)
    kid = key[4:20]
    if attrs:
        sets = ", ".join("%s = %s" % (k, v) for k, v in attrs.items())
        stack.sql("UPDATE api_keys SET %s WHERE id = '%s'" % (sets, kid))
    return key


def chat(key, body):
    return stack.request("POST", "/api/chat", body, key=key)


def messages_count():
    return stack.sql("SELECT COUNT(*) FROM messages")[0][0]


class Status(unittest.TestCase):
    def test_suspended_expired_revoked(self):
        for attrs, word in (({"status": "'suspended'"}, "suspended"),
                            ({"status": "'revoked'"}, "revoked"),
                            ({"expires_at": "UTC_TIMESTAMP() - INTERVAL 1 "
                              "SECOND"}, "expired"),
                            ({"status": "'expired'"}, "expired")):
            key = new_key(**attrs)
            for method, path, body in (
                    ("POST", "/api/chat", {"message": "x"}),
                    ("POST", "/v1/chat/completions", {
                        "model": "claude-sonnet-4-5",
                        "messages": [{"role": "user", "content": "x"}]}),
                    ("POST", "/v1/messages", {
                        "model": "claude-sonnet-4-5", "max_tokens": 5,
                        "messages": [{"role": "user", "content": "x"}]})):
                r = stack.request(method, path, body, key=key)
                self.assertEqual(r.status, 401, (attrs, path, r))
                self.assertIn(word, r.body)

    def test_future_expiry_is_fine_and_last_used_recorded(self):
        key = new_key(expires_at="UTC_TIMESTAMP() + INTERVAL 1 DAY")
        self.assertEqual(chat(key, {"message": "still valid"}).status, 200)
        used = stack.sql("SELECT last_used_at IS NOT NULL FROM api_keys "
                         "WHERE id = '%s'" % key[4:20])
        self.assertEqual(used, [["1"]])


class Cache(unittest.TestCase):
    def test_suspension_takes_effect_within_the_cache_bound(self):
        key = new_key()
        self.assertEqual(stack.request("GET", "/api/models", key=key).status,
                         200)
        stack.sql("UPDATE api_keys SET status = 'suspended' WHERE id = '%s'"
                  % key[4:20])
        # The key was cached before the change: a request sent once the
        # bound has passed since it is refused, however long requests take.
        t0 = time.monotonic()
        while True:
            sent = time.monotonic()
            if stack.request("GET", "/api/models", key=key).status != 200:
                break
            self.assertLess(sent - t0, CACHE_MS / 1000.0,
                            "a suspended key still works past the bound")
            time.sleep(0.05)
        r = stack.request("GET", "/api/models", key=key)
        self.assertEqual(r.status, 401)
        self.assertIn("suspended", r.json()["error"]["message"])


class Cors(unittest.TestCase):
    def test_preflight_and_headers(self):
        r = stack.request("OPTIONS", "/api/chat", headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.headers["access-control-allow-origin"],
                         "https://app.example")
        self.assertEqual(r.headers["access-control-allow-methods"], "POST")
        self.assertIn("Authorization",
                      r.headers["access-control-allow-headers"])
        r = stack.request("OPTIONS", "/api/chat", headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST"})
        self.assertEqual(r.status, 403)
        self.assertNotIn("access-control-allow-origin", r.headers)
        key = new_key()
        r = stack.request("GET", "/api/models", key=key,
                          headers={"Origin": "https://app.example"})
        self.assertEqual(r.headers["access-control-allow-origin"],
                         "https://app.example")
        self.assertIn("X-Request-Id",
                      r.headers["access-control-expose-headers"])
        r = stack.request("GET", "/api/models", key=key,
                          headers={"Origin": "https://evil.example"})
        self.assertNotIn("access-control-allow-origin", r.headers)


class Permissions(unittest.TestCase):
    def test_models(self):
        key = new_key(models="'[\"claude-haiku-4-5\"]'")
        before = messages_count()
        r = chat(key, {"message": "default model"})
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json()["error"]["type"], "permission_error")
        self.assertTrue(r.json()["error"]["message"].startswith("model"))
        r = stack.request("POST", "/v1/chat/completions", {
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "x"}]}, key=key)
        self.assertEqual(r.status, 403)
        self.assertEqual(r.json()["error"]["type"], "permission_error")
        self.assertEqual(messages_count(), before, "a refused turn stored")
        r = chat(key, {"message": "haiku is fine",
                       "model": "claude-haiku-4-5"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual([m["id"] for m in stack.request(
            "GET", "/api/models", key=key).json()["models"]],
            ["claude-haiku-4-5"])
        self.assertEqual([m["id"] for m in stack.request(
            "GET", "/v1/models", key=key).json()["data"]],
            ["claude-haiku-4-5"])

    def test_streaming(self):
        key = new_key(allow_streaming=0)
        r = chat(key, {"message": "x", "stream": True})
        self.assertEqual(r.status, 403)
        self.assertTrue(r.json()["error"]["message"].startswith("stream"))
        r = stack.request("POST", "/v1/messages", {
            "model": "claude-sonnet-4-5", "max_tokens": 5, "stream": True,
            "messages": [{"role": "user", "content": "x"}]}, key=key)
        self.assertEqual(r.status, 403)
        self.assertEqual(r.json()["type"], "error")
        self.assertEqual(r.json()["error"]["type"], "permission_error")
        self.assertEqual(chat(key, {"message": "no stream"}).status, 200)

    def test_max_tokens_cap(self):
        key = new_key(max_tokens=100)
        r = chat(key, {"message": "x", "max_tokens": 500})
        self.assertEqual(r.status, 403, r)
        self.assertIn("at most 100", r.json()["error"]["message"])
        r = chat(key, {"message": "capped turn"})
        self.assertEqual(r.status, 200, r)
        rec = [x for x in stack.mock_records()
               if "capped turn" in json.dumps(x["body"]["messages"])][-1]
        self.assertEqual(rec["body"]["max_tokens"], 100,
                         "the CLI was not given the key's cap")


class RefusedTurnsOfStoredConversations(unittest.TestCase):
    """Turns of a stored conversation refused for the key's rights or
    the conversation's system prompt store nothing, in either route."""

    def test_every_refusal_stores_nothing(self):
        owner = stack.create_key("stored-owner", user="stored")
        r = chat(owner, {"message": "start", "system_prompt": "be brief"})
        self.assertEqual(r.status, 200, r)
        cid = r.json()["conversation_id"]

        def stored():
            return stack.sql("SELECT role, content FROM messages WHERE "
                             "conversation_id = '%s' ORDER BY id" % cid)
        before = stored()
        self.assertEqual(len(before), 2)
        # Keys of the same tenant with narrower rights.
        haiku = stack.create_key("stored-haiku", user="stored")
        narrow = stack.create_key("stored-narrow", user="stored")
        stack.sql("UPDATE api_keys SET models = '[\"claude-haiku-4-5\"]' "
                  "WHERE id = '%s'" % haiku[4:20])
        stack.sql("UPDATE api_keys SET allow_streaming = 0, max_tokens = 50"
                  " WHERE id = '%s'" % narrow[4:20])
        cont = "/api/conversations/%s/continue" % cid
        refused = [
            (haiku, "/api/chat", {"conversation_id": cid}, 403, "model"),
            (haiku, cont, {}, 403, "model"),
            (owner, "/api/chat", {"conversation_id": cid,
                                  "model": "no-such-model"}, 400, "model"),
            (owner, "/api/chat", {"conversation_id": cid,
                                  "system_prompt": "be brief "}, 400,
             "system_prompt"),
            (owner, "/api/chat", {"conversation_id": cid,
                                  "system_prompt": "be long"}, 400,
             "system_prompt"),
            (narrow, "/api/chat", {"conversation_id": cid, "stream": True},
             403, "stream"),
            (narrow, cont, {"stream": True}, 403, "stream"),
            (narrow, "/api/chat", {"conversation_id": cid,
                                   "max_tokens": 51}, 403, "max_tokens"),
            (narrow, cont, {"max_tokens": 51}, 403, "max_tokens"),
        ]
        for key, path, extra, status, field in refused:
            body = dict(extra, message="refused %s %s" % (path, extra))
            r = stack.request("POST", path, body, key=key)
            self.assertEqual(r.status, status, (path, extra, r))
            self.assertTrue(r.json()["error"]["message"].startswith(field),
                            (path, extra, r))
        self.assertEqual(stored(), before, "a refused turn stored")
        # The same keys within their rights: each turn stored once.
        allowed = [
            (haiku, "/api/chat", {"conversation_id": cid,
                                  "model": "claude-haiku-4-5"}),
            (owner, "/api/chat", {"conversation_id": cid,
                                  "system_prompt": "be brief"}),
            (narrow, cont, {"max_tokens": 50}),
        ]
        for key, path, extra in allowed:
            text = "allowed %s %s" % (path, extra)
            r = stack.request("POST", path, dict(extra, message=text),
                              key=key)
            self.assertEqual(r.status, 200, (path, extra, r))
        after = stored()
        self.assertEqual(after[:2], before)
        self.assertEqual([m for m in after[2:] if m[0] == "user"],
                         [["user", "allowed %s %s" % (p, e)]
                          for _, p, e in allowed])
        self.assertEqual(len(after), 2 + 2 * len(allowed))


class Quotas(unittest.TestCase):
    def test_requests_per_minute(self):
        within_one_window(10)
        key = new_key(requests_per_minute=3)
        codes = [stack.request("GET", "/api/models", key=key).status
                 for _ in range(3)]
        self.assertEqual(codes, [200, 200, 200])
        before = messages_count()
        r = chat(key, {"message": "one too many"})
        self.assertEqual(r.status, 429, r)
        self.assertEqual(r.json()["error"]["type"], "rate_limit_error")
        self.assertIn("requests_per_minute", r.json()["error"]["message"])
        self.assertTrue(1 <= int(r.headers["retry-after"]) <= 60)
        self.assertEqual(messages_count(), before)
        r = stack.request("POST", "/v1/chat/completions", {
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "x"}]}, key=key)
        self.assertEqual(r.status, 429)
        self.assertEqual(r.json()["error"]["type"], "rate_limit_exceeded")

    def test_requests_per_day_atomic_under_concurrency(self):
        within_one_window(30, period=86400)
        key = new_key(requests_per_day=7)
        with concurrent.futures.ThreadPoolExecutor(20) as ex:
            codes = list(ex.map(lambda _: stack.request(
                "GET", "/api/models", key=key).status, range(20)))
        self.assertEqual(codes.count(200), 7, codes)
        self.assertEqual(codes.count(429), 13, codes)
        row = stack.sql("SELECT requests FROM key_quota_windows WHERE "
                        "key_id = '%s' AND kind = 'day'" % key[4:20])
        self.assertEqual(row, [["7"]])
        sent = time.time()
        r = stack.request("GET", "/api/models", key=key)
        got = time.time()
        secs = int(r.headers["retry-after"])
        self.assertTrue(0 < secs <= 86400)
        # The seconds to the day's end, as of some moment in between.
        self.assertLessEqual(86400 - got % 86400 - 1, secs)
        self.assertLessEqual(secs, 86400 - sent % 86400 + 1)

    def test_tokens_per_day(self):
        within_one_window(30, period=86400)
        # A turn reserves its max_tokens and its prompt's size (14
        # tokens here) before it runs; the CLI's real usage is far more.
        key = new_key(tokens_per_day=50)
        r = chat(key, {"message": "spend tokens", "max_tokens": 20})
        self.assertEqual(r.status, 200, r)
        used = r.json()["usage"]["total_tokens"]
        self.assertGreater(used, 50)
        row = stack.sql("SELECT tokens FROM key_quota_windows WHERE key_id = "
                        "'%s' AND kind = 'day'" % key[4:20])
        self.assertEqual(row, [[str(used)]])
        r = chat(key, {"message": "no tokens left", "max_tokens": 20})
        self.assertEqual(r.status, 429, r)
        self.assertIn("tokens_per_day", r.json()["error"]["message"])
        # Spent for the day: the wait is until midnight UTC.
        self.assertLessEqual(abs(int(r.headers["retry-after"]) -
                                 (86400 - time.time() % 86400)), 5)

    def test_unlimited_key_leaves_no_rows(self):
        key = new_key()
        self.assertEqual(chat(key, {"message": "free"}).status, 200)
        self.assertEqual(stack.sql("SELECT COUNT(*) FROM key_quota_windows "
                                   "WHERE key_id = '%s'" % key[4:20]),
                         [["0"]])



def day_row(key):
    """The key's day window: [tokens, reserved], or None."""
    rows = stack.sql("SELECT tokens, reserved FROM key_quota_windows WHERE "
                     "key_id = '%s' AND kind = 'day'" % key[4:20])
    return [int(v) for v in rows[0]] if rows else None


def reservations(key):
    return int(stack.sql("SELECT COUNT(*) FROM quota_reservations WHERE "
                         "key_id = '%s'" % key[4:20])[0][0])


# A turn without max_tokens reserves quota_reserve_tokens (4096), or what
# the day has left if less, and its prompt's size (a token per 4 bytes):
# the first turn of a 1,000-token day holds all of it, and uses far more.
ONE_TURN_DAY = 1000
# A day of 6,000 tokens: one such turn holds 4096 and the prompt's size.
DAY = 6000


def held_turn(key, text="held [[mock:hang]]"):
    """Start a streamed turn of key that runs until the returned
    connection closes; (the connection, the body sent)."""
    body = {"message": text, "stream": True}
    c = stack.conn(120)
    c.request("POST", "/api/chat", body=json.dumps(body),
              headers={"Authorization": "Bearer " + key,
                       "Content-Type": "application/json"})
    return c, body


def held_for(body):
    """What a turn of body without max_tokens holds of a fresh big day."""
    return 4096 + (len(json.dumps(body).encode()) + 3) // 4


class TokenReservations(unittest.TestCase):
    """tokens_per_day is hard: a turn holds its estimate while it runs,
    so concurrent turns cannot all pass, in one process or in several."""

    def concurrent_turns(self, key, paths):
        def turn(i):
            path = paths[i % len(paths)]
            if path == "/api/chat":
                body = {"message": "race %d" % i}
            else:
                body = {"model": "claude-sonnet-4-5", "messages": [
                    {"role": "user", "content": "race %d" % i}]}
            host = stacks[i % len(stacks)]
            return host.request("POST", path, body, key=key, timeout=90)
        stacks = self.stacks
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            return list(ex.map(turn, range(8)))

    def check_one_of_eight(self, key, results):
        codes = [r.status for r in results]
        self.assertEqual(codes.count(200), 1, results)
        self.assertEqual(codes.count(429), 7, results)
        for r in results:
            if r.status == 429:
                self.assertIn("tokens_per_day", r.body)
                self.assertGreater(int(r.headers["retry-after"]), 0)
        # The one turn's real usage replaced its reservation.
        self.assertEqual(day_row(key)[1], 0)
        self.assertEqual(reservations(key), 0)
        self.assertGreater(day_row(key)[0], 0)

    def test_eight_concurrent_turns_one_fits(self):
        within_one_window(120, period=86400)
        self.stacks = [stack]
        key = new_key(tokens_per_day=ONE_TURN_DAY)
        self.check_one_of_eight(key, self.concurrent_turns(
            key, ["/api/chat", "/v1/chat/completions"]))

    def test_eight_concurrent_turns_across_two_processes(self):
        within_one_window(180, period=86400)
        other = Stack(share_with=stack, name="limits2",
                      app_opts={"key_cache_ms": CACHE_MS}).start()
        try:
            self.stacks = [stack, other]
            key = new_key(tokens_per_day=ONE_TURN_DAY)
            self.check_one_of_eight(key, self.concurrent_turns(
                key, ["/api/chat", "/v1/chat/completions"]))
        finally:
            other.stop()

    def test_a_turn_larger_than_the_day(self):
        key = new_key(tokens_per_day=ONE_TURN_DAY)
        r = stack.request("POST", "/v1/messages", {
            "model": "claude-sonnet-4-5", "max_tokens": 2000,
            "messages": [{"role": "user", "content": "too big"}]}, key=key)
        self.assertEqual(r.status, 429, r)
        self.assertEqual(r.json()["error"]["type"], "rate_limit_error")
        self.assertIn("lower max_tokens", r.body)
        # Waiting would not help: no Retry-After.
        self.assertNotIn("retry-after", r.headers)
        self.assertEqual(day_row(key), [0, 0])

    def test_a_failed_turn_is_charged_what_it_held(self):
        within_one_window(60, period=86400)
        key = new_key(tokens_per_day=DAY)
        body = {"message": "break [[mock:fail=400]]"}
        r = chat(key, body)
        self.assertGreaterEqual(r.status, 500, r)
        # The upstream was asked: the turn pays what it held.
        self.assertEqual(day_row(key), [held_for(body), 0])
        self.assertEqual(reservations(key), 0)
        # What is left still runs a turn (it holds the rest of the day).
        self.assertEqual(chat(key, {"message": "after"}).status, 200)

    def test_a_cancelled_turn_is_charged_what_it_held(self):
        within_one_window(60, period=86400)
        key = new_key(tokens_per_day=DAY)
        c, body = held_turn(key)
        wait_for(lambda: reservations(key) == 1, 60, "the turn to hold")
        self.assertEqual(day_row(key), [0, held_for(body)])
        c.close()       # the client leaves mid-turn
        wait_for(lambda: reservations(key) == 0, 60,
                 "the cancelled turn to settle")
        self.assertEqual(day_row(key), [held_for(body), 0])

    def test_a_refused_turn_is_charged_nothing(self):
        within_one_window(60, period=86400)
        key = new_key(tokens_per_day=DAY, max_concurrent_requests=1,
                      queue_when_busy=0)
        c, body = held_turn(key)
        wait_for(lambda: reservations(key) == 1 and any(
            p["state"] == "busy" for p in stack.stats()["processes"]),
            60, "the first turn to run")
        r = chat(key, {"message": "refused"})
        self.assertEqual(r.status, 429, r)
        self.assertIn("max_concurrent_requests", r.body)
        # Refused before any CLI had it: its reservation went, unpaid.
        self.assertEqual(reservations(key), 1)
        self.assertEqual(day_row(key), [0, held_for(body)])
        c.close()       # the first, left by its client, pays what it held
        wait_for(lambda: reservations(key) == 0, 60, "the first to settle")
        self.assertEqual(day_row(key), [held_for(body), 0])

    def test_an_upstream_error_after_the_cli_ran_pays_what_it_held(self):
        within_one_window(60, period=86400)
        key = new_key(tokens_per_day=DAY)
        body = {"message": "overloaded [[mock:fail=529]]"}
        r = chat(key, body)
        self.assertEqual(r.status, 503, r)
        self.assertEqual(day_row(key), [held_for(body), 0])

    def test_a_turn_holding_the_days_rest_stops_there(self):
        within_one_window(60, period=86400)
        key = new_key(tokens_per_day=ONE_TURN_DAY)
        body = {"message": "a long answer [[mock:chunks=3000]]"}
        r = chat(key, body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["stop_reason"], "max_tokens")
        held = ONE_TURN_DAY - (len(json.dumps(body).encode()) + 3) // 4
        self.assertLessEqual(r.json()["usage"]["output_tokens"], held)

    def test_a_tool_turn_pays_at_least_what_it_held(self):
        within_one_window(60, period=86400)
        key = new_key(tokens_per_day=100000, allow_tools=1)
        body = {"message": "tools may misreport"}
        r = chat(key, body)
        self.assertEqual(r.status, 200, r)
        used = r.json()["usage"]["total_tokens"]
        self.assertEqual(day_row(key), [max(used, held_for(body)), 0])

    def test_a_dead_process_reservation_is_charged_when_it_expires(self):
        within_one_window(60, period=86400)
        key = new_key(tokens_per_day=DAY)
        kid = key[4:20]
        # What a ccgate-fcgi process killed mid-turn leaves: a held day.
        stack.sql("INSERT INTO key_quota_windows (key_id, kind, "
                  "window_start, reserved) VALUES ('%s', 'day', UTC_DATE(),"
                  " 5000)" % kid)
        stack.sql("INSERT INTO quota_reservations VALUES ('%s', 'dead-1', "
                  "UTC_DATE(), 5000, UTC_TIMESTAMP() + INTERVAL 1 HOUR)"
                  % kid)
        body = {"message": "held by a live turn", "max_tokens": 2000}
        r = chat(key, body)
        self.assertEqual(r.status, 429, r)
        self.assertIn("the key's day has 6000 of 6000 left, 5000 of them "
                      "held by turns in flight", r.body)
        self.assertEqual(r.headers["retry-after"], "5")
        # Its process is gone for good: past its expiry the reservation is
        # closed and charged what it held (the upstream may have run it),
        # so the day has 1,000 left, for good.
        stack.sql("UPDATE quota_reservations SET expires_at = "
                  "UTC_TIMESTAMP() - INTERVAL 1 SECOND WHERE key_id = '%s'"
                  % kid)
        r = chat(key, body)
        self.assertEqual(r.status, 429, r)
        self.assertIn("the key's day has 1000 of 6000 left, 0 of them held",
                      r.body)
        self.assertGreater(int(r.headers["retry-after"]), 5)
        self.assertEqual(reservations(key), 0)
        self.assertEqual(day_row(key), [5000, 0])


class BatchAdmission(unittest.TestCase):
    """A batch's items are admitted one by one, as if sent alone."""

    def test_items_count_against_requests_per_minute(self):
        within_one_window(50)
        key = new_key(requests_per_minute=2)
        r = stack.request("POST", "/api/chat/batch", {"messages": [
            {"message": "item %d" % i} for i in range(5)]}, key=key)
        self.assertEqual(r.status, 200, r)
        results = r.json()["results"]
        self.assertEqual(sorted(x["status"] for x in results),
                         [200, 200, 429, 429, 429], results)
        for x in results:
            if x["status"] == 429:
                self.assertIn("requests_per_minute", x["error"]["message"])
                self.assertTrue(1 <= x["retry_after"] <= 60, x)
            else:
                self.assertNotIn("retry_after", x)
        self.assertEqual(stack.sql(
            "SELECT requests FROM key_quota_windows WHERE key_id = '%s' AND "
            "kind = 'minute'" % key[4:20]), [["2"]])

    def test_items_reserve_tokens_per_day(self):
        within_one_window(120, period=86400)
        key = new_key(tokens_per_day=ONE_TURN_DAY, requests_per_day=100)
        r = stack.request("POST", "/api/chat/batch", {"messages": [
            {"message": "item %d" % i} for i in range(6)]}, key=key,
            timeout=90)
        self.assertEqual(r.status, 200, r)
        codes = [x["status"] for x in r.json()["results"]]
        self.assertEqual(sorted(codes), [200] + [429] * 5, codes)
        self.assertEqual(day_row(key)[1], 0)
        # The day's requests count each item, refused ones too.
        self.assertEqual(stack.sql(
            "SELECT requests FROM key_quota_windows WHERE key_id = '%s' AND "
            "kind = 'day'" % key[4:20]), [["6"]])


class KeyConcurrency(unittest.TestCase):
    """max_concurrent_requests: the key's next turn waits in the pool's
    queue, or with queue false is refused at once."""

    def hold(self, key):
        """A turn of key that runs until the returned connection closes."""
        c, _ = held_turn(key)
        wait_for(lambda: self.busy() == 1, 60, "the held turn to run")
        return c

    def busy(self):
        return len([p for p in stack.stats()["processes"]
                    if p["state"] == "busy"])

    def test_the_next_turn_waits_in_the_queue(self):
        key = new_key(max_concurrent_requests=1)
        held = self.hold(key)
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            second = ex.submit(chat, key, {"message": "second"})
            wait_for(lambda: stack.stats()["queue_length"] == 1, 60,
                     "the second turn to wait")
            self.assertEqual(self.busy(), 1)
            self.assertFalse(second.done())
            held.close()        # the first ends: the second runs
            self.assertEqual(second.result().status, 200)

    def test_queue_false_is_refused_at_once(self):
        key = new_key(max_concurrent_requests=1, queue_when_busy=0)
        other = new_key(max_concurrent_requests=1, queue_when_busy=0)
        held = self.hold(key)
        for path, body, etype in (
                ("/api/chat", {"message": "second"}, "rate_limit_error"),
                ("/v1/chat/completions", {
                    "model": "claude-sonnet-4-5", "messages": [
                        {"role": "user", "content": "second"}]},
                 "rate_limit_exceeded"),
                ("/v1/messages", {
                    "model": "claude-sonnet-4-5", "max_tokens": 50,
                    "messages": [{"role": "user", "content": "second"}]},
                 "rate_limit_error")):
            r = stack.request("POST", path, body, key=key)
            self.assertEqual(r.status, 429, (path, r))
            self.assertEqual(r.json()["error"]["type"], etype)
            self.assertIn("max_concurrent_requests", r.body)
            self.assertEqual(r.headers["retry-after"], "1")
        # Another key is not held back by this one's limit.
        self.assertEqual(chat(other, {"message": "mine"}).status, 200)
        held.close()
        wait_for(lambda: self.busy() == 0, 60, "the held turn to end")
        self.assertEqual(chat(key, {"message": "free again"}).status, 200)


class Concurrency(unittest.TestCase):
    def test_jobs_per_key_are_capped(self):
        # Two keys of one user: one tenant, whose cap (4) leaves room.
        a = stack.create_key("conc-a", user="conc")
        b = stack.create_key("conc-b", user="conc")
        # Key a's second job waits as long as its first runs.
        wait = stack.poold_opts["queue_max_wait_ms"]
        stack.reconfigure(key_max_jobs=1, queue_max_wait_ms=300000)
        try:
            def chat(key, i, slow):
                return stack.request("POST", "/api/chat", {
                    "message": "slow %d [[mock:slow=%d]]" % (i, slow)},
                    key=key, timeout=120)

            def busy():
                return len([p for p in stack.stats()["processes"]
                            if p["state"] == "busy"])
            with concurrent.futures.ThreadPoolExecutor(3) as ex:
                # Key a's first job outlasts what follows, on any machine
                # (the time is a failure bound, not a margin).
                futs = [ex.submit(chat, a, 1, 25000)]
                wait_for(lambda: busy() == 1, 60, "key a's first job to run")
                futs.append(ex.submit(chat, a, 2, 0))
                wait_for(lambda: stack.stats()["queue_length"] == 1, 60,
                         "key a's second job to wait")
                # Key b's job runs beside key a's first; a's second waits.
                r = chat(b, 3, 0)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(stack.stats()["queue_length"], 1)
                self.assertFalse([f for f in futs if f.done()])
                results = [f.result() for f in futs] + [r]
        finally:
            stack.reconfigure(key_max_jobs=0, queue_max_wait_ms=wait)
        self.assertEqual([r.status for r in results], [200] * 3, results)


def ccgate_connections():
    return int(stack.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                         " WHERE USER = 'ccgate'")[0][0])


class DatabaseConnections(unittest.TestCase):
    def test_streams_share_the_configured_connections(self):
        """Twelve streams held open at once by ccgate-fcgi's 32 threads
        use at most db_connections MariaDB connections between them, and
        every one ends whole: its answer, its stored messages, its usage
        row."""
        STREAMS = 12
        key = new_key()
        # ccgate-ws has a pool of its own; this counts ccgate-fcgi's.
        stack.stop_proc("ws")
        # Twelve turns on max_instances (6): half of them wait for a
        # process, as long as a loaded machine makes them.
        wait = stack.poold_opts["queue_max_wait_ms"]
        stack.reconfigure(queue_max_wait_ms=300000)
        try:
            done = []

            def one(i):
                resp, events = stack.stream("/api/chat", {
                    "message": "pooled %d [[mock:drip=100]] "
                    "[[mock:chunks=15]]" % i, "stream": True}, key=key)
                done.append(i)
                return resp, events
            peak = 0
            with concurrent.futures.ThreadPoolExecutor(STREAMS) as ex:
                futs = [ex.submit(one, i) for i in range(STREAMS)]
                while len(done) < STREAMS:
                    peak = max(peak, ccgate_connections())
                    time.sleep(0.05)
                results = [f.result() for f in futs]
        finally:
            stack.reconfigure(queue_max_wait_ms=wait)
            stack.start_ws()
        self.assertGreater(peak, 0)
        self.assertLessEqual(peak, DB_CONNECTIONS)
        print("\n  %d streams, at most %d MariaDB connections" % (
            STREAMS, peak), file=sys.stderr)
        ids = []
        for resp, events in results:
            self.assertEqual(resp.status, 200, resp)
            self.assertEqual(events[-1], "[DONE]")
            self.assertEqual(events[-2]["type"], "done", events[-2])
            ids.append(resp.headers["x-request-id"])
        for rid in ids:
            wait_for(lambda: stack.sql(
                "SELECT status_code FROM usage_logs WHERE request_id = "
                "'%s'" % rid) == [["200"]], 60, "the usage row of " + rid)
        self.assertEqual(sorted(stack.sql(
            "SELECT role, COUNT(*) FROM messages WHERE request_id IN (%s) "
            "GROUP BY role" % ", ".join("'%s'" % rid for rid in ids))),
            [["assistant", str(STREAMS)], ["user", str(STREAMS)]])


if __name__ == "__main__":
    main()
