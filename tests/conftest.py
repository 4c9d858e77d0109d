"""Fixtures: the real MariaDB, a root connection that sees what the server sees, pooled apps.

Run the suite as ``python -m gevent.monkey --module pytest``: gevent must patch the
standard library before Django's connection storage is created.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import django
import gevent
import gevent.monkey
import pymysql
import pytest
import structlog

with warnings.catch_warnings():
    # WebOb still imports the cgi module, deprecated since Python 3.11.
    warnings.filterwarnings("ignore", "'cgi' is deprecated", DeprecationWarning)
    import webtest

ROOT = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
from tests import settings  # noqa: E402

DB_NAME = settings.DB_NAME
# One server user per alias: PROCESSLIST filtered by user counts one alias's pool.
USER = settings.USER
OTHER_USER = settings.OTHER_USER
USERS = (USER, OTHER_USER)


def pytest_configure(config: pytest.Config) -> None:
    if not any(line.startswith("smoke:") for line in config.getini("markers")):
        # Until pyproject.toml declares it (--strict-markers).
        config.addinivalue_line("markers", "smoke: core end-to-end tests, also run on Django 4.2")
    if not gevent.monkey.is_module_patched("socket"):
        raise pytest.UsageError(
            "run the tests as `python -m gevent.monkey --module pytest`: the pool is "
            "for gevent, and gevent must patch before Django is imported"
        )
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    django.setup()
    # Loading the models bound an unconnected `default` wrapper to this (the main)
    # greenlet, where WebTest runs every request; a real gevent server serves each
    # request in a fresh greenlet. Start from that state.
    unbind_all()


def unbind_all() -> None:
    """Close and unbind every wrapper bound to the current greenlet."""
    from django.db import connections

    for wrapper in connections.all(initialized_only=True):
        wrapper.close()
        del connections[wrapper.alias]


# -- the server, seen from outside ------------------------------------------------------
#
# Catch pymysql.MySQLError and friends by their top-level names: once Django imports
# MySQLdb.converters (PyMySQL installed as MySQLdb), `pymysql.err` is a second copy of
# the module, whose classes are not the ones PyMySQL raises.


def root_connect() -> pymysql.connections.Connection:
    """A root connection outside Django and the pool; cooperative under gevent's patching."""
    try:
        return pymysql.connect(**ROOT, autocommit=True, ssl_disabled=True, connect_timeout=5)
    except pymysql.OperationalError as exc:
        raise RuntimeError(
            f"MariaDB is not reachable at {ROOT['host']}:{ROOT['port']} as root with an "
            f"empty password ({exc}); these tests need the real server, start it first"
        ) from exc


class PeakSampler:
    """``with PeakSampler(server.count) as sampled:`` -- the highest count seen while the
    block runs, sampled in a greenlet of its own every ``every`` seconds."""

    def __init__(self, count: Callable[[], int], every: float = 0.01) -> None:
        self.count = count
        self.every = every
        self.peak = 0
        self._done = False
        self._greenlet: Any = None

    def _sample(self) -> None:
        while not self._done:
            self.peak = max(self.peak, self.count())
            gevent.sleep(self.every)

    def __enter__(self) -> PeakSampler:
        self._greenlet = gevent.spawn(self._sample)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done = True
        self._greenlet.join()


class Server:
    """What MariaDB itself sees, asked through a root connection of our own."""

    def __init__(self) -> None:
        self.conn = root_connect()

    def rows(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def value(self, sql: str, args: Any = None) -> Any:
        return self.rows(sql, args)[0][0]

    def connection_ids(self, user: str = USER) -> set[int]:
        """Ids of the server connections logged in as ``user``."""
        return {
            row[0]
            for row in self.rows(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (user,)
            )
        }

    def count(self, user: str = USER) -> int:
        """How many server connections ``user`` has open right now."""
        return int(
            self.value(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (user,)
            )
        )

    def wait_count(self, expected: int, user: str = USER, timeout: float = 3.0) -> int:
        """The count once it equals ``expected``, or the last count seen after ``timeout``.

        The server tears a connection down after the client's COM_QUIT or FIN, so a
        close on our side shows in PROCESSLIST a moment later; this only waits for that.
        """
        deadline = time.monotonic() + timeout
        while True:
            count = self.count(user)
            if count == expected or time.monotonic() >= deadline:
                return count
            gevent.sleep(0.005)

    def status(self) -> dict[str, int]:
        """Server-wide counters; each call costs exactly one question (calibrated in tests)."""
        return {
            name.lower(): int(value)
            for name, value in self.rows(
                "SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                "WHERE VARIABLE_NAME IN ('QUESTIONS', 'COM_ADMIN_COMMANDS', 'CONNECTIONS')"
            )
        }

    def counted(self, action: Callable[[], object], attempts: int = 3) -> dict[str, int]:
        """How much ``action()`` moves the server-wide counters of status().

        Other clients of the server can only add to them, so the least delta over
        a few runs of ``action`` is the one to trust; a command our pool sends on
        every run still shows in every run.
        """
        own = {}
        for _ in range(attempts):
            first, second = self.status(), self.status()
            own = {k: min(own.get(k, second[k] - first[k]), second[k] - first[k]) for k in first}
        least: dict[str, int] = {}
        for _ in range(attempts):
            before = self.status()
            action()
            after = self.status()
            for key in before:
                delta = after[key] - before[key] - own[key]
                least[key] = min(least.get(key, delta), delta)
        return least

    def kill(self, conn_id: int) -> None:
        self.rows(f"KILL {int(conn_id)}")

    def kill_all(self) -> None:
        for user in USERS:
            for conn_id in self.connection_ids(user):
                try:
                    self.kill(conn_id)
                except pymysql.MySQLError as exc:
                    if exc.args[0] != 1094:  # unknown thread id: gone by itself meanwhile
                        raise

    def committed_names(self) -> list[str]:
        """Names of the rows committed to app_item, as any other client sees them."""
        return [row[0] for row in self.rows(f"SELECT name FROM {DB_NAME}.app_item ORDER BY id")]

    def open_transactions(self, conn_id: int) -> int:
        """InnoDB transactions the server holds open for connection ``conn_id``."""
        return int(
            self.value(
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = %s",
                (conn_id,),
            )
        )


@pytest.fixture(scope="session")
def _server_session() -> Iterator[Server]:
    server = Server()
    server.rows(f"DROP DATABASE IF EXISTS {DB_NAME}")
    server.rows(f"CREATE DATABASE {DB_NAME}")
    for user in USERS:
        server.rows("CREATE USER IF NOT EXISTS %s@'127.0.0.1'", (user,))
        server.rows("ALTER USER %s@'127.0.0.1' IDENTIFIED BY %s", (user, user))
        server.rows(f"GRANT ALL ON {DB_NAME}.* TO %s@'127.0.0.1'", (user,))
    server.kill_all()
    _create_tables()
    yield server
    server.kill_all()
    server.rows(f"DROP DATABASE IF EXISTS {DB_NAME}")
    for user in USERS:
        server.rows("DROP USER IF EXISTS %s@'127.0.0.1'", (user,))
    server.conn.close()


def _create_tables() -> None:
    from django.db import connections

    from tests.app.models import Item

    # A wrapper of our own, never bound to `connections` and never pooled.
    wrapper = connections.create_connection("default")
    try:
        with wrapper.schema_editor() as editor:
            editor.create_model(Item)
    finally:
        wrapper.close()


@pytest.fixture
def server(_server_session: Server) -> Iterator[Server]:
    """The root view of MariaDB; each test starts with no pool connection and no rows."""
    from django.db import connections

    from tests.app.views import NEVER_EXITED, RECORDED

    assert _server_session.wait_count(0) == 0, "a pool connection survived the previous test"
    assert _server_session.wait_count(0, OTHER_USER) == 0
    bound = connections.all(initialized_only=True)
    assert not bound, f"the previous test left {bound} bound to the main greenlet"
    yield _server_session
    RECORDED.clear()
    NEVER_EXITED.clear()
    unbind_all()
    _server_session.kill_all()
    _server_session.rows(f"DELETE FROM {DB_NAME}.app_item")


# -- apps under test ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def django_app() -> Any:
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def make_environ(path: str, query: str = "", method: str = "GET") -> dict[str, Any]:
    """A complete PEP 3333 environ for a request with no body, as a server would build it."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
    }
    setup_testing_defaults(environ)
    return environ


class Exchange:
    """One request played by hand the way a server does: call, iterate, then close()."""

    def __init__(
        self, app: Callable[..., Any], path: str, query: str = "", method: str = "GET"
    ) -> None:
        self.environ = make_environ(path, query, method)
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.closed = False
        self._iterator: Iterator[bytes] | None = None
        self.iterable = app(self.environ, self._start_response)

    def _start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        self.status, self.headers = status, headers
        return self.body_parts_written

    def body_parts_written(self, data: bytes) -> None:
        self.body += data

    def next_chunk(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self.iterable)
        chunk = next(self._iterator)
        self.body += chunk
        return chunk

    def read_rest(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self.iterable)
        for chunk in self._iterator:
            self.body += chunk
        return self.body

    def close(self) -> None:
        self.closed = True
        self.iterable.close()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def status_code(self) -> int:
        assert self.status is not None
        return int(self.status.split()[0])

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def request(app: Callable[..., Any], path: str, query: str = "", method: str = "GET") -> Exchange:
    """A whole request by hand: call, read the body, close() even if reading fails."""
    exchange = Exchange(app, path, query, method)
    try:
        exchange.read_rest()
    finally:
        exchange.close()
    return exchange


@dataclass
class Pooled:
    """A PoolingMiddleware around Django (both sides checked by wsgiref's validator)."""

    mw: Any
    # What a server calls: the middleware behind a PEP 3333 validator.
    app: Callable[..., Any] = field(init=False)
    web: webtest.TestApp = field(init=False)

    def __post_init__(self) -> None:
        self.app = validator(self.mw)
        self.web = webtest.TestApp(self.app)
        self.started: list[Exchange] = []

    def stats(self, alias: str = "default") -> dict[str, Any]:
        return self.mw.stats()[alias]

    def get(self, path: str, status: int = 200, **params: Any) -> webtest.TestResponse:
        return self.web.get(path, params=params, status=status)

    def json(self, path: str, **params: Any) -> Any:
        return self.get(path, **params).json

    def request(self, path: str, query: str = "") -> Exchange:
        return request(self.app, path, query)

    def session_counted(
        self, action: Callable[[], object], alias: str = "default"
    ) -> dict[str, int]:
        """The commands the server counted on our one connection while ``action()`` ran.

        Read from that session's own status (SESSION_STATUS), which no other client
        of the server can move: the window runs from one probe's SELECT to the next,
        so it holds the second probe's checkout (a ping, say) but not its SELECT.
        """
        before = self.json("/session-counters/", alias=alias)
        action()
        after = self.json("/session-counters/", alias=alias)
        assert after["conn_id"] == before["conn_id"], "the probes ran on different connections"
        return {
            "questions": after["questions"] - before["questions"] - 1,
            "com_admin_commands": after["com_admin_commands"] - before["com_admin_commands"],
        }

    def start(self, path: str, query: str = "") -> Exchange:
        """A request left open: the test iterates and closes it (or teardown closes it)."""
        exchange = Exchange(self.app, path, query)
        self.started.append(exchange)
        return exchange


@pytest.fixture
def make_pooled(django_app: Any, server: Server) -> Iterator[Callable[..., Pooled]]:
    """Build PoolingMiddleware(validator(django_app), **kwargs); all closed at teardown."""
    from wsgi_db_pool import PoolingMiddleware

    made: list[Pooled] = []

    def make(**kwargs: Any) -> Pooled:
        # structlog's own pipeline, so that capture_logs() sees every event.
        kwargs.setdefault("logger", structlog.get_logger())
        pooled = Pooled(PoolingMiddleware(validator(django_app), **kwargs))
        made.append(pooled)
        return pooled

    yield make
    for pooled in made:
        for exchange in pooled.started:
            if not exchange.closed:
                exchange.close()  # a failed test left it open
        pooled.mw.close()


@pytest.fixture
def pooled(make_pooled: Callable[..., Pooled]) -> Pooled:
    """The default pool: one connection kept, no overflow, so reuse is visible by id."""
    return make_pooled(pool_size=1, max_overflow=0, timeout=2.0)


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """The structlog events emitted during the test."""
    with structlog.testing.capture_logs() as entries:
        yield entries


def events(
    entries: list[dict[str, Any]], name: str, alias: str | None = "default"
) -> list[dict[str, Any]]:
    """The captured events called ``name`` (for ``alias``, unless None)."""
    return [
        entry
        for entry in entries
        if entry["event"] == name and (alias is None or entry.get("alias") == alias)
    ]
