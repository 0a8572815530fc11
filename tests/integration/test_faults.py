#!/usr/bin/env python3
"""Faults under a bounded load loop, each checked for what a user would
see and for what must not be lost: MariaDB stopped for 10 s and started
again (503 with Retry-After meanwhile, recovery without restarting
ccgate, every request's usage row written once the database is back),
ccgate-fcgi killed (nginx answers JSON 502, then recovery), ccgate-poold
killed with SIGKILL (no CLI left, 503 at once, conversations intact once
it is back), an upstream that fails (the CLI's error reaches the
client as 502), a CLI killed mid-stream, a CLI whose upstream hangs until
the stall timeout, an upstream dripping tokens for over a minute
(heartbeats keep the stream alive), a user's message MariaDB refuses
(nothing runs), and clients that leave while queued or before the first
token (the slot frees within a second)."""

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
    # Jobs may run two minutes: the slow drip takes more than one.
    stack = Stack({"env.CLAUDE_CODE_MAX_RETRIES": "1",
                   "job_timeout_ms": 120000},
                  app_opts={"sse_heartbeat_ms": 5000,
                            "job_timeout_ms": 120000},
                  name="faults").start()


def tearDownModule():
    stack.stop()


def load_chat(key, out):
    """One chat; record when it was sent and what came back."""
    t = time.time()
    try:
        r = stack.request("POST", "/api/chat", {"message": "load %f" % t},
                          key=key, timeout=30)
        out.append((t, r.status, r.headers.get("x-request-id"),
                    r.headers.get("retry-after"), r.body, time.time()))
    except OSError as e:
        out.append((t, None, None, None, str(e), time.time()))


def load_loop(key, seconds, out, stop):
    """Chat every 100 ms for at most seconds; record what came back."""
    end = time.time() + seconds
    while time.time() < end and not stop.is_set():
        load_chat(key, out)
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
            wait_for(lambda: len(out) >= 12, 60, "the load loop to run")
            subprocess.run([os.path.join(SRCDIR, "deploy", "mariadb-private"),
                            "stop", stack.path("db")], check=True)
            down_at = time.time()
            # The load's turns may all be in flight (waiting for the
            # database to store their answers) for the whole outage on a
            # slow host: new requests sent during it, one a second.
            while time.time() < down_at + 10:
                if down_at + 1.5 < time.time() < down_at + 8.5:
                    load_chat(key, out)
                time.sleep(max(0.0, min(1.0, down_at + 10 - time.time())))
            subprocess.run([os.path.join(SRCDIR, "deploy", "mariadb-private"),
                            "start", stack.path("db"), "it-password"],
                           check=True, capture_output=True)
            up_at = time.time()
            # Recovery, without restarting anything of ccgate.
            wait_for(lambda: any(o[0] > up_at and o[1] == 200 for o in out),
                     60, "a successful chat after the restart")
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
        wait_for(lambda: usage_ids(ids) == ids, 60, "every usage row")
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
                                       key=key).status == 200, 60,
                 "ccgate-fcgi back")


def assert_remembers(test, key, cid, fact):
    """The conversation's next turn answers, and the CLI has fact in its
    context: in the session it resumed or, when that session may have
    lost a turn, in a new session primed with the turns stored in
    MariaDB."""
    ask = "what was I saying? (%s)" % cid
    r = stack.request("POST", "/api/chat", {
        "message": ask, "conversation_id": cid}, key=key)
    test.assertEqual(r.status, 200, r)
    last = [x for x in stack.mock_records() if ask in json.dumps(x["body"])]
    turns = texts_of(last[-1])
    test.assertTrue(("user", fact) in turns or
                    "[user]\n%s\n" % fact in turns[-1][1], turns)


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
                              if "claude" in x[1]], 60, "the CLIs to go")
        r = stack.request("POST", "/api/chat", {
            "message": "are you there", "conversation_id": cid}, key=key)
        self.assertEqual(r.status, 503, r)
        self.assertIn("retry-after", r.headers)
        stack.start_poold()
        assert_remembers(self, key, cid, "remember the word heron")


class Upstream(unittest.TestCase):
    def test_upstream_failure_reaches_the_client_as_502(self):
        key = stack.create_key("upstream-fault")
        # 529 (overloaded), 429 and 401 are the account's state:
        # test_upstream.py.
        for code, tries in ((400, 1), (500, 2)):
            marker = "[[mock:fail=%d]]" % code
            r = stack.request("POST", "/api/chat",
                              {"message": "x " + marker}, key=key)
            self.assertEqual(r.status, 502, r)
            err = r.json()["error"]
            self.assertEqual(err["type"], "cli_error")
            self.assertIn("mock upstream failure %d" % code, err["message"])
            # 500: the CLI's own retry (CLAUDE_CODE_MAX_RETRIES=1).
            seen = [x for x in stack.mock_records()
                    if marker in json.dumps(x["body"])]
            self.assertEqual(len(seen), tries, code)
            wait_for(lambda: stack.sql(
                "SELECT status_code FROM usage_logs WHERE request_id = "
                "'%s'" % r.headers["x-request-id"]) == [["502"]], 60,
                "the failed chat's usage row")
        # The gateway is fine afterwards.
        self.assertEqual(stack.request("POST", "/api/chat", {
            "message": "after"}, key=key).status, 200)

    def test_a_turn_after_a_failed_turn_has_each_stored_turn_once(self):
        # A failed turn leaves its CLI session untrusted (it may hold
        # the turn's half); the next turn starts a new session primed
        # with the stored turns, not on the process that holds the old
        # one, which would see the first turn twice.
        key = stack.create_key("after-a-failure")
        r = stack.request("POST", "/api/chat", {
            "message": "remember the word osprey"}, key=key)
        self.assertEqual(r.status, 200, r)
        cid = r.json()["conversation_id"]
        # (The mock's mode, not a marker: the primed turn quotes it.)
        stack.mock_control(mode="fail", status=400)
        try:
            r = stack.request("POST", "/api/chat", {
                "message": "and the word kestrel",
                "conversation_id": cid}, key=key)
        finally:
            stack.mock_control(mode="normal")
        self.assertEqual(r.status, 502, r)
        ask = "which birds? (%s)" % cid
        r = stack.request("POST", "/api/chat", {
            "message": ask, "conversation_id": cid}, key=key)
        self.assertEqual(r.status, 200, r)
        last = [x for x in stack.mock_records() if ask in json.dumps(x["body"])]
        turns = texts_of(last[-1])
        users = [t for role, t in turns if role == "user"]
        self.assertEqual(len([t for t in users
                              if "remember the word osprey" in t]), 1, turns)
        self.assertIn("[user]\nremember the word osprey\n", users[-1])
        self.assertIn("[user]\nand the word kestrel", users[-1])
        self.assertEqual(stack.sql(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = '%s'"
            % cid), [["5"]])



def send_chat(key, body, timeout=60):
    """Send a native chat and return the connection, the answer unread."""
    c = stack.conn(timeout)
    c.request("POST", "/api/chat", body=json.dumps(body).encode(), headers={
        "Authorization": "Bearer " + key,
        "Content-Type": "application/json"})
    return c


def open_stream(key, message, timeout=60):
    """Start a native streamed chat: (connection, response)."""
    c = send_chat(key, {"message": message, "stream": True}, timeout)
    return c, c.getresponse()


def sse_lines(r):
    """The lines of an SSE answer: ("data", object) or ("comment", text)."""
    for line in r:
        line = line.decode().rstrip("\n")
        if line.startswith("data: ") and line != "data: [DONE]":
            yield "data", json.loads(line[6:])
        elif line.startswith(":"):
            yield "comment", line


def usage_row(rid):
    """(status_code, output_tokens, error) of a request, once written."""
    rows = []
    wait_for(lambda: rows.extend(stack.sql(
        "SELECT status_code, output_tokens, error FROM usage_logs "
        "WHERE request_id = '%s'" % rid)) or rows, 60, "the usage row")
    return rows[0]


def stored(cid):
    return stack.sql("SELECT role, content FROM messages WHERE "
                     "conversation_id = '%s' ORDER BY id" % cid)


def busy_pids():
    return [p["pid"] for p in stack.stats()["processes"]
            if p["state"] == "busy"]


def group_gone(pgid):
    """Whether no process is left in the CLI's process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def quiet_pool():
    wait_for(lambda: not busy_pids() and
             stack.stats()["queue_length"] == 0, 60, "an idle pool")


class CliFaults(unittest.TestCase):
    def setUp(self):
        quiet_pool()

    def test_cli_killed_mid_stream(self):
        key = stack.create_key("cli-kill")
        c, r = open_stream(key, "tell me a long story [[mock:drip=300]] "
                           "[[mock:chunks=60]]")
        rid = r.getheader("x-request-id")
        cid = r.getheader("x-ccgate-conversation-id")
        lines = sse_lines(r)
        deltas = []
        for kind, ev in lines:
            if kind == "data" and ev["type"] == "delta":
                deltas.append(ev["text"])
                if len(deltas) == 3:
                    break
        [pid] = busy_pids()
        os.kill(pid, 9)
        rest = [ev for kind, ev in lines if kind == "data"]
        c.close()
        end = rest[-1]
        self.assertEqual((end["type"], end["status"]), ("error", 502), rest)
        self.assertIn("killed by signal 9", end["error"]["message"])
        wait_for(lambda: group_gone(pid), 60, "the CLI's group to go")
        wait_for(lambda: not busy_pids(), 60, "the slot to free")
        status, _, error = usage_row(rid)
        self.assertEqual(status, "502")
        self.assertIn("killed by signal 9", error)
        # The user's message and what the CLI said before it died.
        got = stored(cid)
        self.assertEqual([x[0] for x in got], ["user", "assistant"], got)
        said = "".join(deltas) + "".join(
            e["text"] for e in rest if e["type"] == "delta")
        self.assertEqual(got[1][1], said)
        # The conversation goes on with its context: the CLI's session
        # may have lost the turn, so a new one is primed with what was
        # stored, the partial answer included.
        r = stack.request("POST", "/api/chat", {
            "message": "and then?", "conversation_id": cid}, key=key)
        self.assertEqual(r.status, 200, r)
        last = [x for x in stack.mock_records()
                if "and then?" in json.dumps(x["body"])][-1]
        primed = texts_of(last)[-1][1]
        self.assertIn("[user]\ntell me a long story", primed)
        self.assertIn("[assistant]\n" + said, primed)

    def test_hung_upstream_ends_at_the_stall_timeout(self):
        key = stack.create_key("cli-hang")
        opts = {k: stack.poold_opts[k] for k in
                ("first_event_timeout_ms", "stall_timeout_ms")}
        stack.reconfigure(first_event_timeout_ms=3000, stall_timeout_ms=3000)
        try:
            box = {}
            t = threading.Thread(target=lambda: box.update(r=stack.request(
                "POST", "/api/chat", {"message": "hello? [[mock:hang]]"},
                key=key, timeout=60)))
            before = stack.stats()["totals"]["timeout"]
            t.start()
            wait_for(lambda: busy_pids(), 60, "the turn to run")
            [pid] = busy_pids()
            t.join(120)
            self.assertFalse(t.is_alive(), "the hung turn did not end")
        finally:
            stack.reconfigure(**opts)
        r = box["r"]
        self.assertEqual(r.status, 504, r)
        self.assertEqual(r.json()["error"]["type"], "timeout_error")
        # Ended by the pool's first-event or stall limit (3 s), not by the
        # job's (120 s): the pool counts one timeout.
        self.assertEqual(stack.stats()["totals"]["timeout"], before + 1)
        wait_for(lambda: group_gone(pid), 60, "the hung CLI's group to go")
        wait_for(lambda: not busy_pids(), 60, "the slot to free")
        self.assertEqual(usage_row(r.headers["x-request-id"])[0], "504")
        self.assertEqual(stack.request("POST", "/api/chat", {
            "message": "after the hang"}, key=key).status, 200)

    def test_slow_drip_for_over_a_minute(self):
        # Five words, one every 13 s: 65 s, past nginx's and most
        # clients' 60 s defaults.  The client gives up after 10 s of
        # silence; the 5 s heartbeats keep it reading.
        key = stack.create_key("cli-drip")
        t0 = time.time()
        c, r = open_stream(key, "drip [[mock:drip=13000]] [[mock:chunks=5]]",
                           timeout=10)
        rid = r.getheader("x-request-id")
        cid = r.getheader("x-ccgate-conversation-id")
        got = list(sse_lines(r))
        c.close()
        took = time.time() - t0
        data = [ev for kind, ev in got if kind == "data"]
        beats = [x for kind, x in got if kind == "comment"]
        self.assertGreater(took, 60)
        self.assertEqual([e["type"] for e in data],
                         ["delta"] * 5 + ["done"], data)
        self.assertGreaterEqual(len(beats), 8, "heartbeats")
        self.assertEqual(data[-1]["usage"]["output_tokens"], 5)
        status, tokens, _ = usage_row(rid)
        self.assertEqual((status, tokens), ("200", "5"))
        self.assertEqual(stored(cid)[1],
                         ["assistant", "".join(e["text"] for e in data[:5])])


class MessageNotStored(unittest.TestCase):
    def setUp(self):
        quiet_pool()

    def test_a_message_that_cannot_be_stored_runs_nothing(self):
        """A turn whose message MariaDB refuses after the conversation
        was loaded runs nothing: 503 with Retry-After in the JSON of the
        route (a stream too: nothing was sent), nothing stored, no slot
        taken, a usage row, and the conversation goes on with its
        context."""
        key = stack.create_key("unstored")
        r = stack.request("POST", "/api/chat", {
            "message": "remember the word otter"}, key=key)
        self.assertEqual(r.status, 200, r)
        cid = r.json()["conversation_id"]
        before = stored(cid)
        # MariaDB refuses these messages, as a failing disk or a full
        # table would, after the conversation was loaded.
        stack.sql("ALTER TABLE messages ADD CONSTRAINT refuse_marked "
                  "CHECK (content NOT LIKE '%[[refused]]%')")
        try:
            for stream in (False, True):
                r = stack.request("POST", "/api/chat", {
                    "message": "which word? [[refused]] [[mock:drip=200]] "
                    "[[mock:chunks=20]]", "conversation_id": cid,
                    "stream": stream}, key=key)
                self.assertEqual(r.status, 503, r)
                self.assertIn("retry-after", r.headers)
                self.assertTrue(r.headers["content-type"].startswith(
                    "application/json"), r)
                self.assertIn("database", r.json()["error"]["message"])
                self.assertEqual(busy_pids(), [])
                self.assertEqual(usage_row(r.headers["x-request-id"])[0],
                                 "503")
        finally:
            stack.sql("ALTER TABLE messages DROP CONSTRAINT refuse_marked")
        self.assertEqual(stored(cid), before)
        self.assertFalse([x for x in stack.mock_records()
                          if "[[refused]]" in json.dumps(x["body"])],
                         "a turn whose message was refused ran")
        assert_remembers(self, key, cid, "remember the word otter")
        self.assertEqual(len(stored(cid)), len(before) + 2)


class ClientLeaves(unittest.TestCase):
    def setUp(self):
        quiet_pool()

    def test_client_leaving_while_queued(self):
        key = stack.create_key("leave-queued")
        wait = stack.poold_opts["queue_max_wait_ms"]
        stack.reconfigure(tenant_max_jobs=1, queue_max_wait_ms=300000)
        try:
            box = {}
            # The first turn outlasts what follows on any machine (a
            # failure bound, not a margin).
            first = threading.Thread(target=lambda: box.update(
                r=stack.request("POST", "/api/chat",
                                {"message": "first [[mock:slow=20000]]"},
                                key=key, timeout=120)))
            first.start()
            wait_for(lambda: busy_pids(), 60, "the first turn to run")
            before = stack.stats()["totals"]["cancelled"]
            c = send_chat(key, {"message": "second, queued"})
            wait_for(lambda: stack.stats()["queue_length"] == 1, 60,
                     "the second turn to queue")
            c.sock.shutdown(2)
            c.close()
            wait_for(lambda: stack.stats()["queue_length"] == 0, 60,
                     "the queue to empty")
            self.assertEqual(stack.stats()["totals"]["cancelled"], before + 1)
            self.assertTrue(first.is_alive(), "the first turn ended first")
            first.join(120)
        finally:
            stack.reconfigure(tenant_max_jobs=4,    # ccgate-poold's default
                              queue_max_wait_ms=wait)
        self.assertEqual(box["r"].status, 200)
        wait_for(lambda: sorted(x[0] for x in stack.sql(
            "SELECT status_code FROM usage_logs u JOIN api_keys k ON "
            "k.id = u.key_id WHERE k.name = 'leave-queued'")) ==
            ["200", "499"], 60, "a 200 and a 499 usage row")
        # The second message never reached the upstream.
        self.assertFalse([x for x in stack.mock_records()
                          if "second, queued" in json.dumps(x["body"])])

    def test_client_leaving_before_the_first_token(self):
        key = stack.create_key("leave-early")
        before = stack.stats()["totals"]["cancelled"]
        box = {}

        def chat():
            c = box["c"] = send_chat(key, {
                "message": "think first [[mock:slow=25000]]",
                "stream": True})
            try:
                c.getresponse().read()
            except OSError:
                pass
        t = threading.Thread(target=chat)
        t.start()
        wait_for(lambda: busy_pids(), 60, "the turn to run")
        [pid] = busy_pids()

        def asked():
            return [x for x in stack.mock_records()
                    if "think first" in json.dumps(x["body"])]
        # The CLI waits for the upstream, which has its request.
        wait_for(asked, 60, "the turn's upstream request")
        box["c"].sock.shutdown(2)
        box["c"].close()
        t.join(60)
        wait_for(lambda: stack.stats()["totals"]["cancelled"] == before + 1,
                 60, "the job to be cancelled")
        wait_for(lambda: not busy_pids(), 60, "the slot to free")
        self.assertFalse([x for x in asked() if x["response"]],
                         "the upstream answered before the client left")
        wait_for(lambda: group_gone(pid), 60, "the CLI's group to go")
        wait_for(lambda: stack.sql(
            "SELECT status_code FROM usage_logs u JOIN api_keys k ON "
            "k.id = u.key_id WHERE k.name = 'leave-early'") == [["499"]],
            60, "the 499 usage row")


if __name__ == "__main__":
    main()
