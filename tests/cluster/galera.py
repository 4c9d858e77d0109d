"""A private 3-node MariaDB Galera cluster with HAProxy in front, for the cluster tests.

Test-only. Every node runs the machine's own ``mariadbd`` with Debian's ``galera-4``
provider on free loopback ports (client, group communication, IST, SST) and a data
directory of its own under /tmp, reading only its own option file. The nodes run as
the ``mysql`` user: an rsync SST joiner started as root drops to ``nobody`` and cannot
write the data directory. HAProxy (our own process and config file, never the system
service) sends connections only to nodes that are synced and ready.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import pymysql

__all__ = ["GaleraCluster", "GaleraNode", "HAProxy"]

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
RUN_AS = "mysql"
SYNCED = 4  # wsrep_local_state of a node that serves clients


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not found:
        raise RuntimeError(f"{name} is not installed: the cluster tests need it")
    return found


def _chown(path: Path) -> None:
    user = pwd.getpwnam(RUN_AS)
    os.chown(path, user.pw_uid, user.pw_gid)


def _wait(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {timeout} s")
        gevent.sleep(every)


class GaleraNode:
    """One ``mariadbd`` of the cluster: start (bootstrap, join, rejoin), kill, stop."""

    def __init__(self, base: Path, index: int, cluster_name: str) -> None:
        self.name = f"node{index}"
        self.dir = base / self.name
        self.datadir = self.dir / "data"
        self.port, self.gcomm, self.ist, self.sst = (free_port() for _ in range(4))
        self.log = self.dir / "error.log"
        self.cnf = self.dir / "my.cnf"
        self.cluster_name = cluster_name
        self.process: subprocess.Popen[bytes] | None = None
        self.dir.mkdir()
        self.datadir.mkdir()
        for path in (self.dir, self.datadir):
            _chown(path)

    @property
    def root(self) -> dict[str, object]:
        """Keyword arguments for ``pymysql.connect`` as root, straight to this node."""
        return {"host": "127.0.0.1", "port": self.port, "user": "root", "password": ""}

    def write_config(self, peers: list[int]) -> None:
        addresses = ",".join(f"127.0.0.1:{port}" for port in peers)
        options = ";".join(
            [
                f"gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm}",
                f"ist.recv_addr=127.0.0.1:{self.ist}",
                "gcache.size=32M",
            ]
        )
        self.cnf.write_text(
            f"""[mysqld]
user={RUN_AS}
datadir={self.datadir}
port={self.port}
bind-address=127.0.0.1
socket={self.dir}/mysqld.sock
pid-file={self.dir}/mysqld.pid
log-error={self.log}
tmpdir={self.dir}
skip-name-resolve
performance_schema=OFF
innodb_buffer_pool_size=32M
innodb_log_file_size=8M
innodb_flush_log_at_trx_commit=2
max_connections=200
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider={PROVIDER}
wsrep_cluster_name={self.cluster_name}
wsrep_cluster_address=gcomm://{addresses}
wsrep_node_name={self.name}
wsrep_node_address=127.0.0.1
wsrep_node_incoming_address=127.0.0.1:{self.port}
wsrep_provider_options="{options}"
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:{self.sst}
"""
        )

    def install(self) -> None:
        """System tables for the node that bootstraps; the others get them by SST."""
        subprocess.run(
            [
                _binary("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--user={RUN_AS}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=8M",
            ],
            check=True,
            capture_output=True,
        )

    def start(self, *extra: str) -> None:
        """Start ``mariadbd`` (``--wsrep-new-cluster`` bootstraps); wait for ``synced()``."""
        assert self.process is None, f"{self.name} already running"
        self.process = subprocess.Popen(
            [_binary("mariadbd"), f"--defaults-file={self.cnf}", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(self._up_and_synced, 60.0, f"{self.name} synced", every=0.1)

    def _up_and_synced(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            code, self.process = self.process.returncode, None
            raise RuntimeError(
                f"{self.name} exited with {code}; see {self.log}:\n"
                + self.log.read_text(errors="replace")[-3000:]
            )
        return self.synced()

    def rejoin(self) -> None:
        """Start again after a kill -9: recover the last committed position first, so
        that the node catches up by IST instead of a full SST."""
        # It writes the position to the error log and exits.
        subprocess.run(
            [_binary("mariadbd"), f"--defaults-file={self.cnf}", "--wsrep-recover"],
            capture_output=True,
            check=False,
        )
        positions = re.findall(r"Recovered position: (\S+)", self.log.read_text(errors="replace"))
        self.start(*([f"--wsrep-start-position={positions[-1]}"] if positions else []))

    def status(self) -> dict[str, str]:
        """This node's wsrep status variables, lower-case names; empty when down."""
        try:
            conn = pymysql.connect(**self.root, ssl_disabled=True, connect_timeout=1)
        except pymysql.MySQLError:
            return {}
        try:
            with conn.cursor() as cursor:
                cursor.execute("SHOW GLOBAL STATUS LIKE 'wsrep%'")
                return {name.lower(): str(value) for name, value in cursor.fetchall()}
        finally:
            conn.close()

    def synced(self) -> bool:
        status = self.status()
        return status.get("wsrep_local_state") == str(SYNCED) and status.get("wsrep_ready") == "ON"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """kill -9: no shutdown, the cluster learns of it by its own timeouts."""
        self.stop(hard=True)

    def stop(self, hard: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            process.wait(60.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def connect(self) -> pymysql.connections.Connection:
        """A root connection to this node alone, in autocommit mode."""
        return pymysql.connect(**self.root, ssl_disabled=True, autocommit=True, connect_timeout=2)


class HAProxy:
    """Our own ``haproxy`` in TCP mode, sending connections only to synced nodes.

    The health check is an external command (the MariaDB client) that passes only when
    the node says ``wsrep_local_state=4`` and ``wsrep_ready=ON``: a node that accepts
    logins but is a donor, joining or cut off from the cluster is taken out. Marked
    down after two failed checks a second apart; its sessions are shut at once
    (``on-marked-down shutdown-sessions``) so that clients see a closed socket rather
    than keep using a node that refuses their queries.
    """

    def __init__(self, base: Path, nodes: list[GaleraNode]) -> None:
        self.dir = base / "haproxy"
        self.dir.mkdir()
        self.port = free_port()
        self.admin = self.dir / "admin.sock"
        self.cfg = self.dir / "haproxy.cfg"
        self.check = self.dir / "check_synced.sh"
        self.nodes = nodes
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        mariadb = _binary("mariadb")
        self.check.write_text(
            f"""#!/bin/sh
# HAProxy external check: $3 is the server's address, $4 its port.
state=$({mariadb} --no-defaults -h "$3" -P "$4" -u root --connect-timeout=1 -N -B -e \\
  "SELECT GROUP_CONCAT(VARIABLE_NAME, '=', VARIABLE_VALUE ORDER BY VARIABLE_NAME)
   FROM information_schema.GLOBAL_STATUS
   WHERE VARIABLE_NAME IN ('WSREP_LOCAL_STATE', 'WSREP_READY')" 2>/dev/null) || exit 1
[ "$state" = "WSREP_LOCAL_STATE=4,WSREP_READY=ON" ]
"""
        )
        self.check.chmod(0o755)
        servers = "\n".join(
            f"    server {node.name} 127.0.0.1:{node.port} check" for node in self.nodes
        )
        self.cfg.write_text(
            f"""global
    maxconn 4000
    external-check
    insecure-fork-wanted
    stats socket {self.admin} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    # A connect that fails is tried again, on another node.
    retries 2
    option redispatch

listen galera
    bind 127.0.0.1:{self.port}
    balance leastconn
    option external-check
    external-check path "/usr/bin:/bin"
    external-check command {self.check}
    default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions
{servers}
"""
        )

    def start(self) -> None:
        self.write_config()
        self.process = subprocess.Popen(
            [_binary("haproxy"), "-db", "-f", str(self.cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(self._ready, 30.0, "HAProxy marking the running nodes up", every=0.1)

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.process.returncode}; see {self.cfg}")
        try:
            return self.up() == {node.name for node in self.nodes if node.running}
        except OSError:  # the admin socket is not there yet
            return False

    def servers(self) -> dict[str, str]:
        """Each server's state as HAProxy has it: "UP", "DOWN", "UP 1/2"..."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row["status"]
            for row in rows
            if row.get("svname") not in ("FRONTEND", "BACKEND")
        }

    def command(self, line: str) -> str:
        """One command on HAProxy's admin socket ("disable health galera/node3"...)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.admin))
            sock.sendall(line.encode() + b"\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data.decode()

    def up(self) -> set[str]:
        return {name for name, state in self.servers().items() if state.startswith("UP")}

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class GaleraCluster:
    """Three nodes and HAProxy: ``start()`` bootstraps, ``heal()`` brings back any lost node."""

    def __init__(self, size: int = 3) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="wsgi_db_pool-galera-"))
        _chown(self.base)
        name = self.base.name.replace("-", "_")
        self.nodes = [GaleraNode(self.base, i + 1, name) for i in range(size)]
        for node in self.nodes:
            node.write_config([peer.gcomm for peer in self.nodes])
        self.haproxy = HAProxy(self.base, self.nodes)

    def start(self) -> None:
        first, *others = self.nodes
        first.install()
        first.start("--wsrep-new-cluster")
        for node in others:
            # One joiner at a time: each takes a full SST from a donor.
            node.start()
        self.haproxy.start()

    def live(self) -> list[GaleraNode]:
        return [node for node in self.nodes if node.running]

    def heal(self) -> None:
        """Every node running, synced, in one primary component, and up in HAProxy."""
        for node in self.nodes:
            # Whatever a test told HAProxy about the node (drain, checks off), undone.
            self.haproxy.command(f"enable health galera/{node.name}")
            self.haproxy.command(f"set server galera/{node.name} state ready")
            if not node.running:
                node.rejoin()
            elif not node.synced():
                with contextlib.suppress(pymysql.MySQLError):
                    conn = node.connect()
                    with conn.cursor() as cursor:
                        cursor.execute("SET GLOBAL wsrep_provider_options='gmcast.isolate=0'")
                    conn.close()
        _wait(
            lambda: all(node.synced() for node in self.nodes),
            30.0,
            "every node synced",
            every=0.1,
        )
        _wait(
            lambda: self.haproxy.up() == {node.name for node in self.nodes},
            15.0,
            "HAProxy marking every node up",
            every=0.1,
        )

    def destroy(self) -> None:
        self.haproxy.stop()
        for node in self.nodes:
            node.stop(hard=True)
        shutil.rmtree(self.base, ignore_errors=True)
