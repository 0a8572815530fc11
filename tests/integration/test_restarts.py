#!/usr/bin/env python3
"""Changes under load: `nginx -s reload` and a drain-and-restart of
ccgate-poold while clients chat in a loop.  Every request completes (200)
or gets a clear 503 with Retry-After, and each has its usage row."""

import os
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, wait_for, main  # noqa: E402

stack = None


def setUpModule():
    global stack
    stack = Stack(name="restarts").start()
    stack.create_key("alice", user="alice")


def tearDownModule():
    stack.stop()


class Load:
    """Clients chatting in a loop (each turn a new conversation)."""

    def __init__(self, clients=4):
        self.results = []
        self.spans = []             # (sent, answered) of each result
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,))
                        for i in range(clients)]

    def _run(self, i):
        n = 0
        while not self.stop.is_set():
            n += 1
            msg = "load %d-%d [[mock:slow=100]]" % (i, n)
            sent = time.time()
            try:
                r = stack.request("POST", "/api/chat", {"message": msg},
                                  key=stack.keys["alice"], timeout=60)
                res = (r.status, r.headers.get("retry-after"),
                       r.headers.get("x-request-id"), msg,
                       r.json() if r.status == 200 else r.body)
            except OSError as e:
                res = ("error", str(e), None, msg, None)
            with self.lock:
                self.results.append(res)
                self.spans.append((sent, time.time()))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(90)

    def count(self):
        with self.lock:
            return len(self.results)


def check_records(test, results):
    """Every answer has its usage row; every 200 stored both messages."""
    ids = [r[2] for r in results]
    test.assertNotIn(None, ids)
    rows = {}

    def all_there():
        got = stack.sql("SELECT request_id, status_code FROM usage_logs "
                        "WHERE request_id IN (%s)" %
                        ",".join("'%s'" % i for i in ids))
        rows.clear()
        rows.update(dict(got))
        return len(rows) == len(ids)
    wait_for(all_there, 60, "every usage row")
    for status, _, rid, msg, body in results:
        test.assertEqual(rows[rid], str(status), rid)
        if status == 200:
            got = stack.sql("SELECT role FROM messages WHERE "
                            "conversation_id = '%s' ORDER BY id" %
                            body["conversation_id"])
            test.assertEqual(got, [["user"], ["assistant"]], msg)


class Restarts(unittest.TestCase):
    def test_nginx_reload_loses_nothing(self):
        with Load() as load:
            wait_for(lambda: load.count() >= 8, 60, "load to run")
            stack.procs["nginx"].send_signal(signal.SIGHUP)
            n = load.count()
            wait_for(lambda: load.count() >= n + 16, 60, "load after reload")
        statuses = [r[0] for r in load.results]
        self.assertEqual(set(statuses), {200}, load.results[:5])
        check_records(self, load.results)

    def test_fcgi_restart_on_a_held_socket_loses_nothing(self):
        stack.stop_proc("fcgi")
        stack.start_fcgi(activated=True)
        with Load() as load:
            wait_for(lambda: load.count() >= 8, 60, "load to run")
            stack.stop_proc("fcgi", signal.SIGTERM)
            down = time.time()
            time.sleep(1.0)
            up = time.time()
            stack.start_fcgi(activated=True)
            n = load.count()
            wait_for(lambda: load.count() >= n + 16, 60,
                     "load after the restart")
        self.assertEqual({r[0] for r in load.results}, {200},
                         [r for r in load.results if r[0] != 200][:5])
        # Requests sent before the old process was gone waited in the
        # socket while no ccgate-fcgi ran; the next process answered them.
        self.assertTrue([s for s in load.spans if s[0] < down and s[1] > up],
                        "no request waited through the restart")
        check_records(self, load.results)

    def test_poold_drain_and_restart_under_load(self):
        with Load() as load:
            wait_for(lambda: load.count() >= 8, 60, "load to run")
            t0 = time.time()
            stack.stop_proc("poold", signal.SIGTERM)
            time.sleep(1.0)
            stack.start_poold()
            restarted = load.count()
            wait_for(lambda: load.count() >= restarted + 12, 60,
                     "load after the restart")
        for status, retry_after, _, msg, body in load.results:
            self.assertIn(status, (200, 503), (msg, body))
            if status == 503:
                self.assertTrue(retry_after and int(retry_after) > 0, msg)
        # Clients were refused only while the daemon was away.
        self.assertEqual({r[0] for r in load.results[-8:]}, {200})
        self.assertIn(503, [r[0] for r in load.results])
        self.assertLess(time.time() - t0, 120)
        check_records(self, load.results)

    def test_turn_longer_than_the_drain_gets_503(self):
        grace = stack.poold_opts["shutdown_grace_ms"]
        stack.reconfigure(shutdown_grace_ms=1000)
        try:
            box = {}

            def chat():
                box["r"] = stack.request(
                    "POST", "/api/chat",
                    {"message": "long [[mock:slow=8000]]"},
                    key=stack.keys["alice"], timeout=60)
            t = threading.Thread(target=chat)
            t.start()
            wait_for(lambda: stack.stats()["processes_by_state"]["busy"]
                     == 1, 60, "the turn to run")
            stack.stop_proc("poold", signal.SIGTERM)
            t.join(60)
        finally:
            stack.poold_opts["shutdown_grace_ms"] = grace
            stack.write_poold_conf()
            stack.start_poold()
        r = box["r"]
        self.assertEqual(r.status, 503, r)
        self.assertTrue(int(r.headers["retry-after"]) > 0)
        self.assertEqual(r.json()["error"]["type"], "overloaded_error", r)
        self.assertIn("retry", r.json()["error"]["message"])
        check_records(self, [(503, None, r.headers["x-request-id"], "", None)])


if __name__ == "__main__":
    main()
