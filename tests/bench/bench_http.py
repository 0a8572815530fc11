#!/usr/bin/env python3
"""HTTP benchmark, one run (see run.py): GET /v1/models through nginx and
ccgate-fcgi with a valid key (authenticated, usage recorded), against
nginx serving a static file of the same size over the same TLS, measured
with wrk on this machine's cores."""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "integration"))
from harness import Stack, free_port, wait_for  # noqa: E402

SECONDS = os.environ.get("CCGATE_BENCH_WRK_SECONDS", "8")
CONNECTIONS = (16, 64)


def wrk(url, conns, key=None):
    args = ["wrk", "-t2", "-c%d" % conns, "-d%ss" % SECONDS, "--latency"]
    if key:
        args += ["-H", "Authorization: Bearer " + key]
    out = subprocess.run(args + [url], capture_output=True, text=True,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(p):
        m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)" % p, out)
        v = float(m.group(1))
        return v / 1000.0 if m.group(2) == "us" else v * (
            1000.0 if m.group(2) == "s" else 1.0)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": ms(50), "p99": ms(99),
            "errors": int(bad.group(1)) if bad else 0}


def static_nginx(stack, body):
    """A second nginx serving body as a file, same TLS settings."""
    d = stack.path("static")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "models.json"), "wb") as f:
        f.write(body)
    port = free_port()
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = """%s
worker_processes 2;
pid %s/nginx.pid;
error_log %s/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
    access_log %s/access.log;
    client_body_temp_path %s/tmp-body;
    ssl_session_cache shared:static_ssl:10m;
    server {
        listen 127.0.0.1:%d ssl http2;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        location = /models.json { root %s; default_type application/json; }
    }
}
""" % (user, d, d, d, d, port, stack.path("tls.crt"), stack.path("tls.key"), d)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(conf)
    p = subprocess.Popen(["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.procs["static-nginx"] = p
    import socket

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False
    wait_for(up, 10, "the static nginx")
    return "https://127.0.0.1:%d/models.json" % port


def run():
    """Measure; return a markdown section."""
    stack = Stack({"min_instances": 0}, name="benchhttp").start()
    try:
        key = stack.create_key("bench")
        api = "https://127.0.0.1:%d/v1/models" % stack.port
        body = stack.request("GET", "/v1/models", key=key).body.encode()
        static = static_nginx(stack, body)
        rows = []
        for c in CONNECTIONS:
            s = wrk(static, c)
            time.sleep(1)
            a = wrk(api, c, key)
            if a["errors"] or s["errors"]:
                raise RuntimeError("non-2xx answers: %r %r" % (a, s))
            rows.append((c, a, s))
            time.sleep(1)
        logged = int(stack.sql("SELECT COUNT(*) FROM usage_logs")[0][0])
    finally:
        stack.stop_proc("static-nginx")
        stack.stop()
    lines = [
        "## HTTP: GET /v1/models against a static file",
        "",
        "wrk, 2 threads, %s s a run, HTTPS with keep-alive. The API route" % SECONDS,
        "checks the key (cached), lists the key's models and writes a usage",
        "row for every request (%d rows were written); the baseline is nginx"
        % logged,
        "serving a file of the same %d bytes with the same TLS settings." %
        len(body),
        "",
        "| connections | /v1/models req/s | p50 ms | p99 ms | static req/s | "
        "p50 ms | p99 ms | API / static |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, a, s in rows:
        lines.append("| %d | %.0f | %.2f | %.2f | %.0f | %.2f | %.2f | %.2f |" % (
            c, a["rps"], a["p50"], a["p99"], s["rps"], s["p50"], s["p99"],
            a["rps"] / s["rps"]))
    lines += ["", "wrk, nginx, ccgate-fcgi and MariaDB share the machine's "
              "%d cores." % os.cpu_count(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
