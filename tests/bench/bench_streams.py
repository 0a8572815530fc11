#!/usr/bin/env python3
"""Load benchmark, one run (see run.py): 1,000 concurrent SSE streams
through nginx, the mock upstream streaming slowly, every one of which must
end with its `done` event.  Reports the peak resident memory of
ccgate-fcgi plus ccgate-poold (the CLI processes excluded) against the
100 MB target.

The streams share 16 conversations, one bound CLI each, so the pool's
cost is 16 processes and not a spawn per stream: ccgate-poold runs a
conversation's turns one after another and queues the rest, while
ccgate-fcgi holds every stream open (one worker thread each, heartbeats
every 5 s; the threads share 16 MariaDB connections)."""

import json
import os
import resource
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "integration"))
from harness import Stack, wait_for  # noqa: E402

STREAMS = int(os.environ.get("CCGATE_BENCH_STREAMS", "1000"))
CONVERSATIONS = 16
TARGET_MB = 100


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Client(threading.Thread):
    """One stream: POST, read every event, keep what came last."""

    def __init__(self, stack, key, conversation, counters):
        super().__init__(daemon=True)
        self.stack, self.key, self.conv = stack, key, conversation
        self.counters = counters
        self.ok, self.why = False, None

    def run(self):
        c = self.stack.conn(timeout=120)
        opened = False
        try:
            c.request("POST", "/api/chat", body=json.dumps({
                "message": "a slow stream [[mock:drip=20]] [[mock:chunks=20]]",
                "conversation_id": self.conv, "stream": True}).encode(),
                headers={"Authorization": "Bearer " + self.key,
                         "Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                self.why = "HTTP %d" % r.status
                return
            self.counters.add(1)
            opened = True
            last = None
            for line in r:
                if line.startswith(b"data: {"):
                    last = json.loads(line[6:])
            self.ok = last is not None and last["type"] == "done"
            if not self.ok:
                self.why = repr(last)
        except OSError as e:
            self.why = str(e)
        finally:
            if opened:
                self.counters.add(-1)
            c.close()


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def add(self, n):
        with self.lock:
            self.now += n
            self.peak = max(self.peak, self.now)


def run():
    """Measure; return a markdown section."""
    # Two sockets a stream in nginx and ccgate-fcgi, one here.  The
    # threads share ccgate-fcgi's 16 MariaDB connections (db_connections).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stack = Stack({"min_instances": CONVERSATIONS,
                   "max_instances": CONVERSATIONS,
                   "tenant_max_jobs": CONVERSATIONS,
                   "tenant_max_processes": CONVERSATIONS,
                   "queue_max": STREAMS * 2, "queue_max_wait_ms": 600000,
                   "job_timeout_ms": 600000,
                   "first_event_timeout_ms": 120000,
                   "stall_timeout_ms": 120000,
                   "max_messages_per_instance": 100000},
                  app_opts={"threads": STREAMS + 8, "sse_heartbeat_ms": 5000,
                            "job_timeout_ms": 600000},
                  name="benchstreams").start()
    try:
        key = stack.create_key("streams")
        convs = []
        for i in range(CONVERSATIONS):
            r = stack.request("POST", "/api/chat",
                              {"message": "conversation %d" % i}, key=key)
            convs.append(r.json()["conversation_id"])
        pids = {"ccgate-fcgi": stack.procs["fcgi"].pid,
                "ccgate-poold": stack.procs["poold"].pid}
        idle = {n: rss_kb(p) for n, p in pids.items()}
        counters = Counter()
        peak = {n: 0 for n in pids}
        peak_sum = [0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                now = {n: rss_kb(p) for n, p in pids.items()}
                for n in now:
                    peak[n] = max(peak[n], now[n])
                peak_sum[0] = max(peak_sum[0], sum(now.values()))
                time.sleep(0.2)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threading.stack_size(512 * 1024)
        clients = [Client(stack, key, convs[i % CONVERSATIONS], counters)
                   for i in range(STREAMS)]
        t0 = time.time()
        for c in clients:
            c.start()
        for c in clients:
            c.join(900)
        took = time.time() - t0
        stop.set()
        sampler.join()
        failed = [c.why for c in clients if not c.ok]
        wait_for(lambda: stack.stats()["processes_by_state"]["busy"] == 0,
                 60, "the pool to be idle")
        spawned = stack.stats()["totals"]["spawned"]
    finally:
        stack.stop()
    if failed:
        raise RuntimeError("%d of %d streams failed: %r" % (
            len(failed), STREAMS, failed[:5]))
    mb = peak_sum[0] / 1024.0
    lines = [
        "## %d concurrent SSE streams" % STREAMS,
        "",
        "%d clients each open a streamed chat through nginx at once, on %d"
        % (STREAMS, CONVERSATIONS),
        "conversations with one bound CLI each; the mock upstream drips 20",
        "words 20 ms apart. ccgate-fcgi runs %d worker threads, so every"
        % (STREAMS + 8),
        "stream is held open by the app (heartbeats every 5 s) while",
        "ccgate-poold runs each conversation's turns in order. The threads",
        "share ccgate-fcgi's 16 MariaDB connections (`db_connections`).",
        "",
        "| | result |",
        "|---|---|",
        "| streams ending with `done` | %d of %d (%d failed) |" % (
            STREAMS - len(failed), STREAMS, len(failed)),
        "| streams open at once (answer headers received) | %d |" %
        counters.peak,
        "| wall time | %.1f s |" % took,
        "| CLI processes started in all | %d |" % spawned,
        "| ccgate-fcgi RSS idle / peak | %.1f / %.1f MB |" % (
            idle["ccgate-fcgi"] / 1024.0, peak["ccgate-fcgi"] / 1024.0),
        "| ccgate-poold RSS idle / peak | %.1f / %.1f MB |" % (
            idle["ccgate-poold"] / 1024.0, peak["ccgate-poold"] / 1024.0),
        "| ccgate-fcgi + ccgate-poold, peak | %.1f MB |" % mb,
        "",
        "- Memory: %.1f MB at the peak, %.2fx the %d MB target (%s)." % (
            mb, mb / TARGET_MB, TARGET_MB,
            "met" if mb < TARGET_MB else "not met"),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
