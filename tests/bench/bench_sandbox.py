#!/usr/bin/env python3
"""What the sandbox and the egress cost, measured in one run against the
way CLIs ran before them: three pools side by side on the same MariaDB and
mock upstream, interleaved job by job on ccgate-poold's protocol:

  shipped    each CLI in bubblewrap as the CLI user, reaching the upstream
             only through the egress, with a token
  sandbox    the same sandbox, but the host's network and the credential
             in the CLI's environment (no egress): splits the two costs
  before     as the previous build ran CLIs: on the host, no egress

Each case is timed to the job's first event:

  cold    a new conversation on a process started for it (min_instances 0)
  warm    a new conversation on a warm process
  resume  the next turn after the idle timeout, --resume in a new process
  bound   the next turn on the conversation's own process: every upstream
          request of a turn goes through the egress, so this is its cost

Run by run.py (`make bench`)."""

import os
import shutil
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "integration"))
from harness import Stack, CLAUDE, UPSTREAM_CREDENTIAL  # noqa: E402
from bench_pool import first_event_ms, pct  # noqa: E402

N = int(os.environ.get("CCGATE_BENCH_SANDBOX", "12"))
N_BOUND = int(os.environ.get("CCGATE_BENCH_TURNS", "40"))
IDLE_MS = 600
NAMES = ("shipped", "sandbox", "before")
CASES = (("cold", "new conversation, cold spawn"),
         ("warm", "new conversation, warm process"),
         ("resume", "next turn, --resume in a new process"),
         ("bound", "next turn, the bound process"))


def wait(pred, what, timeout=30):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise RuntimeError("timed out waiting for " + what)
        time.sleep(0.05)


def procs(stack, conv):
    return [p for p in stack.stats()["processes"] if p["conversation"] == conv]


def job(stack, conv, text, origin, resume=None):
    t, done = first_event_ms(stack, "bench", conv, text, resume)
    if done["process"]["origin"] != origin:
        raise RuntimeError("placed %s, not %s" % (done["process"]["origin"],
                                                 origin))
    return t, done["session_id"]


def rotate(i):
    """Each round a different pool goes first."""
    k = i % len(NAMES)
    return list(range(len(NAMES)))[k:] + list(range(len(NAMES)))[:k]


def run():
    """Measure; return a markdown section."""
    # A CLI on the host runs as the CLI user, who must reach its binary
    # and its folders: a copy every pool uses, and states it can cross.
    bindir = tempfile.mkdtemp(prefix="ccgate-bench-cli-")
    os.chmod(bindir, 0o755)
    cli = os.path.join(bindir, "claude")
    shutil.copy(CLAUDE, cli)
    os.chmod(cli, 0o755)
    opts = {"min_instances": 0, "max_instances": 8, "tenant_max_processes": 8,
            "idle_timeout_ms": IDLE_MS, "cli_path": cli}
    direct = {"egress_socket": None, "env.ANTHROPIC_API_KEY":
              UPSTREAM_CREDENTIAL}
    stacks = []
    try:
        stacks.append(Stack(dict(opts), name="benchbox").start())
        direct["env.ANTHROPIC_BASE_URL"] = ("http://127.0.0.1:%d" %
                                            stacks[0].mock_port)
        for name, extra in (("benchnet", {}), ("benchhost",
                                                {"sandbox": "none"})):
            s = Stack(dict(opts, **dict(direct, **extra)), name=name,
                      share_with=stacks[0])
            os.chmod(s.dir, 0o711)
            stacks.append(s.start())
        times = [{k: [] for k, _ in CASES} for _ in stacks]
        for i in range(N):
            for j in rotate(i):
                conv = str(uuid.uuid4())
                t, sid = job(stacks[j], conv, "cold %d" % i, "spawned")
                times[j]["cold"].append(t)
                wait(lambda: not procs(stacks[j], conv), "an idle stop")
                t, _ = job(stacks[j], conv, "resume %d" % i, "resumed", sid)
                times[j]["resume"].append(t)
        for s in stacks:
            s.reconfigure(idle_timeout_ms=600000)
        convs = []
        for s in stacks:
            conv = str(uuid.uuid4())
            convs.append((conv, job(s, conv, "start", "spawned")[1]))
        for i in range(N_BOUND):
            for j in rotate(i):
                time.sleep(0.05)
                t, _ = job(stacks[j], convs[j][0], "bound %d" % i, "bound",
                           convs[j][1])
                times[j]["bound"].append(t)
        # Conversations placed warm go idle and stop again, so that the
        # pool always has room for the next warm process.
        for s in stacks:
            s.reconfigure(idle_timeout_ms=IDLE_MS)
            s.poold({"type": "set_limits", "min_instances": 1})
        for i in range(N):
            for j in rotate(i):
                wait(lambda: stacks[j].stats()["processes_by_state"][
                    "warm"] >= 1, "a warm process")
                time.sleep(1.0)          # let it finish starting
                t, _ = job(stacks[j], str(uuid.uuid4()), "warm %d" % i,
                           "warm")
                times[j]["warm"].append(t)
        through = sum(1 for e in stacks[0].egress_log()
                      if e["status"] == 200)
    finally:
        for s in reversed(stacks):
            s.stop()
        shutil.rmtree(bindir, ignore_errors=True)
    lines = [
        "## The sandbox and the egress",
        "",
        "The same jobs, interleaved, on three pools in one run: as shipped "
        "(bubblewrap, the CLI user, the egress), the sandbox without the "
        "egress (host network, credential in the environment), and as the "
        "previous build ran CLIs (on the host, no egress).  Time to the "
        "job's first event on ccgate-poold's protocol, ms; %d of each case "
        "but the bound turn (%d); %d upstream requests went through the "
        "egress." % (N, N_BOUND, through),
        "",
        "| case | shipped p50 | p90 | sandbox only p50 | before p50 | p90 "
        "| shipped against before |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, name in CASES:
        a, b, c = (t[case] for t in times)
        lines.append("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %+.1f ms, "
                     "%.2fx |" % (name, pct(a, 50), pct(a, 90), pct(b, 50),
                                  pct(c, 50), pct(c, 90),
                                  pct(a, 50) - pct(c, 50),
                                  pct(a, 50) / pct(c, 50)))
    lines += [
        "",
        "- The sandbox costs a spawn what bwrap takes to build it (a "
        "cold or resumed start's difference between \"sandbox only\" and "
        "\"before\"); the egress costs a turn what its bound-turn column "
        "shows against \"sandbox only\": one nginx hop on a unix socket.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
