"""Drivers and backends beyond PyMySQL: mysqlclient under real threads, PostgreSQL, SQLite.

PyMySQL under gevent and threads is the rest of the suite. PostgreSQL (psycopg) and
file-based SQLite aliases are pooled too: these tests check the cap, the rollback on
checkin and the refusals (an in-memory SQLite database).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import psycopg
import pytest
from django.db import connections

from tests.app.models import Item
from tests.conftest import Pooled, Server
from tests.settings import DB_HOST, DB_NAME, DB_PORT, NAMESPACE, USER
from wsgi_db_pool import PoolingMiddleware

ROOT = Path(__file__).resolve().parent.parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "connect_timeout": 5}
PG_DB = f"{NAMESPACE}_pg"
PG_APP = f"{NAMESPACE}_pool"  # application_name: counts our pool's PostgreSQL sessions


# -- fixtures ---------------------------------------------------------------------------------


def _add_alias(monkeypatch: pytest.MonkeyPatch, name: str, **entry: Any) -> str:
    """Add an alias for this test only; Django caches DATABASES once, complete with defaults."""
    settings = copy.deepcopy(connections.settings["default"])
    settings.update(entry)
    monkeypatch.setitem(connections.settings, name, settings)
    return name


def _create_items(alias: str) -> None:
    wrapper = connections.create_connection(alias)  # not bound, not pooled
    try:
        # atomic=False: an atomic block would bind and connect connections[alias] instead.
        with wrapper.schema_editor(atomic=False) as editor:
            editor.create_model(Item)
    finally:
        wrapper.close()


def _unbind(alias: str) -> None:
    wrapper = getattr(connections._connections, alias, None)  # type: ignore[attr-defined]
    if wrapper is not None:
        wrapper.close()
        delattr(connections._connections, alias)  # type: ignore[attr-defined]


class Postgres:
    """What the local PostgreSQL sees, through a connection of our own."""

    def __init__(self) -> None:
        self.conn = psycopg.connect(**PG, dbname="postgres", autocommit=True)

    def count(self) -> int:
        """Sessions of our pool's application_name right now."""
        row = self.conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (PG_APP,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def wait_count(self, expected: int, timeout: float = 3.0) -> int:
        deadline = gevent.get_hub().loop.now() + timeout
        while (count := self.count()) != expected and gevent.get_hub().loop.now() < deadline:
            gevent.sleep(0.01)
        return count

    def rows(self) -> int:
        with psycopg.connect(**PG, dbname=PG_DB, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM app_item").fetchone()
            assert row is not None
            return int(row[0])


@pytest.fixture
def postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[Postgres]:
    """The alias "pg": a database of our own on the local PostgreSQL, with app_item."""
    try:
        watcher = Postgres()
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {PG['host']}:{PG['port']} as postgres ({exc}); "
            f"these tests need the real server, start it first"
        ) from exc
    watcher.conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
    # A session a previous test closed can linger a moment in pg_stat_activity.
    assert watcher.wait_count(0) == 0, "a pooled PostgreSQL session survived the previous test"
    watcher.conn.execute(f'CREATE DATABASE "{PG_DB}"')
    _add_alias(
        monkeypatch,
        "pg",
        ENGINE="django.db.backends.postgresql",
        NAME=PG_DB,
        USER="postgres",
        PASSWORD="",
        HOST=PG["host"],
        PORT=PG["port"],
        OPTIONS={"application_name": PG_APP, "connect_timeout": 5},
        TEST={"NAME": PG_DB},
    )
    _create_items("pg")
    yield watcher
    _unbind("pg")
    watcher.conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
    watcher.conn.close()


@pytest.fixture
def sqlite_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """The alias "litefile": a SQLite database in a file, with app_item."""
    _add_alias(
        monkeypatch,
        "litefile",
        ENGINE="django.db.backends.sqlite3",
        NAME=str(tmp_path / "lite.sqlite3"),
        OPTIONS={},
        TEST={},
    )
    _create_items("litefile")
    yield "litefile"
    _unbind("litefile")


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.smoke
def test_postgresql_and_sqlite_are_left_to_django(
    make_pooled: Callable[..., Pooled], server: Server, postgres: Postgres
) -> None:
    """PostgreSQL and SQLite aliases the middleware does not pool work as in stock Django (a
    connection per request with CONN_MAX_AGE = 0), next to pooled MySQL."""
    app = make_pooled(aliases=["default"])
    assert "pg" not in app.mw.stats()
    assert "lite" not in app.mw.stats()
    ids = {app.json("/vendor/", alias="pg")["conn_id"] for _ in range(3)}
    assert len(ids) == 3  # Django closed each request's connection at its end
    assert postgres.wait_count(0) == 0
    assert app.get("/vendor/", alias="lite").status_code == 200
    assert app.json("/read/")["conn_id"] in server.connection_ids()


def test_postgresql_requests_are_pooled(
    make_pooled: Callable[..., Pooled], server: Server, postgres: Postgres
) -> None:
    """Requests on a PostgreSQL alias reuse one pooled session."""
    app = make_pooled(aliases=["pg"], pool_size=1, max_overflow=0)
    ids = {app.json("/vendor/", alias="pg")["conn_id"] for _ in range(5)}
    assert len(ids) == 1
    assert postgres.count() == 1
    stats = app.stats("pg")
    assert (stats["connects"], stats["checkouts"], stats["discards"]) == (1, 5, {})


def test_postgresql_open_transaction_is_rolled_back_on_checkin(
    make_pooled: Callable[..., Pooled], server: Server, postgres: Postgres
) -> None:
    """A transaction a request left open is rolled back, and the session is recycled."""
    app = make_pooled(aliases=["pg"], pool_size=1, max_overflow=0)
    left = app.json("/vendor/", alias="pg", op="leave_open", name="never committed")
    found = app.json("/vendor/", alias="pg", op="count")
    assert found["conn_id"] == left["conn_id"]  # recycled, not discarded
    assert (found["rows"], found["autocommit"], found["in_atomic_block"]) == (0, True, False)
    assert postgres.rows() == 0
    assert app.stats("pg")["discards"] == {}


def test_postgresql_session_state_is_reset(
    make_pooled: Callable[..., Pooled], server: Server, postgres: Postgres
) -> None:
    """A session variable a request set is gone for the next request on the same session,
    and Django's own setup (TimeZone UTC with USE_TZ) is back."""
    app = make_pooled(aliases=["pg"], pool_size=1, max_overflow=0)
    before = app.json("/vendor/", alias="pg", op="time_zone")
    assert before["time_zone"] == "UTC"
    left = app.json("/vendor/", alias="pg", op="set_time_zone")
    after = app.json("/vendor/", alias="pg", op="time_zone")
    assert after["conn_id"] == left["conn_id"] == before["conn_id"]  # reset, not discarded
    assert after["time_zone"] == "UTC"
    assert app.stats("pg")["discards"] == {}


def test_postgresql_cap_holds(
    make_pooled: Callable[..., Pooled], server: Server, postgres: Postgres
) -> None:
    """30 concurrent requests on a PostgreSQL alias use at most pool_size + max_overflow = 3."""
    app = make_pooled(aliases=["pg"], pool_size=2, max_overflow=1, timeout=10.0)
    peak = 0
    running = True

    def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, postgres.count())
            gevent.sleep(0.005)

    sampler = gevent.spawn(sample)
    try:
        greenlets = [
            gevent.spawn(app.request, "/vendor/", "alias=pg&op=hold&seconds=0.02")
            for _ in range(30)
        ]
        gevent.joinall(greenlets, raise_error=True)
    finally:
        running = False
        sampler.join()
    assert [g.value.status_code for g in greenlets] == [200] * 30
    assert 1 <= peak <= 3
    assert app.stats("pg")["open"] <= 3


# -- PostgreSQL session state set by functions ---------------------------------------------------

PG_ROLE = f"{NAMESPACE}_pgrole"
# How each kind of state is set, in PL/pgSQL (a function, procedure or trigger holds it) and
# as a statement of its own.
PG_BODIES = {
    "user_variable": (
        "PERFORM set_config('app.secret', 'alice-token', false)",
        "SELECT set_config('app.secret', 'alice-token', false)",
    ),
    "session_variable": ("SET TIME ZONE 'Asia/Tokyo'", "SET TIME ZONE 'Asia/Tokyo'"),
    "temporary_table": ("CREATE TEMP TABLE t_leak (x int)", "CREATE TEMP TABLE t_leak (x int)"),
    "named_lock": ("PERFORM pg_advisory_lock(42)", "SELECT pg_advisory_lock(42)"),
    "prepared_statement": (
        "EXECUTE 'PREPARE leak_stmt AS SELECT 1'",
        "PREPARE leak_stmt AS SELECT 1",
    ),
    "role": (f"SET ROLE {PG_ROLE}", f"SET ROLE {PG_ROLE}"),
}
PG_CALLS = {
    "function": "SELECT leak_f()",
    "procedure": "CALL leak_p()",
    "trigger": "INSERT INTO leak_t (v) VALUES (1)",
}


def _pg_routine(way: str, body: str) -> list[str]:
    """What makes the routine that runs ``body`` (dropped with the test's database)."""
    if way == "function":
        return [
            f"CREATE FUNCTION leak_f() RETURNS int LANGUAGE plpgsql AS "
            f"$$ BEGIN {body}; RETURN 1; END $$"
        ]
    if way == "procedure":
        return [f"CREATE PROCEDURE leak_p() LANGUAGE plpgsql AS $$ BEGIN {body}; END $$"]
    return [
        "CREATE TABLE leak_t (id serial PRIMARY KEY, v int)",
        f"CREATE FUNCTION leak_tf() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN {body}; RETURN NEW; END $$",
        "CREATE TRIGGER leak_tr BEFORE INSERT ON leak_t FOR EACH ROW EXECUTE FUNCTION leak_tf()",
    ]


@pytest.fixture
def pg_role(postgres: Postgres) -> Iterator[str]:
    """A role the pool's (superuser) sessions can SET ROLE to."""
    postgres.conn.execute(f'DROP ROLE IF EXISTS "{PG_ROLE}"')
    postgres.conn.execute(f'CREATE ROLE "{PG_ROLE}"')
    yield PG_ROLE
    _unbind("pg")
    postgres.conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
    postgres.conn.execute(f'DROP ROLE IF EXISTS "{PG_ROLE}"')


PG_CASES = [
    pytest.param(kind, way, mode, id=f"{mode}-{kind}-{way}")
    for mode in ("auto", "always", "never")
    for kind in PG_BODIES
    for way in ("direct", "function", "procedure", "trigger")
]


@pytest.mark.parametrize(("kind", "way", "mode"), PG_CASES)
def test_postgresql_session_state_per_way_and_mode(
    make_pooled: Callable[..., Pooled],
    server: Server,
    postgres: Postgres,
    pg_role: str,
    kind: str,
    way: str,
    mode: str,
) -> None:
    """GUCs, temp tables, advisory locks, prepared statements and roles set directly or in
    PL/pgSQL are gone for the next request under auto and always; under never they stay."""
    in_plpgsql, direct = PG_BODIES[kind]
    if way == "direct":
        sql = direct
    else:
        with psycopg.connect(**PG, dbname=PG_DB, autocommit=True) as conn:
            for ddl in _pg_routine(way, in_plpgsql):
                conn.execute(ddl)
        sql = PG_CALLS[way]
    kwargs: dict[str, Any] = {} if mode == "auto" else {"reset_session": mode}
    app = make_pooled(aliases=["pg"], pool_size=1, max_overflow=0, **kwargs)
    fresh = app.json("/probe-session/", alias="pg")
    left = app.json("/run-sql/", alias="pg", sql=sql)
    after = app.json("/probe-session/", alias="pg")
    assert after["conn_id"] == left["conn_id"] == fresh["conn_id"], "not recycled"
    if mode == "never":
        assert after[kind] != fresh[kind], f"{kind} set by {way} was expected to stay"
    else:
        assert after == fresh
    assert app.stats("pg")["discards"] == {}


def test_postgresql_function_secret_and_temp_table_are_gone(
    make_pooled: Callable[..., Pooled], server: Server, postgres: Postgres
) -> None:
    """Default settings: request 1 runs a PL/pgSQL function that calls set_config('app.secret',
    ..., false) and creates a temp table; request 2 on the same session sees neither."""
    with psycopg.connect(**PG, dbname=PG_DB, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
            "PERFORM set_config('app.secret', 'x', false); "
            "CREATE TEMP TABLE t_leak (x int); RETURN 1; END $$"
        )
    app = make_pooled(aliases=["pg"], pool_size=1)
    first = app.json("/run-sql/", alias="pg", sql="SELECT f()")
    second = app.json("/probe-session/", alias="pg")
    assert second["conn_id"] == first["conn_id"]
    assert (second["user_variable"], second["temporary_table"]) == (None, False)


# -- SQLite ----------------------------------------------------------------------------------------


def test_sqlite_in_memory_is_refused_with_a_clear_error(django_app: Any) -> None:
    """Each connection to ":memory:" is a database of its own: pooling it is refused, saying why."""
    with pytest.raises(ValueError, match=r"alias 'lite'.*in-memory SQLite"):
        PoolingMiddleware(django_app, aliases=["lite"])


def test_sqlite_file_is_pooled_and_rolled_back(
    make_pooled: Callable[..., Pooled], server: Server, sqlite_file: str
) -> None:
    """A file-based SQLite alias named in aliases is pooled: one connection reused, an open
    transaction rolled back when given back."""
    app = make_pooled(aliases=[sqlite_file], pool_size=1, max_overflow=0)
    left = app.json("/vendor/", alias=sqlite_file, op="leave_open")
    found = app.json("/vendor/", alias=sqlite_file, op="count")
    assert found["conn_id"] == left["conn_id"]
    assert (found["rows"], found["autocommit"]) == (0, True)
    stats = app.stats(sqlite_file)
    assert (stats["connects"], stats["checkouts"], stats["discards"]) == (1, 2, {})


def test_default_aliases_take_postgresql_but_not_sqlite(
    django_app: Any, server: Server, postgres: Postgres, sqlite_file: str
) -> None:
    """aliases=None pools every server database (MySQL, PostgreSQL); SQLite only when named."""
    middleware = PoolingMiddleware(django_app)
    try:
        assert "pg" in middleware.aliases
        assert sqlite_file not in middleware.aliases
        assert "lite" not in middleware.aliases
    finally:
        middleware.close()


# -- mysqlclient under real threads ---------------------------------------------------------------

MYSQLCLIENT_SETTINGS = f"""
# No pymysql.install_as_MySQLdb(): Django loads mysqlclient's own MySQLdb.
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.mysql",
        "NAME": {DB_NAME!r}, "USER": {USER!r}, "PASSWORD": {USER!r},
        "HOST": {DB_HOST!r}, "PORT": {DB_PORT},
        "OPTIONS": {{"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30}},
    }}
}}
SECRET_KEY = "mysqlclient"
USE_TZ = True
ROOT_URLCONF = "tests.urls"
INSTALLED_APPS = ["tests.app"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
"""

MYSQLCLIENT_SCRIPT = """
import io, json, sys, threading, time
from wsgiref.util import setup_testing_defaults

import django
django.setup()
import MySQLdb
import pymysql  # only for the watcher's own root connection
from django.core.wsgi import get_wsgi_application
from wsgi_db_pool import PoolingMiddleware

app = PoolingMiddleware(get_wsgi_application(), pool_size=2, max_overflow=1, timeout=20.0)
watch = pymysql.connect(host={host!r}, port={port}, user="root", autocommit=True,
                        ssl_disabled=True)
peak, running, lock = 0, True, threading.Lock()

def sample():
    global peak
    with watch.cursor() as cursor:
        while running:
            cursor.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                           "WHERE USER = %s", ({user!r},))
            peak = max(peak, cursor.fetchone()[0])
            time.sleep(0.005)

def call(path, query=""):
    environ = {{"PATH_INFO": path, "QUERY_STRING": query}}
    setup_testing_defaults(environ)
    status = []
    result = app(environ, lambda s, h, e=None: status.append(s))
    try:
        body = b"".join(result)
    finally:
        result.close()
    return status[0], body

statuses, ids, idents = [], set(), set()

def worker():
    for _ in range(5):
        status, _ = call("/sleep-query/", "seconds=0.02")
        code, body = call("/read/")
        with lock:
            statuses.extend([status, code])
            ids.add(json.loads(body)["conn_id"])
            idents.add(threading.get_ident())

sampler = threading.Thread(target=sample)
sampler.start()
threads = [threading.Thread(target=worker) for _ in range(12)]
for t in threads:
    t.start()
for t in threads:
    t.join()
running = False
sampler.join()
stats = app.stats()["default"]
left = json.loads(call("/run-sql/", "sql=SET+@secret+%3D+'alice-token'")[1])
found = json.loads(call("/probe-session/")[1])
app.close()
print(json.dumps({{
    "driver": MySQLdb.__name__, "raw": type(app.pools["default"].connector).__name__,
    "statuses": statuses, "ids": sorted(ids), "threads": len(idents), "peak": peak,
    "stats": stats, "same": left["conn_id"] == found["conn_id"],
    "secret": found["user_variable"],
}}))
"""


def _have_mysqlclient() -> bool:
    try:
        importlib.metadata.version("mysqlclient")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
def test_mysqlclient_under_real_threads(server: Server, tmp_path: Path) -> None:
    """12 real threads on mysqlclient (no gevent patching): every request served, at most
    cap = 3 server connections, reused across threads; a user variable does not outlive
    its request (COM_CHANGE_USER resets the session)."""
    # make test installs it (.ci/run installs the client headers it builds against).
    assert _have_mysqlclient(), "mysqlclient is not installed: run `make test`, which installs it"
    (tmp_path / "mysqlclient_settings.py").write_text(textwrap.dedent(MYSQLCLIENT_SETTINGS))
    script = tmp_path / "threads.py"
    script.write_text(MYSQLCLIENT_SCRIPT.format(host=DB_HOST, port=DB_PORT, user=USER))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mysqlclient_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["driver"] == "MySQLdb"  # mysqlclient's, not PyMySQL standing in for it
    assert found["threads"] == 12
    assert found["statuses"] == ["200 OK"] * 120
    # The next request on the connection that set @secret does not see it.
    assert (found["same"], found["secret"]) == (True, [None, None])
    assert 1 <= found["peak"] <= 3
    assert 1 <= len(found["ids"]) <= 3
    stats = found["stats"]
    assert (stats["checkouts"], stats["in_use"], stats["timeouts"]) == (120, 0, 0)
    assert stats["connects"] <= 3 + stats["discards"].get("overflow", 0)
    assert server.wait_count(0) == 0
