#!/usr/bin/env python3
"""ccgate-poold without its sandbox (sandbox = none), the fallback for
hosts without bubblewrap: every CLI still runs as the unprivileged
run_as_user, in folders it owns that others cannot list, transcripts and
--resume still work, and tools are refused (they need the sandbox).  Needs
root, to create the user and to switch to it."""

import os
import pwd
import shutil
import subprocess
import sys
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, CLAUDE, texts_of, wait_for, main  # noqa: E402

USER = "ccgate-clitest"


class RunAsUser(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("run_as_user needs root")
        try:
            pwd.getpwnam(USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home",
                            "--shell", "/usr/sbin/nologin", USER], check=True)
        cls.uid = pwd.getpwnam(USER).pw_uid
        # The idle timeout is long until the test has looked at the
        # process (a loaded machine may take seconds to): then short.
        cls.stack = Stack({"min_instances": 1, "max_instances": 3,
                           "idle_timeout_ms": 600000}, name="runas")
        # The unprivileged CLI must reach its binary: a copy it may run.
        os.chmod(cls.stack.dir, 0o711)
        os.makedirs(cls.stack.path("cli"))
        os.chmod(cls.stack.path("cli"), 0o755)
        shutil.copy(CLAUDE, cls.stack.path("cli", "claude"))
        os.chmod(cls.stack.path("cli", "claude"), 0o755)
        cls.stack.poold_opts.update(run_as_user=USER, sandbox="none",
                                    cli_path=cls.stack.path("cli", "claude"))
        cls.stack.start()

    @classmethod
    def tearDownClass(cls):
        cls.stack.stop()

    def job(self, conv, message, **kw):
        msg = {"type": "job", "tenant": "unpriv", "conversation": conv,
               "message": message}
        msg.update(kw)
        return self.stack.poold(msg)[-1]

    def test_cli_runs_as_the_user_and_resumes(self):
        s = self.stack
        c = str(uuid.uuid4())
        first = self.job(c, "remember: kestrel")
        self.assertEqual(first["type"], "done", first)
        pid = first["process"]["pid"]
        status = open("/proc/%d/status" % pid).read()
        uids = [l for l in status.splitlines() if l.startswith("Uid:")][0]
        self.assertEqual(set(uids.split()[1:]), {str(self.uid)})
        self.assertEqual(os.readlink("/proc/%d/cwd" % pid),
                         s.path("state", "neutral"))
        base = s.path("state", "tenants", "unpriv")
        for sub in ("conversations/" + c, "conversations/%s/.claude" % c,
                    "workspace", "workspace/README.md"):
            self.assertEqual(os.stat(os.path.join(base, sub)).st_uid,
                             self.uid, sub)
        # The daemon's folders on the way can be crossed but not listed
        # by the CLI's user.
        for d in ("tenants", "tenants/unpriv", "tenants/unpriv/conversations"):
            st = os.stat(s.path("state", d))
            self.assertEqual((st.st_uid, st.st_mode & 0o777), (0, 0o711), d)
        s.reconfigure(idle_timeout_ms=1500)
        wait_for(lambda: not [p for p in s.stats()["processes"]
                              if p["conversation"] == c], 60,
                 "the idle process to stop")
        again = self.job(c, "what was it?", resume=first["session_id"])
        self.assertEqual(again["type"], "done", again)
        self.assertEqual(again["process"]["origin"], "resumed")
        turns = texts_of([r for r in s.mock_records()
                          if texts_of(r)[-1] == ("user", "what was it?")][-1])
        self.assertEqual(turns[0], ("user", "remember: kestrel"))

    def test_tools_are_refused_without_the_sandbox(self):
        before = len(self.stack.mock_records())
        e = self.job(str(uuid.uuid4()), "[[mock:bash=id]]", tools=True)
        self.assertEqual((e["type"], e["code"]), ("error", "unavailable"), e)
        self.assertIn("sandbox", e["message"])
        self.assertEqual(len(self.stack.mock_records()), before)


if __name__ == "__main__":
    main()
