#!/usr/bin/env python3
"""The warm pool under real traffic, one run (see run.py), each figure
beside its baseline from the same run:

  1. a burst of N new conversations (CCGATE_BENCH_BURSTS, "10,30") with
     the pool full of idle bound conversations:
       (a) min_warm = N against N CLIs started beforehand and driven
           directly on their pipes (the limit);
       (b) the defaults after an idle spell (CCGATE_BENCH_IDLE_S, 60 s):
           the share placed warm, the wall time against the limit and
           against the spawn-per-request baseline;
       (c) that baseline: the project's own mode with no warm pool and no
           binding (min_instances 0, min_warm 0, max_warm 0,
           idle_timeout_ms 0, max_spawning 0), which spawns a CLI for
           every request as other wrappers do;
  2. a steady mix: Poisson arrivals of new conversations
     (CCGATE_BENCH_MIX_NEW per s) and follow-up turns on live
     conversations (CCGATE_BENCH_LIVE, 50; CCGATE_BENCH_MIX_FOLLOW per s)
     for CCGATE_BENCH_MIX_S seconds with max_instances 10: the share of
     new conversations placed warm and time to first delta, new against
     follow-up, against a CLI driven directly (a fresh one's first turn,
     and a later turn).

Jobs go on ccgate-poold's own protocol (the placement is what is
measured; the HTTP layers add the same to every case, bench_latency).
Times to first delta are to the first frame with text.  Both sides talk
to the same mock upstream.  Nothing here asserts a time."""

import concurrent.futures
import json
import os
import random
import socket
import struct
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "integration"))
from bench_latency import DirectCli, pct  # noqa: E402
from harness import Stack  # noqa: E402

BURSTS = [int(x) for x in os.environ.get("CCGATE_BENCH_BURSTS",
                                         "10,30").split(",") if x]
IDLE_S = float(os.environ.get("CCGATE_BENCH_IDLE_S", "60"))
BOUND = int(os.environ.get("CCGATE_BENCH_BOUND", "10"))
LIVE = int(os.environ.get("CCGATE_BENCH_LIVE", "50"))
MIX_S = float(os.environ.get("CCGATE_BENCH_MIX_S", "60"))
MIX_NEW = float(os.environ.get("CCGATE_BENCH_MIX_NEW", "0.2"))
MIX_FOLLOW = float(os.environ.get("CCGATE_BENCH_MIX_FOLLOW", "0.3"))

# The defaults, as a fresh poold.conf has them (the harness's own aside).
# (max_spawning: the daemon's own, one per core and at least 2.)
DEFAULTS = {"min_instances": 2, "min_warm": 2, "max_warm": 8,
            "max_instances": 10, "spawn_nice": 10,
            "idle_timeout_ms": 300000}
BASELINE = {"min_instances": 0, "min_warm": 0, "max_warm": 0,
            "max_instances": 10, "max_spawning": 0, "idle_timeout_ms": 0}
# Enough room for a burst's queue and one tenant per conversation.
ROOM = {"queue_max": 256, "tenant_max_queued": 64, "queue_max_wait_ms":
        300000, "job_timeout_ms": 300000, "first_event_timeout_ms": 120000,
        "stall_timeout_ms": 120000, "tenant_max_processes": 8}


def turn(stack, tenant, conv, message, resume=None):
    """One job on the protocol: (ms to the first text, done frame)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(stack.path("run", "poold.sock"))
    body = {"v": 1, "type": "job", "tenant": tenant, "conversation": conv,
            "message": message}
    if resume:
        body["resume"] = resume
    b = json.dumps(body).encode()
    t0 = time.perf_counter()
    s.sendall(struct.pack(">I", len(b)) + b)
    first = None
    try:
        while True:
            h = stack._recvn(s, 4)
            m = json.loads(stack._recvn(s, struct.unpack(">I", h)[0]))
            if m["type"] == "event":
                if first is None and m.get("text"):
                    first = (time.perf_counter() - t0) * 1000
                continue
            if m["type"] != "done":
                raise RuntimeError("job failed: %r" % m)
            return first, m
    finally:
        s.close()


def configure(stack, opts):
    """poold.conf changed and reloaded; a pool above its new bounds made
    to fit at once (set_limits evicts the excess)."""
    stack.reconfigure(**opts)
    stack.poold({"type": "set_limits", "min_instances":
                 opts["min_instances"], "max_instances":
                 opts["max_instances"]})


def cpu_ticks(pid):
    """A process's CPU time (user + system) in ticks, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def wait_quiet(pids, quiet=0.6, timeout=60):
    """Until none of pids used CPU for quiet seconds: CLIs that finished
    starting (a CLI waiting for its first turn uses none)."""
    deadline = time.time() + timeout
    last = {p: cpu_ticks(p) for p in pids}
    still = time.time()
    while time.time() < deadline:
        time.sleep(0.2)
        now = {p: cpu_ticks(p) for p in pids}
        if now != last:
            last, still = now, time.time()
        elif time.time() - still >= quiet:
            return
    raise RuntimeError("CLIs still busy starting after %d s" % timeout)


def settle(stack, warm, timeout=120):
    """Until no job runs, nothing is dying and warm processes are there,
    and those have finished starting."""
    deadline = time.time() + timeout
    while True:
        st = stack.stats()
        by = st["processes_by_state"]
        if by["busy"] == 0 and by["dying"] == 0 and by["warm"] >= warm and \
                st["queue_length"] == 0:
            break
        if time.time() > deadline:
            raise RuntimeError("the pool did not settle: %r" % by)
        time.sleep(0.1)
    pids = [p["pid"] for p in st["processes"]
            if p["state"] == "warm" and p["pid"]]
    wait_quiet(pids, timeout=60 + 10 * len(pids))


def fill(stack, n, tag):
    """n idle bound conversations, one tenant each: [(tenant, conv, sid)]."""
    out = []
    for i in range(n):
        t, c = "%s%d" % (tag, i), str(uuid.uuid4())
        _, d = turn(stack, t, c, "fill %d" % i)
        out.append((t, c, d["session_id"]))
    return out


def burst(stack, n, tag):
    """n new conversations at once: (wall ms, [ttfd ms], {origin: n})."""
    go = threading.Barrier(n + 1)

    def one(i):
        go.wait()
        return turn(stack, "%s%d" % (tag, i), str(uuid.uuid4()),
                    "burst %d" % i)
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
        futs = [ex.submit(one, i) for i in range(n)]
        go.wait()
        t0 = time.perf_counter()
        res = [f.result() for f in futs]
        wall = (time.perf_counter() - t0) * 1000
    origins = {}
    for _, d in res:
        o = d["process"]["origin"]
        origins[o] = origins.get(o, 0) + 1
    return wall, [t for t, _ in res], origins


def limit_burst(stack, n):
    """n CLIs started beforehand, each given a new conversation's first
    turn at once: (wall ms, [ttfd ms])."""
    clis = [DirectCli(stack, warmup=False,
                      home=stack.path("bench-warm-direct-%d" % i))
            for i in range(n)]
    go = threading.Barrier(n + 1)

    def one(i):
        go.wait()
        return clis[i].turn("burst %d" % i)
    try:
        # Every one finished starting (about a CPU second each).
        wait_quiet([c.p.pid for c in clis], timeout=60 + 10 * n)
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
            futs = [ex.submit(one, i) for i in range(n)]
            go.wait()
            t0 = time.perf_counter()
            ttfd = [f.result() for f in futs]
            wall = (time.perf_counter() - t0) * 1000
    finally:
        for c in clis:
            c.close()
    return wall, ttfd


def limit_turns(stack, n=5):
    """A fresh CLI's first turn and a later turn, n each, driven directly:
    ([new ttfd], [follow-up ttfd])."""
    new, follow = [], []
    for i in range(n):
        c = DirectCli(stack, warmup=False,
                      home=stack.path("bench-warm-direct-%d" % i))
        try:
            wait_quiet([c.p.pid])
            new.append(c.turn("new %d" % i))
            time.sleep(0.05)
            follow.append(c.turn("follow %d" % i))
        finally:
            c.close()
    return new, follow


def mix(stack, live):
    """The steady mix: ([new ttfd], [follow ttfd], share of new placed
    warm, {origin: n} of the new ones)."""
    rng = random.Random(21)
    events, t = [], 0.0
    rate = MIX_NEW + MIX_FOLLOW
    while True:
        t += rng.expovariate(rate)
        if t >= MIX_S:
            break
        events.append((t, rng.random() < MIX_NEW / rate))
    busy = set()
    lock = threading.Lock()
    new, follow, origins = [], [], {}

    def one(kind, i):
        if kind:
            ms, d = turn(stack, "mixn%d" % i, str(uuid.uuid4()), "new %d" % i)
            with lock:
                new.append(ms)
                o = d["process"]["origin"]
                origins[o] = origins.get(o, 0) + 1
            return
        with lock:
            free = [k for k in range(len(live)) if k not in busy]
            if not free:
                return
            k = rng.choice(free)
            busy.add(k)
        tenant, conv, sid = live[k]
        try:
            ms, d = turn(stack, tenant, conv, "follow %d" % i, sid)
            with lock:
                follow.append(ms)
                live[k] = (tenant, conv, d["session_id"])
        finally:
            with lock:
                busy.discard(k)
    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as ex:
        t0 = time.time()
        futs = []
        for i, (at, kind) in enumerate(events):
            delay = t0 + at - time.time()
            if delay > 0:
                time.sleep(delay)
            futs.append(ex.submit(one, kind, i))
        for f in futs:
            f.result()
    share = origins.get("warm", 0) / max(1, len(new))
    return new, follow, share, origins


def run():
    """Measure; return a markdown section."""
    stack = Stack(dict(DEFAULTS, **ROOM), name="benchwarm").start()
    rows, ratios = [], []
    try:
        for n in BURSTS:
            lim_wall, lim_ttfd = limit_burst(stack, n)
            # (a) min_warm = N, with BOUND idle bound conversations.
            configure(stack, dict(ROOM, min_instances=n, min_warm=n,
                                  max_warm=n, max_instances=n + BOUND,
                                  max_spawning=2, idle_timeout_ms=300000))
            settle(stack, 0)
            fill(stack, BOUND, "a%dfill" % n)
            settle(stack, n)
            a_wall, a_ttfd, a_orig = burst(stack, n, "a%d" % n)
            # (b) the defaults, the pool full of idle conversations, after
            # an idle spell.
            configure(stack, dict(ROOM, **DEFAULTS))
            settle(stack, 0)
            fill(stack, DEFAULTS["max_instances"], "b%dfill" % n)
            settle(stack, min(DEFAULTS["min_warm"],
                              DEFAULTS["min_instances"]))
            time.sleep(IDLE_S)
            b_wall, b_ttfd, b_orig = burst(stack, n, "b%d" % n)
            # (c) spawn per request.
            configure(stack, dict(ROOM, **BASELINE))
            settle(stack, 0)
            c_wall, c_ttfd, c_orig = burst(stack, n, "c%d" % n)
            for name, wall, ttfd, orig in (
                    ("limit: %d CLIs started beforehand, driven directly" % n,
                     lim_wall, lim_ttfd, None),
                    ("(a) min_warm = %d, pool full of idle conversations" % n,
                     a_wall, a_ttfd, a_orig),
                    ("(b) defaults after %.0f s idle, pool full" % IDLE_S,
                     b_wall, b_ttfd, b_orig),
                    ("(c) spawn per request (baseline mode)", c_wall, c_ttfd,
                     c_orig)):
                rows.append("| %s | %d | %.0f | %.0f | %.0f | %s |" % (
                    name, n, wall, pct(ttfd, 50), pct(ttfd, 90),
                    "-" if orig is None else "%d of %d" % (
                        orig.get("warm", 0), n)))
            ratios.append(
                "- Burst of %d: (a) %.2fx the limit's wall time (%.0f ms "
                "against %.0f ms); (b) %.2fx the limit, %d%% placed warm, "
                "%.2fx the baseline's wall time; (c) the baseline %.2fx the "
                "limit; (a) is %.2fx faster than the baseline." % (
                    n, a_wall / lim_wall, a_wall, lim_wall,
                    b_wall / lim_wall, 100 * b_orig.get("warm", 0) // n,
                    b_wall / c_wall, c_wall / lim_wall, c_wall / a_wall))
        # The steady mix, against a CLI driven directly.
        lim_new, lim_follow = limit_turns(stack)
        configure(stack, dict(ROOM, **DEFAULTS))
        settle(stack, 0)
        live = fill(stack, LIVE, "live")
        settle(stack, DEFAULTS["min_warm"])
        new, follow, share, origins = mix(stack, live)
        st = stack.stats()["warm"]
    finally:
        stack.stop()
    mixrows = [
        "| new conversation, gateway (steady mix) | %d | %.0f | %.0f |" % (
            len(new), pct(new, 50), pct(new, 90)),
        "| new conversation, a fresh CLI driven directly (limit) | %d | %.0f "
        "| %.0f |" % (len(lim_new), pct(lim_new, 50), pct(lim_new, 90)),
        "| follow-up, gateway (steady mix) | %d | %.0f | %.0f |" % (
            len(follow), pct(follow, 50), pct(follow, 90)),
        "| follow-up, a CLI driven directly (limit) | %d | %.0f | %.0f |" % (
            len(lim_follow), pct(lim_follow, 50), pct(lim_follow, 90)),
    ]
    ratios.append(
        "- Steady mix (%.1f new and %.1f follow-ups a second for %.0f s, %d "
        "live conversations, max_instances 10): %.0f%% of %d new "
        "conversations placed warm (%s); new p90 %.2fx the limit's, "
        "follow-up p90 %.2fx; the warm target at the end %d, a spawn "
        "learned as %d ms." % (
            MIX_NEW, MIX_FOLLOW, MIX_S, LIVE, 100 * share, len(new),
            ", ".join("%s %d" % kv for kv in sorted(origins.items())),
            pct(new, 90) / pct(lim_new, 90),
            pct(follow, 90) / pct(lim_follow, 90), st["target"],
            st["spawn_ms"]))
    return "\n".join([
        "## Warm pool under bursts and a steady mix",
        "",
        "Jobs on ccgate-poold's protocol; time to first delta (ttfd) and a",
        "burst's wall time (all sent at once, to the last answer).  The",
        "limit is CLIs started beforehand and driven directly on their",
        "pipes; the baseline is ccgate-poold with no warm pool and no",
        "binding (a CLI spawned for every request).",
        "",
        "| case | N | wall ms | ttfd p50 ms | ttfd p90 ms | placed warm |",
        "|---|---|---|---|---|---|",
    ] + rows + [
        "",
        "| steady mix | n | ttfd p50 ms | ttfd p90 ms |",
        "|---|---|---|---|",
    ] + mixrows + ["", "### Ratios", ""] + ratios + [""])


if __name__ == "__main__":
    print(run())
