"""A private MariaDB server for faults that must not touch the shared one: restarts, global limits.

Test-only. It runs the machine's own ``mariadbd`` on a free loopback port with a data
directory of its own, ignoring every option file (``--no-defaults``: the system
``my.cnf`` would make it run as the ``mysql`` user, who cannot write a root-owned
temporary directory). ``root`` logs in over TCP with an empty password.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import gevent
import pymysql

__all__ = ["PrivateMariaDB"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        if found:
            return found
    raise RuntimeError(
        f"none of {names} is installed: the private-server fault tests need MariaDB's "
        f"server binaries (Debian: apt-get install mariadb-server)"
    )


class PrivateMariaDB:
    """One ``mariadbd`` process this test run owns: start, stop (graceful or hard), restart."""

    def __init__(self) -> None:
        self.mariadbd = _binary("mariadbd", "mysqld")
        self.install_db = _binary("mariadb-install-db", "mysql_install_db")
        self.base = Path(tempfile.mkdtemp(prefix="wsgi_db_pool-mariadb-"))
        self.datadir = self.base / "data"
        self.port = _free_port()
        self.log = self.base / "error.log"
        self.process: subprocess.Popen[bytes] | None = None
        # More server options (a replica's server-id, log-bin...), after the defaults.
        self.options: list[str] = []

    @property
    def root(self) -> dict[str, object]:
        """Keyword arguments for ``pymysql.connect`` as root."""
        return {"host": "127.0.0.1", "port": self.port, "user": "root", "password": ""}

    def install(self) -> None:
        """Create the data directory (system tables, root without a password)."""
        subprocess.run(
            [
                self.install_db,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=8M",
            ],
            check=True,
            capture_output=True,
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and return once it accepts root's login."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                self.mariadbd,
                "--no-defaults",
                "--user=root",
                f"--datadir={self.datadir}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.base / 'mysqld.sock'}",
                f"--pid-file={self.base / 'mysqld.pid'}",
                f"--log-error={self.log}",
                f"--tmpdir={self.base}",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=8M",
                "--max-connections=100",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mariadbd exited with {self.process.returncode}; see {self.log}:\n"
                    + self.log.read_text(errors="replace")[-2000:]
                )
            try:
                pymysql.connect(**self.root, ssl_disabled=True, connect_timeout=1).close()
                return
            except pymysql.MySQLError:
                if time.monotonic() > deadline:
                    raise
                # Finely: tests time their recovery from the moment this returns.
                gevent.sleep(0.01)

    def stop(self, hard: bool = False, timeout: float = 30.0) -> None:
        """Shut down: SIGTERM (clients get a shutdown error), or SIGKILL with ``hard``."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def connect(self) -> pymysql.connections.Connection:
        """A root connection in autocommit mode."""
        return pymysql.connect(**self.root, ssl_disabled=True, autocommit=True, connect_timeout=5)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
