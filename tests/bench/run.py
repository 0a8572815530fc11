#!/usr/bin/env python3
"""Run every benchmark in one go and write docs/benchmarks.md (or the path
in CCGATE_BENCH_OUT).  Each figure stands beside its baseline, measured in
the same run; nothing here asserts a time."""

import datetime
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "integration"))
import bench_files  # noqa: E402
import bench_http  # noqa: E402
import bench_latency  # noqa: E402
import bench_pool  # noqa: E402
import bench_sandbox  # noqa: E402
import bench_soak  # noqa: E402
import bench_streams  # noqa: E402
import bench_warm  # noqa: E402
from harness import CLAUDE, SRCDIR  # noqa: E402


def machine():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = int(line.split()[1]) // (1024 * 1024)
    return "%d cores (%s), %d GiB, %s, Linux %s" % (
        os.cpu_count(), cpu, mem, platform.machine(), platform.release())


def main():
    sections = [bench_latency.run(), bench_http.run(), bench_pool.run(),
                bench_sandbox.run(), bench_streams.run(), bench_files.run(),
                bench_warm.run(), bench_soak.run()]
    cli = subprocess.run([CLAUDE, "--version"], capture_output=True,
                         text=True).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc)
    text = "\n".join([
        "# Benchmarks",
        "",
        "Written by `make bench` (tests/bench/run.py). Every figure was",
        "measured in one run, beside its baseline from the same run. The CLI",
        "talks to the project's mock upstream on loopback, so these are the",
        "times of the CLI and of ccgate, not of a model.",
        "",
        "- Date: %s" % now.strftime("%Y-%m-%d %H:%M UTC"),
        "- Machine: %s" % machine(),
        "- CLI: %s" % cli,
        "- Command: `make bench` in a build configured with `--enable-werror`",
        "",
    ] + sections)
    out = os.environ.get("CCGATE_BENCH_OUT",
                         os.path.join(SRCDIR, "docs", "benchmarks.md"))
    with open(out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
