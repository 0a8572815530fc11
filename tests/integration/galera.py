"""A three-node MariaDB Galera cluster on loopback, for the tests.

Each node is a mariadbd with galera-4 (libgalera_smm.so) in a directory of
its own, listening on 127.0.0.1 only (client, group, IST and SST ports all
distinct and free), joined by rsync SST.  Run as root, the servers run as
the unprivileged database user (`mysql`, as deploy/mariadb-private does),
through setpriv, so that it owns the SST files; the directory above the
nodes' is 0711 so that it can reach them.

    g = Galera().start()            # bootstrap node 0, join 1 and 2
    g.sql(1, "SELECT ...")          # rows as lists of strings
    g.kill(2)                       # SIGKILL
    g.restart(2)                    # --wsrep-recover, then IST
    g.stop()
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile

from harness import free_port, wait_for

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
PASSWORD = "it-password"


def available():
    """Why a cluster cannot run here, or None."""
    if not os.path.exists(PROVIDER):
        return "no %s (install galera-4)" % PROVIDER
    for tool in ("mariadbd", "mariadb-install-db", "rsync", "setpriv"):
        if shutil.which(tool) is None and not os.path.exists(
                "/usr/sbin/" + tool):
            return "no %s" % tool
    return None


class Galera:
    def __init__(self, n=3):
        self.n = n
        self.dir = tempfile.mkdtemp(prefix="ccgate-galera-")
        os.chmod(self.dir, 0o711)
        self.root = os.geteuid() == 0
        self.dbuser = "mysql" if self.root else None
        self.ports = [free_port() for _ in range(n)]
        self.gports = [free_port() for _ in range(n)]
        self.iports = [free_port() for _ in range(n)]
        self.sports = [free_port() for _ in range(n)]
        self.procs = [None] * n

    # -- paths and commands --------------------------------------------

    def path(self, i, *parts):
        return os.path.join(self.dir, "n%d" % i, *parts)

    def sock(self, i):
        return self.path(i, "mysqld.sock")

    def _as_db(self, argv):
        if not self.root:
            return argv
        return ["setpriv", "--reuid=" + self.dbuser,
                "--regid=" + self.dbuser, "--clear-groups"] + argv

    def _args(self, i):
        peers = ",".join("127.0.0.1:%d" % p for p in self.gports)
        opts = ("gmcast.listen_addr=tcp://127.0.0.1:%d; "
                "ist.recv_addr=127.0.0.1:%d; gcache.size=64M; "
                "evs.suspect_timeout=PT3S; evs.inactive_timeout=PT6S; "
                "evs.keepalive_period=PT1S; pc.wait_prim_timeout=PT10S"
                % (self.gports[i], self.iports[i]))
        return [
            "mariadbd", "--no-defaults", "--datadir=" + self.path(i, "data"),
            "--tmpdir=" + self.path(i, "tmp"), "--socket=" + self.sock(i),
            "--pid-file=" + self.path(i, "mysqld.pid"),
            "--port=%d" % self.ports[i], "--bind-address=127.0.0.1",
            "--log-error=" + self.path(i, "mysqld.err"),
            "--innodb-buffer-pool-size=32M", "--max-connections=300",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin",
            "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=2",
            "--binlog-format=ROW", "--default-storage-engine=InnoDB",
            "--innodb-autoinc-lock-mode=2", "--wsrep-on=ON",
            "--wsrep-provider=" + PROVIDER, "--wsrep-cluster-name=ccgate-it",
            "--wsrep-cluster-address=gcomm://" + peers,
            "--wsrep-node-address=127.0.0.1:%d" % self.gports[i],
            "--wsrep-node-name=n%d" % i, "--wsrep-sst-method=rsync",
            "--wsrep-sst-receive-address=127.0.0.1:%d" % self.sports[i],
            "--wsrep-provider-options=" + opts, "--wsrep-slave-threads=2",
        ]

    def sql(self, i, query):
        out = subprocess.run(
            ["mariadb", "--no-defaults", "--protocol=socket",
             "--socket=" + self.sock(i), "-uroot", "-N", "-B", "ccgate", "-e",
             query], check=True, capture_output=True, text=True).stdout
        return [line.split("\t") for line in out.splitlines()]

    def status(self, i, name):
        try:
            out = subprocess.run(
                ["mariadb", "--no-defaults", "--protocol=socket",
                 "--socket=" + self.sock(i), "-uroot", "-N", "-B", "-e",
                 "SHOW STATUS LIKE '%s'" % name], capture_output=True,
                text=True, timeout=10).stdout.split()
        except subprocess.TimeoutExpired:
            return None
        return out[1] if len(out) == 2 else None

    def synced(self, i):
        return self.status(i, "wsrep_local_state_comment") == "Synced" and \
            self.status(i, "wsrep_ready") == "ON"

    def cluster_size(self, i):
        return int(self.status(i, "wsrep_cluster_size") or 0)

    # -- start and stop ------------------------------------------------

    def _prepare(self, i):
        for sub in ("", "data", "tmp"):
            os.makedirs(self.path(i, sub), 0o700, exist_ok=True)
            if self.root:
                shutil.chown(self.path(i, sub), self.dbuser, self.dbuser)
        subprocess.run(self._as_db(
            ["mariadb-install-db", "--no-defaults",
             "--datadir=" + self.path(i, "data"),
             "--tmpdir=" + self.path(i, "tmp")] +
            (["--user=" + self.dbuser] if self.root else []) +
            ["--auth-root-authentication-method=socket", "--skip-test-db",
             "--skip-name-resolve"]), check=True, capture_output=True)

    def _spawn(self, i, extra=()):
        log = open(self.path(i, "stdout.log"), "a")
        self.procs[i] = subprocess.Popen(
            self._as_db(self._args(i) + list(extra)), stdout=log,
            stderr=log, cwd=self.path(i))

    def _wait_synced(self, i, what):
        def up():
            if self.procs[i].poll() is not None:
                raise RuntimeError("Galera node %d exited: see %s" %
                                   (i, self.path(i, "mysqld.err")))
            return self.synced(i)
        wait_for(up, 180, what)

    def start(self):
        try:
            for i in range(self.n):
                self._prepare(i)
            self._spawn(0, ["--wsrep-new-cluster"])
            self._wait_synced(0, "Galera node 0 to bootstrap")
            self.sql_root(0, "CREATE DATABASE IF NOT EXISTS ccgate; "
                          "CREATE USER 'ccgate'@'127.0.0.1' IDENTIFIED BY "
                          "'%s'; GRANT ALL ON ccgate.* TO "
                          "'ccgate'@'127.0.0.1';" % PASSWORD)
            for i in range(1, self.n):    # one SST at a time
                self._spawn(i)
                self._wait_synced(i, "Galera node %d to join (SST)" % i)
            wait_for(lambda: self.cluster_size(0) == self.n, 60,
                     "the cluster to have %d nodes" % self.n)
        except BaseException:
            self.dump()
            self.stop()
            raise
        return self

    def sql_root(self, i, query):
        subprocess.run(["mariadb", "--no-defaults", "--protocol=socket",
                        "--socket=" + self.sock(i), "-uroot", "-e", query],
                       check=True, capture_output=True, text=True)

    def hosts(self, *order):
        """A db_hosts value: the nodes' client ports in this order."""
        return ", ".join("127.0.0.1:%d" % self.ports[i] for i in order)

    def kill(self, i, sig=signal.SIGKILL):
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            p.wait(60)
        self.procs[i] = None

    def recover(self, i):
        """mariadbd --wsrep-recover: the node's last committed position."""
        out = subprocess.run(self._as_db(
            self._args(i) + ["--wsrep-recover",
                             "--log-error=" + self.path(i, "recover.err")]),
            capture_output=True, text=True, timeout=300)
        text = open(self.path(i, "recover.err"), errors="replace").read()
        m = re.findall(r"WSREP: Recovered position:\s*(\S+:-?\d+)", text)
        if not m:
            raise RuntimeError("no recovered position (rc %d): %s" %
                               (out.returncode, text[-2000:]))
        return m[-1]

    def restart(self, i):
        """Start a killed node again from its recovered position; it joins
        by IST (its gcache holds what it missed).  Returns the position."""
        pos = self.recover(i)
        err = self.path(i, "mysqld.err")
        self.restart_at = os.path.getsize(err) if os.path.exists(err) else 0
        self._spawn(i, ["--wsrep-start-position=" + pos])
        self._wait_synced(i, "Galera node %d to rejoin" % i)
        return pos

    def joined_by_ist(self, i):
        """Whether node i's last restart joined by IST, without an SST."""
        with open(self.path(i, "mysqld.err"), errors="replace") as f:
            f.seek(self.restart_at)
            text = f.read()
        return "Receiving IST" in text and "rsync SST completed" not in text

    def stop(self):
        for i in reversed(range(self.n)):
            p = self.procs[i]
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.procs[i] = None
        # rsync daemons an SST may leave behind
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = open("/proc/%s/cmdline" % pid, "rb").read()
            except OSError:
                continue
            if self.dir.encode() in cmd:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        if not os.environ.get("CCGATE_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def dump(self):
        for i in range(self.n):
            p = self.path(i, "mysqld.err")
            if os.path.exists(p):
                print("----- galera node %d -----\n%s" %
                      (i, open(p, errors="replace").read()[-3000:]))
