#!/usr/bin/env python3
"""Faults under a bounded load loop, each checked for what a user would
see and for what must not be lost: MariaDB stopped for 10 s and started
again (503 with Retry-After meanwhile, recovery without restarting
ccgate, every request's usage row written once the database is back),
ccgate-fcgi killed (nginx answers JSON 502, then recovery), ccgate-poold
killed with SIGKILL (no CLI left, 503 at once, conversations intact once
it is back), and an upstream that fails (the CLI's error reaches the
client as 502)."""

import json
import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, SRCDIR, texts_of, wait_for, main  # noqa: E402

stack = None


def setUpModule():
    global stack
    # The CLI retries a failing upstream itself; once is enough here.
    stack = Stack({"env.CLAUDE_CODE_MAX_RETRIES": "1"},
                  name="faults").start()


def tearDownModule():
    stack.stop()


def load_loop(key, seconds, out, stop):
    """Chat every 100 ms for at most seconds; record what came back."""
    end = time.time() + seconds
    while time.time() < end and not stop.is_set():
        t = time.time()
        try:
            r = stack.request("POST", "/api/chat", {"message": "load %f" % t},
                              key=key, timeout=30)
            out.append((t, r.status, r.headers.get("x-request-id"),
                        r.headers.get("retry-after"), r.body, time.time()))
        except OSError as e:
            out.append((t, None, None, None, str(e), time.time()))
        time.sleep(0.1)


def usage_ids(ids):
    """The request ids of ids that have a usage row."""
    return {r[0] for r in stack.sql(
        "SELECT request_id FROM usage_logs WHERE request_id IN (%s)" %
        ",".join("'%s'" % i for i in ids))}


class Database(unittest.TestCase):
    def test_mariadb_down_for_10_s_under_load(self):
        key = stack.create_key("db-fault")
        kid = key[4:20]
        # Four clients: a turn in flight when the database stops waits
        # for it to come back (its answer is stored, not dropped), while
        # the others keep asking.
        out, stop = [], threading.Event()
        ths = [threading.Thread(target=load_loop, args=(key, 40, out, stop))
               for _ in range(4)]
        for th in ths:
            th.start()
        try:
            wait_for(lambda: len(out) >= 12, 30, "the load loop to run")
            subprocess.run([os.path.join(SRCDIR, "deploy", "mariadb-private"),
                            "stop", stack.path("db")], check=True)
            down_at = time.time()
            time.sleep(10)
            subprocess.run([os.path.join(SRCDIR, "deploy", "mariadb-private"),
                            "start", stack.path("db"), "it-password"],
                           check=True, capture_output=True)
            up_at = time.time()
            # Recovery, without restarting anything of ccgate.
            wait_for(lambda: any(o[0] > up_at and o[1] == 200 for o in out),
                     20, "a successful chat after the restart")
            time.sleep(1)
        finally:
            stop.set()
            for th in ths:
                th.join()
        statuses = {o[1] for o in out}
        self.assertLessEqual(statuses, {200, 503}, [o for o in out
                                                    if o[1] not in (200, 503)])
        during = [o for o in out if down_at + 1 < o[0] < up_at - 1]
        self.assertTrue(during, [(round(o[0] - down_at, 1), o[1],
                                  round(o[5] - down_at, 1)) for o in
                                 sorted(out)])
        self.assertTrue(all(o[1] == 503 for o in during), during)
        self.assertTrue(all(o[3] for o in during), "503 without Retry-After")
        for o in during:
            self.assertIn("unavailable", json.loads(o[4])["error"]["message"])
        self.assertTrue(any(o[1] == 200 for o in out if o[0] < down_at))
        # Every request got its usage row, those answered while the
        # database was down included (queued, then written; without a
        # key id when the key could not be checked).
        ids = {o[2] for o in out}
        wait_for(lambda: usage_ids(ids) == ids, 15, "every usage row")
        self.assertEqual(int(stack.sql(
            "SELECT COUNT(*) FROM usage_logs WHERE key_id = '%s' AND "
            "status_code = 200" % kid)[0][0]),
            len([o for o in out if o[1] == 200]))
        # And every answered chat's messages are stored.
        ok = [o for o in out if o[1] == 200]
        convs = [json.loads(o[4])["conversation_id"] for o in ok]
        n = stack.sql("SELECT COUNT(*) FROM messages WHERE conversation_id "
                      "IN (%s)" % ",".join("'%s'" % c for c in convs))
        self.assertEqual(int(n[0][0]), 2 * len(ok))
        self.assertEqual(stack.request("GET", "/readyz").status, 200)


class FastCGI(unittest.TestCase):
    def test_fcgi_killed_then_back(self):
        key = stack.create_key("fcgi-fault")
        self.assertEqual(stack.request("GET", "/api/models", key=key).status,
                         200)
        p = stack.procs.pop("fcgi")
        p.kill()
        p.wait()
        r = stack.request("GET", "/api/models", key=key)
        self.assertEqual(r.status, 502)
        self.assertEqual(r.headers["content-type"], "application/json")
        self.assertIs(json.loads(r.body)["success"], False)
        self.assertIn("x-request-id", r.headers)
        stack.start_fcgi()
        wait_for(lambda: stack.request("GET", "/api/models",
                                       key=key).status == 200, 15,
                 "ccgate-fcgi back")


class PoolKilled(unittest.TestCase):
    def test_poold_sigkill_then_back_with_conversations_intact(self):
        key = stack.create_key("poold-fault")
        r = stack.request("POST", "/api/chat", {
            "message": "remember the word heron"}, key=key)
        self.assertEqual(r.status, 200, r)
        cid = r.json()["conversation_id"]
        p = stack.procs.pop("poold")
        p.kill()
        p.wait()
        # Its CLIs die with it (PR_SET_PDEATHSIG): nothing orphaned.
        wait_for(lambda: not [x for x in stack.leftovers()
                              if "claude" in x[1]], 10, "the CLIs to go")
        r = stack.request("POST", "/api/chat", {
            "message": "are you there", "conversation_id": cid}, key=key)
        self.assertEqual(r.status, 503, r)
        self.assertIn("retry-after", r.headers)
        stack.start_poold()
        r = stack.request("POST", "/api/chat", {
            "message": "which word?", "conversation_id": cid}, key=key)
        self.assertEqual(r.status, 200, r)
        # The context is there: the CLI resumed its session, or, when
        # the killed CLI's transcript was incomplete, a new session was
        # primed with the turns stored in MariaDB.
        last = [x for x in stack.mock_records()
                if "which word?" in json.dumps(x["body"])][-1]
        turns = texts_of(last)
        self.assertTrue(("user", "remember the word heron") in turns or
                        "[user]\nremember the word heron\n" in turns[-1][1],
                        turns)


class Upstream(unittest.TestCase):
    def test_upstream_failure_reaches_the_client_as_502(self):
        key = stack.create_key("upstream-fault")
        for code, tries in ((400, 1), (500, 2), (529, 2)):
            marker = "[[mock:fail=%d]]" % code
            r = stack.request("POST", "/api/chat",
                              {"message": "x " + marker}, key=key)
            self.assertEqual(r.status, 502, r)
            err = r.json()["error"]
            self.assertEqual(err["type"], "cli_error")
            self.assertIn("mock upstream failure %d" % code, err["message"])
            # 5xx: the CLI's own retry (CLAUDE_CODE_MAX_RETRIES=1).
            seen = [x for x in stack.mock_records()
                    if marker in json.dumps(x["body"])]
            self.assertEqual(len(seen), tries, code)
            wait_for(lambda: stack.sql(
                "SELECT status_code FROM usage_logs WHERE request_id = "
                "'%s'" % r.headers["x-request-id"]) == [["502"]], 10,
                "the failed chat's usage row")
        # The gateway is fine afterwards.
        self.assertEqual(stack.request("POST", "/api/chat", {
            "message": "after"}, key=key).status, 200)


if __name__ == "__main__":
    main()
