#!/usr/bin/env python3
"""Files benchmark, one run (see run.py): a 1 GB upload (PUT
/api/files/...) and its download through nginx and ccgate-fcgi, with
ccgate-fcgi's and ccgate-poold's resident memory sampled all along.  The
body streams in 64 KB chunks into (and out of) the descriptor ccgate-poold
opened, so neither process should grow with the file: the figure is the
peak against the idle size.  CCGATE_BENCH_FILE_MB sets the size (1024)."""

import hashlib
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "integration"))
from harness import Stack  # noqa: E402

SIZE_MB = int(os.environ.get("CCGATE_BENCH_FILE_MB", "1024"))
CHUNK = 1024 * 1024


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """The peak RSS of each pid until stopped."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = {n: 0 for n in pids}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for n, p in self.pids.items():
                self.peak[n] = max(self.peak[n], rss_kb(p))
            time.sleep(0.05)


def body(size, digest):
    """The upload's bytes, made as they are sent (never whole here)."""
    block = bytes(range(256)) * (CHUNK // 256)
    sent = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        piece = block[:n]
        digest.update(piece)
        sent += n
        yield piece


def run():
    """Measure; return a markdown section."""
    size = SIZE_MB * 1024 * 1024
    stack = Stack(app_opts={"workspace_max_bytes": 2 * size + 65536},
                  name="benchfiles").start()
    try:
        key = stack.create_key("files")
        pids = {"ccgate-fcgi": stack.procs["fcgi"].pid,
                "ccgate-poold": stack.procs["poold"].pid}
        idle = {n: rss_kb(p) for n, p in pids.items()}
        sampler = Sampler(pids)
        sampler.start()
        up = hashlib.sha256()
        c = stack.conn(timeout=600)
        t0 = time.time()
        c.putrequest("PUT", "/api/files/uploads/big.bin")
        c.putheader("Authorization", "Bearer " + key)
        c.putheader("Content-Type", "application/octet-stream")
        c.putheader("Content-Length", str(size))
        c.endheaders()
        for piece in body(size, up):
            c.send(piece)
        r = c.getresponse()
        answer = r.read()
        c.close()
        t_up = time.time() - t0
        assert r.status == 201, (r.status, answer[:300])
        c = stack.conn(timeout=600)
        t0 = time.time()
        c.request("GET", "/api/files/uploads/big.bin",
                  headers={"Authorization": "Bearer " + key})
        r = c.getresponse()
        down = hashlib.sha256()
        got = 0
        while True:
            piece = r.read(CHUNK)
            if not piece:
                break
            down.update(piece)
            got += len(piece)
        c.close()
        t_down = time.time() - t0
        sampler.stop.set()
        sampler.join()
        assert r.status == 200 and got == size, (r.status, got)
        assert up.hexdigest() == down.hexdigest()
    finally:
        stack.stop()
    lines = [
        "## Files: a %d MB upload and download" % SIZE_MB,
        "",
        "`PUT /api/files/uploads/big.bin` with a %d MB body, then `GET` of it,"
        % SIZE_MB,
        "through nginx (TLS) and ccgate-fcgi, which streams the body into",
        "and out of the descriptor ccgate-poold opened, 64 KB at a time;",
        "the bytes downloaded hash the same as those sent. Resident memory",
        "sampled every 50 ms throughout:",
        "",
        "| | idle | peak | grew by |",
        "|---|---|---|---|",
    ]
    for n in pids:
        lines.append("| %s | %.1f MB | %.1f MB | %.1f MB |" % (
            n, idle[n] / 1024, sampler.peak[n] / 1024,
            (sampler.peak[n] - idle[n]) / 1024))
    lines += [
        "",
        "Upload %.1f s (%.0f MB/s), download %.1f s (%.0f MB/s), both"
        % (t_up, SIZE_MB / t_up, t_down, SIZE_MB / t_down),
        "including TLS on loopback and the client's own hashing.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
