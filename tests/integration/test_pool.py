#!/usr/bin/env python3
"""ccgate-poold as a process pool, against the real CLI and the mock
upstream: sizing, conversations, queueing, time limits, cancellation,
recovery, recycling, workspaces, child limits, statistics and control,
reload and restart.  Jobs are sent on the daemon's own job protocol; the
mock's [[mock:slow=N]], [[mock:hang]] and [[mock:drip=N]] keep them busy."""

import concurrent.futures
import os
import signal
import socket
import stat
import struct
import sys
import time
import unittest
import uuid
import json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Stack, CLAUDE, texts_of, wait_for,  # noqa: E402
                     main)

stack = None
pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)
BASE = {"min_instances": 1, "max_instances": 3, "tenant_max_jobs": 2,
        "tenant_max_processes": 3, "queue_max": 2, "queue_max_wait_ms": 4000,
        "job_timeout_ms": 20000, "first_event_timeout_ms": 8000,
        "stall_timeout_ms": 6000, "idle_timeout_ms": 60000,
        "max_messages_per_instance": 3, "health_check_interval_ms": 300,
        "rlimit_nofile": 1000, "cli_nice": 7}


def setUpModule():
    global stack
    stack = Stack(dict(BASE), name="pool").start()


def tearDownModule():
    pool.shutdown(wait=True)
    stack.stop()


def conv():
    return str(uuid.uuid4())


def job(tenant, conversation, message, **kw):
    """Run one job on the protocol; the frames it answered."""
    msg = {"type": "job", "tenant": tenant, "conversation": conversation,
           "message": message}
    msg.update(kw)
    return stack.poold(msg)


def job_async(*a, **kw):
    return pool.submit(job, *a, **kw)


def end(frames):
    return frames[-1]


def procs():
    return stack.stats()["processes"]


def warm_cli():
    """The pid of the one warm process's CLI, once it runs in its sandbox
    (until then its pid is null: bwrap has not started it yet)."""
    found = []

    def one():
        warm = [p for p in procs() if p["state"] == "warm"]
        if len(warm) == 1 and warm[0]["pid"]:
            found.append(warm[0]["pid"])
        return found
    wait_for(one, 60, "a warm process's CLI")
    return found[0]


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def hold(tenant):
    """A job that keeps its CLI busy (a word every 200 ms, for longer than
    any test waits) until the test closes it: a slot taken for as long as
    the test needs, however slow the machine."""
    if stack.poold_opts["job_timeout_ms"] < 300000:
        stack.reconfigure(job_timeout_ms=300000)    # setUp restores it
    j = OpenJob(tenant, conv(), "hold [[mock:drip=200]] [[mock:chunks=500]]")
    first = j.next(120)     # its first frame: it runs
    assert first["type"] == "event", first
    return j


class OpenJob:
    """A job connection held open by the test (to cancel by closing)."""

    def __init__(self, tenant, conversation, message, **kw):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(stack.path("run", "poold.sock"))
        body = {"v": 1, "type": "job", "tenant": tenant,
                "conversation": conversation, "message": message}
        body.update(kw)
        b = json.dumps(body).encode()
        self.s.sendall(struct.pack(">I", len(b)) + b)

    def next(self, timeout=30):
        self.s.settimeout(timeout)
        h = stack._recvn(self.s, 4)
        return json.loads(stack._recvn(self.s, struct.unpack(">I", h)[0]))

    def close(self):
        self.s.close()


def live():
    st = stack.stats()["processes_by_state"]
    return st["total"] - st["dying"]


class PoolTest(unittest.TestCase):
    """Each test starts from a quiet pool: no job, at most one idle
    process besides the warm one, the base configuration."""

    def setUp(self):
        if stack.poold_opts != BASE:
            stack.reconfigure(**BASE)
        stack.mock_control(mode="normal", delay_ms=0)
        wait_for(lambda: stack.stats()["processes_by_state"]["busy"] == 0 and
                 stack.stats()["queue_length"] == 0, 60, "an idle pool")
        stack.poold({"type": "set_limits", "min_instances": 0,
                     "max_instances": 1})
        wait_for(lambda: stack.stats()["processes_by_state"]["total"] <= 1,
                 60, "the pool to shrink")
        stack.poold({"type": "set_limits", "min_instances": 1,
                     "max_instances": 3})


class Sizing(PoolTest):
    def test_warm_set_refilled_and_max_never_exceeded(self):
        # The fourth job waits for one of the first three, each a spawn
        # and a 1.5 s turn: several seconds under ASan on a busy host.
        stack.reconfigure(queue_max_wait_ms=15000)
        wait_for(lambda: stack.stats()["processes_by_state"]["warm"] == 1, 60,
                 "one warm process")
        # Four slow conversations of four tenants on max_instances=3.
        futs = [job_async("size%d" % i, conv(), "slow [[mock:slow=1500]]")
                for i in range(4)]
        peak, queued = 0, 0
        while not all(f.done() for f in futs):
            st = stack.stats()
            peak = max(peak, st["processes_by_state"]["total"] -
                       st["processes_by_state"]["dying"])
            queued = max(queued, st["queue_length"])
            self.assertLessEqual(st["processes_by_state"]["total"], 3 + 1,
                                 "at most one dying beside max_instances")
            time.sleep(0.02)
        self.assertEqual([end(f.result())["type"] for f in futs], ["done"] * 4,
                         [end(f.result()) for f in futs])
        self.assertLessEqual(peak, 3)
        self.assertGreaterEqual(queued, 1, "a job waited its turn")
        self.assertGreaterEqual(stack.stats()["totals"]["evicted"], 1)
        # The warm set comes back once there is room.
        stack.poold({"type": "set_limits", "max_instances": 8})
        wait_for(lambda: stack.stats()["processes_by_state"]["warm"] == 1, 60,
                 "the warm set refilled")

    def test_the_warm_share_holds_in_a_full_pool(self):
        # min_warm (2, here held to min_instances, 1): a pool full of idle
        # conversations still keeps a warm process, by stopping the least
        # recently used one, whose next turn resumes with its context.
        wait_for(lambda: stack.stats()["processes_by_state"]["warm"] == 1, 60,
                 "one warm process")
        convs = [conv() for _ in range(3)]
        sids = [end(job("share%d" % i, c, "first of %d" % i))["session_id"]
                for i, c in enumerate(convs)]

        def by_state():
            st = stack.stats()["processes_by_state"]
            return st["warm"], st["bound"], st["dying"]
        wait_for(lambda: by_state() == (1, 2, 0), 60,
                 "a warm process again in the full pool")
        live_convs = {p["conversation"] for p in procs()}
        self.assertNotIn(convs[0], live_convs)
        self.assertTrue({convs[1], convs[2]} <= live_convs)
        # A new conversation is placed warm at once.
        self.assertEqual(end(job("share3", conv(), "new"))["process"]
                         ["origin"], "warm")
        # The stopped conversation resumes with what it said.
        again = end(job("share0", convs[0], "second of 0", resume=sids[0]))
        self.assertEqual(again["process"]["origin"], "resumed")
        turns = texts_of(next(r for r in reversed(stack.mock_records())
                              if texts_of(r)[-1] == ("user", "second of 0")))
        self.assertEqual([t for r, t in turns if r == "user"],
                         ["first of 0", "second of 0"])

    def test_warm_above_min_reaped_and_limits_checked(self):
        stack.poold({"type": "set_limits", "min_instances": 3,
                     "max_instances": 6})
        wait_for(lambda: stack.stats()["processes_by_state"]["warm"] == 3, 60,
                 "three warm")
        stack.poold({"type": "set_limits", "min_instances": 1})
        wait_for(lambda: stack.stats()["processes_by_state"]["warm"] == 1, 60,
                 "back to one warm")
        for bad in ({"min_instances": 5, "max_instances": 2},
                    {"max_instances": 0}, {"min_instances": "1"}):
            a = stack.poold(dict({"type": "set_limits"}, **bad))[0]
            self.assertEqual(a["type"], "error", bad)
            self.assertEqual(a["code"], "bad_request")

    def test_tenant_max_jobs(self):
        # The greedy tenant's two jobs hold their slots until closed; its
        # third waits for one of them, however long the others take.
        stack.reconfigure(queue_max_wait_ms=300000)
        stack.poold({"type": "set_limits", "max_instances": 6})
        held = [hold("greedy") for _ in range(2)]
        third = job_async("greedy", conv(), "third")
        wait_for(lambda: stack.stats()["queue_length"] == 1, 60,
                 "the greedy tenant's third job to wait")
        st = stack.stats()
        busy = [p for p in st["processes"] if p["state"] == "busy"]
        self.assertEqual(len(busy), 2)
        # Another tenant is not held up by the greedy one's queued job:
        # it is served while that job still waits for a greedy slot.
        other = job("modest", conv(), "quick")
        self.assertEqual(end(other)["type"], "done")
        self.assertEqual(stack.stats()["queue_length"], 1,
                         "the greedy job still waits behind its tenant's "
                         "limit, the other tenant's job went past it")
        self.assertFalse(third.done())
        # A greedy slot freed: the third job takes it.
        held[0].close()
        self.assertEqual(end(third.result())["type"], "done")
        held[1].close()


class WarmTarget(PoolTest):
    """The adaptive warm target (warm.c): it rises with new conversations'
    arrivals and falls back when they stop; a recurring system prompt is
    learned; max_pool_rss_mb bounds the CLIs' memory."""

    def tearDown(self):
        stack.reconfigure(max_warm=0, warm_window_ms=30000,
                          max_pool_rss_mb=0, queue_max=BASE["queue_max"],
                          queue_max_wait_ms=BASE["queue_max_wait_ms"])

    def warm(self):
        return stack.stats()["warm"]

    def test_the_warm_target_rises_and_falls_back(self):
        stack.reconfigure(max_warm=4, warm_window_ms=20000, queue_max=8,
                          queue_max_wait_ms=60000)
        stack.poold({"type": "set_limits", "max_instances": 8})
        wait_for(lambda: stack.stats()["processes_by_state"]["warm"] == 1, 60,
                 "one warm process")
        self.assertEqual(self.warm()["target"], 1)
        futs = [job_async("burst%d" % i, conv(), "hello %d" % i)
                for i in range(4)]
        self.assertEqual([end(f.result())["type"] for f in futs],
                         ["done"] * 4)
        # Four arrived: the target rose above min_warm and warm processes
        # are made up to it.
        line = self.warm()["profiles"][0]
        self.assertEqual(line["profile"], "default")
        self.assertGreaterEqual(line["arrivals"], 4)
        self.assertGreater(self.warm()["target"], 1)
        wait_for(lambda: stack.stats()["processes_by_state"]["warm"] >= 2,
                 60, "more warm processes than min_warm")
        self.assertEqual(end(job("burst9", conv(), "next"))["process"]
                         ["origin"], "warm")
        # No arrivals for a window: back to one.
        wait_for(lambda: self.warm()["target"] == 1, 60,
                 "the target back at min_warm")
        wait_for(lambda: stack.stats()["processes_by_state"]["warm"] == 1, 60,
                 "the warm set back at one")

    def test_a_recurring_system_prompt_is_learned(self):
        stack.reconfigure(max_warm=4, warm_window_ms=60000)
        stack.poold({"type": "set_limits", "max_instances": 6})
        sp = "You are a terse assistant for the warm test."
        for i in range(2):
            d = end(job("prompted", conv(), "hi %d" % i, system_prompt=sp))
            self.assertEqual(d["process"]["origin"], "spawned")
        lines = [p for p in self.warm()["profiles"] if p["system_prompt"]]
        self.assertEqual(len(lines), 1, self.warm())
        self.assertEqual(lines[0]["tenant"], "prompted")
        wait_for(lambda: [p for p in self.warm()["profiles"]
                          if p["system_prompt"] and p["warm"] >= 1], 60,
                 "a warm process of the learned profile")
        # Another tenant's conversation with it is not placed warm (it
        # would learn that someone uses that prompt); the tenant's is.
        d = end(job("other", conv(), "not mine", system_prompt=sp))
        self.assertEqual(d["process"]["origin"], "spawned")
        d = end(job("prompted", conv(), "third", system_prompt=sp))
        self.assertEqual(d["process"]["origin"], "warm")
        rec = next(r for r in reversed(stack.mock_records())
                   if texts_of(r)[-1] == ("user", "third"))
        self.assertIn(sp, json.dumps(rec))

    def test_max_pool_rss_mb_is_never_passed(self):
        stack.poold({"type": "set_limits", "max_instances": 8})
        # What one CLI grows to once it ran a turn.
        c = conv()
        job("memw", c, "warm-up")
        seen = []

        def grown():
            # The most one CLI uses, once it has stopped growing.
            seen.append(self.warm()["process_rss_kb"])
            return len(seen) > 40 and seen[-1] > 0 and seen[-1] == seen[-41]
        wait_for(grown, 120, "one CLI's memory to stop growing")
        one = seen[-1]
        limit_mb = (one * 7 // 2) // 1024
        stack.reconfigure(max_warm=8, max_pool_rss_mb=limit_mb, queue_max=8,
                          queue_max_wait_ms=120000)
        futs = [job_async("mem%d" % i, conv(), "hello %d" % i)
                for i in range(6)]
        peak_kb, peak_live = 0, 0
        while not all(f.done() for f in futs):
            w = self.warm()
            peak_kb = max(peak_kb, w["pool_rss_kb"])
            peak_live = max(peak_live, live())
            time.sleep(0.05)
        self.assertEqual([end(f.result())["type"] for f in futs],
                         ["done"] * 6)
        for _ in range(20):
            peak_kb = max(peak_kb, self.warm()["pool_rss_kb"])
            peak_live = max(peak_live, live())
            time.sleep(0.1)
        self.assertLessEqual(peak_kb, limit_mb * 1024,
                             (one, limit_mb, peak_live, procs()))
        self.assertLessEqual(peak_live, 3)


class Conversations(PoolTest):
    def test_turns_of_one_conversation_never_overlap(self):
        c = conv()
        first = job_async("serial", c, "first [[mock:slow=800]]")
        wait_for(lambda: [p for p in procs() if p["conversation"] == c and
                          p["state"] == "busy"], 60, "the first turn to run")
        second = job_async("serial", c, "second")
        a, b = end(first.result()), end(second.result())
        self.assertEqual((a["type"], b["type"]), ("done", "done"), (a, b))
        turns = [t for t in texts_of(next(
            r for r in reversed(stack.mock_records())
            if texts_of(r)[-1] == ("user", "second")))]
        self.assertEqual(turns, [("user", "first [[mock:slow=800]]"),
                                 ("assistant", a["text"]), ("user", "second")])
        self.assertEqual(b["process"]["origin"], "bound")

    def test_first_event_says_the_clis_own_time(self):
        """The first text's frame carries the CLI's own time to it: at
        least the upstream's delay, within the turn's duration; later
        frames do not repeat it."""
        frames = job("timed", conv(), "hello [[mock:slow=300]] "
                     "[[mock:chunks=4]]")
        done = frames[-1]
        # The upstream's input usage comes first, once, with no text.
        self.assertEqual(list(frames[0].get("usage", {})),
                         ["input_tokens", "cache_read_input_tokens",
                          "cache_creation_input_tokens"])
        self.assertNotIn("text", frames[0])
        events = [f for f in frames[1:-1] if "text" in f]
        self.assertEqual(len(events), len(frames) - 2)
        self.assertEqual(done["type"], "done", done)
        self.assertGreaterEqual(len(events), 2)
        cli = events[0]["cli_us"]
        self.assertGreaterEqual(cli, 300000)
        self.assertLess(cli, done["duration_ms"] * 1000)
        self.assertEqual([e for e in events[1:] if "cli_us" in e], [])

    def test_resume_of_a_missing_transcript_is_resume_failed(self):
        a = end(job("ghost", conv(), "hello"))
        self.assertEqual(a["type"], "done")
        ghost = str(uuid.uuid4())
        e = end(job("ghost", conv(), "again", resume=ghost))
        self.assertEqual(e["type"], "error")
        self.assertEqual(e["code"], "resume_failed")


class Queueing(PoolTest):
    def fill(self, n=3):
        """Occupy max_instances with held jobs, one at a time; the test
        closes them."""
        held = []
        for i in range(n):
            held.append(hold("fill%d" % i))
            self.assertEqual(stack.stats()["processes_by_state"]["busy"],
                             i + 1)
        return held

    def test_queue_full_and_wait_bound(self):
        # The slots are held until the test lets them go, and the queue
        # waits long: the job past queue_max is refused for the full queue
        # while the two queued still wait.  Then a short wait bound (read
        # at every tick) times the queued ones out.
        held = self.fill()
        try:
            stack.reconfigure(queue_max_wait_ms=300000)
            waiting = [job_async("q%d" % i, conv(), "queued")
                       for i in range(2)]
            wait_for(lambda: stack.stats()["queue_length"] == 2, 60,
                     "two queued")
            over = end(job("q9", conv(), "one too many"))
            self.assertEqual((over["type"], over["code"]), ("error", "busy"))
            self.assertIn("the queue is full", over["message"])
            self.assertFalse([f for f in waiting if f.done()])
            self.assertEqual(stack.stats()["queue_length"], 2)
            stack.reconfigure(queue_max_wait_ms=700)
            for f in waiting:
                e = end(f.result())
                self.assertEqual((e["type"], e["code"]), ("error", "busy"))
                self.assertIn("in time", e["message"])
        finally:
            for j in held:
                j.close()

    def test_queued_client_that_leaves_leaves_the_queue(self):
        held = self.fill()
        try:
            before = stack.stats()["totals"]["cancelled"]
            j = OpenJob("leaver", conv(), "never mind")
            wait_for(lambda: stack.stats()["queue_length"] == 1, 60,
                     "queued")
            j.close()
            wait_for(lambda: stack.stats()["queue_length"] == 0, 60,
                     "the queue to drop the job")
            self.assertEqual(stack.stats()["totals"]["cancelled"],
                             before + 1)
        finally:
            for h in held:
                h.close()


class Limits(PoolTest):
    def test_stall_timeout_kills_and_frees_the_slot(self):
        # Only the stall can end this job: the first output and the job's
        # own limit have room to spare on a slow machine.
        stack.reconfigure(stall_timeout_ms=2000, first_event_timeout_ms=120000,
                          job_timeout_ms=300000)
        before = stack.stats()["totals"]["timeout"]
        frames = job("hang", conv(), "wait forever [[mock:hang]]")
        e = end(frames)
        self.assertEqual((e["type"], e["code"]), ("error", "timeout"))
        self.assertIn("stalled", e["message"])
        self.assertEqual(stack.stats()["totals"]["timeout"], before + 1)
        wait_for(lambda: not [p for p in procs() if p["tenant"] == "hang"],
                 60, "the hung CLI to be gone")
        # Its slot is free: with one process allowed, the next job runs.
        stack.poold({"type": "set_limits", "min_instances": 0,
                     "max_instances": 1})
        try:
            self.assertEqual(end(job("after-hang", conv(), "next"))["type"],
                             "done")
        finally:
            stack.poold({"type": "set_limits", "min_instances": 1,
                         "max_instances": 3})

    def test_job_timeout(self):
        stack.reconfigure(stall_timeout_ms=20000)
        e = end(job("slowpoke", conv(), "late [[mock:slow=4000]]",
                    timeout_ms=1000))
        self.assertEqual((e["type"], e["code"]), ("error", "timeout"))
        self.assertIn("time limit", e["message"])

    def test_cancel_running_job_frees_its_slot(self):
        j = hold("canceller")
        pid = [p["pid"] for p in procs() if p["tenant"] == "canceller"][0]
        before = stack.stats()["totals"]["cancelled"]
        j.close()
        wait_for(lambda: not pid_alive(pid) and not [
            p for p in procs() if p["pid"] == pid], 60,
            "the cancelled CLI to be gone")
        self.assertEqual(stack.stats()["totals"]["cancelled"], before + 1)


class Recovery(PoolTest):
    def test_cli_killed_mid_turn(self):
        # Far more words than the test reads before the kill.
        j = OpenJob("victim", conv(), "story [[mock:drip=150]] "
                    "[[mock:chunks=400]]")
        self.assertIn("usage", j.next())
        got = [j.next(), j.next()]
        self.assertEqual([g["type"] for g in got], ["event", "event"])
        pid = [p["pid"] for p in procs() if p["tenant"] == "victim"][0]
        os.kill(pid, signal.SIGKILL)
        while True:
            f = j.next()
            if f["type"] != "event":
                break
            got.append(f)
        j.close()
        self.assertEqual((f["type"], f["code"]), ("error", "cli_failed"))
        self.assertTrue(f["incomplete"])
        self.assertEqual(f["text"], "".join(g["text"] for g in got))
        self.assertIn("killed by signal 9", f["message"])

    def test_death_before_output_is_retried_once(self):
        # The health check would replace the stopped idle process before
        # the job reaches it (test_stopped_idle_process_is_replaced): not
        # here.  setUp restores the interval.
        stack.reconfigure(health_check_interval_ms=600000)
        warm = warm_cli()
        os.kill(warm, signal.SIGSTOP)     # it cannot answer...
        before = stack.stats()["totals"]["retried"]
        f = job_async("unlucky", conv(), "retry me")
        try:
            wait_for(lambda: [p for p in procs() if p["pid"] == warm and
                              p["state"] == "busy"], 60, "the job on it")
        except AssertionError:
            raise AssertionError("the job is not on CLI %d: %r\n%s" % (
                warm, procs(), open(stack.path("poold.log")).read()[-3000:]))
        os.kill(warm, signal.SIGKILL)     # ...and dies before any output
        done = end(f.result())
        self.assertEqual(done["type"], "done", done)
        self.assertNotEqual(done["process"]["pid"], warm)
        self.assertEqual(stack.stats()["totals"]["retried"], before + 1)

    def test_recycled_after_max_messages_and_resumed(self):
        c = conv()
        first = end(job("recycle", c, "one"))
        sid = first["session_id"]
        end(job("recycle", c, "two", resume=sid))
        third = end(job("recycle", c, "three", resume=sid))
        self.assertEqual(third["process"]["turns"], 3)
        wait_for(lambda: not [p for p in procs() if p["conversation"] == c],
                 60, "the recycled process to go")
        fourth = end(job("recycle", c, "four", resume=sid))
        self.assertEqual(fourth["process"]["origin"], "resumed")
        self.assertEqual(fourth["session_id"], sid)
        turns = texts_of(next(r for r in reversed(stack.mock_records())
                              if texts_of(r)[-1] == ("user", "four")))
        self.assertEqual([t for r, t in turns if r == "user"],
                         ["one", "two", "three", "four"])

    def test_vanished_warm_process_is_replaced(self):
        warm = warm_cli()
        os.kill(warm, signal.SIGKILL)
        wait_for(lambda: [p for p in procs() if p["state"] == "warm" and
                          p["pid"] != warm], 60, "a replacement")


    def test_stopped_idle_process_is_replaced(self):
        warm = warm_cli()
        before = stack.stats()["totals"]["unhealthy"]
        os.kill(warm, signal.SIGSTOP)
        wait_for(lambda: not pid_alive(warm), 60, "the stopped CLI to go")
        self.assertEqual(stack.stats()["totals"]["unhealthy"], before + 1)
        wait_for(lambda: [p for p in procs() if p["state"] == "warm"], 60,
                 "a replacement")


class Workspaces(PoolTest):
    def test_layout_modes_and_isolation(self):
        c = conv()
        a = end(job("ws-alice", c, "hello from alice"))
        end(job("ws-bob", conv(), "hello from bob"))
        base = stack.path("state", "tenants", "ws-alice")
        for d in ("", "conversations"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(
                base, d)).st_mode), 0o700, d)
            self.assertEqual(os.stat(os.path.join(base, d)).st_uid, 0, d)
        for sub in ("workspace/projects", "workspace/temp",
                    "workspace/uploads", "workspace/README.md",
                    "conversations/%s/.claude" % c):
            self.assertTrue(os.path.exists(os.path.join(base, sub)), sub)
        found = []

        def transcript():
            # The CLI writes it just after the turn ends.
            for root, _, files in os.walk(stack.path("state")):
                found.extend(os.path.join(root, f) for f in files
                             if f == a["session_id"] + ".jsonl")
            return found
        wait_for(transcript, 60, "the transcript")
        self.assertEqual(len(found), 1)
        # Its conversation's own HOME; the CLI's cwd is /workspace.
        self.assertEqual(found[0], os.path.join(
            base, "conversations", c, ".claude", "projects", "-workspace",
            a["session_id"] + ".jsonl"))
        bob = stack.path("state", "tenants", "ws-bob")
        for root, _, files in os.walk(bob):
            self.assertNotIn(a["session_id"] + ".jsonl", files)

    def test_bad_tenant_names_create_nothing(self):
        before = sorted(os.listdir(stack.path("state", "tenants")))
        for t in ("../x", "a/b", "", ".hidden", "-rf", "x" * 65, "a\u00e9",
                  "a\nb"):
            e = end(job(t, conv(), "x"))
            self.assertEqual((e["type"], e["code"]), ("error", "bad_request"),
                             repr(t))
            self.assertIn("tenant", e["message"])
        self.assertEqual(sorted(os.listdir(stack.path("state", "tenants"))),
                         before)
        self.assertFalse(os.path.exists(stack.path("state", "x")))

    def test_delete_removes_process_and_transcript(self):
        c = conv()
        a = end(job("deleter", c, "forget me"))
        found = []

        def transcript():
            # The CLI writes it just after the turn ends.
            for root, _, files in os.walk(stack.path("state", "tenants",
                                                     "deleter")):
                if a["session_id"] + ".jsonl" in files:
                    found.append(os.path.join(root, a["session_id"] +
                                              ".jsonl"))
            return found
        wait_for(transcript, 60, "the transcript")
        path = found[0]
        r = stack.poold({"type": "delete", "tenant": "deleter",
                         "session_id": a["session_id"], "conversation": c})[0]
        self.assertEqual(r["type"], "ok")
        self.assertGreaterEqual(r["removed"], 1)
        # Its CLI, killed, may write there until it is gone (a loaded
        # host, or one already stopping for the warm share): once it is
        # gone, its folder is removed again, for good.
        wait_for(lambda: not [p for p in procs() if p["conversation"] == c],
                 60, "its process to stop")
        self.assertFalse(os.path.exists(path))


class Children(PoolTest):
    def test_env_limits_group(self):
        c = conv()
        end(job("envcheck", c, "hi"))
        pid = [p["pid"] for p in procs() if p["conversation"] == c][0]
        env = dict(kv.split("=", 1) for kv in open(
            "/proc/%d/environ" % pid, "rb").read().decode().split("\0") if kv)
        self.assertNotIn("CCGATE_TEST_SECRET", env)
        self.assertEqual(set(env) - {
            "PATH", "HOME", "CLAUDE_CONFIG_DIR", "LANG", "TMPDIR",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_AUTOUPDATER",
            "DISABLE_TELEMETRY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY",
            "ANTHROPIC_UNIX_SOCKET", "PWD", "CLAUDE_CODE_MAX_RETRIES"},
            set(), "unexpected variables in the CLI's environment")
        # The CLI's own retries are bounded (cli_max_retries).
        self.assertEqual(env["CLAUDE_CODE_MAX_RETRIES"], "2")
        # What it sees is the sandbox's; the key is its egress token.
        self.assertEqual((env["HOME"], env["TMPDIR"], env["PWD"]),
                         ("/home/claude", "/tmp", "/workspace"))
        self.assertRegex(env["ANTHROPIC_API_KEY"],
                         "^ccgate-egress-[0-9a-f]{64}$")
        limits = open("/proc/%d/limits" % pid).read()
        core = [l for l in limits.splitlines() if l.startswith("Max core")][0]
        self.assertEqual(core.split()[4:6], ["0", "0"])
        nofile = [l for l in limits.splitlines()
                  if l.startswith("Max open files")][0]
        self.assertEqual(nofile.split()[3:5], ["1000", "1000"])
        self.assertEqual(os.getpriority(os.PRIO_PROCESS, pid), 7,
                         "the configured nice value")
        # Its sandbox's session: the daemon kills the sandbox's group.
        self.assertNotEqual(os.getpgid(pid), os.getpgid(0))
        self.assertEqual(os.getsid(pid), os.getpgid(pid))
        self.assertEqual(os.readlink("/proc/%d/cwd" % pid), "/workspace")


class Control(PoolTest):
    def test_stats(self):
        end(job("stats", conv(), "count me"))
        st = stack.stats()
        for k in ("jobs", "succeeded", "failed", "spawned", "busy", "timeout",
                  "cli_failed", "cancelled"):
            self.assertIn(k, st["totals"])
        self.assertGreater(st["totals"]["succeeded"], 0)
        for k in ("time_to_first_event_ms", "job_duration_ms",
                  "queue_wait_ms"):
            self.assertLessEqual(st[k]["p50"], st[k]["p95"])
            self.assertLessEqual(st[k]["p95"], st[k]["p99"])
        p = st["processes"][0]
        for k in ("pid", "state", "tenant", "conversation", "model", "age_ms",
                  "turns", "rss_kb"):
            self.assertIn(k, p)
        self.assertTrue(any(p["rss_kb"] > 10000 for p in st["processes"]))
        self.assertGreater(st["daemon_rss_kb"], 0)

    def test_a_pid_is_the_clis_from_its_start(self):
        """A process's pid is its CLI's, never bwrap's (the daemon's
        child, or its helper while it sets the sandbox up) nor setpriv's:
        null until the CLI runs, and then for good."""
        stack.poold({"type": "set_limits", "min_instances": 3})
        cli = os.path.realpath(CLAUDE)
        deadline = time.time() + 120
        known = {}
        while time.time() < deadline:
            for p in stack.stats()["processes"]:
                if p["pid"] is None or p["state"] == "dying":
                    continue
                try:
                    exe = os.readlink("/proc/%d/exe" % p["pid"])
                except OSError:
                    continue        # gone since
                self.assertEqual(exe, cli, p)
                self.assertNotEqual(p["pid"], p["sandbox_pid"])
                self.assertEqual(known.setdefault(p["sandbox_pid"],
                                                  p["pid"]), p["pid"])
            if len(known) >= 3:
                break
            time.sleep(0.005)
        self.assertGreaterEqual(len(known), 3)

    def test_overhead_samples_by_placement(self):
        """A job on a running process is sampled as the daemon's overhead;
        one that had to start its process, apart (fork and exec are not
        relaying)."""
        def samples():
            st = stack.stats()
            return (st["daemon_overhead_us"]["samples"],
                    st["spawn_overhead_us"]["samples"])
        c = conv()
        end(job("overhead", c, "on a new process",
                model="claude-haiku-4-5"))       # no warm one has this model
        running, spawned = samples()
        self.assertGreaterEqual(spawned, 1)
        self.assertEqual(end(job("overhead", c, "again",
                                 model="claude-haiku-4-5"))["process"][
                                     "origin"], "bound")
        self.assertEqual(samples(), (running + 1, spawned))

    def test_drain(self):
        self.assertEqual(stack.poold({"type": "drain", "on": True})[0]["type"],
                         "ok")
        try:
            e = end(job("drained", conv(), "x"))
            self.assertEqual((e["type"], e["code"]),
                             ("error", "shutting_down"))
        finally:
            stack.poold({"type": "drain", "on": False})
        self.assertEqual(end(job("drained", conv(), "x"))["type"], "done")

    def test_sighup_reloads(self):
        stack.reconfigure(queue_max=7, idle_timeout_ms=59000)
        self.assertEqual(stack.stats()["limits"]["queue_max"], 7)

    def test_bad_frames(self):
        for msg, text in (({"type": "nope"}, "unknown message type"),
                          ({"type": "job", "tenant": "t",
                            "conversation": "not-a-uuid", "message": "x"},
                           "conversation"),
                          ({"type": "job", "tenant": "t",
                            "conversation": conv(), "message": ""},
                           "message"),
                          ({"type": "job", "tenant": "t",
                            "conversation": conv(), "message": "x",
                            "model": "--dangerous"}, "model")):
            e = stack.poold(msg)[0]
            self.assertEqual((e["type"], e["code"]), ("error", "bad_request"))
            self.assertIn(text, e["message"])
        s = socket.socket(socket.AF_UNIX)
        s.connect(stack.path("run", "poold.sock"))
        s.sendall(b"\x7f\xff\xff\xff")
        h = stack._recvn(s, 4)
        e = json.loads(stack._recvn(s, struct.unpack(">I", h)[0]))
        self.assertIn("frame length", e["message"])
        self.assertIsNone(stack._recvn(s, 1), "the peer is dropped")
        s.close()
        self.assertEqual(stack.poold({"type": "ping"})[0]["type"], "ok")

    def test_refuses_to_start_twice(self):
        import subprocess
        r = subprocess.run([stack.bin("ccgate-poold"), "-f",
                            stack.path("poold.conf")], capture_output=True,
                           text=True, timeout=10)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("another ccgate-poold is running", r.stderr)
        self.assertEqual(stack.poold({"type": "ping"})[0]["type"], "ok")


class ZRestart(PoolTest):
    """Last: restarts the daemon."""

    def test_conversations_survive_restart_and_no_child_survives(self):
        c = conv()
        first = end(job("restart", c, "the code word is plover"))
        old = [p["pid"] for p in procs()]
        stack.stop_proc("poold")
        self.assertFalse([p for p in old if pid_alive(p)],
                         "a CLI outlived SIGTERM")
        stack.start_poold(env={"CCGATE_TEST_SECRET": "do-not-leak"})
        again = end(job("restart", c, "what is the code word?",
                        resume=first["session_id"]))
        self.assertEqual(again["type"], "done")
        self.assertEqual(again["process"]["origin"], "resumed")
        turns = texts_of(next(r for r in reversed(stack.mock_records())
                              if texts_of(r)[-1] ==
                              ("user", "what is the code word?")))
        self.assertEqual(turns[0], ("user", "the code word is plover"))
        # SIGKILL: the daemon cannot clean up; its children die with it.
        old = [p["pid"] for p in procs()]
        stack.procs["poold"].kill()
        stack.procs["poold"].wait()
        wait_for(lambda: not [p for p in old if pid_alive(p)], 60,
                 "children of a killed daemon to die")
        stack.start_poold(env={"CCGATE_TEST_SECRET": "do-not-leak"})
        c2 = conv()
        end(job("restart", c2, "hi"))
        pid = [p["pid"] for p in procs() if p["conversation"] == c2][0]
        env = open("/proc/%d/environ" % pid, "rb").read()
        self.assertNotIn(b"do-not-leak", env)


if __name__ == "__main__":
    main()
