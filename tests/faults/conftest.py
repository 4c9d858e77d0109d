"""Fixtures for fault injection: a TCP proxy, a private MariaDB, aliases pointing at them.

The shared MariaDB on 3306 serves every fault that touches only our own connections
(KILL, network faults through the proxy). Faults that stop the server or change its
global settings run against a private ``mariadbd`` this run starts on a port of its own.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pymysql
import pytest
from django.core.signals import got_request_exception
from django.db import connections

from tests.conftest import DB_NAME, USER, USERS, Server
from tests.faults.mariadb import PrivateMariaDB
from tests.faults.proxy import Proxy
from tests.settings import DB_HOST, DB_PORT

#: Driver timeouts of the aliases the fault tests use: short, so a stalled network fails fast.
FAST_OPTIONS = {"ssl_disabled": True, "connect_timeout": 1, "read_timeout": 1, "write_timeout": 1}


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 5.0,
    what: str = "condition",
    every: float = 0.005,
) -> Any:
    """Yield to other greenlets until ``condition()`` is truthy; return it; fail at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        gevent.sleep(every)


def wait_for_transactions(server: Server, conn_id: int, expected: int) -> None:
    """Wait until the server reports ``expected`` open transactions for ``conn_id``.

    MariaDB refreshes INNODB_TRX only when it was last read more than 0.1 s ago, so
    polling faster than that would read the same stale table forever.
    """
    wait_for(
        lambda: server.open_transactions(conn_id) == expected,
        what=f"{expected} open transaction(s) on connection {conn_id}",
        every=0.15,
    )


def running_queries(server: Server, like: str, user: str = USER) -> list[int]:
    """Ids of ``user``'s connections whose statement in progress matches ``like``."""
    return [
        row[0]
        for row in server.rows(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND INFO LIKE %s",
            (user, like),
        )
    ]


@pytest.fixture
def add_alias(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Add an alias to DATABASES for this test only (a copy of `default` with changes).

    Django's ConnectionHandler caches its settings once, as the very dict
    `settings.DATABASES` (with defaults filled in): the alias goes in there, complete.
    """
    added: list[str] = []

    def add(
        name: str,
        *,
        port: int,
        host: str = DB_HOST,
        conn_max_age: int = 0,
        **options: Any,
    ) -> str:
        entry = copy.deepcopy(connections.settings["default"])
        entry["HOST"], entry["PORT"] = host, port
        entry["CONN_MAX_AGE"] = conn_max_age  # for stock Django beside the pool
        entry["OPTIONS"] = {**FAST_OPTIONS, **options}
        monkeypatch.setitem(connections.settings, name, entry)
        added.append(name)
        return name

    yield add
    for name in added:
        wrapper = getattr(connections._connections, name, None)  # type: ignore[attr-defined]
        if wrapper is not None:
            wrapper.close()
            delattr(connections._connections, name)  # type: ignore[attr-defined]


@pytest.fixture
def proxy(server: Server) -> Iterator[Proxy]:
    """A fault-injecting TCP proxy in front of the shared MariaDB."""
    proxy = Proxy((DB_HOST, DB_PORT)).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied(proxy: Proxy, add_alias: Callable[..., str]) -> str:
    """The alias `proxied`: the test database, reached through ``proxy``, short driver timeouts."""
    return add_alias("proxied", port=proxy.port)


@pytest.fixture
def request_exceptions() -> Iterator[list[BaseException]]:
    """The exceptions Django turned into 500 responses during the test."""
    import sys

    caught: list[BaseException] = []

    def receiver(sender: Any, request: Any = None, **kwargs: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is not None:
            caught.append(exc)

    got_request_exception.connect(receiver)
    yield caught
    got_request_exception.disconnect(receiver)


# -- the private server -------------------------------------------------------------------


class PrivateServer(Server):
    """What the private MariaDB sees (the same queries as ``Server``, another server)."""

    def __init__(self, mariadb: PrivateMariaDB) -> None:
        self.mariadb = mariadb
        self.conn = mariadb.connect()

    def reconnect(self) -> None:
        """A fresh root connection, after a restart."""
        with contextlib.suppress(pymysql.Error):
            self.conn.close()
        self.conn = self.mariadb.connect()

    def restart(self, hard: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with ``hard``) and start it again."""
        self.mariadb.stop(hard=hard)
        self.mariadb.start()
        self.reconnect()

    def global_status(self, name: str) -> int:
        return int(self.rows("SHOW GLOBAL STATUS LIKE %s", (name,))[0][1])


@pytest.fixture(scope="session")
def private_mariadb(_server_session: Server) -> Iterator[PrivateMariaDB]:
    """A MariaDB of this run's own, with the test database, users and table of the shared one."""
    mariadb = PrivateMariaDB()
    try:
        mariadb.install()
        mariadb.start()
        create_table = _server_session.rows(f"SHOW CREATE TABLE {DB_NAME}.app_item")[0][1]
        conn = mariadb.connect()
        try:
            create_schema(conn, create_table)
        finally:
            conn.close()
        yield mariadb
    finally:
        mariadb.destroy()


@pytest.fixture
def private(
    private_mariadb: PrivateMariaDB, server: Server, add_alias: Callable[..., str]
) -> Iterator[PrivateServer]:
    """The alias `private` on the private MariaDB, and that server's own view of itself.

    Whatever a test changed is put back: the server running, max_connections, no rows,
    none of our connections.
    """
    if private_mariadb.process is None:
        private_mariadb.start()  # a failed test left it stopped
    observer = PrivateServer(private_mariadb)
    max_connections = int(observer.value("SELECT @@GLOBAL.max_connections"))
    add_alias("private", port=private_mariadb.port)
    assert observer.wait_count(0) == 0, "a connection to the private server survived"
    yield observer
    if private_mariadb.process is None:
        private_mariadb.start()
    observer.reconnect()
    observer.rows(f"SET GLOBAL max_connections = {max_connections}")
    observer.kill_all()
    observer.rows(f"DELETE FROM {DB_NAME}.app_item")
    observer.conn.close()


def create_schema(conn: Any, create_table: str) -> None:
    """On a private server: the test database, the test users, and the app's table."""
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {DB_NAME}")
        for user in USERS:
            cursor.execute("CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", (user, user))
            cursor.execute(f"GRANT ALL ON {DB_NAME}.* TO %s@'127.0.0.1'", (user,))
        cursor.execute(f"USE {DB_NAME}")
        cursor.execute(create_table)
