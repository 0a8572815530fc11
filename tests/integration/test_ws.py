#!/usr/bin/env python3
"""GET /api/ws through nginx (auth_request to ccgate-fcgi, then
ccgate-ws), with the `ws` npm package as the client: turns and their
events, conversations, keys checked at the upgrade and on every turn,
quotas, cancel, bad and oversized frames, a client that vanishes, 200
sockets at once, and a drain on SIGTERM."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, SRCDIR, wait_for, within_one_window, main, pinned_clients  # noqa: E402,E501

stack = None
CLIENTS = None
DRIVER = os.path.join(SRCDIR, "tests", "integration", "ws", "wsclient.cjs")
MAX_MESSAGE = 65536


def setUpModule():
    global stack, CLIENTS
    CLIENTS = pinned_clients()
    stack = Stack(name="ws", app_opts={"key_cache_ms": 0,
                                       "ws_max_message": MAX_MESSAGE},
                  poold_opts={"max_instances": 8, "tenant_max_jobs": 8,
                              # Load.test_200_sockets_at_once: one tenant's
                              # 200 turns all wait their turn.
                              "tenant_max_queued": 256}).start()
    for name in ("alice", "bob", "carol", "dave", "erin"):
        stack.create_key(name, user=name)


def tearDownModule():
    stack.stop()


def url():
    return "wss://127.0.0.1:%d/api/ws" % stack.port


def auth(name):
    return {"headers": {"Authorization": "Bearer " + stack.keys[name]}}


class Socket:
    """One `ws` client socket, driven line by line."""

    def __init__(self, opts):
        self.p = subprocess.Popen(
            ["node", DRIVER, "one", url(), json.dumps(opts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, CCGATE_CLIENTS=CLIENTS))
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.events.put(json.loads(line))
        self.events.put({"ev": "eof"})

    def next(self, timeout=60):
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no event from the socket in %ss" % timeout)

    def command(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()

    def send(self, obj):
        self.command(op="send", text=obj if isinstance(obj, str)
                     else json.dumps(obj))

    def opened(self):
        ev = self.next()
        assert ev["ev"] == "open", ev
        return ev

    def message(self, timeout=60):
        ev = self.next(timeout)
        assert ev["ev"] == "msg", ev
        return ev["data"]

    def turn(self, **frame):
        """Send a chat frame; return (deltas, the last event)."""
        self.send(dict(type="chat", **frame))
        deltas = []
        while True:
            m = self.message()
            if m["type"] == "delta":
                deltas.append(m["text"])
            else:
                return deltas, m

    def close(self):
        if self.p.poll() is None:
            try:
                self.command(op="close")
                self.p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()


def usage_rows(where):
    return stack.sql("SELECT method, status_code, input_tokens, "
                     "output_tokens, request_id, IFNULL(error, '') FROM "
                     "usage_logs WHERE route = '/api/ws' AND " + where +
                     " ORDER BY id")


def key_id(name):
    return stack.keys[name][4:20]


class Turns(unittest.TestCase):
    def test_many_turns_on_one_socket_keep_their_conversation(self):
        stack.create_key("talker", user="talker")
        s = Socket(auth("talker"))
        try:
            s.opened()
            deltas, done = s.turn(message="my name is Ada")
            self.assertEqual(done["type"], "done", done)
            self.assertTrue(len(deltas) > 1)
            self.assertEqual("".join(deltas), done["response"])
            conv = done["conversation_id"]
            deltas2, done2 = s.turn(message="what is my name?",
                                    conversation_id=conv)
            self.assertEqual(done2["type"], "done", done2)
            self.assertEqual(done2["conversation_id"], conv)
            self.assertEqual("".join(deltas2), done2["response"])
            # The CLI saw the first turn as context of the second.
            rec = [r for r in stack.mock_records()
                   if "what is my name?" in json.dumps(r["body"])][-1]
            self.assertIn("my name is Ada", json.dumps(rec["body"]))
            # A third turn without an id starts another conversation.
            _, done3 = s.turn(message="a new topic")
            self.assertNotEqual(done3["conversation_id"], conv)
        finally:
            s.close()
        # Stored like any chat: four messages, the tenant's own.
        msgs = stack.sql("SELECT role, content FROM messages WHERE "
                         "conversation_id = '%s' ORDER BY id" % conv)
        self.assertEqual([m[0] for m in msgs],
                         ["user", "assistant", "user", "assistant"])
        self.assertEqual(msgs[3][1], done2["response"])
        r = stack.request("GET", "/api/conversations/" + conv,
                          key=stack.keys["talker"])
        self.assertEqual(r.status, 200)
        self.assertEqual(stack.request("GET", "/api/conversations/" + conv,
                                       key=stack.keys["bob"]).status, 404)
        # One usage row per turn, with the CLI's token counts.
        rows = []
        wait_for(lambda: len(rows.extend(usage_rows(
            "key_id = '%s' AND method = 'WS'" % key_id("talker"))) or rows)
            >= 3 or rows.clear(), 60, "the turns' usage rows")
        self.assertEqual([r[1] for r in rows], ["200", "200", "200"])
        self.assertEqual(int(rows[1][2]), done2["usage"]["input_tokens"])
        self.assertEqual(int(rows[1][3]), done2["usage"]["output_tokens"])
        self.assertEqual(len({r[4] for r in rows}), 3)
        # And the upgrade itself, let through by the key check.
        self.assertTrue(usage_rows("key_id = '%s' AND method = 'GET' AND "
                                   "status_code = 204" % key_id("talker")))

    def test_key_as_subprotocol_for_browsers(self):
        s = Socket({"protocols": ["ccgate", "ccgate.key." +
                                  stack.keys["bob"]]})
        try:
            ev = s.opened()
            # The server picks the protocol, never echoes the key.
            self.assertEqual(ev["protocol"], "ccgate")
            _, done = s.turn(message="hello from a browser")
            self.assertEqual(done["type"], "done", done)
            tenant = stack.sql("SELECT tenant FROM conversations WHERE id = "
                               "'%s'" % done["conversation_id"])
            self.assertEqual(tenant, [["bob"]])
        finally:
            s.close()

    def test_x_api_key_header(self):
        s = Socket({"headers": {"x-api-key": stack.keys["bob"]}})
        try:
            s.opened()
            _, done = s.turn(message="hello by x-api-key")
            self.assertEqual(done["type"], "done", done)
        finally:
            s.close()


class ClientRequestId(unittest.TestCase):
    def test_turns_get_nginx_ids_and_keep_the_clients_apart(self):
        """The upgrade's X-Request-Id is the client's, kept as each
        turn's client_request_id; a turn's request id is nginx's with
        "-n", even when the client sends ccgate's own header."""
        stack.create_key("tracer", user="tracer")
        s = Socket({"headers": {
            "Authorization": "Bearer " + stack.keys["tracer"],
            "X-Request-Id": "forged-ws-1",
            "X-Ccgate-Request-Id": "forged-ccgate"}})
        try:
            s.opened()
            for msg in ("first", "second"):
                _, done = s.turn(message=msg)
                self.assertEqual(done["type"], "done", done)
        finally:
            s.close()
        rows = []
        wait_for(lambda: len(rows.extend(stack.sql(
            "SELECT request_id, IFNULL(client_request_id, 'NULL') FROM "
            "usage_logs WHERE method = 'WS' AND key_id = '%s' ORDER BY id"
            % key_id("tracer"))) or rows) >= 2 or rows.clear(), 60,
            "the turns' usage rows")
        self.assertRegex(rows[0][0], "^[0-9a-f]{32}-1$")
        self.assertEqual(rows[1][0], rows[0][0][:-1] + "2")
        self.assertEqual([r[1] for r in rows], ["forged-ws-1"] * 2)
        self.assertEqual(stack.sql(
            "SELECT COUNT(*) FROM usage_logs WHERE request_id LIKE "
            "'forged%'"), [["0"]])

class Keys(unittest.TestCase):
    def refused(self, opts):
        s = Socket(opts)
        ev = s.next()
        s.close()
        self.assertEqual(ev["ev"], "refused", ev)
        return ev

    def test_bad_or_missing_key_never_upgrades(self):
        for opts in ({}, {"headers": {"Authorization": "Bearer ccg_"
                                      "aaaaaaaaaaaaaaaa_" + "x" * 43}},
                     {"headers": {"Authorization": "Basic Zm9vOmJhcg=="}},
                     {"protocols": ["ccgate", "ccgate.key.nonsense"]}):
            ev = self.refused(opts)
            self.assertEqual(ev["status"], 401, (opts, ev))
            body = json.loads(ev["body"])
            self.assertEqual(body["error"]["type"], "authentication_error")
            self.assertEqual(ev["headers"].get("www-authenticate"), "Bearer")
        # No turn ran: a turn without a known key would have its row.
        time.sleep(0.5)
        self.assertEqual(stack.sql("SELECT COUNT(*) FROM usage_logs WHERE "
                                   "method = 'WS' AND key_id IS NULL"),
                         [["0"]])
        self.assertTrue(stack.sql("SELECT COUNT(*) FROM usage_logs WHERE "
                                  "route = '/api/ws' AND method = 'GET' AND "
                                  "status_code = 401"))

    def test_key_that_may_not_stream_is_refused(self):
        stack.admin("key", "update", key_id("carol"), "--streaming", "no")
        try:
            ev = self.refused(auth("carol"))
            self.assertEqual(ev["status"], 403)
            self.assertIn("stream", json.loads(ev["body"])["error"]["message"])
        finally:
            stack.admin("key", "update", key_id("carol"), "--streaming",
                        "yes")

    def test_revoked_mid_connection_refuses_the_next_turn(self):
        name = "revokee"
        stack.create_key(name, user=name)
        s = Socket(auth(name))
        try:
            s.opened()
            _, done = s.turn(message="before revocation")
            self.assertEqual(done["type"], "done", done)
            stack.admin("key", "revoke", key_id(name))
            _, ev = s.turn(message="after revocation")
            self.assertEqual(ev["type"], "error", ev)
            self.assertEqual(ev["status"], 401)
            self.assertIn("revoked", ev["error"]["message"])
        finally:
            s.close()
        self.assertFalse(stack.sql("SELECT id FROM messages WHERE content = "
                                   "'after revocation'"))

    def test_quota_applies_to_each_turn(self):
        # Three turns (under ASan about a second each) in one UTC minute.
        within_one_window(20)
        stack.admin("key", "update", key_id("dave"), "--rpm", "2")
        s = Socket(auth("dave"))
        try:
            s.opened()
            for i in range(2):
                _, done = s.turn(message="quota turn %d" % i)
                self.assertEqual(done["type"], "done", done)
            _, ev = s.turn(message="one too many")
            self.assertEqual(ev["type"], "error", ev)
            self.assertEqual(ev["status"], 429)
            self.assertEqual(ev["error"]["type"], "rate_limit_error")
            self.assertTrue(1 <= ev["retry_after"] <= 60, ev)
        finally:
            s.close()
            stack.admin("key", "update", key_id("dave"), "--rpm", "none")


class Frames(unittest.TestCase):
    def test_bad_frames_get_errors_and_the_socket_stays_usable(self):
        s = Socket(auth("erin"))
        convs = stack.sql("SELECT COUNT(*) FROM conversations")
        try:
            s.opened()
            cases = [
                ("not json", 400, "invalid JSON"),
                ("[1, 2]", 400, "JSON object"),
                (json.dumps({"type": "dance"}), 400, "type"),
                (json.dumps({"message": "no type"}), 400, "type"),
                (json.dumps({"type": "chat"}), 400, "message"),
                (json.dumps({"type": "chat", "message": 5}), 400, "message"),
                (json.dumps({"type": "chat", "message": "x",
                             "model": "no-such-model"}), 400, "model"),
                (json.dumps({"type": "chat", "message": "x",
                             "conversation_id": "nope"}), 404,
                 "conversation"),
                (json.dumps({"type": "cancel"}), 409, "no turn"),
                ('{"type": "chat", "message": "a", "message": "b"}', 400,
                 "duplicate"),
                ("[" * 100 + "]" * 100, 400, "nests"),
            ]
            for text, status, words in cases:
                s.send(text)
                ev = s.message()
                self.assertEqual(ev["type"], "error", (text, ev))
                self.assertEqual(ev["status"], status, (text, ev))
                self.assertIn(words, ev["error"]["message"], (text, ev))
            s.command(op="binary", text=json.dumps({"type": "chat",
                                                    "message": "bin"}))
            ev = s.message()
            self.assertEqual((ev["type"], ev["status"]), ("error", 400))
            self.assertIn("text", ev["error"]["message"])
            _, done = s.turn(message="still usable")
            self.assertEqual(done["type"], "done", done)
        finally:
            s.close()
        self.assertEqual(int(stack.sql("SELECT COUNT(*) FROM conversations")
                             [0][0]), int(convs[0][0]) + 1)

    def test_turns_sent_together_run_in_order(self):
        s = Socket(auth("erin"))
        try:
            s.opened()
            s.send({"type": "chat", "message": "first [[mock:slow=1000]]"})
            _, first = s.turn(message="second, sent at once")
            self.assertEqual(first["type"], "done", first)
            self.assertIn("first", first["response"])
            deltas, second = [], s.message()
            while second["type"] == "delta":
                deltas.append(second["text"])
                second = s.message()
            self.assertEqual(second["type"], "done", second)
            self.assertIn("second, sent at once", second["response"])
            self.assertEqual("".join(deltas), second["response"])
            # At most eight turns held by a socket; the ninth is refused.
            for i in range(9):
                s.send({"type": "chat", "message": "held %d "
                        "[[mock:slow=200]]" % i})
            got, refused = [], []
            while len(got) + len(refused) < 9:
                ev = s.message()
                if ev["type"] == "done":
                    got.append(ev["response"])
                elif ev["type"] == "error":
                    refused.append(ev)
            self.assertEqual([e["status"] for e in refused], [429])
            self.assertEqual([g.rsplit(" ", 1)[0].endswith("held %d" % i)
                              for i, g in enumerate(got)], [True] * 8)
        finally:
            s.close()
        self.assertFalse(stack.sql("SELECT id FROM messages WHERE content "
                                   "LIKE 'held 8 %'"))

    def test_oversized_frame_closes_with_1009(self):
        s = Socket(auth("erin"))
        try:
            s.opened()
            s.send({"type": "chat", "message": "x" * (MAX_MESSAGE + 10)})
            ev = s.next()
            self.assertEqual(ev["ev"], "close", ev)
            self.assertEqual(ev["code"], 1009)
        finally:
            s.close()


class Cancel(unittest.TestCase):
    def busy_pids(self):
        return [p["pid"] for p in stack.stats()["processes"]
                if p["state"] == "busy"]

    def test_cancel_stops_the_turn_and_frees_its_slot(self):
        before = stack.stats()["totals"]["cancelled"]
        s = Socket(auth("alice"))
        try:
            s.opened()
            s.send({"type": "chat", "message": "long story "
                    "[[mock:drip=300]] [[mock:chunks=60]]"})
            ev = s.message()
            self.assertEqual(ev["type"], "delta", ev)
            pid = self.busy_pids()[0]
            s.send({"type": "cancel"})
            while ev["type"] == "delta":
                ev = s.message()
            self.assertEqual(ev["type"], "error", ev)
            self.assertEqual(ev["status"], 499)
            self.assertEqual(ev["error"]["type"], "cancelled")
            wait_for(lambda: stack.stats()["totals"]["cancelled"] ==
                     before + 1, 60, "the job to be cancelled")
            wait_for(lambda: pid not in self.busy_pids(), 60,
                     "its CLI to leave")
            # The socket goes on.
            _, done = s.turn(message="after the cancel")
            self.assertEqual(done["type"], "done", done)
        finally:
            s.close()

    def test_vanished_client_cancels_its_turn(self):
        before = stack.stats()["totals"]["cancelled"]
        s = Socket(auth("bob"))
        s.opened()
        s.send({"type": "chat", "message": "vanishing story "
                "[[mock:drip=300]] [[mock:chunks=60]]"})
        ev = s.message()
        self.assertEqual(ev["type"], "delta", ev)
        pid = self.busy_pids()[0]
        s.command(op="vanish")
        s.p.wait(10)
        wait_for(lambda: stack.stats()["totals"]["cancelled"] == before + 1,
                 60, "the job to be cancelled")
        wait_for(lambda: pid not in self.busy_pids(), 60, "its CLI to leave")
        rows = []
        wait_for(lambda: rows.extend(usage_rows(
            "status_code = 499 AND key_id = '%s'" % key_id("bob"))) or rows,
            60, "the usage row")
        self.assertIn("closed", rows[-1][5])


class Load(unittest.TestCase):
    def test_200_sockets_at_once(self):
        """200 sockets open together, each with a turn in one of eight
        conversations (a new conversation costs a CLI start, which the
        pool tests measure; here the front end is what is loaded)."""
        n, nconv = 200, 8
        stack.create_key("crowd", user="crowd")
        convs = []
        for i in range(nconv):
            r = stack.request("POST", "/api/chat", {"message": "seed %d" % i},
                              key=stack.keys["crowd"])
            self.assertEqual(r.status, 200, r)
            convs.append(r.json()["conversation_id"])
        r = subprocess.run(["node", DRIVER, "many", url(),
                            stack.keys["crowd"], str(n), "crowd",
                            ",".join(convs)],
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, CCGATE_CLIENTS=CLIENTS))
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        self.assertEqual(out["errors"], [], out)
        self.assertEqual(out["opened"], n)
        self.assertEqual(out["done"], n)
        self.assertEqual(out["max_open"], n)
        self.assertEqual(out["closed_early"], 0)
        # Every socket got its own answer, stored in its conversation.
        self.assertEqual(len(out["texts"]), n)
        for i in range(n):
            self.assertTrue(any(t.endswith("crowd #%d" % i)
                                for t in out["texts"]), i)
        for i, conv in enumerate(convs):
            got = stack.sql("SELECT COUNT(*) FROM messages WHERE "
                            "conversation_id = '%s'" % conv)
            self.assertEqual(int(got[0][0]), 2 + 2 * (n // nconv))


class Drain(unittest.TestCase):
    def test_sigterm_finishes_the_turn_then_closes_with_1001(self):
        s = Socket(auth("erin"))
        try:
            s.opened()
            s.send({"type": "chat", "message": "finish me "
                    "[[mock:drip=100]] [[mock:chunks=20]]"})
            ev = s.message()
            self.assertEqual(ev["type"], "delta", ev)
            ws = stack.procs["ws"]
            ws.send_signal(signal.SIGTERM)
            s.send({"type": "chat", "message": "too late"})
            seen = []
            while True:
                ev = s.next()
                if ev["ev"] != "msg":
                    break
                seen.append(ev["data"])
            self.assertEqual(ev["ev"], "close", ev)
            self.assertEqual(ev["code"], 1001)
            types = [m["type"] for m in seen]
            self.assertIn("done", types)
            refused = [m for m in seen if m["type"] == "error"]
            self.assertEqual([m["status"] for m in refused], [503])
            self.assertEqual(ws.wait(20), 0)
        finally:
            s.close()
            del stack.procs["ws"]
            stack.start_ws()
        s = Socket(auth("erin"))
        try:
            s.opened()
            _, done = s.turn(message="after the restart")
            self.assertEqual(done["type"], "done", done)
        finally:
            s.close()


if __name__ == "__main__":
    main()
