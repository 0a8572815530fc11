#!/usr/bin/env python3
"""ccgate on a real MariaDB Galera cluster: three galera-4 nodes on
loopback (galera.py, rsync SST), two ccgate nodes (each its own nginx,
ccgate-fcgi, ccgate-ws, ccgate-poold), A on Galera node 0 and B on node 1
(then 2: db_hosts), the real CLI and the mock upstream.

What it shows, in order: quota races between the nodes admit exactly what
the quota allows and never answer 503 while it has room (certification
conflicts are tried again, db_tx); a conversation created on A is read at
once on B (wsrep_sync_wait); a conversation alternating A, B, A, B keeps
every turn in the upstream's context; B's Galera node killed, B goes on
on another (db_hosts) and comes back to the first (fail-back) once it
rejoined by IST; an answer in flight while B's only database is down is
spooled and stored when it returns, across a restart of ccgate-fcgi; a
Galera node killed with SIGKILL under load and restarted from its
recovered position (IST): every request answered has its usage row, every
answer its message.  Figures (docs/scaling.md) are printed as "figure:"
lines."""

import http.client
import json
import os
import re
import stat
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Stack, CLAUDE, wait_for, texts_of,  # noqa: E402
                     within_one_window, main)
import galera  # noqa: E402

cluster = None
A = B = None


class GaleraStack(Stack):
    """A ccgate node whose database is the Galera cluster (db_hosts)."""

    def _start_db(self):
        with open(self.path("db.password"), "w") as f:
            f.write(galera.PASSWORD + "\n")

    def sql(self, query):
        return cluster.sql(0, query)

    def set_hosts(self, hosts, **more):
        """Restart ccgate-fcgi with db_hosts (and more settings)."""
        self.app_opts["db_hosts"] = hosts
        self.app_opts.update(more)
        text = open(self.path("ccgate.conf")).read()
        text = re.sub(r"(?m)^db_hosts = .*$", "db_hosts = " + hosts, text)
        for k, v in more.items():
            text = re.sub(r"(?m)^%s = .*\n" % k, "", text)
            text += "%s = %s\n" % (k, v)
        with open(self.path("ccgate.conf"), "w") as f:
            f.write(text)
        self.stop_proc("fcgi")
        self.start_fcgi()

    def readyz(self):
        return self.request("GET", "/readyz").json()

    def mock(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.mock_port,
                                       timeout=10)
        try:
            c.request(method, path, body=None if body is None else
                      json.dumps(body))
            return json.loads(c.getresponse().read())
        finally:
            c.close()


def setUpModule():
    global cluster, A, B
    why = galera.available()
    if not CLAUDE or not os.access(CLAUDE, os.X_OK):
        why = "CCGATE_CLAUDE is not an executable claude CLI (run " \
            "deploy/install-claude)"
    if why:
        raise RuntimeError("the Galera test cannot run: %s (deploy/"
                           "install-deps --test installs what it needs)" % why)
    cluster = galera.Galera().start()
    try:
        opts = {"db_hosts": cluster.hosts(0), "db_failback_s": 2,
                "db_retry_ms": 3000}
        A = GaleraStack(name="gala", app_opts=dict(opts)).start()
        B = GaleraStack(name="galb", share_with=A, app_opts=dict(
            opts, db_hosts=cluster.hosts(1, 2))).start()
        A.create_key("alice", user="alice")
        B.keys = A.keys
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    for s in (B, A):
        if s is not None:
            s.stop()
    if cluster is not None:
        cluster.stop()


def figure(text):
    """A figure for docs/scaling.md, on a line of its own."""
    print("\nfigure: " + text, flush=True)


def parallel(calls):
    """Run the calls at once (a barrier before each); their results."""
    out = [None] * len(calls)
    gate = threading.Barrier(len(calls))

    def run(i):
        gate.wait()
        out[i] = calls[i]()
    threads = [threading.Thread(target=run, args=(i,))
               for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def models(stack, key):
    return lambda: stack.request("GET", "/api/models", key=key).status


def chat(stack, key, message, conv=None):
    body = {"message": message}
    if conv:
        body["conversation_id"] = conv
    return stack.request("POST", "/api/chat", body, key=key)


def usage_rows(where):
    return int(cluster.sql(0, "SELECT COUNT(*) FROM usage_logs WHERE " +
                           where)[0][0])


class Galera(unittest.TestCase):
    def test_1_quota_races_across_nodes(self):
        # A quota with room: 20 pairs at once, one request on each node,
        # all admitted (a certification conflict is tried again).
        key = A.create_key("roomy", user="roomy")
        A.admin("key", "update", key[4:20], "--rpd", "100000")
        statuses = []
        for _ in range(20):
            statuses += parallel([models(A, key), models(B, key)])
        self.assertEqual(statuses, [200] * 40)
        retried = A._log_count("fcgi.log", "is tried again") + \
            B._log_count("fcgi.log", "is tried again")
        figure("20 pairs with room: 40 of 40 answered 200 "
               "(transactions tried again after a conflict: logged %d)" %
               retried)
        # rpd 1: of each pair exactly one.
        within_one_window(120, period=86400)
        for i in range(5):
            k = A.create_key("rpd1-%d" % i, user="rpd1-%d" % i)
            A.admin("key", "update", k[4:20], "--rpd", "1")
            got = parallel([models(A, k), models(B, k)])
            self.assertEqual(sorted(got), [200, 429], got)
        # rpm 5, ten at once over both nodes: exactly five.
        k = A.create_key("rpm5", user="rpm5")
        A.admin("key", "update", k[4:20], "--rpm", "5")
        within_one_window(30)
        got = parallel([models(A if i % 2 else B, k) for i in range(10)])
        self.assertEqual(sorted(got), [200] * 5 + [429] * 5, got)
        figure("rpd 1, 5 races over both nodes: one 200 each; "
               "rpm 5, 10 at once: 5 admitted, 5 refused, no 503")

    def test_2_created_on_a_read_at_once_on_b(self):
        key = A.keys["alice"]
        for i in range(200):
            r = A.request("POST", "/api/conversations", {}, key=key)
            self.assertEqual(r.status, 201, r)
            conv = r.json()["conversation_id"]
            r = B.request("GET", "/api/conversations/" + conv, key=key)
            self.assertEqual(r.status, 200, (i, r))
        figure("200 conversations created on A, read at once on B: "
               "200 of 200 found (wsrep_sync_wait 1)")

    def test_3_alternating_nodes_keep_every_turn(self):
        key = A.keys["alice"]
        words = ["amber", "basalt", "cobalt", "dune"]
        r = chat(A, key, "remember the word %s" % words[0])
        self.assertEqual(r.status, 200, r)
        conv = r.json()["conversation_id"]
        for i, (node, w) in enumerate(zip((B, A, B), words[1:])):
            r = node.request("POST", "/api/conversations/%s/continue" % conv,
                             {"message": "remember the word %s" % w}, key=key)
            self.assertEqual(r.status, 200, (i, r))
        r = A.request("POST", "/api/conversations/%s/continue" % conv,
                      {"message": "which words did I give you?"}, key=key)
        self.assertEqual(r.status, 200, r)
        rec = [x for x in A.mock("GET", "/_records")
               if texts_of(x) and "which words" in texts_of(x)[-1][1]][-1]
        seen = " ".join(t for _, t in texts_of(rec))
        for w in words:
            self.assertIn(w, seen)
        n = cluster.sql(1, "SELECT COUNT(*) FROM messages WHERE "
                        "conversation_id = '%s'" % conv)
        self.assertEqual(n, [["10"]])
        figure("a conversation on A, B, A, B, A: the fifth turn's upstream "
               "request held all 4 earlier turns; 10 messages stored")

    def test_4_failover_and_failback(self):
        key = A.keys["alice"]
        self.assertEqual(B.readyz()["database_host"],
                         {"position": 1, "of": 2})
        self.assertTrue(B.readyz()["database_galera"])
        cluster.kill(1)
        wait_for(lambda: cluster.cluster_size(0) == 2, 60,
                 "the cluster to drop node 1")
        # B goes on, on Galera node 2.
        for i in range(5):
            r = chat(B, key, "during the outage %d" % i)
            self.assertEqual(r.status, 200, (i, r))
        ready = B.request("GET", "/readyz")
        self.assertEqual(ready.json()["database_host"],
                         {"position": 2, "of": 2})
        # Public: the position only, never a host's address or port.
        self.assertNotIn("127.0.0.1", ready.body)
        self.assertNotIn(str(cluster.ports[2]), ready.body)
        pos = cluster.restart(1)
        self.assertTrue(cluster.joined_by_ist(1), "node 1 needed an SST")
        # Back to its first host once it rejoined (db_failback_s 2).
        wait_for(lambda: models(B, key)() == 200 and
                 B.readyz()["database_host"]["position"] == 1, 60,
                 "B to fail back to Galera node 1")
        figure("Galera node 1 killed: B answered 5 of 5 chats on "
               "node 2; node 1 back by IST from %s, B back on it" % pos)

    def test_5_answers_in_flight_are_spooled(self):
        key = A.keys["alice"]
        # B on Galera node 1 only: its outage is B's.
        B.set_hosts(cluster.hosts(1), db_retry_ms=1000)
        results = {}

        def turn(i):
            results[i] = chat(B, key, "spool me %d [[mock:hold=sp%d]]" %
                              (i, i))
        threads = [threading.Thread(target=turn, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: len(B.mock("GET", "/_held")) == 3, 120,
                 "three turns in flight")
        cluster.kill(1)
        for i in range(3):
            B.mock("POST", "/_release", {"name": "sp%d" % i})
        for t in threads:
            t.join()
        for i in range(3):
            self.assertEqual(results[i].status, 200, results[i])
        self.assertEqual(B._log_count("fcgi.log", "it is spooled"), 3)
        spool = B.path("spool", "fcgi")
        self.assertEqual(stat.S_IMODE(os.stat(spool).st_mode), 0o700)
        files = sorted(f for f in os.listdir(spool) if f.endswith(".json"))
        self.assertEqual(len(files), 3)
        for f in files:
            self.assertEqual(stat.S_IMODE(os.stat(
                os.path.join(spool, f)).st_mode), 0o600)
        # ccgate-fcgi restarts while the database is still down: the
        # spool stays, and is stored once the database is back.
        # Its queued usage rows go to the spool as it stops.
        B.stop_proc("fcgi")
        self.assertGreaterEqual(len([f for f in os.listdir(spool)
                                     if f.endswith(".json")]), 6)
        # A spool opened to others is closed again at start.
        os.chmod(spool, 0o755)
        B.start_fcgi()
        self.assertEqual(stat.S_IMODE(os.stat(spool).st_mode), 0o700)
        self.assertGreaterEqual(B.metric("ccgate_spooled_answers"), 6)
        cluster.restart(1)
        wait_for(lambda: not [f for f in os.listdir(spool)
                              if f.endswith(".json")], 120,
                 "the spool to be stored")
        self.assertEqual(B.metric("ccgate_spooled_answers"), 0)
        for i in range(3):
            conv = results[i].json()["conversation_id"]
            rows = cluster.sql(2, "SELECT role, created_at >= (SELECT "
                               "created_at FROM conversations WHERE id = "
                               "'%s') FROM messages WHERE conversation_id "
                               "= '%s' ORDER BY id" % (conv, conv))
            self.assertEqual(rows, [["user", "1"], ["assistant", "1"]], i)
            rid = results[i].headers["x-request-id"]
            self.assertEqual(cluster.sql(0, "SELECT status_code FROM "
                                         "usage_logs WHERE request_id = "
                                         "'%s'" % rid), [["200"]])
        # Stored once: the conversation goes on, with its context.
        conv = results[0].json()["conversation_id"]
        r = B.request("POST", "/api/conversations/%s/continue" % conv,
                      {"message": "what did I ask first?"}, key=key)
        self.assertEqual(r.status, 200, r)
        figure("3 answers in flight during B's database outage: "
               "3 spooled with their usage rows, kept across a ccgate-fcgi "
               "restart, 3 answers and 3 usage rows stored once")
        B.set_hosts(cluster.hosts(1, 2), db_retry_ms=3000)

    def test_6_sigkill_under_load(self):
        key = A.create_key("load", user="load")
        kid = key[4:20]
        done = []
        lock = threading.Lock()
        stop = threading.Event()

        def worker(stack, n):
            i = 0
            while not stop.is_set():
                r = chat(stack, key, "load %s %d" % (n, i))
                i += 1
                with lock:
                    done.append(r)

        threads = [threading.Thread(target=worker, args=(s, n))
                   for n, s in enumerate((A, B, A, B))]
        for t in threads:
            t.start()
        wait_for(lambda: len(done) >= 8, 120, "load to run")
        cluster.kill(1)      # B's database, under load
        at_kill = len(done)
        wait_for(lambda: len(done) >= at_kill + 8, 120,
                 "answers after the kill")
        pos = cluster.restart(1)
        ist = cluster.joined_by_ist(1)
        at_back = len(done)
        wait_for(lambda: len(done) >= at_back + 8, 120,
                 "answers after the restart")
        stop.set()
        for t in threads:
            t.join()
        statuses = [r.status for r in done]
        self.assertEqual(statuses, [200] * len(done))
        self.assertTrue(ist, "node 1 needed an SST")
        # Every request answered has its usage row, on every node; every
        # answer its messages.
        for node in range(3):
            wait_for(lambda: int(cluster.sql(node, "SELECT COUNT(*) FROM "
                                             "usage_logs WHERE key_id = '%s'"
                                             % kid)[0][0]) >= len(done),
                     120, "the usage rows on node %d" % node)
            rows = cluster.sql(node, "SELECT COUNT(*), COUNT(DISTINCT "
                               "request_id) FROM usage_logs WHERE key_id = "
                               "'%s'" % kid)
            self.assertEqual(rows, [[str(len(done)), str(len(done))]])
        convs = [r.json()["conversation_id"] for r in done]
        rows = cluster.sql(0, "SELECT conversation_id, SUM(role = 'user'), "
                           "SUM(role = 'assistant') FROM messages WHERE "
                           "conversation_id IN (%s) GROUP BY "
                           "conversation_id" % ",".join("'%s'" % c
                                                        for c in convs))
        self.assertEqual(sorted(r[0] for r in rows), sorted(convs))
        for r in rows:
            self.assertEqual(r[1:], ["1", "1"], r)
        figure("%d chats over both nodes, Galera node 1 SIGKILLed "
               "after %d and back (IST from %s) after %d: %d answered 200, "
               "%d usage rows on each node, %d answers stored" %
               (len(done), at_kill, pos, at_back, len(done), len(done),
               len(rows)))


if __name__ == "__main__":
    main()
