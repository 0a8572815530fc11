"""Integration harness: a private ccgate stack on loopback.

Stack() starts, in a temporary directory and on random ports: a private
MariaDB (unix socket only), the mock Anthropic upstream (which accepts one
credential, UPSTREAM_CREDENTIAL), ccgate-poold (with the real, pinned
`claude` CLI, each in its bubblewrap sandbox as the unprivileged CLI_USER,
reaching the mock only through the egress), ccgate-fcgi and nginx (TLS,
and the egress, from the templates the quick start uses).  stop() tears it
all down and fails if any process it started, or any CLI, is left behind.

Paths come from the environment that `make check` sets:
  CCGATE_SRCDIR, CCGATE_BUILDDIR  source and build trees
  CCGATE_CLAUDE                   the claude executable (deploy/install-claude)
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import unittest

SRCDIR = os.path.abspath(os.environ.get("CCGATE_SRCDIR", "."))
BUILDDIR = os.path.abspath(os.environ.get("CCGATE_BUILDDIR", "."))
CLAUDE = os.environ.get("CCGATE_CLAUDE", "")
DEFAULT_MODEL = "claude-sonnet-4-5"
# The user every CLI runs as (created if missing: the tests run as root).
CLI_USER = "ccgate-cli"
# The upstream credential: only the egress holds it, and the mock accepts
# nothing else.
UPSTREAM_CREDENTIAL = "sk-ant-ccgate-test-" + os.urandom(12).hex()
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def cli_user():
    """The CLI user's (uid, gid), created as a system user if missing."""
    import pwd
    try:
        pw = pwd.getpwnam(CLI_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", CLI_USER], check=True,
                       capture_output=True)
        pw = pwd.getpwnam(CLI_USER)
    return pw.pw_uid, pw.pw_gid


def pinned_clients():
    """The folder of the pinned client libraries and tools the tests drive
    (deploy/install-test-clients installs them once)."""
    return subprocess.run([os.path.join(SRCDIR, "deploy",
                                        "install-test-clients")],
                          check=True, capture_output=True,
                          text=True).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=60.0, what="condition"):
    """Poll pred until it holds.  timeout only ends a test that would
    otherwise hang: make it generous (a loaded machine is slow), and never
    use it to assert how fast something happened."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def recv_all(s):
    """Read a socket to its end, close it, return the bytes."""
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def within_one_window(seconds_needed, period=60):
    """Quotas count in UTC windows (the minute, or the day: period=86400).
    Wait, if need be, for the next window to begin, so that what follows
    (which takes at most seconds_needed) meets a single one."""
    left = period - time.time() % period
    if left < seconds_needed:
        time.sleep(left + 0.5)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<%d %s>" % (self.status, self.body[:300])


class Stack:
    """One private ccgate stack.  Options change poold and app settings."""

    # nginx limits high enough that no test but the edge's meets them.
    NGINX_DEFAULTS = {"RATE_PER_IP": "100000r/s", "BURST_PER_IP": "100000",
                      "RATE_PER_KEY": "100000r/s", "BURST_PER_KEY": "100000",
                      "CONN_PER_IP": "65535"}

    def __init__(self, poold_opts=None, app_opts=None, name="it",
                 nginx_opts=None, edge_files=None, share_with=None):
        # share_with: another, started Stack whose MariaDB, mock upstream,
        # key secret and admin secret this one uses (a second node of one
        # deployment).
        self.share_with = share_with
        self.poold_opts = {
            "min_instances": 2, "max_instances": 6, "idle_timeout_ms": 60000,
            "queue_max_wait_ms": 20000, "job_timeout_ms": 60000,
            "first_event_timeout_ms": 30000, "stall_timeout_ms": 30000,
            "health_check_interval_ms": 1000, "shutdown_grace_ms": 5000,
            # The warm set stays min_instances: the adaptive target is
            # turned on by the tests of it (test_pool.WarmTarget).
            "max_warm": 0,
            # CLIs start at cli_nice: at spawn_nice a shared test host's
            # other load starves them (check_pool tests spawn_nice).
            "spawn_nice": 0,
        }
        self.poold_opts.update(poold_opts or {})
        self.app_opts = {"threads": 32, "job_timeout_ms": 60000}
        self.app_opts.update(app_opts or {})
        self.nginx_opts = dict(self.NGINX_DEFAULTS, **(nginx_opts or {}))
        self.edge_files = edge_files or {}
        self.dir = tempfile.mkdtemp(prefix="ccgate-%s-" % name)
        self.procs = {}
        self.keys = {}
        self.port = None
        self.fcgi_socket = None     # held as systemd's ccgate-fcgi.socket

    # -- start and stop -------------------------------------------------

    def db_dir(self):
        return (self.share_with or self).path("db")

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def bin(self, name):
        return os.path.join(BUILDDIR, name)

    def start(self):
        if not CLAUDE or not os.access(CLAUDE, os.X_OK):
            raise RuntimeError("CCGATE_CLAUDE is not an executable claude CLI "
                               "(run deploy/install-claude)")
        try:
            if self.share_with is None:
                self._start_db()
                self._start_mock()
            else:
                self.mock_port = self.share_with.mock_port
            self._write_configs()
            self.start_poold()
            self._migrate()
            self.start_fcgi()
            self.start_ws()
            self._start_nginx()
        except BaseException:
            self.dump_logs()
            self.stop(check=False)
            raise
        return self

    def _run(self, args, **kw):
        return subprocess.run(args, check=True, capture_output=True,
                              text=True, **kw)

    def _start_db(self):
        # MariaDB runs as the unprivileged `mysql`, which cannot search
        # self.dir (mkdtemp's 0700), so its directory is a sibling, linked
        # as db/ and named after self.dir (leftovers() sees its server).
        # A db/ a test made itself is out of mysql's reach: mariadb-private
        # moves it to $CCGATE_DB_RELOCATE and links it.
        if not os.path.lexists(self.path("db")):
            os.mkdir(self.dir + "-db", 0o700)
            os.symlink(self.dir + "-db", self.path("db"))
        self._run([os.path.join(SRCDIR, "deploy", "mariadb-private"), "start",
                   self.path("db"), "it-password"])
        with open(self.path("db.password"), "w") as f:
            f.write("it-password\n")

    def _start_mock(self):
        log = open(self.path("mock.log"), "w")
        self.procs["mock"] = subprocess.Popen(
            [sys.executable, os.path.join(SRCDIR, "tests", "mock-upstream",
                                          "mock_upstream.py"),
             "--port-file", self.path("mock.port"),
             "--credential", UPSTREAM_CREDENTIAL],
            stdout=log, stderr=log)
        wait_for(lambda: os.path.exists(self.path("mock.port")), 60, "mock")
        self.mock_port = int(open(self.path("mock.port")).read())

    def write_poold_conf(self):
        conf = {
            "socket": self.path("run", "poold.sock"),
            "state_dir": self.path("state"),
            "cli_path": CLAUDE,
            "default_model": DEFAULT_MODEL,
            "egress_socket": self.path("run", "egress", "egress.sock"),
        }
        if os.geteuid() == 0:
            cli_user()
            conf["run_as_user"] = CLI_USER
        conf.update(self.poold_opts)
        lines = ["%s = %s" % kv for kv in conf.items() if kv[1] is not None]
        fd = os.open(self.path("poold.conf"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")

    def reconfigure(self, **opts):
        """Change poold.conf and reload it with SIGHUP; wait until applied."""
        self.poold_opts.update(opts)
        self.write_poold_conf()
        reloads = self._log_count("poold.log", "configuration reloaded")
        self.procs["poold"].send_signal(signal.SIGHUP)

        def applied():
            limits = self.stats()["limits"]
            return self._log_count("poold.log", "configuration reloaded") \
                > reloads and all(limits.get(k, v) == v
                                  for k, v in opts.items())
        wait_for(applied, 60, "poold to reload")

    def _write_configs(self):
        os.makedirs(self.path("run"), exist_ok=True)
        self.write_poold_conf()
        lines = [
            "listen = %s" % self.path("run", "fcgi.sock"),
            "ws_listen = %s" % self.path("run", "ws.sock"),
            "db_socket = %s" % os.path.join(self.db_dir(), "mysqld.sock"),
            "db_user = ccgate",
            "db_password_file = %s" % os.path.join(
                (self.share_with or self).dir, "db.password"),
            "db_name = ccgate",
            "key_secret_file = %s" % self.path("key.secret"),
            "admin_secret_file = %s" % self.path("admin.secret"),
            "poold_socket = %s" % self.path("run", "poold.sock"),
            "default_model = %s" % DEFAULT_MODEL,
            "models = %s, claude-haiku-4-5" % DEFAULT_MODEL,
            "sql_dir = %s" % os.path.join(SRCDIR, "sql"),
            "node = %s" % self.dir.rsplit("-", 1)[-1],
            "spool_dir = %s" % self.path("spool"),
        ]
        if "db_hosts" in self.app_opts:     # TCP hosts, not the socket
            lines = [ln for ln in lines if not ln.startswith("db_socket")]
        lines += ["%s = %s" % kv for kv in self.app_opts.items()]
        with open(self.path("ccgate.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")
        for secret in ("key.secret", "admin.secret"):
            if self.share_with is None:
                self._run([self.bin("ccgate-admin"), "secret",
                           self.path(secret)])
            else:
                shutil.copy(self.share_with.path(secret), self.path(secret))

    def start_poold(self, env=None):
        log = open(self.path("poold.log"), "a")
        self.procs["poold"] = subprocess.Popen(
            [self.bin("ccgate-poold"), "-v", "-f", self.path("poold.conf")],
            stdout=log, stderr=log, env=dict(os.environ, **(env or {})))
        wait_for(lambda: self._poold_answers(), 60, "ccgate-poold")

    def _poold_answers(self):
        if self.procs["poold"].poll() is not None:
            raise RuntimeError("ccgate-poold exited: see %s" %
                               self.path("poold.log"))
        try:
            return self.poold({"type": "ping"})[0]["type"] == "ok"
        except OSError:
            return False

    def _migrate(self):
        out = self._run([self.bin("ccgate-admin"), "-f",
                         self.path("ccgate.conf"), "migrate"])
        self.migrate_output = out.stdout

    def start_fcgi(self, activated=False):
        """Start ccgate-fcgi.  activated: as systemd's ccgate-fcgi.socket
        does, this process holds the listening socket and passes it
        (LISTEN_FDS, fd 3), so that it outlives the service's restarts."""
        log = open(self.path("fcgi.log"), "a")
        argv = [self.bin("ccgate-fcgi"), "-v", "-f", self.path("ccgate.conf")]
        if not activated:
            self.procs["fcgi"] = subprocess.Popen(argv, stdout=log,
                                                  stderr=log)
            wait_for(lambda: os.path.exists(self.path("run", "fcgi.sock")),
                     60, "ccgate-fcgi")
            return
        if self.fcgi_socket is None:
            self.fcgi_socket = socket.socket(socket.AF_UNIX)
            self.fcgi_socket.bind(self.path("run", "fcgi.sock"))
            self.fcgi_socket.listen(1024)
        fd = self.fcgi_socket.fileno()
        ready = self._log_count("fcgi.log", "the socket systemd passed")
        self.procs["fcgi"] = subprocess.Popen(
            ["sh", "-c", 'export LISTEN_PID=$$; exec "$@"', "sh"] + argv,
            stdout=log, stderr=log, pass_fds=(fd, 3),
            env=dict(os.environ, LISTEN_FDS="1"),
            preexec_fn=lambda: os.dup2(fd, 3))
        wait_for(lambda: self._log_count("fcgi.log",
                                         "the socket systemd passed") > ready,
                 60, "ccgate-fcgi on the passed socket")

    def _log_count(self, name, text):
        try:
            with open(self.path(name), errors="replace") as f:
                return f.read().count(text)
        except FileNotFoundError:
            return 0

    def start_ws(self):
        log = open(self.path("ws.log"), "a")
        self.procs["ws"] = subprocess.Popen(
            [self.bin("ccgate-ws"), "-v", "-f", self.path("ccgate.conf")],
            stdout=log, stderr=log)
        wait_for(lambda: os.path.exists(self.path("run", "ws.sock")), 60,
                 "ccgate-ws")

    def _start_nginx(self):
        self.port = free_port()
        os.makedirs(self.path("nginx-tmp"), exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048",
                        "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", self.path("tls.key"),
                        "-out", self.path("tls.crt")],
                       check=True, capture_output=True)
        render = os.path.join(SRCDIR, "deploy", "render")
        os.makedirs(self.path("log"), exist_ok=True)
        edge = self.path("edge")
        shutil.copytree(os.path.join(SRCDIR, "nginx", "edge"), edge)
        for fname, text in self.edge_files.items():
            with open(os.path.join(edge, fname), "w") as f:
                f.write(text)
        self._run([render, os.path.join(SRCDIR, "nginx", "ccgate-site.conf.in"),
                   self.path("site.conf"),
                   "LISTEN=127.0.0.1:%d" % self.port,
                   "TLS_CERT=" + self.path("tls.crt"),
                   "TLS_KEY=" + self.path("tls.key"),
                   "MAX_BODY=%s" % self.app_opts.get("nginx_max_body", "2m"),
                   "FILES_MAX_BODY=%s" % self.app_opts.get(
                       "nginx_files_max_body", "2g"),
                   "ERRORS_DIR=" + os.path.join(SRCDIR, "nginx", "errors"),
                   "FCGI_SOCKET=" + self.path("run", "fcgi.sock"),
                   "WS_SOCKET=" + self.path("run", "ws.sock"),
                   "ADMIN_UI_DIR=" + os.path.join(SRCDIR, "admin-ui"),
                   "ADMIN_UI_CONF=" + os.path.join(
                       SRCDIR, "nginx", "admin-ui.conf"),
                   "EDGE_DIR=" + edge, "READ_TIMEOUT=660s",
                   "ACCESS_LOG=" + self.path("log", "access.log")] +
                  ["%s=%s" % kv for kv in self.nginx_opts.items()])
        self._write_egress(render)
        user = "user root root;" if os.geteuid() == 0 else ""
        self._run([render, os.path.join(SRCDIR, "nginx",
                                        "nginx-standalone.conf.in"),
                   self.path("nginx.conf"), "USER_LINE=" + user,
                   "VAR_DIR=" + self.path("nginx-tmp"),
                   "DAEMON_LINE=daemon off;",
                   "SITE_CONF=" + self.path("site.conf"),
                   "EGRESS_CONF=" + self.path("egress.conf")])
        log = open(self.path("nginx.log"), "w")
        self.procs["nginx"] = subprocess.Popen(
            ["nginx", "-p", self.path("nginx-tmp"), "-c",
             self.path("nginx.conf")], stdout=log, stderr=log)

        def up():
            if self.procs["nginx"].poll() is not None:
                raise RuntimeError("nginx exited: " +
                                   open(self.path("nginx.log")).read())
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False
        wait_for(up, 60, "nginx")

    def _write_egress(self, render):
        """The egress server, with the credential in a file of its own
        (root's, 0600) as the quick start writes it: an API key, or an
        OAuth token with egress_auth = oauth.  None for a pool configured
        without one (egress_socket = None)."""
        if "egress_socket" in self.poold_opts and \
                self.poold_opts["egress_socket"] is None:
            open(self.path("egress.conf"), "w").close()
            return
        fd = os.open(self.path("egress-credential.conf"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            if self.poold_opts.get("egress_auth") == "oauth":
                f.write('proxy_set_header authorization "Bearer %s";\n'
                        'proxy_set_header x-api-key "";\n'
                        % UPSTREAM_CREDENTIAL)
            else:
                f.write('proxy_set_header x-api-key "%s";\n'
                        'proxy_set_header authorization "";\n'
                        % UPSTREAM_CREDENTIAL)
        self._run([render, os.path.join(SRCDIR, "nginx",
                                         "ccgate-egress.conf.in"),
                   self.path("egress.conf"),
                   "EGRESS_SOCKET=" + self.path("run", "egress",
                                                "egress.sock"),
                   "EGRESS_TOKENS=" + self.path("state", "egress", "tokens"),
                   "EGRESS_LOG=" + self.path("log", "egress.log"),
                   "EGRESS_CREDENTIAL=" + self.path("egress-credential.conf"),
                   "UPSTREAM_SERVER=127.0.0.1:%d" % self.mock_port,
                   "UPSTREAM_SCHEME=http", "UPSTREAM_HOST=127.0.0.1"])

    def connect_as_nobody(self, sock):
        """What another local user (nobody) gets connecting to the unix
        socket sock: "connected" or the errno.  The stack's folder and
        run/ are opened to all meanwhile, so that only sock's own mode
        and folder decide."""
        dirs = [self.dir, self.path("run")]
        modes = [os.stat(d).st_mode & 0o7777 for d in dirs]
        probe = ("import socket\ns = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    s.connect(%r)\n    print('connected')\n"
                 "except OSError as e:\n    print(e.errno)\n" % sock)
        try:
            for d in dirs:
                os.chmod(d, 0o711)
            out = subprocess.run(["setpriv", "--reuid=nobody",
                                  "--regid=nogroup", "--clear-groups",
                                  "/usr/bin/python3", "-c", probe],
                                 capture_output=True, text=True, check=True)
        finally:
            for d, m in zip(dirs, modes):
                os.chmod(d, m)
        return out.stdout.strip()

    def egress_log(self):
        """The egress's log lines (one JSON object each)."""
        try:
            with open(self.path("log", "egress.log")) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def stop_proc(self, name, sig=signal.SIGTERM, timeout=20):
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError("%s did not stop on %s" % (name, sig))

    def stop(self, check=True):
        for name in ("nginx", "ws", "fcgi", "poold", "mock"):
            try:
                self.stop_proc(name)
            except AssertionError:
                if check:
                    raise
        if self.fcgi_socket is not None:
            self.fcgi_socket.close()
            os.unlink(self.path("run", "fcgi.sock"))
        db_real = os.path.realpath(self.path("db"))
        if self.share_with is None:
            subprocess.run([os.path.join(SRCDIR, "deploy",
                                         "mariadb-private"),
                            "stop", self.path("db")], capture_output=True)
        reports = self.sanitizer_reports()
        if reports and check:
            raise AssertionError("sanitizer reports:\n" + "\n".join(reports))
        left = self.leftovers()
        if left and check:
            for pid, _ in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            raise AssertionError("processes left behind: %r" % left)
        if check and not os.environ.get("CCGATE_KEEP"):
            if self.share_with is None and os.path.isdir(db_real):
                shutil.rmtree(db_real, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)

    def sanitizer_reports(self):
        """ASan, LSan and UBSan reports in our daemons' logs."""
        found = []
        for name in ("poold.log", "fcgi.log", "ws.log"):
            p = self.path(name)
            if not os.path.exists(p):
                continue
            text = open(p, errors="replace").read()
            for m in re.finditer(r"(ERROR: (Address|Leak)Sanitizer.*|"
                                 r".*runtime error:.*)", text):
                start = max(0, m.start() - 200)
                found.append("%s: %s" % (name, text[start:m.end() + 1500]))
        return found

    def leftovers(self):
        """Processes whose cwd or command line lies in the stack's dir."""
        left = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                cwd = os.readlink("/proc/%s/cwd" % pid)
                cmd = open("/proc/%s/cmdline" % pid, "rb").read()
                state = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if cwd.startswith(self.dir) or self.dir.encode() in cmd:
                left.append((int(pid), cmd.replace(b"\0", b" ")[:120].decode(
                    errors="replace") + " [%s]" % state))
        return left

    def dump_logs(self):
        for name in ("poold.log", "fcgi.log", "ws.log", "nginx.log", "mock.log",
                     "nginx-tmp/nginx-error.log"):
            p = self.path(name)
            if os.path.exists(p):
                data = open(p, errors="replace").read()[-4000:]
                sys.stderr.write("----- %s -----\n%s\n" % (name, data))

    # -- clients --------------------------------------------------------

    def create_key(self, name, user=None):
        args = [self.bin("ccgate-admin"), "-f", self.path("ccgate.conf"),
                "key", "create", "--name", name, "--json"]
        if user:
            args += ["--user", user]
        out = json.loads(self._run(args).stdout)
        self.keys[name] = out["key"]
        return out["key"]

    def admin(self, *args, stdin=None, check=True):
        """Run ccgate-admin with this stack's configuration."""
        return subprocess.run([self.bin("ccgate-admin"), "-f",
                               self.path("ccgate.conf")] + list(args),
                              input=stdin, capture_output=True, text=True,
                              check=check)

    def create_admin(self, name, password):
        self.admin("user", "create", name, stdin=password + "\n")

    def admin_token(self, name, password):
        r = self.request("POST", "/admin/login",
                         {"username": name, "password": password})
        assert r.status == 200, r
        return r.json()["token"]

    def conn(self, timeout=60, source=None):
        """An HTTPS connection to nginx, from a loopback source address
        of its own when source is given (allowlist tests)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=timeout, context=ctx,
            source_address=(source, 0) if source else None)

    def request(self, method, path, body=None, key=None, headers=None,
                raw=None, timeout=60, source=None):
        h = {"Content-Type": "application/json"}
        if key:
            h["Authorization"] = "Bearer " + key
        h.update(headers or {})
        data = raw if raw is not None else (
            None if body is None else json.dumps(body).encode())
        c = self.conn(timeout, source)
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            return Response(r.status, r.getheaders(), r.read().decode())
        finally:
            c.close()

    def stream(self, path, body, key=None, headers=None, timeout=60):
        """POST and read an SSE response: (Response without body, events)."""
        h = {"Content-Type": "application/json"}
        if key:
            h["Authorization"] = "Bearer " + key
        h.update(headers or {})
        c = self.conn(timeout)
        try:
            c.request("POST", path, body=json.dumps(body).encode(), headers=h)
            r = c.getresponse()
            resp = Response(r.status, r.getheaders(), "")
            if r.status != 200:
                resp.body = r.read().decode()
                return resp, []
            events = []
            for line in r:
                line = line.decode().rstrip("\n")
                if line.startswith("data: "):
                    data = line[6:]
                    events.append(data if data == "[DONE]" else json.loads(data))
            return resp, events
        finally:
            c.close()

    def poold(self, msg, sock=None):
        """Send one frame to ccgate-poold and read frames until the end."""
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(60)
        s.connect(sock or self.path("run", "poold.sock"))
        try:
            b = json.dumps(dict({"v": 1}, **msg)).encode()
            s.sendall(struct.pack(">I", len(b)) + b)
            out = []
            while True:
                h = self._recvn(s, 4)
                if h is None:
                    return out
                m = json.loads(self._recvn(s, struct.unpack(">I", h)[0]))
                out.append(m)
                if m["type"] != "event":
                    return out
        finally:
            s.close()

    @staticmethod
    def _recvn(s, n):
        b = b""
        while len(b) < n:
            c = s.recv(n - len(b))
            if not c:
                return None
            b += c
        return b

    def stats(self):
        return self.poold({"type": "stats"})[0]

    def metric(self, name, **labels):
        """One sample of ccgate-fcgi's /metrics (0 when absent)."""
        return metric(self.request("GET", "/metrics").body, name, **labels)

    def sql(self, query):
        out = self._run([os.path.join(SRCDIR, "deploy", "mariadb-private"),
                         "sql", self.db_dir(), query]).stdout
        return [line.split("\t") for line in out.splitlines()]

    def mock_records(self):
        c = http.client.HTTPConnection("127.0.0.1", self.mock_port, timeout=10)
        try:
            c.request("GET", "/_records")
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def mock_control(self, **state):
        c = http.client.HTTPConnection("127.0.0.1", self.mock_port, timeout=10)
        try:
            c.request("POST", "/_control", body=json.dumps(state))
            return json.loads(c.getresponse().read())
        finally:
            c.close()


def metric(text, name, **labels):
    """One sample's value in a Prometheus scrape (0 when absent)."""
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    pat = "^" + re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels
                              else "") + r" (\S+)$"
    m = re.search(pat, text, re.M)
    return float(m.group(1)) if m else 0.0


def texts_of(record):
    """The (role, text) turns the upstream received, CLI reminders dropped."""
    out = []
    for m in record["body"]["messages"]:
        c = m["content"]
        if isinstance(c, str):
            out.append((m["role"], c))
            continue
        parts = [b.get("text", "") for b in c if b.get("type") == "text"
                 and not b.get("text", "").startswith("<system-reminder>")]
        out.append((m["role"], "\n".join(parts)))
    return out


def main():
    """Run the calling module's tests; print a closing count line."""
    import __main__
    loader = unittest.defaultTestLoader
    if len(sys.argv) > 1:    # names of classes or Class.test, for debugging
        suite = loader.loadTestsFromNames(sys.argv[1:], __main__)
    else:
        suite = loader.loadTestsFromModule(__main__)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors)
    skipped = len(result.skipped)
    passed = max(0, result.testsRun - failed - skipped)
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    sys.exit(0 if failed == 0 and skipped == 0 and result.testsRun > 0 else 1)
