#!/usr/bin/env python3
"""The admin UI in a real browser (Debian's chromium, driven by
playwright-core from npm) through nginx: log in, create a key, call the
API with it, see the call in the request log and the usage chart,
suspend it and see the API refuse it, reactivate, rotate, revoke.
Screenshots of every screen are kept in tests/artifacts/admin-ui/ of
the build tree."""

import json
import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, BUILDDIR, SRCDIR, main, pinned_clients  # noqa: E402

stack = None
PW = "a long admin password"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.path.join(BUILDDIR, "tests", "artifacts", "admin-ui")


def setUpModule():
    global stack
    stack = Stack(app_opts={"key_cache_ms": 0}, name="adminui").start()
    stack.create_admin("ops", PW)


def tearDownModule():
    stack.stop()


class Browser(unittest.TestCase):
    def test_static_files_and_their_headers(self):
        r = stack.request("GET", "/admin/")
        self.assertEqual(r.status, 200, r)
        self.assertIn("<title>ccgate admin</title>", r.body)
        csp = r.headers["content-security-policy"]
        self.assertIn("script-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertEqual(r.headers["x-frame-options"], "DENY")
        for asset, ctype in (("app.js", "javascript"), ("app.css", "css")):
            r = stack.request("GET", "/admin/assets/" + asset)
            self.assertEqual(r.status, 200, asset)
            self.assertIn(ctype, r.headers["content-type"])
        self.assertEqual(stack.request("GET", "/admin").status, 301)
        self.assertEqual(stack.request("GET", "/admin/assets/nope.js").status,
                         404)
        # The admin UI and API are for the admin allowlist only.
        for path in ("/admin/", "/admin/assets/app.js", "/admin/login"):
            r = stack.request("GET", path, source="127.0.0.2")
            self.assertEqual(r.status, 403, path)

    def test_operator_journey(self):
        shutil.rmtree(SHOTS, ignore_errors=True)
        os.makedirs(SHOTS)
        clients = pinned_clients()
        env = dict(os.environ, CCGATE_URL="https://127.0.0.1:%d" % stack.port,
                   CCGATE_ADMIN_USER="ops", CCGATE_ADMIN_PASSWORD=PW,
                   CCGATE_CLIENTS=clients, CCGATE_CHROMIUM=CHROMIUM,
                   CCGATE_SHOTS=SHOTS, NODE_TLS_REJECT_UNAUTHORIZED="0",
                   NODE_NO_WARNINGS="1")
        p = subprocess.run(["node", os.path.join(SRCDIR, "tests",
                                                 "integration", "ui",
                                                 "admin_ui.cjs")],
                           env=env, capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        seen = json.loads(p.stdout.strip().splitlines()[-1])
        self.assertIn("wrong user name or password", seen["login_error"])
        kid = seen["key_id"]
        # The key the browser created is the one the database holds.
        self.assertEqual(stack.sql("SELECT tenant, requests_per_day, "
                                   "max_concurrent_requests, queue_when_busy, "
                                   "require_signature FROM api_keys WHERE "
                                   "id = '%s'" % kid),
                         [["ui-team", "100", "4", "0", "0"]])
        self.assertGreaterEqual(seen["chart_requests"], 1)
        self.assertIn("1", seen["key_usage_row"])
        self.assertEqual(seen["suspended"]["status"], 401)
        self.assertIn("suspended",
                      seen["suspended"]["body"]["error"]["message"])
        self.assertEqual(seen["activated"], 200)
        self.assertEqual((seen["old_after_rotate"], seen["new_after_rotate"]),
                         (401, 200))
        self.assertEqual(seen["revoked"]["status"], 401)
        self.assertIn("revoked", seen["revoked"]["body"]["error"]["message"])
        self.assertEqual(seen["error_rows"], 2, "suspended and revoked")
        self.assertGreaterEqual(seen["pool_rows"], 1)
        self.assertIn("ui-team", seen["workspaces"])
        self.assertIn("saved", seen["limits_flash"])
        self.assertEqual(stack.sql("SELECT workspace_max_bytes, "
                                   "workspace_max_files FROM tenant_limits "
                                   "WHERE tenant = 'ui-team'"),
                         [["12345", "NULL"]])
        for action in ("key.create", "key.update", "key.rotate",
                       "key.revoke", "tenant.update"):
            self.assertIn(action, seen["audit"])
        self.assertTrue(seen["signed_out"])
        self.assertEqual(seen["foreign_requests"], [],
                         "the UI fetched something not from the gateway")
        self.assertEqual(seen["problems"], [])
        shots = sorted(os.listdir(SHOTS))
        self.assertGreaterEqual(len(shots), 14, shots)
        self.assertFalse([s for s in shots if "failure" in s])


if __name__ == "__main__":
    main()
