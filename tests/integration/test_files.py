#!/usr/bin/env python3
"""The files API (/api/files): a tenant's workspace, files in and out,
against the real stack.  Uploads and downloads (Range), listings with
SHA-256, deletion; another tenant sees none of it; bad names refused in
the native error shape; links planted in the workspace (as the CLI user,
which is what a compromised CLI could do) neither read nor written through;
a workspace's byte limit refused with 413 leaving the earlier file
intact."""

import hashlib
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, CLI_USER, cli_user, main, wait_for  # noqa: E402


class Files(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stack = Stack({}, name="files")
        cls.stack.start()
        cls.key = cls.stack.create_key("files-a", user="filesa")
        cls.other = cls.stack.create_key("files-b", user="filesb")

    @classmethod
    def tearDownClass(cls):
        cls.stack.stop()

    def put(self, path, data, key=None, headers=None):
        h = {"Content-Type": "application/octet-stream"}
        h.update(headers or {})
        return self.stack.request("PUT", "/api/files/" + path,
                                  raw=data, key=key or self.key, headers=h)

    def get(self, path, key=None, headers=None):
        """GET, the body as bytes."""
        c = self.stack.conn()
        try:
            h = {"Authorization": "Bearer " + (key or self.key)}
            h.update(headers or {})
            c.request("GET", "/api/files/" + path, headers=h)
            r = c.getresponse()
            return r.status, dict((k.lower(), v) for k, v in
                                  r.getheaders()), r.read()
        finally:
            c.close()

    def workspace(self, tenant="filesa"):
        return self.stack.path("state", "tenants", tenant, "workspace")

    def as_cli(self, *argv, tenant="filesa"):
        """Run a command as the CLI user in the workspace (what a tools-on
        CLI could do): paths are relative to it (the user cannot cross the
        daemon's folders above it; the CLI sees it as /workspace)."""
        if os.geteuid() == 0:
            cli_user()
            argv = ("setpriv", "--reuid", CLI_USER, "--regid", CLI_USER,
                    "--clear-groups") + argv
        subprocess.run(argv, check=True, cwd=self.workspace(tenant))

    def assert_native_error(self, r, status, text=None):
        self.assertEqual(r.status, status, r)
        body = r.json()
        self.assertIs(body["success"], False, body)
        self.assertIn("message", body["error"])
        if text:
            self.assertIn(text, body["error"]["message"])

    def test_upload_download_range_list_delete(self):
        data = os.urandom(300000)
        r = self.put("projects/demo/data.bin", data)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json()["sha256"], hashlib.sha256(data).hexdigest())
        self.assertEqual(r.json()["size"], len(data))
        status, h, body = self.get("projects/demo/data.bin")
        self.assertEqual(status, 200)
        self.assertEqual(body, data)
        self.assertEqual(h["content-type"], "application/octet-stream")
        self.assertEqual(h["accept-ranges"], "bytes")
        status, h, body = self.get("projects/demo/data.bin",
                                   headers={"Range": "bytes=100-199"})
        self.assertEqual(status, 206)
        self.assertEqual(body, data[100:200])
        self.assertEqual(h["content-range"], "bytes 100-199/%d" % len(data))
        status, h, body = self.get("projects/demo/data.bin",
                                   headers={"Range": "bytes=-10"})
        self.assertEqual((status, body), (206, data[-10:]))
        status, h, body = self.get("projects/demo/data.bin",
                                   headers={"Range": "bytes=%d-" % len(data)})
        self.assertEqual(status, 416)
        self.assertEqual(h["content-range"], "bytes */%d" % len(data))
        # The file is the CLI user's, in the workspace.
        st = os.stat(os.path.join(self.workspace(), "projects", "demo",
                                  "data.bin"))
        if os.geteuid() == 0:
            self.assertEqual(st.st_uid, cli_user()[0])
        # A folder is not a file: neither read nor replaced.
        self.assert_native_error(self.put("projects/demo", b"x"), 403,
                                 "a folder")
        self.assertEqual(self.get("projects/demo")[0], 403)
        # Replacing it answers 200, and the new bytes are served.
        r = self.put("projects/demo/data.bin", b"v2")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.get("projects/demo/data.bin")[2], b"v2")
        r = self.stack.request("GET", "/api/files?prefix=projects/demo",
                               key=self.key)
        self.assertEqual(r.status, 200, r)
        files = r.json()["files"]
        self.assertEqual([f["path"] for f in files],
                         ["projects/demo/data.bin"])
        self.assertEqual(files[0]["size"], 2)
        self.assertEqual(files[0]["sha256"], hashlib.sha256(b"v2").hexdigest())
        self.assertRegex(files[0]["modified"], r"^\d{4}-\d\d-\d\dT")
        r = self.stack.request("GET", "/api/files", key=self.key)
        self.assertIn("README.md", [f["path"] for f in r.json()["files"]])
        r = self.stack.request("DELETE", "/api/files/projects/demo/data.bin",
                               key=self.key)
        self.assertEqual(r.status, 204, r)
        self.assertEqual(self.get("projects/demo/data.bin")[0], 404)
        r = self.stack.request("DELETE", "/api/files/projects/demo/data.bin",
                               key=self.key)
        self.assert_native_error(r, 404)

    def multipart(self, parts, boundary="ccgate-b0undary"):
        body = b""
        for name, filename, data in parts:
            body += b"--" + boundary.encode() + b"\r\n"
            disp = 'form-data; name="%s"' % name
            if filename is not None:
                disp += '; filename="%s"' % filename
            body += ("Content-Disposition: %s\r\n" % disp).encode()
            body += b"Content-Type: application/octet-stream\r\n\r\n"
            body += data + b"\r\n"
        body += b"--" + boundary.encode() + b"--\r\n"
        return self.stack.request(
            "POST", "/api/files", raw=body, key=self.key, headers={
                "Content-Type": "multipart/form-data; boundary=" + boundary})

    def test_multipart_upload(self):
        # Bytes that look like a delimiter but are not one, across chunks.
        big = (b"\r\n--ccgate-b0undar" + os.urandom(1000)) * 200
        r = self.multipart([("note", None, b"a field, not a file"),
                            ("f", "a.txt", b"hello"),
                            ("f", "../../x/b.bin", big),
                            ("f", "empty", b"")])
        self.assertEqual(r.status, 201, r)
        got = {f["path"]: f for f in r.json()["files"]}
        self.assertEqual(sorted(got), ["uploads/a.txt", "uploads/b.bin",
                                       "uploads/empty"])
        self.assertEqual(got["uploads/b.bin"]["sha256"],
                         hashlib.sha256(big).hexdigest())
        self.assertEqual(self.get("uploads/b.bin")[2], big)
        self.assertEqual(self.get("uploads/a.txt")[2], b"hello")
        self.assertEqual(self.get("uploads/empty")[2], b"")
        r = self.multipart([("f", ".bashrc", b"x")])
        self.assert_native_error(r, 400, "starting with '.'")
        r = self.stack.request("POST", "/api/files", raw=b"x", key=self.key,
                               headers={"Content-Type": "text/plain"})
        self.assert_native_error(r, 415)
        r = self.stack.request(
            "POST", "/api/files", key=self.key,
            raw=b"--b\r\nContent-Disposition: form-data; name=f; "
                b"filename=t.txt\r\n\r\nno end",
            headers={"Content-Type": "multipart/form-data; boundary=b"})
        self.assert_native_error(r, 400, "ends inside a part")
        self.assertEqual(self.get("uploads/t.txt")[0], 404)

    def test_other_tenant_sees_nothing(self):
        self.assertEqual(self.put("uploads/secret.txt", b"mine").status, 201)
        status, _, body = self.get("uploads/secret.txt", key=self.other)
        self.assertEqual(status, 404)
        self.assertNotIn(b"mine", body)
        r = self.stack.request("GET", "/api/files?prefix=uploads",
                               key=self.other)
        self.assertEqual(r.json()["files"], [])
        r = self.stack.request("DELETE", "/api/files/uploads/secret.txt",
                               key=self.other)
        self.assert_native_error(r, 404)
        self.assertEqual(self.get("uploads/secret.txt")[2], b"mine")
        # No key, no files.
        r = self.stack.request("GET", "/api/files/uploads/secret.txt")
        self.assertEqual(r.status, 401)

    def test_bad_names_refused(self):
        cases = [
            ("a/../../../etc/passwd", "'.' or '..'"),
            ("%2e%2e/%2e%2e/etc/passwd", "'.' or '..'"),
            ("uploads/..", "'.' or '..'"),
            # The router refuses encoded slashes and dot segments first.
            ("%2Fetc%2Fpasswd", "an encoded '/'"),
            ("uploads%2F..%2F..%2Fx", "an encoded '/'"),
            ("uploads/%2E%2e", "'.' or '..'"),
            ("uploads/a%5Cb", "an encoded '/' or '\\'"),
            ("uploads//x", "empty component"),
            ("uploads/a%00b", None),    # nginx refuses it first
            ("uploads/a%01b", "control character"),
            ("uploads/a%0ab", "control character"),
            ("uploads/" + "n" * 256, "longer than 255"),
            ("/".join(["d" * 200] * 6), "longer than 1024"),
            (".claude/settings.json", "starting with '.'"),
            ("uploads/%zz", None),    # nginx refuses it first
        ]
        for path, text in cases:
            for method in ("GET", "PUT", "DELETE"):
                with self.subTest(path=path, method=method):
                    r = self.stack.request(
                        method, "/api/files/" + path, key=self.key,
                        raw=b"x" if method == "PUT" else None)
                    self.assert_native_error(r, 400, text)
        r = self.stack.request("GET", "/api/files?prefix=..", key=self.key)
        self.assert_native_error(r, 400, "'.' or '..'")
        self.assertFalse(os.path.exists(os.path.join(self.workspace(),
                                                     ".claude")))

    def test_links_are_not_followed(self):
        ws = self.workspace()
        self.assertEqual(self.put("uploads/seed.txt", b"seed").status, 201)
        # A symlink to /etc and one to a file outside, as a CLI would.
        self.as_cli("ln", "-s", "/etc", "etc")
        self.as_cli("ln", "-s", "/etc/hostname", "uploads/host")
        for path in ("etc/passwd", "etc/hostname", "uploads/host"):
            status, _, body = self.get(path)
            self.assertEqual(status, 403, (path, body))
            self.assertNotIn(b"root:", body)
        before = open("/etc/hostname", "rb").read()
        r = self.put("etc/ccgate-planted", b"x")
        self.assert_native_error(r, 403, "symbolic link")
        self.assertFalse(os.path.exists("/etc/ccgate-planted"))
        r = self.put("uploads/host", b"overwrite")
        self.assert_native_error(r, 403)
        self.assertEqual(open("/etc/hostname", "rb").read(), before)
        r = self.stack.request("GET", "/api/files?prefix=etc", key=self.key)
        self.assert_native_error(r, 403)
        # A hard link to a file outside the workspace (the CLI user's, so
        # the kernel lets that user link it).
        outside = self.stack.path("outside.txt")
        with open(outside, "wb") as f:
            f.write(b"outside secret")
        if os.geteuid() == 0:
            os.chown(outside, *cli_user())
        os.link(outside, os.path.join(ws, "uploads", "hard.txt"))
        status, _, body = self.get("uploads/hard.txt")
        self.assertEqual(status, 403)
        self.assertNotIn(b"outside secret", body)
        r = self.put("uploads/hard.txt", b"overwritten")
        self.assert_native_error(r, 403, "hard link")
        self.assertEqual(open(outside, "rb").read(), b"outside secret")
        r = self.stack.request("GET", "/api/files?prefix=uploads",
                               key=self.key)
        listed = {f["path"]: f for f in r.json()["files"]}
        self.assertNotIn("uploads/host", listed)
        self.assertIsNone(listed["uploads/hard.txt"]["sha256"])
        # A FIFO does not hang the daemon.
        self.as_cli("mkfifo", "uploads/fifo")
        status, _, _ = self.get("uploads/fifo")
        self.assertEqual(status, 403)
        # Deleting a link removes the link, not its target.
        r = self.stack.request("DELETE", "/api/files/etc", key=self.key)
        self.assertEqual(r.status, 204, r)
        self.assertTrue(os.path.exists("/etc/passwd"))
        self.assertEqual(self.get("uploads/seed.txt")[2], b"seed")

    def test_a_file_growing_under_a_listing_is_not_hashed_past_its_size(self):
        # A CLI can swap a listed 1-byte file for a 200 GB sparse one
        # between the listing and the hash: the hash reads the listed
        # size at most (null when the file no longer has it), so every
        # listing ends, and a sha256 is only ever that of what was listed.
        self.assertEqual(self.put("uploads/grow.txt", b"g").status, 201)
        loop = ("while :; do truncate -s 200G uploads/grow.txt; "
                "truncate -s 1 uploads/grow.txt; done")
        argv = ("sh", "-c", loop)
        if os.geteuid() == 0:
            cli_user()
            argv = ("setpriv", "--reuid", CLI_USER, "--regid", CLI_USER,
                    "--clear-groups") + argv
        p = subprocess.Popen(argv, cwd=self.workspace())
        try:
            seen = set()
            for _ in range(30):
                r = self.stack.request(
                    "GET", "/api/files?prefix=uploads", key=self.key)
                self.assertEqual(r.status, 200, r)
                f = [x for x in r.json()["files"]
                     if x["path"] == "uploads/grow.txt"][0]
                seen.add((f["size"], f["sha256"]))
        finally:
            p.kill()
            p.wait()
            # (Left at 200 GB it would hold the tenant's limit.)
            r = self.stack.request("DELETE", "/api/files/uploads/grow.txt",
                                   key=self.key)
            self.assertEqual(r.status, 204, r)
        first = hashlib.sha256(b"g").hexdigest()
        for size, digest in seen:
            self.assertIn(digest, (None, first, hashlib.sha256(
                b"\0").hexdigest()) if size == 1 else (None,), seen)

    def test_workspace_limit(self):
        key = self.stack.create_key("files-q", user="filesq")
        out = json.loads(self.stack.admin(
            "tenant", "set", "filesq", "--workspace-max-bytes", "4096",
            "--workspace-max-files", "6").stdout)
        self.assertEqual((out["workspace_max_bytes"],
                          out["workspace_max_files"]), (4096, 6))
        first = b"a" * 1000
        self.assertEqual(self.put("uploads/one.txt", first, key=key).status,
                         201)
        # README.md is there too (seed 001); this one would pass 4096.
        r = self.put("uploads/one.txt", b"b" * 5000, key=key)
        self.assert_native_error(r, 413, "4096 bytes")
        r = self.put("uploads/two.txt", b"b" * 3500, key=key)
        self.assert_native_error(r, 413, "4096 bytes")
        # Refused before its body is read: the client still gets the 413.
        r = self.put("uploads/one.txt", os.urandom(8 * 1024 * 1024), key=key)
        self.assert_native_error(r, 413, "4096 bytes")
        self.assertEqual(self.get("uploads/one.txt", key=key)[2], first)
        self.assertEqual(self.put("uploads/two.txt", b"2", key=key).status,
                         201)
        # README.md, projects/, temp/, uploads/ (seed 001: folders
        # count), one.txt, two.txt: 6.
        r = self.put("uploads/three.txt", b"3", key=key)
        self.assert_native_error(r, 413, "6 files and folders")
        self.assertEqual(self.get("uploads/three.txt", key=key)[0], 404)
        # Nothing of the refused uploads is left behind.
        inc = self.stack.path("state", "tenants", "filesq", "incoming")
        self.assertEqual(os.listdir(inc), [])
        # The admin API: raise the file limit; audited.
        self.stack.create_admin("filesadm", "pw-files-0123456789")
        tok = self.stack.admin_token("filesadm", "pw-files-0123456789")
        h = {"Authorization": "Bearer " + tok}
        r = self.stack.request("GET", "/admin/tenants/filesq", headers=h)
        self.assertEqual(r.json()["workspace_max_files"], 6, r)
        r = self.stack.request("PUT", "/admin/tenants/filesq",
                               {"workspace_max_files": 10}, headers=h)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["workspace_max_files"], 10)
        self.assertEqual(r.json()["workspace_max_bytes"], 4096)
        r = self.stack.request("PUT", "/admin/tenants/filesq",
                               {"workspace_max_files": -1}, headers=h)
        self.assert_native_error(r, 400, "workspace_max_files")
        self.assertEqual(self.put("uploads/three.txt", b"3", key=key).status,
                         201)
        rows = self.stack.sql("SELECT action FROM audit_log WHERE "
                              "object_id = 'filesq' ORDER BY id")
        self.assertEqual([r[0] for r in rows], ["tenant.update"] * 2)

    def wait_unmeasured(self, key):
        """Until a 1-byte upload is refused as unmeasurable."""
        def refused():
            r = self.put("uploads/probe", b"p", key=key)
            return r.status == 413 and "cannot be measured" in \
                r.json()["error"]["message"]
        wait_for(refused, 60, "the unmeasurable entry seen")

    def test_nothing_bypasses_the_limit(self):
        """Deeper than the walk, or in a folder it cannot read: every
        upload is refused until it is gone; never free space."""
        key = self.stack.create_key("files-deep", user="filesdeep")
        self.stack.admin("tenant", "set", "filesdeep",
                         "--workspace-max-bytes", "10000",
                         "--workspace-max-files", "200")
        r = self.put("/".join(["d"] * 33) + "/x.bin", b"x", key=key)
        self.assert_native_error(r, 400, "32 components")
        self.assertEqual(self.put("/".join(["d"] * 31) + "/x.bin", b"x",
                                  key=key).status, 201)
        self.assertEqual(self.put("uploads/a.bin", b"a", key=key).status,
                         201)
        ws = self.workspace("filesdeep")
        deep = "/".join(["e"] * 70)
        self.as_cli("mkdir", "-p", deep,
                    tenant="filesdeep")
        self.as_cli("sh", "-c", "head -c 9500 /dev/zero > " + deep + "/x",
                    tenant="filesdeep")
        # What the CLI wrote outside a turn is seen once the daemon's
        # measure (reused for 2 s) expires.
        self.wait_unmeasured(key)
        r = self.put("uploads/b.bin", b"b" * 9500, key=key)
        self.assert_native_error(r, 413, "cannot be measured")
        r = self.put("uploads/b.bin", b"b", key=key)
        self.assert_native_error(r, 413, "cannot be measured")
        self.as_cli("rm", "-rf", "e",
                    tenant="filesdeep")
        self.assertEqual(self.put("uploads/b.bin", b"b", key=key).status,
                         201)
        # A folder the CLI made unreadable.
        self.as_cli("mkdir", "locked",
                    tenant="filesdeep")
        self.as_cli("sh", "-c", "head -c 9000 /dev/zero > locked/big",
                    tenant="filesdeep")
        self.as_cli("chmod", "000", "locked",
                    tenant="filesdeep")
        self.wait_unmeasured(key)
        r = self.put("uploads/c.bin", b"c" * 2000, key=key)
        self.assert_native_error(r, 413, "cannot be measured")
        self.as_cli("chmod", "700", "locked",
                    tenant="filesdeep")
        r = self.put("uploads/c.bin", b"c" * 2000, key=key)
        self.assert_native_error(r, 413, "10000 bytes")
        self.assertTrue(os.path.isdir(ws))


class ToolTurn(unittest.TestCase):
    """A tools-on turn works on an uploaded file and hands its result
    back: its done lists what it created, changed and deleted."""

    @classmethod
    def setUpClass(cls):
        cls.stack = Stack({}, name="filetools")
        cls.stack.start()
        out = cls.stack.admin("key", "create", "--name", "tooler", "--user",
                              "tooler", "--tools", "yes", "--json")
        cls.key = json.loads(out.stdout)["key"]

    @classmethod
    def tearDownClass(cls):
        cls.stack.stop()

    def put(self, path, data):
        return self.stack.request("PUT", "/api/files/" + path, raw=data,
                                  key=self.key, headers={
                                      "Content-Type":
                                      "application/octet-stream"})

    def test_links_a_turn_plants_are_not_followed(self):
        # The CLI itself (its Bash tool) plants links to the host's /etc:
        # seen from ccgate-poold, outside the sandbox, they point there.
        s = self.stack
        before = open("/etc/hostname", "rb").read()
        r = s.request("POST", "/api/chat", {
            "message": "[[mock:bash=ln -s /etc /workspace/uploads/etc && "
                       "ln -s /etc/hostname /workspace/uploads/host]]"},
            key=self.key)
        self.assertEqual(r.status, 200, r)
        ws = s.path("state", "tenants", "tooler", "workspace", "uploads")
        self.assertEqual(os.readlink(os.path.join(ws, "etc")), "/etc")
        self.assertEqual(os.readlink(os.path.join(ws, "host")),
                         "/etc/hostname")
        for path in ("uploads/etc/passwd", "uploads/etc/hostname",
                     "uploads/host"):
            c = s.conn()
            try:
                c.request("GET", "/api/files/" + path,
                          headers={"Authorization": "Bearer " + self.key})
                resp = c.getresponse()
                body = resp.read()
            finally:
                c.close()
            self.assertEqual(resp.status, 403, (path, body))
            self.assertNotIn(b"root:", body)
        for path in ("uploads/host", "uploads/etc/ccgate-planted"):
            r = self.put(path, b"overwritten")
            self.assertEqual(r.status, 403, (path, r))
        self.assertEqual(open("/etc/hostname", "rb").read(), before)
        self.assertFalse(os.path.exists("/etc/ccgate-planted"))

    def test_turn_reads_writes_and_lists_its_files(self):
        s = self.stack
        self.assertEqual(self.put("uploads/in.txt", b"the input 42\n").status,
                         201)
        self.assertEqual(self.put("temp/old.txt", b"old").status, 201)
        n = len(s.mock_records())
        r = s.request("POST", "/api/chat", {
            "message": "please [[mock:read=/workspace/uploads/in.txt]] "
                       "[[mock:write=/workspace/projects/out.txt RESULT-42]] "
                       "[[mock:bash=rm /workspace/temp/old.txt]]"},
            key=self.key)
        self.assertEqual(r.status, 200, r)
        # The model saw the uploaded file's bytes through its Read tool.
        later = json.dumps([rec["body"] for rec in s.mock_records()[n:]])
        self.assertIn("the input 42", later)
        files = {f["path"]: f for f in r.json()["files"]}
        self.assertEqual(sorted(files), ["projects/out.txt", "temp/old.txt"])
        out = files["projects/out.txt"]
        self.assertEqual(out["change"], "created")
        c = self.stack.conn()
        try:
            c.request("GET", "/api/files/projects/out.txt",
                      headers={"Authorization": "Bearer " + self.key})
            resp = c.getresponse()
            body = resp.read()
        finally:
            c.close()
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, b"RESULT-42")
        self.assertEqual(out["size"], len(body))
        self.assertEqual(out["sha256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(files["temp/old.txt"]["change"], "deleted")
        self.assertIsNone(files["temp/old.txt"]["sha256"])
        # A turn that changes nothing lists nothing; the Anthropic shape
        # carries the list as ccgate's extension.
        r = s.request("POST", "/api/chat", {
            "message": "please [[mock:write=/workspace/projects/out.txt "
                       "RESULT-43]]",
            "conversation_id": r.json()["conversation_id"]}, key=self.key)
        self.assertEqual(r.status, 200, r)
        self.assertEqual([(f["path"], f["change"]) for f in
                          r.json()["files"]],
                         [("projects/out.txt", "changed")])
        r = s.request("POST", "/v1/messages", {
            "model": r.json()["model"], "max_tokens": 100,
            "messages": [{"role": "user", "content": "just talk"}]},
            key=self.key)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["ccgate"]["files"], [])
        model = r.json()["model"]
        # Streams carry it on their last chunk / message_delta.
        resp, events = s.stream("/v1/chat/completions", {
            "model": model, "stream": True, "messages": [{
                "role": "user", "content":
                "please [[mock:write=/workspace/projects/oa.txt OA]]"}]},
            key=self.key)
        self.assertEqual(resp.status, 200, resp)
        ext = [e["ccgate"] for e in events if isinstance(e, dict) and
               "ccgate" in e]
        self.assertEqual(len(ext), 1, events)
        self.assertEqual([(f["path"], f["change"], f["sha256"]) for f in
                          ext[0]["files"]],
                         [("projects/oa.txt", "created",
                           hashlib.sha256(b"OA").hexdigest())])
        resp, events = s.stream("/v1/messages", {
            "model": model, "max_tokens": 100, "stream": True, "messages": [{
                "role": "user", "content":
                "please [[mock:write=/workspace/projects/an.txt AN]]"}]},
            key=self.key)
        self.assertEqual(resp.status, 200, resp)
        ext = [e["ccgate"] for e in events if isinstance(e, dict) and
               "ccgate" in e]
        self.assertEqual([e["type"] for e in events if isinstance(e, dict)
                          and "ccgate" in e], ["message_delta"])
        self.assertEqual([f["path"] for f in ext[0]["files"]],
                         ["projects/an.txt"])

    def test_turn_past_the_limit_is_reported(self):
        s = self.stack
        out = s.admin("key", "create", "--name", "toolq", "--user", "toolq",
                      "--tools", "yes", "--json")
        key = json.loads(out.stdout)["key"]
        s.admin("tenant", "set", "toolq", "--workspace-max-bytes", "600")
        big = "X" * 800
        r = s.request("POST", "/api/chat", {
            "message": "please [[mock:write=/workspace/projects/big.txt %s]]"
                       % big}, key=key)
        self.assertEqual(r.status, 200, r)
        ws = r.json()["workspace"]
        self.assertTrue(ws["over_limit"])
        self.assertEqual(ws["max_bytes"], 600)
        self.assertGreater(ws["bytes"], 600)
        self.assertIn("workspace_max_bytes 600", ws["message"])
        rid = r.headers["x-request-id"]
        q = ("SELECT status_code, error FROM usage_logs WHERE "
             "request_id = '%s'" % rid)
        wait_for(lambda: s.sql(q), 60, "the turn's usage row")
        rows = s.sql(q)
        self.assertEqual(rows[0][0], "200")
        self.assertIn("over its limits", rows[0][1])
        # The next upload is refused; the file the turn wrote is there.
        r = s.request("PUT", "/api/files/uploads/more.txt", raw=b"m",
                      key=key, headers={"Content-Type": "text/plain"})
        self.assertEqual(r.status, 413, r)
        self.assertIn("600 bytes", r.json()["error"]["message"])


class Operators(unittest.TestCase):
    """Per-tenant disk use in /admin/pool and /metrics; temp/ retention
    and abandoned uploads swept; a tenant purged (audited)."""

    @classmethod
    def setUpClass(cls):
        cls.stack = Stack({"temp_retention_s": 3600,
                           "temp_sweep_interval_ms": 1000}, name="fileops")
        cls.stack.start()
        cls.stack.create_admin("ops", "pw-ops-0123456789")
        cls.token = cls.stack.admin_token("ops", "pw-ops-0123456789")

    @classmethod
    def tearDownClass(cls):
        cls.stack.stop()

    def put(self, key, path, data):
        r = self.stack.request("PUT", "/api/files/" + path, raw=data, key=key,
                               headers={"Content-Type": "text/plain"})
        self.assertIn(r.status, (200, 201), r)

    def test_disk_use_in_admin_pool_and_metrics(self):
        s = self.stack
        key = s.create_key("opsa", user="opsa")
        self.put(key, "projects/a.bin", b"a" * 5000)
        h = {"Authorization": "Bearer " + self.token}

        def seen():
            ws = s.request("GET", "/admin/pool", headers=h).json()[
                "workspaces"]
            return ws.get("opsa", {}).get("bytes", 0) >= 5000
        wait_for(seen, 60, "the workspace's use in /admin/pool")
        ws = s.request("GET", "/admin/pool", headers=h).json()["workspaces"]
        self.assertGreaterEqual(ws["opsa"]["files"], 2)   # and README.md
        self.assertGreater(ws["opsa"]["disk_bytes"], 0)
        self.assertGreaterEqual(s.metric("ccgate_workspace_bytes",
                                         tenant="opsa"), 5000)
        self.assertGreaterEqual(s.metric("ccgate_workspace_files",
                                         tenant="opsa"), 2)
        # A client key does not get it.
        r = s.request("GET", "/admin/pool", key=key)
        self.assertEqual(r.status, 403)

    def test_temp_retention_and_abandoned_uploads(self):
        s = self.stack
        key = s.create_key("opst", user="opst")
        self.put(key, "temp/old.txt", b"old")
        self.put(key, "temp/d/older.txt", b"older")
        self.put(key, "temp/new.txt", b"new")
        self.put(key, "projects/old-but-kept.txt", b"kept")
        ws = s.path("state", "tenants", "opst", "workspace")
        then = __import__("time").time() - 2 * 3600
        for p in ("temp/old.txt", "temp/d/older.txt", "temp/d",
                  "projects/old-but-kept.txt"):
            os.utime(os.path.join(ws, p), (then, then))
        inc = s.path("state", "tenants", "opst", "incoming")
        stale = os.path.join(inc, "0" * 32)
        with open(stale, "wb") as f:
            f.write(b"half an upload")
        if os.geteuid() == 0:
            os.chown(stale, *cli_user())
        os.utime(stale, (then - 86400, then - 86400))
        wait_for(lambda: not os.path.exists(os.path.join(ws, "temp",
                                                         "old.txt")),
                 60, "the old temp file swept")
        wait_for(lambda: not os.path.exists(stale), 60,
                 "the abandoned upload swept")
        self.assertFalse(os.path.exists(os.path.join(ws, "temp", "d")))
        self.assertTrue(os.path.exists(os.path.join(ws, "temp", "new.txt")))
        self.assertTrue(os.path.exists(os.path.join(
            ws, "projects", "old-but-kept.txt")))

    def test_purge(self):
        s = self.stack
        key = s.create_key("opsp", user="opsp")
        self.put(key, "uploads/x.txt", b"x")
        r = s.request("POST", "/api/chat", {"message": "hello"}, key=key)
        self.assertEqual(r.status, 200, r)
        conv = r.json()["conversation_id"]
        home = s.path("state", "tenants", "opsp")
        self.assertTrue(os.path.isdir(os.path.join(home, "conversations")))
        p = s.admin("tenant", "purge", "opsp", check=False)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual((out["conversations"], out["folder"]), (1, True))
        # Removed at once, or again once its killed CLI is gone (it may
        # write in its HOME until then).
        wait_for(lambda: not os.path.exists(home), 60, "the folder removed")
        # Moved to the trash at once, removed from it in steps by the tick.
        trash = s.path("state", "trash")
        wait_for(lambda: os.listdir(trash) == [], 60, "the trash emptied")
        r = s.request("GET", "/api/conversations/" + conv, key=key)
        self.assertEqual(r.status, 404, r)
        r = s.request("GET", "/api/files/uploads/x.txt", key=key)
        self.assertEqual(r.status, 404, r)
        rows = s.sql("SELECT action, actor FROM audit_log WHERE "
                     "object_id = 'opsp' ORDER BY id")
        self.assertEqual(rows[-1][0], "tenant.purge")
        self.assertTrue(rows[-1][1].startswith("cli:"), rows)
        # The key still works: the tenant starts again, empty.
        r = s.request("GET", "/api/files", key=key)
        self.assertEqual([f["path"] for f in r.json()["files"]],
                         ["README.md"])
        # The admin API does the same.
        r = s.request("DELETE", "/admin/tenants/opsp",
                      headers={"Authorization": "Bearer " + self.token})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["conversations"], 0)
        r = s.request("DELETE", "/admin/tenants/bad!name",
                      headers={"Authorization": "Bearer " + self.token})
        self.assertEqual(r.status, 400, r)


if __name__ == "__main__":
    main()
