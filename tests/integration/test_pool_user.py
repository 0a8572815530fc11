#!/usr/bin/env python3
"""ccgate-poold running every CLI as an unprivileged user (run_as_user):
the CLI's uid, the tenant folders it owns, and that transcripts and
--resume still work.  Needs root, to create the user and to switch to it."""

import os
import pwd
import shutil
import subprocess
import sys
import time
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
        cls.stack = Stack({"min_instances": 1, "max_instances": 3,
                           "idle_timeout_ms": 1500}, name="runas")
        # The unprivileged CLI must reach its binary: a copy it may run.
        os.chmod(cls.stack.dir, 0o711)
        os.makedirs(cls.stack.path("cli"))
        os.chmod(cls.stack.path("cli"), 0o755)
        shutil.copy(CLAUDE, cls.stack.path("cli", "claude"))
        os.chmod(cls.stack.path("cli", "claude"), 0o755)
        cls.stack.poold_opts.update(run_as_user=USER,
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
        base = s.path("state", "tenants", "unpriv")
        for sub in ("", "home", "home/.claude", "workspace",
                    "workspace/README.md"):
            self.assertEqual(os.stat(os.path.join(base, sub)).st_uid,
                             self.uid, sub)
        # tenants/ can be crossed but not listed by the CLI's user.
        self.assertEqual(os.stat(s.path("state", "tenants")).st_mode & 0o777,
                         0o711)
        wait_for(lambda: not [p for p in s.stats()["processes"]
                              if p["conversation"] == c], 10,
                 "the idle process to stop")
        again = self.job(c, "what was it?", resume=first["session_id"])
        self.assertEqual(again["type"], "done", again)
        self.assertEqual(again["process"]["origin"], "resumed")
        turns = texts_of([r for r in s.mock_records()
                          if texts_of(r)[-1] == ("user", "what was it?")][-1])
        self.assertEqual(turns[0], ("user", "remember: kestrel"))


if __name__ == "__main__":
    main()
