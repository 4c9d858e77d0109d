"""A private GTID primary/replica pair of plain ``mariadbd`` (no Galera), for the cluster tests.

Test-only. Two ``PrivateMariaDB`` servers on free loopback ports: the primary writes a
binary log, the replica follows it by GTID (``MASTER_USE_GTID=slave_pos``) and is
``read_only``, so that an application account (without SUPER or READ ONLY ADMIN) gets
1290 when it writes there; root could write and break replication.
"""

from __future__ import annotations

import contextlib
import time

import gevent
import pymysql

from tests.faults.mariadb import PrivateMariaDB

__all__ = ["ReplicaPair"]

_REPLICATOR = "repl"


class ReplicaPair:
    """A primary and its replica: ``start()``, ``status()`` of the replica, ``destroy()``."""

    def __init__(self) -> None:
        self.primary = PrivateMariaDB()
        self.primary.options = ["--server-id=1", "--log-bin=primary-bin", "--binlog-format=ROW"]
        self.replica = PrivateMariaDB()
        self.replica.options = ["--server-id=2", "--read-only=ON", "--relay-log=replica-relay"]

    def start(self) -> None:
        for server in (self.primary, self.replica):
            server.install()
            server.start()
        conn = self.primary.connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    "CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", (_REPLICATOR, _REPLICATOR)
                )
                cursor.execute(f"GRANT REPLICATION SLAVE ON *.* TO {_REPLICATOR}@'127.0.0.1'")
        finally:
            conn.close()
        conn = self.replica.connect()
        try:
            with conn.cursor() as cursor:
                # Both start from an empty binary log: follow it from its beginning.
                cursor.execute("SET GLOBAL gtid_slave_pos = ''")
                cursor.execute(
                    "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, "
                    "MASTER_USER=%s, MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos",
                    (self.primary.port, _REPLICATOR, _REPLICATOR),
                )
                cursor.execute("START SLAVE")
        finally:
            conn.close()
        self.wait_caught_up()

    def status(self) -> dict[str, object]:
        """The replica's SHOW SLAVE STATUS, one row as a dict; empty when not replicating."""
        conn = self.replica.connect()
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cursor:
                cursor.execute("SHOW SLAVE STATUS")
                return dict(cursor.fetchone() or {})
        finally:
            conn.close()

    def gtid(self, which: PrivateMariaDB, variable: str) -> str:
        conn = which.connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"SELECT @@GLOBAL.{variable}")
                return str(cursor.fetchone()[0])
        finally:
            conn.close()

    def wait_caught_up(self, timeout: float = 10.0) -> None:
        """Until the replica applied everything the primary wrote (by GTID)."""
        target = self.gtid(self.primary, "gtid_binlog_pos")
        deadline = time.monotonic() + timeout
        while self.gtid(self.replica, "gtid_slave_pos") != target:
            status = self.status()
            if status.get("Last_Error") or status.get("Last_IO_Error"):
                raise RuntimeError(f"replication stopped: {status}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica did not reach {target} in {timeout} s")
            gevent.sleep(0.01)

    def destroy(self) -> None:
        for server in (self.replica, self.primary):
            with contextlib.suppress(Exception):
                server.destroy()
