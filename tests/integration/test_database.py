#!/usr/bin/env python3
"""The private MariaDB of the quick start and of the tests
(deploy/mariadb-private) as a local unprivileged user meets it: root logs
in by unix_socket only, the socket's directory is closed to others, the
server does not run as root, and files move only through secure_file_priv.
A datadir of the earlier version (root with no password, a server running
as root) is upgraded by `start`, and ccgate runs on it."""

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SRCDIR, Stack, main  # noqa: E402

PRIVATE = os.path.join(SRCDIR, "deploy", "mariadb-private")
DB_USER = "mysql"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
AS_DB_USER = ["setpriv", "--reuid=" + DB_USER, "--regid=" + DB_USER,
              "--clear-groups"]

top = None      # a directory any local user can search, as a checkout's var/
db = None       # the database's directory in it, as the quick start's var/db


def setUpModule():
    global top, db
    top = tempfile.mkdtemp(prefix="ccgate-dbtest-")
    os.chmod(top, 0o755)
    db = os.path.join(top, "db")
    subprocess.run([PRIVATE, "start", db, "db-password"], check=True,
                   capture_output=True)


def tearDownModule():
    subprocess.run([PRIVATE, "destroy", db], check=True)
    shutil.rmtree(top)
    left = [p for p in os.listdir("/proc") if p.isdigit() and
            top.encode() in _read("/proc/%s/cmdline" % p)]
    assert not left, "processes left behind: %r" % left


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def client(args, as_user=None, password=None, socket=None, sql="SELECT 1"):
    """The mariadb client on the database's socket, run as as_user."""
    cmd = (as_user or []) + [
        "mariadb", "--no-defaults", "--protocol=socket",
        "--socket=" + (socket or os.path.join(db, "mysqld.sock")),
        "-N", "-B"] + ([] if password is None else ["-p" + password]) + args
    return subprocess.run(cmd + ["-e", sql], capture_output=True, text=True,
                          timeout=30)


def root_sql(directory, sql):
    """SQL as the OS root through `mariadb-private sql`."""
    return subprocess.run([PRIVATE, "sql", directory, sql],
                          capture_output=True, text=True, timeout=30)


def server_pid(directory):
    for name in ("run/mysqld.pid", "mysqld.pid"):   # now, and before
        if os.path.exists(os.path.join(directory, name)):
            with open(os.path.join(directory, name)) as f:
                return int(f.read())
    raise AssertionError("no pid file in " + directory)


def ids(pid):
    """(real, effective, saved, fs) uids, the same gids, and groups."""
    out = {}
    for line in _read("/proc/%d/status" % pid).decode().splitlines():
        k, _, v = line.partition(":")
        if k in ("Uid", "Gid", "Groups"):
            out[k] = [int(x) for x in v.split()]
    return out


def root_account(directory):
    """root@localhost's authentication, and the other root or anonymous
    accounts (there should be none)."""
    r = root_sql(directory, "SELECT JSON_VALUE(priv, '$.plugin'), "
                 "JSON_VALUE(priv, '$.authentication_string'), "
                 "JSON_EXTRACT(priv, '$.auth_or') FROM mysql.global_priv "
                 "WHERE User = 'root' AND Host = 'localhost'")
    assert r.returncode == 0, r.stderr
    others = root_sql(directory, "SELECT User, Host FROM mysql.global_priv "
                      "WHERE User = '' OR (User = 'root' AND "
                      "Host <> 'localhost')")
    assert others.returncode == 0, others.stderr
    return r.stdout.split("\t"), others.stdout.split()


class LocalUser(unittest.TestCase):
    """Against a database in a directory every local user can search."""

    def test_local_user_cannot_log_in_as_root(self):
        real = os.path.join(db, "run", "mysqld.sock")
        for sock in (os.path.join(db, "mysqld.sock"), real):
            for args in (["-uroot"], ["-uroot", "--password="]):
                r = client(args, NOBODY, socket=sock)
                self.assertNotEqual(r.returncode, 0, (sock, args, r.stdout))
                # Stopped by the socket's directory, before any login.
                self.assertIn("(13)", r.stderr, (sock, args))
        # A user who can reach the socket cannot be root either, with no
        # password or with one: root logs in by unix_socket only.
        for args in (["-uroot"], ["-uroot", "--password=ccgate"]):
            r = client(args, AS_DB_USER, socket=real)
            self.assertNotEqual(r.returncode, 0, (args, r.stdout))
            self.assertIn("Access denied", r.stderr, args)
        # While the OS root still is, and ccgate with its password.
        self.assertEqual(root_sql(db, "SELECT CURRENT_USER()").stdout,
                         "root@localhost\n")
        r = client(["-uccgate"], password="db-password", sql="SELECT 1")
        self.assertEqual((r.returncode, r.stdout), (0, "1\n"), r.stderr)

    def test_socket_directory_is_0750_and_closed_to_others(self):
        sockdir = os.path.dirname(os.path.realpath(
            os.path.join(db, "mysqld.sock")))
        st = os.stat(sockdir)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o750, sockdir)
        self.assertEqual(pwd.getpwuid(st.st_uid).pw_name, DB_USER)
        group = grp.getgrgid(st.st_gid).gr_name
        self.assertIn(group, ("ccgate", DB_USER))
        self.assertNotIn("nobody", grp.getgrgid(st.st_gid).gr_mem)
        self.assertTrue(stat.S_ISSOCK(os.stat(
            os.path.join(sockdir, "mysqld.sock")).st_mode))
        # nobody can neither list it nor reach the socket in it.
        r = subprocess.run(NOBODY + ["test", "-e", os.path.join(
            sockdir, "mysqld.sock")])
        self.assertNotEqual(r.returncode, 0)
        r = subprocess.run(NOBODY + ["ls", sockdir], capture_output=True)
        self.assertNotEqual(r.returncode, 0)

    def test_server_runs_as_the_db_user(self):
        pw = pwd.getpwnam(DB_USER)
        pid = server_pid(db)
        self.assertIn(b"mariadbd", _read("/proc/%d/cmdline" % pid))
        got = ids(pid)
        self.assertEqual(got["Uid"], [pw.pw_uid] * 4, got)
        self.assertNotIn(0, got["Gid"] + got["Groups"], got)
        # Its datadir is its own and nobody else's.
        data = os.path.realpath(os.path.join(db, "data"))
        st = os.stat(data)
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)),
                         (pw.pw_uid, 0o700))
        r = subprocess.run(["find", data, "!", "-user", DB_USER],
                           capture_output=True, text=True)
        self.assertEqual(r.stdout, "")

    def test_files_only_through_secure_file_priv(self):
        target = tempfile.mktemp(prefix="ccgate-outfile-")
        try:
            # ccgate logs in, and has no FILE privilege at all.
            r = client(["-uccgate", "ccgate"], password="db-password",
                       sql="SELECT CURRENT_USER()")
            self.assertEqual(r.stdout, "ccgate@localhost\n", r.stderr)
            r = client(["-uccgate", "ccgate"], password="db-password",
                       sql="SELECT 'x' INTO OUTFILE '%s'" % target)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("denied", r.stderr)
            self.assertEqual(root_sql(db, "CREATE TABLE IF NOT EXISTS "
                                      "scratch (line TEXT)").returncode, 0)
            # root may write nowhere but secure_file_priv, read nothing
            # outside it.
            for sql in ("SELECT 'x' INTO OUTFILE '%s'" % target,
                        "SELECT 'x' INTO DUMPFILE '%s'" % target,
                        "LOAD DATA INFILE '/etc/passwd' INTO TABLE "
                        "scratch"):
                r = root_sql(db, sql)
                self.assertNotEqual(r.returncode, 0, sql)
                self.assertIn("secure-file-priv", r.stderr, sql)
            self.assertFalse(os.path.exists(target))
            self.assertEqual(root_sql(
                db, "SELECT LOAD_FILE('/etc/passwd') IS NULL").stdout, "1\n")
            # secure_file_priv: the db user's private directory.
            files = os.path.realpath(os.path.join(db, "files"))
            st = os.stat(files)
            self.assertEqual((pwd.getpwuid(st.st_uid).pw_name,
                              stat.S_IMODE(st.st_mode)), (DB_USER, 0o700))
            self.assertEqual(root_sql(
                db, "SELECT @@secure_file_priv").stdout, files + "/\n")
            inside = os.path.join(files, "export.txt")
            r = root_sql(db, "SELECT 'x' INTO OUTFILE '%s'" % inside)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(pwd.getpwuid(os.stat(inside).st_uid).pw_name,
                             DB_USER)
        finally:
            if os.path.exists(target):
                os.unlink(target)

    def test_root_authenticates_by_unix_socket_only(self):
        (plugin, auth, auth_or), others = root_account(db)
        self.assertEqual(plugin, "unix_socket")
        self.assertIn(auth, ("", "NULL"))
        self.assertNotIn("mysql_native_password", auth_or)
        self.assertNotIn("ed25519", auth_or)
        self.assertEqual(others, [])
        r = root_sql(db, "SHOW CREATE USER 'root'@'localhost'")
        self.assertEqual(r.stdout.strip(),
                         "CREATE USER `root`@`localhost` IDENTIFIED VIA "
                         "unix_socket")


class Upgrade(unittest.TestCase):
    """A datadir of the earlier mariadb-private, its server still running
    as root, where a quick start under /root leaves it: out of mysql's
    reach."""

    def test_earlier_datadir_is_upgraded_and_ccgate_runs_on_it(self):
        stack = Stack(name="dbupgrade")
        relocate = stack.dir + "-reloc"
        os.mkdir(relocate, 0o711)
        old = stack.path("db")
        os.mkdir(old)
        # What mariadb-private did before: root with an empty password,
        # the server running as root, its socket in the directory itself.
        data = os.path.join(old, "data")
        subprocess.run(["mariadb-install-db", "--no-defaults",
                        "--datadir=" + data, "--user=root",
                        "--auth-root-authentication-method=normal",
                        "--skip-test-db", "--skip-name-resolve"],
                       check=True, capture_output=True)
        oldsock = os.path.join(old, "mysqld.sock")
        server = subprocess.Popen(
            ["mariadbd", "--no-defaults", "--datadir=" + data,
             "--socket=" + oldsock,
             "--pid-file=" + os.path.join(old, "mysqld.pid"),
             "--skip-networking", "--user=root",
             "--log-error=" + os.path.join(old, "mysqld.err"),
             "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M",
             "--character-set-server=utf8mb4",
             "--collation-server=utf8mb4_bin", "--skip-name-resolve"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = os.environ.get("CCGATE_DB_RELOCATE")
        os.environ["CCGATE_DB_RELOCATE"] = relocate
        started = False
        try:
            for _ in range(300):
                r = client(["-uroot"], socket=oldsock, sql=(
                    "CREATE DATABASE IF NOT EXISTS kept; CREATE TABLE IF NOT "
                    "EXISTS kept.t (v INT); INSERT INTO kept.t VALUES (7)"))
                if r.returncode == 0 or server.poll() is not None:
                    break
                time.sleep(0.1)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(ids(server.pid)["Uid"][0], 0)

            stack.start()       # mariadb-private start, as the quick start
            started = True
            server.wait(30)     # the old server was stopped
            # Moved out of the 0700 directory, linked, owned by mysql.
            real = os.path.realpath(old)
            self.assertTrue(os.path.islink(old))
            self.assertEqual(os.path.dirname(real), relocate)
            r = subprocess.run(["find", os.path.join(real, "data"), "!",
                                "-user", DB_USER], capture_output=True,
                               text=True)
            self.assertEqual(r.stdout, "")
            self.assertEqual(ids(server_pid(old))["Uid"][0],
                             pwd.getpwnam(DB_USER).pw_uid)
            (plugin, _, auth_or), others = root_account(old)
            self.assertEqual(plugin, "unix_socket")
            self.assertNotIn("mysql_native_password", auth_or)
            self.assertEqual(others, [])       # root@127.0.0.1, ::1, host
            for args in (["-uroot"], ["-uroot", "--password="]):
                r = client(args, AS_DB_USER,
                           socket=os.path.join(real, "run", "mysqld.sock"))
                self.assertNotEqual(r.returncode, 0, args)
                self.assertIn("Access denied", r.stderr, args)
            self.assertEqual(stat.S_IMODE(os.stat(
                os.path.join(real, "run")).st_mode), 0o750)
            self.assertEqual(root_sql(old, "SELECT v FROM kept.t").stdout,
                             "7\n")
            # ccgate works on it: a chat stores its messages.
            key = stack.create_key("upgraded")
            r = stack.request("POST", "/api/chat", {"message": "hello"},
                              key=key)
            self.assertEqual(r.status, 200, r)
            conv = r.json()["conversation_id"]
            self.assertEqual(stack.sql(
                "SELECT COUNT(*) FROM messages WHERE conversation_id = "
                "'%s'" % conv), [["2"]])
            # start again is a no-op; stop and start bring it back.
            subprocess.run([PRIVATE, "start", old, "it-password"],
                           check=True, capture_output=True)
            subprocess.run([PRIVATE, "stop", old], check=True)
            subprocess.run([PRIVATE, "start", old, "it-password"],
                           check=True, capture_output=True)
            r = stack.request("POST", "/api/chat",
                              {"message": "again", "conversation_id": conv},
                              key=key)
            self.assertEqual(r.status, 200, r)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            if env is None:
                os.environ.pop("CCGATE_DB_RELOCATE", None)
            else:
                os.environ["CCGATE_DB_RELOCATE"] = env
            if started:
                stack.stop()
            else:
                stack.stop(check=False)
                shutil.rmtree(stack.dir, ignore_errors=True)
            shutil.rmtree(relocate, ignore_errors=True)


if __name__ == "__main__":
    main()
