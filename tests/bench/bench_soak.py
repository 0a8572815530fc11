#!/usr/bin/env python3
"""Soak benchmark, one run (see run.py): a bounded request loop for ten
minutes (CCGATE_BENCH_SOAK_SECONDS), four clients each waiting for its
answer before the next request, mixing new and continued conversations,
streamed and whole answers, model lists, and refused requests (a bad
key, bad JSON).  Samples the resident memory and open file descriptors of
ccgate-fcgi and ccgate-poold; compares the end with the state after the
first minute, when every worker thread and MariaDB connection is warm."""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "integration"))
from harness import Stack  # noqa: E402

SECONDS = int(os.environ.get("CCGATE_BENCH_SOAK_SECONDS", "600"))
# Each ccgate-fcgi worker thread grows to its own steady state (its stack,
# its malloc arena), and each MariaDB connection (its buffers and prepared
# statements), the first few times it meets each kind of request.  Eight threads for four clients
# reach it within the warm-up, so growth after it would be a leak.
THREADS = int(os.environ.get("CCGATE_BENCH_SOAK_THREADS", "8"))
WARMUP = min(60, SECONDS // 5)
CLIENTS = 4


def sample(pid):
    """(RSS in KB, open file descriptors) of a process."""
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def prepared(stack):
    """Statements ccgate-fcgi's connections hold prepared in MariaDB: each
    worker thread prepares a statement the first time it runs it."""
    return int(stack.sql("SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'")[0][1])


def client(stack, key, i, deadline, counts, lock):
    conv = None
    n = 0
    while time.time() < deadline:
        n += 1
        kind = n % 6
        if kind == 0:
            r = stack.request("GET", "/api/models", key=key)
            good = r.status == 200
        elif kind == 1:
            r = stack.request("POST", "/api/chat", {"message": "x"},
                              key="ccg_aaaaaaaaaaaaaaaa_" + "b" * 43)
            good = r.status == 401
        elif kind == 2:
            r = stack.request("POST", "/api/chat", raw=b'{"message":',
                              key=key)
            good = r.status == 400
        elif kind == 3:
            resp, events = stack.stream("/api/chat", {
                "message": "stream %d-%d [[mock:chunks=30]]" % (i, n),
                "stream": True}, key=key)
            good = resp.status == 200 and events[-2]["type"] == "done"
        else:
            if n % 30 == 4:
                conv = None     # a new conversation now and then
            body = {"message": "turn %d-%d" % (i, n)}
            if conv:
                body["conversation_id"] = conv
            r = stack.request("POST", "/api/chat", body, key=key)
            good = r.status == 200
            if good:
                conv = r.json()["conversation_id"]
        with lock:
            counts["requests"] += 1
            counts["unexpected"] += 0 if good else 1


def run():
    """Measure; return a markdown section."""
    stack = Stack({"min_instances": 2, "max_instances": 8,
                   "idle_timeout_ms": 30000}, app_opts={"threads": THREADS},
                  name="benchsoak").start()
    try:
        key = stack.create_key("soak")
        pids = {"ccgate-fcgi": stack.procs["fcgi"].pid,
                "ccgate-poold": stack.procs["poold"].pid}
        counts = {"requests": 0, "unexpected": 0}
        lock = threading.Lock()
        t0 = time.time()
        deadline = t0 + SECONDS
        threads = [threading.Thread(target=client, args=(
            stack, key, i, deadline, counts, lock)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        series = []
        while time.time() < deadline:
            time.sleep(10)
            series.append((time.time() - t0,
                           {n: sample(p) for n, p in pids.items()},
                           prepared(stack)))
        for t in threads:
            t.join(120)
        time.sleep(2)                   # the last usage rows' flush
        rows = int(stack.sql("SELECT COUNT(*) FROM usage_logs")[0][0])
    finally:
        stack.stop()
    base = [s for s in series if s[0] >= WARMUP][0]
    end = series[-1]
    # The full series, for a closer look (CCGATE_BENCH_SOAK_SERIES=path).
    if os.environ.get("CCGATE_BENCH_SOAK_SERIES"):
        with open(os.environ["CCGATE_BENCH_SOAK_SERIES"], "w") as f:
            json.dump(series, f)
    lines = [
        "## Soak: %d minutes of a bounded request loop" % (SECONDS // 60),
        "",
        "%d clients, each waiting for its answer before the next request:"
        % CLIENTS,
        "chats (new and continued conversations, whole and streamed), model",
        "lists, a bad key (401) and bad JSON (400). %d requests, %d answered"
        % (counts["requests"], counts["unexpected"]),
        "otherwise than expected, %d usage rows (one a request). Sampled"
        % rows,
        "every 10 s; the baseline is the sample at %.0f s, after the"
        % base[0],
        "warm-up.",
        "",
        "| process | RSS at %.0f s | RSS at end | growth | fds at %.0f s | "
        "fds at end |" % (base[0], base[0]),
        "|---|---|---|---|---|---|",
    ]
    for n in sorted(end[1]):
        (r0, f0), (r1, f1) = base[1][n], end[1][n]
        lines.append("| %s | %.1f MB | %.1f MB | %+.1f%% | %d | %d |" % (
            n, r0 / 1024.0, r1 / 1024.0, 100.0 * (r1 - r0) / r0, f0, f1))
    lines.append("")
    lines.append("RSS over the run (MB, fcgi + poold) and statements "
                 "prepared: " + ", ".join(
                     "%.0f s %.1f (%d)" % (
                         t, sum(v[0] for v in s.values()) / 1024.0, n)
                     for t, s, n in series[::max(1, len(series) // 12)]))
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
