#!/usr/bin/env python3
"""Two ccgate nodes (each its own nginx, ccgate-fcgi, ccgate-ws,
ccgate-poold and state directory) sharing one MariaDB, key secret and
admin secret, behind a front nginx (nginx/ccgate-front.conf.in) that
hashes on the conversation id: turns stay on the node holding the
conversation, move with their context when that node stops, and keys,
quotas, usage and admin tokens are one for both; request ids are the
nodes', and the front's log names them."""

import json
import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Stack, SRCDIR, free_port, wait_for,  # noqa: E402
                     texts_of, within_one_window, main)

nodes = []
front = None


class Front:
    """The front nginx, rendered from nginx/ccgate-front.conf.in."""

    conn = Stack.conn
    request = Stack.request
    path = Stack.path
    _run = Stack._run

    def __init__(self, backends):
        self.dir = backends[0].path("front")
        os.makedirs(os.path.join(self.dir, "tmp"))
        self.backends = backends
        self.port = free_port()
        self.proc = None

    def start(self):
        render = os.path.join(SRCDIR, "deploy", "render")
        with open(self.path("nodes.conf"), "w") as f:
            for b in self.backends:
                f.write("server 127.0.0.1:%d max_fails=1 fail_timeout=30s;\n"
                        % b.port)
        with open(self.path("nodes-ca.pem"), "w") as f:
            for b in self.backends:
                f.write(open(b.path("tls.crt")).read())
        shutil.copy(self.backends[0].path("tls.crt"), self.path("tls.crt"))
        shutil.copy(self.backends[0].path("tls.key"), self.path("tls.key"))
        self._run([render, os.path.join(SRCDIR, "nginx",
                                        "ccgate-front.conf.in"),
                   self.path("front.conf"), "LISTEN=127.0.0.1:%d" % self.port,
                   "TLS_CERT=" + self.path("tls.crt"),
                   "TLS_KEY=" + self.path("tls.key"), "MAX_BODY=2m",
                   "NODES_CONF=" + self.path("nodes.conf"),
                   "NODES_CA=" + self.path("nodes-ca.pem"),
                   "NODES_TLS_NAME=127.0.0.1", "READ_TIMEOUT=660s",
                   "ACCESS_LOG=" + self.path("access.log")])
        user = "user root root;" if os.geteuid() == 0 else ""
        open(self.path("no-egress.conf"), "w").close()  # a front has none
        self._run([render, os.path.join(SRCDIR, "nginx",
                                        "nginx-standalone.conf.in"),
                   self.path("nginx.conf"), "USER_LINE=" + user,
                   "VAR_DIR=" + self.path("tmp"), "DAEMON_LINE=daemon off;",
                   "SITE_CONF=" + self.path("front.conf"),
                   "EGRESS_CONF=" + self.path("no-egress.conf")])
        self.proc = subprocess.Popen(["nginx", "-p", self.path("tmp"), "-c",
                                      self.path("nginx.conf")],
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(self.path("tmp", "nginx.pid")), 60,
                 "the front nginx")
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def setUpModule():
    global front
    a = Stack(name="nodea").start()
    nodes.append(a)
    nodes.append(Stack(name="nodeb", share_with=a).start())
    a.create_key("alice", user="alice")
    for b in nodes[1:]:
        b.keys = a.keys
    front = Front(nodes).start()


def tearDownModule():
    if front is not None:
        front.stop()
    for n in reversed(nodes):    # the first node owns MariaDB: last
        n.stop()


def node_of(r):
    """The node (ccgate.conf's node) that recorded response r."""
    rid = r.headers["x-request-id"]
    rows = []
    wait_for(lambda: rows.extend(nodes[0].sql(
        "SELECT node FROM usage_logs WHERE request_id = '%s'" % rid)) or rows,
        60, "the usage row of " + rid)
    return rows[0][0]


def node_name(stack):
    return stack.dir.rsplit("-", 1)[-1]


class ScaleOut(unittest.TestCase):
    def test_1_keys_quotas_and_usage_are_shared(self):
        a, b = nodes
        key = a.create_key("quota", user="quota")
        kid = key[4:20]
        within_one_window(30, period=86400)
        a.admin("key", "update", kid, "--rpd", "2")
        self.assertEqual(a.request("GET", "/api/models", key=key).status, 200)
        self.assertEqual(b.request("GET", "/api/models", key=key).status, 200)
        # The day's two requests are spent, on both nodes.
        for n in (a, b):
            r = n.request("GET", "/api/models", key=key)
            self.assertEqual(r.status, 429, r)
            self.assertIn("requests_per_day", r.json()["error"]["message"])
        # Every request's row, from both nodes, in the one usage log.
        both = sorted([node_name(a), node_name(b)])
        used = []
        wait_for(lambda: used.clear() or used.extend(a.sql(
            "SELECT node, COUNT(*) FROM usage_logs WHERE key_id = '%s' "
            "GROUP BY node ORDER BY node" % kid)) or
            [u[1] for u in used] == ["2", "2"], 60, "the usage rows")
        self.assertEqual(sorted(u[0] for u in used), both)

    def test_2_new_conversations_use_both_nodes(self):
        seen = set()
        for i in range(16):
            r = front.request("POST", "/api/chat", {"message": "spread %d" % i},
                              key=front_key())
            self.assertEqual(r.status, 200, r)
            seen.add(node_of(r))
        self.assertEqual(seen, {node_name(n) for n in nodes})

    def test_4_turns_stay_on_their_node_and_move_when_it_stops(self):
        # Created first, the conversation's first turn already goes to
        # the node its id hashes to.
        r = front.request("POST", "/api/conversations", {}, key=front_key())
        self.assertEqual(r.status, 201, r)
        conv = r.json()["conversation_id"]
        r = front.request("POST", "/api/chat", {
            "message": "remember the word heliotrope",
            "conversation_id": conv}, key=front_key(),
            headers={"X-Ccgate-Conversation-Id": conv})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers["x-ccgate-conversation-id"], conv)
        home = node_of(r)
        for i in range(3):
            r = front.request("POST", "/api/conversations/%s/continue" % conv,
                              {"message": "turn %d" % i}, key=front_key())
            self.assertEqual(r.status, 200, r)
            self.assertEqual(node_of(r), home)
            r = front.request("POST", "/api/chat", {
                "message": "chat turn %d" % i, "conversation_id": conv},
                key=front_key(), headers={"X-Ccgate-Conversation-Id": conv})
            self.assertEqual(r.status, 200, r)
            self.assertEqual(node_of(r), home)
        # The home node stops; the conversation goes on elsewhere.
        gone = [n for n in nodes if node_name(n) == home][0]
        for name in ("nginx", "ws", "fcgi", "poold"):
            gone.stop_proc(name)
        r = front.request("POST", "/api/conversations/%s/continue" % conv,
                          {"message": "which word did I ask you to "
                           "remember?"}, key=front_key())
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(node_of(r), home)
        # With its context: the new node primed a session from MariaDB.
        rec = [x for x in nodes[0].mock_records()
               if texts_of(x) and "which word" in texts_of(x)[-1][1]][-1]
        self.assertIn("heliotrope", " ".join(t for _, t in texts_of(rec)))
        msgs = nodes[0].sql("SELECT COUNT(*) FROM messages WHERE "
                            "conversation_id = '%s'" % conv)
        self.assertEqual(msgs, [["16"]])

    def test_3_a_conversation_started_anywhere_keeps_its_context(self):
        # POST /api/chat without an id lands on any node; its next turns
        # follow the id's hash, which may be the other node: that node
        # primes a session from MariaDB once, and the context holds.
        r = front.request("POST", "/api/chat",
                          {"message": "my favourite colour is vermilion"},
                          key=front_key())
        self.assertEqual(r.status, 200, r)
        conv = r.json()["conversation_id"]
        r = front.request("POST", "/api/chat", {
            "message": "what is my favourite colour?",
            "conversation_id": conv}, key=front_key(),
            headers={"X-Ccgate-Conversation-Id": conv})
        self.assertEqual(r.status, 200, r)
        rec = [x for x in nodes[0].mock_records()
               if texts_of(x) and "favourite colour?" in texts_of(x)[-1][1]]
        self.assertIn("vermilion", " ".join(t for _, t in texts_of(rec[-1])))


    def test_3b_a_conversation_alternating_nodes_keeps_every_turn(self):
        # Each node keeps the conversation's CLI bound after a turn;
        # when the turn comes back, that process holds an old session
        # that missed the other node's turns.  It must not be used: the
        # turn resumes the session the row names or is primed from
        # MariaDB, and the upstream sees every earlier turn.
        key = front_key()
        words = ["alder", "birch", "cedar", "dogwood", "elm"]
        r = nodes[0].request("POST", "/api/chat", {
            "message": "word one is " + words[0]}, key=key)
        self.assertEqual(r.status, 200, r)
        cid = r.json()["conversation_id"]
        for i, w in enumerate(words[1:], 1):
            node = nodes[i % 2]
            msg = "word %d is %s (%s)" % (i + 1, w, cid)
            r = node.request("POST", "/api/chat", {
                "message": msg, "conversation_id": cid}, key=key)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(node_of(r), node_name(node))
            rec = [x for x in nodes[0].mock_records()
                   if msg in json.dumps(x["body"])][-1]
            said = " ".join(t for role, t in texts_of(rec) if role == "user")
            for earlier in words[:i + 1]:
                self.assertIn("is " + earlier, said, (i, texts_of(rec)))
        self.assertEqual(nodes[0].sql(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = '%s'"
            % cid), [[str(2 * len(words))]])


class AdminTokens(unittest.TestCase):
    def test_an_admin_token_works_on_every_node(self):
        nodes[0].admin("user", "create", "scaler",
                       stdin="scale-out admin password\n")
        tok = nodes[0].admin_token("scaler", "scale-out admin password")
        for n in nodes:
            r = n.request("GET", "/admin/me",
                          headers={"Authorization": "Bearer " + tok})
            self.assertEqual(r.status, 200, (node_name(n), r))


class RequestIds(unittest.TestCase):
    def test_the_nodes_id_is_answered_logged_and_recorded(self):
        r = front.request("GET", "/api/models", key=front_key(),
                          headers={"X-Request-Id": "forged-front"})
        self.assertEqual(r.status, 200, r)
        rid = r.headers["x-request-id"]
        self.assertRegex(rid, "^[0-9a-f]{32}$")
        rows = []
        wait_for(lambda: rows.extend(nodes[0].sql(
            "SELECT IFNULL(client_request_id, 'NULL') FROM usage_logs "
            "WHERE request_id = '%s'" % rid)) or rows, 60, "the usage row")
        self.assertEqual(rows, [["forged-front"]])

        def line():
            with open(front.path("access.log")) as f:
                return [e for e in map(json.loads, f)
                        if e["request_id"] == rid]
        found = []
        wait_for(lambda: found.extend(line()) or found, 60, "the front's line")
        self.assertEqual(found[0]["client_request_id"], "forged-front")
        self.assertRegex(found[0]["front_request_id"], "^[0-9a-f]{32}$")
        self.assertNotEqual(found[0]["front_request_id"], rid)


def front_key():
    return nodes[0].keys["alice"]


if __name__ == "__main__":
    main()
