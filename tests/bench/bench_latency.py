#!/usr/bin/env python3
"""Latency benchmark, one run, ratios against baselines measured in the
same run (never absolute targets):

  1. time to first delta, a turn on a warm CLI, through the gateway
     (HTTPS through nginx, ccgate-fcgi, ccgate-poold, to the
     conversation's bound process) against that same CLI's own time for
     that same turn (ccgate-poold's pipe timestamps, Server-Timing's cli),
     and against two other CLIs driven directly (stream-json on their
     pipes) by this script.  The gateway's client, like ccgate-poold on
     the CLI's pipes, only writes the request and reads bytes: the same
     turns through Python's http.client show what such a client adds of
     its own;
  2. a new conversation's first delta: a warm process against a cold spawn
     (min_instances=0, as wrappers that spawn one CLI per request do).

Both sides talk to the same mock upstream.  Run by run.py (`make bench`).
"""

import json
import os
import select
import socket
import ssl
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "integration"))
from harness import Stack, CLAUDE, UPSTREAM_CREDENTIAL  # noqa: E402

N_TURNS = int(os.environ.get("CCGATE_BENCH_TURNS", "100"))
N_NEW = int(os.environ.get("CCGATE_BENCH_NEW", "12"))
PAUSE = 0.05     # s before each turn


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round((len(xs) - 1) * p / 100.0)))]


def summary(xs):
    return {"n": len(xs), "p50": pct(xs, 50), "p90": pct(xs, 90),
            "mean": statistics.mean(xs)}


class DirectCli:
    """One warm CLI driven directly on its pipes, started with the flags
    ccgate-poold gives its own."""

    def __init__(self, stack, warmup=True, home=None):
        # warmup=False: no turn yet (the next is a new conversation's
        # first), and home: a folder of its own (several at once).
        home = home or stack.path("bench-direct")
        os.makedirs(os.path.join(home, ".claude"), exist_ok=True)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home,
               "CLAUDE_CONFIG_DIR": os.path.join(home, ".claude"),
               "LANG": "C.UTF-8",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
               "ANTHROPIC_BASE_URL": "http://127.0.0.1:%d" % stack.mock_port,
               "ANTHROPIC_API_KEY": UPSTREAM_CREDENTIAL}
        self.p = subprocess.Popen(
            [CLAUDE, "-p", "--input-format=stream-json",
             "--output-format=stream-json", "--verbose",
             "--include-partial-messages", "--setting-sources=user",
             "--strict-mcp-config", "--tools=", "--model=claude-sonnet-4-5"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=home, env=env, bufsize=0)
        self.buf = b""
        if warmup:
            time.sleep(1.5)      # let it finish starting: a warm process
            self.turn("warm-up")

    def readline(self, timeout=30):
        deadline = time.time() + timeout
        while b"\n" not in self.buf:
            r, _, _ = select.select([self.p.stdout], [], [],
                                    deadline - time.time())
            if not r:
                raise RuntimeError("direct CLI: no output")
            chunk = os.read(self.p.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("direct CLI exited")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def turn(self, text):
        """Time to the first text delta of one turn, in ms."""
        t0 = time.perf_counter()
        self.p.stdin.write((json.dumps({"type": "user", "message": {
            "role": "user", "content": text}}) + "\n").encode())
        first = None
        while True:
            m = self.readline()
            if (first is None and m.get("type") == "stream_event" and
                    m["event"].get("type") == "content_block_delta"):
                first = (time.perf_counter() - t0) * 1000
            if m.get("type") == "result":
                return first

    def close(self):
        self.p.stdin.close()
        self.p.wait(10)


class Gateway:
    """An HTTPS client on one kept-alive connection to nginx that does what
    ccgate-poold does on a CLI's pipes and no more: it writes the request
    (built beforehand) in one write and looks for the first delta in the
    bytes as they arrive.  Python's http.client writes a request's headers
    and body apart (two TLS records, nginx woken twice) and parses the
    answer's headers with the email package before the first line can be
    read: about half a millisecond of its own on this kind of host, which
    the http.client row of the report shows."""

    DELTA = b'data: {"type":"delta"'

    def __init__(self, stack, key):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(socket.create_connection(
            ("127.0.0.1", stack.port), timeout=60))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.key = key.encode()

    def close(self):
        self.sock.close()

    def _recv(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("nginx closed the connection")
        return chunk

    def first_delta(self, body, split=None):
        """Like gateway_first_delta, on this connection."""
        data = json.dumps(body).encode()
        req = (b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Authorization: Bearer " + self.key + b"\r\n"
               b"Content-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(data)) + data
        first = None
        t0 = time.perf_counter()
        self.sock.sendall(req)
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += self._recv()
            if first is None and self.DELTA in raw:
                first = (time.perf_counter() - t0) * 1000
        head, raw = raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict((k.strip().lower(), v.strip()) for k, v in
                       (x.split(":", 1) for x in lines[1:]))
        if headers.get("transfer-encoding") != "chunked":
            n = int(headers.get("content-length", "0"))
            while len(raw) < n:
                raw += self._recv()
            raise RuntimeError("gateway answered %d: %r" % (status, raw))
        # The chunked body, decoded as it comes.
        body_bytes = b""
        while True:
            while b"\r\n" not in raw:
                raw += self._recv()
            size_line, rest = raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += self._recv()
            body_bytes += rest[:size]
            raw = rest[size + 2:]
            if first is None and self.DELTA in body_bytes:
                first = (time.perf_counter() - t0) * 1000
            if size == 0:
                break
        if status != 200 or first is None:
            raise RuntimeError("gateway answered %d: %r" % (status,
                                                              body_bytes))
        if split is not None:
            split.append(timing(headers["server-timing"]))
        cid = None
        for line in body_bytes.split(b"\n"):
            if line.startswith(b'data: {"type":"done"'):
                cid = json.loads(line[6:])["conversation_id"]
        return first, cid


def timing(value):
    """(app, pool, cli) in ms from a Server-Timing value."""
    parts = dict(p.strip().split(";dur=") for p in value.split(","))
    return (float(parts["app"]), float(parts["pool"]), float(parts["cli"]))


def gateway_first_delta(stack, conn, key, body, split=None):
    """Through Python's http.client (conn): time from the request to the
    first delta event, in ms.  With split (a list), appends (app, pool,
    cli) from the answer's Server-Timing."""
    t0 = time.perf_counter()
    conn.request("POST", "/api/chat", body=json.dumps(body).encode(),
                 headers={"Authorization": "Bearer " + key,
                          "Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError("gateway answered %d: %s" % (r.status, r.read()))
    if split is not None:
        split.append(timing(r.getheader("Server-Timing")))
    first, cid = None, None
    for line in r:
        if first is None and line.startswith(b'data: {"type":"delta"'):
            first = (time.perf_counter() - t0) * 1000
        if line.startswith(b'data: {"type":"done"'):
            cid = json.loads(line[6:])["conversation_id"]
        if line.startswith(b"data: [DONE]"):
            break
    r.read()
    return first, cid


def wait_warm(stack, n):
    deadline = time.time() + 30
    while stack.stats()["processes_by_state"]["warm"] < n:
        if time.time() > deadline:
            raise RuntimeError("warm processes did not come back")
        time.sleep(0.05)
    time.sleep(1.5)          # and let the newest finish starting


def run():
    """Measure; return a markdown section."""
    stack = Stack({"min_instances": 2, "max_instances": 32,
                   "tenant_max_processes": 64,
                   "idle_timeout_ms": 600000}, name="bench").start()
    try:
        key = stack.create_key("bench", user="bench")
        clis = [DirectCli(stack), DirectCli(stack)]
        gw = Gateway(stack, key)
        conn = stack.conn()
        _, cid = gw.first_delta({"message": "gateway warm-up",
                                 "stream": True})
        gateway_first_delta(stack, conn, key, {
            "message": "http.client warm-up", "stream": True,
            "conversation_id": cid})
        # Interleaved, in a rotating order, so that all four see the same
        # load on the host.  A CLI goes on working for some milliseconds
        # after its result (its transcript); a pause before each turn keeps
        # that work out of the next one's time.
        direct, bound, added, split = ([], []), [], [], []
        hc, hc_split = [], []
        sides = (0, 1, 2, 3)
        for i in range(N_TURNS):
            body = {"message": "gateway turn %d" % i, "stream": True,
                    "conversation_id": cid}
            for side in sides[i % 4:] + sides[:i % 4]:
                time.sleep(PAUSE)
                if side == 2:
                    b, _ = gw.first_delta(body, split)
                elif side == 3:
                    t, _ = gateway_first_delta(stack, conn, key, dict(
                        body, message="http.client turn %d" % i), hc_split)
                    hc.append(t)
                else:
                    direct[side].append(
                        clis[side].turn("direct turn %d" % i))
            bound.append(b)
            added.append(b - direct[0][-1])
        for cli in clis:
            cli.close()

        warm = []
        for i in range(N_NEW):
            wait_warm(stack, 2)
            t, _ = gw.first_delta({"message": "new warm %d" % i,
                                   "stream": True})
            warm.append(t)
        placed_warm = stack.stats()["placed"]["warm"]

        stack.poold({"type": "set_limits", "min_instances": 0})
        deadline = time.time() + 10
        while stack.stats()["processes_by_state"]["warm"] > 0:
            if time.time() > deadline:
                raise RuntimeError("warm processes were not reaped")
            time.sleep(0.05)
        before = stack.stats()["placed"]["spawned"]
        cold = []
        for i in range(N_NEW):
            t, _ = gw.first_delta({"message": "new cold %d" % i,
                                   "stream": True})
            cold.append(t)
        spawned = stack.stats()["placed"]["spawned"] - before
        conn.close()
        gw.close()
        if spawned != N_NEW or placed_warm < N_NEW:
            raise RuntimeError("placement was not as planned: %d spawned, "
                               "%d warm" % (spawned, placed_warm))
    finally:
        stack.stop()
    return report(direct, bound, added, split, warm, cold,
                  [t - x[2] for t, x in zip(hc, hc_split)])


def report(direct, bound, added, split, warm, cold, hc_same):
    own = [x[2] for x in split]
    same = [t - x[2] for t, x in zip(bound, split)]
    d, d2, b, o, sm, a, w, c, h = (summary(x) for x in (
        direct[0], direct[1], bound, own, same, added, warm, cold, hc_same))
    rows = [
        ("turn on the conversation's bound CLI, through nginx + fcgi + poold", b),
        ("that CLI's own time for the same turn (Server-Timing cli)", o),
        ("added by the gateway (each turn: gateway minus its CLI's own time)", sm),
        ("added, the same turns through Python's http.client", h),
        ("turn on another warm CLI, driven directly by this script (A)", d),
        ("turn on a third warm CLI, driven alike (B)", d2),
        ("gateway minus CLI A, each interleaved pair", a),
        ("new conversation, warm process (gateway)", w),
        ("new conversation, cold spawn (gateway, min_instances=0)", c),
    ]
    table = ["| case | n | p50 ms | p90 ms | mean ms |", "|---|---|---|---|---|"]
    for name, s in rows:
        table.append("| %s | %d | %.1f | %.1f | %.1f |" % (
            name, s["n"], s["p50"], s["p90"], s["mean"]))
    ratios = [
        "- Gateway overhead on a turn, against the same warm CLI: p50 "
        "%.2f ms added (p90 %.2f ms) to the CLI's own %.1f ms, %.3fx.  The "
        "CLI's own time is ccgate-poold's, from writing the turn to its "
        "stdin to reading the first text from its stdout: what a program "
        "driving that CLI directly waits." % (
            sm["p50"], sm["p90"], o["p50"], b["p50"] / o["p50"]),
        "- The same turns sent with Python's http.client: p50 %.2f ms added "
        "(p90 %.2f ms), %.2f ms more, which is that client's own: it writes "
        "a request's headers and body apart and parses the answer's "
        "headers before its first line.  The gateway's client above writes "
        "the request at once and reads bytes, as ccgate-poold does on the "
        "CLI's pipes." % (h["p50"], h["p90"], h["p50"] - sm["p50"]),
        "- Against other CLIs driven directly by this script: p50 %.1f ms "
        "through the gateway against %.1f ms (A), %.1f ms added; the median "
        "of the %d interleaved pairs' differences is %.1f ms.  Two CLIs "
        "driven alike (A and B) differ by %.2f ms in their medians in the "
        "same run: a comparison across processes carries that much "
        "besides the gateway." % (
            b["p50"], d["p50"], b["p50"] - d["p50"], len(added),
            statistics.median(added), abs(d["p50"] - d2["p50"])),
        "- Where a gateway turn's time to first delta goes (medians, from "
        "the answers' Server-Timing): ccgate-fcgi until the job is handed "
        "on %.2f ms; ccgate-poold to and from the CLI %.2f ms; nginx, TLS "
        "and the client %.2f ms." % (
            statistics.median(x[0] for x in split),
            statistics.median(x[1] - x[2] for x in split),
            statistics.median(t - x[0] - x[1]
                              for t, x in zip(bound, split))),
        "- New conversation: a warm process gives the first delta %.1fx "
        "sooner than a cold spawn (p50 %.1f ms against %.1f ms)." % (
            c["p50"] / w["p50"], w["p50"], c["p50"]),
    ]
    return "\n".join([
        "## Time to first delta",
        "",
        "From writing the turn (direct) or sending the HTTPS request on a",
        "kept-alive connection (gateway) to the first text delta.  The",
        "gateway's client writes the request built beforehand in one write",
        "and looks for the delta in the bytes it reads (see the http.client",
        "row for a client that does more).",
        "",
    ] + table + ["", "## Ratios", ""] + ratios + [
        "",
        "A new conversation's first turn costs the CLI itself about 60 ms",
        "more than later turns (measured driving it directly), so the warm",
        "figure cannot fall much below that; a cold spawn adds the CLI's",
        "start-up.",
        ""])


if __name__ == "__main__":
    print(run())
