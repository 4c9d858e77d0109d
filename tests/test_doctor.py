"""``python -m wsgi_db_pool check``, run as a subprocess against the real MariaDB."""

from __future__ import annotations

import importlib.metadata
import json
import os
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import USER, Server
from tests.settings import DB_HOST, DB_NAME, DB_PORT
from wsgi_db_pool import _doctor, _doctor_mysql

ROOT = Path(__file__).resolve().parent.parent


def _check(*args: str, extra_path: Path | None = None, settings: str = "tests.settings") -> Any:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-m", "wsgi_db_pool", "check", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _findings(result: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
    document = json.loads(result.stdout)
    return {(f["alias"] or f["server"], f["check"]): f for f in document["findings"]}


def test_a_pool_that_fits_exits_zero(server: Server) -> None:
    """Within max_connections: exit 0, the arithmetic spelled out, settings read from --app."""
    result = _check("--app", "tests.servers_wsgi:pooled", "--workers", "2", "--hosts", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # tests/servers_wsgi.py builds pool_size=2, max_overflow=1 for "default" only.
    assert "pool_size=2 + max_overflow=1" in out
    assert "capacity: 3 hosts x 2 workers x (2 + 1) = 18 connections at most" in out
    assert "OK    [default] TLS: ssl_disabled=True" in out
    assert "OK    [default] timeouts: connect_timeout=5, read_timeout=30, write_timeout=30." in out
    assert "driver: PyMySQL" in out
    assert "Result: it fits" in out


def test_a_pool_that_does_not_fit_exits_one(server: Server) -> None:
    """Too many connections for max_connections: exit 1, and the per-alias size that would fit."""
    max_connections = server.value("SELECT @@max_connections")
    result = _check(
        "--alias", "default", "--alias", "other",
        "--pool-size", "10", "--max-overflow", "10", "--workers", "8", "--hosts", "2",
        "--reserve", "11", "--json",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["fits"] is False
    [capacity] = [f for f in document["findings"] if f["check"] == "capacity"]
    assert capacity["level"] == "fail"
    room = max_connections - 11
    # Each pool may go one past its cap for requests holding the other alias.
    expected = (
        f"(10 + 10 + 1) x 2 aliases = 672 connections at most, but max_connections is "
        f"{max_connections}"
    )
    assert expected in capacity["message"]
    # Both aliases log in to the same server: they add up.
    assert f"at most {room // (16 * 2) - 1} per alias" in capacity["message"]
    assert f"at most {room // (2 * 2 * 21)} per host" in capacity["message"]  # fewer workers
    [seen] = document["servers"]
    assert seen["aliases"] == ["default", "other"]


@pytest.mark.parametrize(
    ("aliases", "shared"),
    [
        pytest.param(["default", "other"], True, id="two-aliases-one-server"),
        pytest.param(["default"], False, id="one-alias"),
    ],
)
def test_aliases_on_one_server_are_counted_together(
    server: Server, aliases: list[str], shared: bool
) -> None:
    """Aliases on one server: a note with their combined cap against max_connections, and why
    a router makes it count (a request holds one alias while it waits for another)."""
    max_connections = server.value("SELECT @@max_connections")
    picked = [arg for alias in aliases for arg in ("--alias", alias)]
    result = _check(
        *picked, "--pool-size", "2", "--max-overflow", "1", "--workers", "2", "--hosts", "3",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "shared_server"]
    if not shared:
        assert found == []
        return
    [note] = found
    assert note["level"] == "note"
    message = note["message"]
    address = f"{DB_HOST}:{DB_PORT}"
    assert f"aliases 'default' ({address}), 'other' ({address}) reach the same server" in message
    assert "2 x (2 + 1 + 1) = 8 connections per process" in message
    assert f"48 in all against max_connections {max_connections}" in message
    assert "one request can hold a connection of one alias while it waits for another" in message


def test_unreachable_alias_is_reported_and_the_rest_still_checked(server: Server) -> None:
    """With every MySQL alias (one unreachable): exit 2, the others checked all the same."""
    result = _check("--pool-size", "1", "--max-overflow", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ERR   [unreachable] alias 'unreachable': cannot connect" in result.stdout
    assert "NOTE  [lite]" not in result.stdout  # notes name the alias in the text instead
    assert "alias 'lite': not pooled, left to Django." in result.stdout
    # Three pooled aliases (one unreachable): each pool may go two past its cap.
    assert "x (1 + 1 + 2) x 2 aliases = 8 connections at most" in result.stdout
    assert "not every alias could be checked" in result.stdout


def test_max_age_at_or_above_wait_timeout_warns(server: Server) -> None:
    """max_age not below the session's wait_timeout warns; --strict turns it into exit 1."""
    wait_timeout = server.value("SELECT @@global.wait_timeout")
    args = ("--alias", "default", "--max-age", str(wait_timeout + 60), "--max-idle", "none")
    result = _check(*args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    lifetime = _findings(result)[("default", "lifetime")]
    assert lifetime["level"] == "warn"
    assert f"wait_timeout ({wait_timeout} s)" in lifetime["message"]
    assert _check(*args, "--strict").returncode == 1


def test_max_user_connections_too_low_fails(server: Server) -> None:
    """An account limit below the pool's cap fails even when max_connections has room."""
    server.rows("ALTER USER %s@'127.0.0.1' WITH MAX_USER_CONNECTIONS 5", (USER,))
    try:
        result = _check("--alias", "default", "--pool-size", "3", "--max-overflow", "3", "--json")
    finally:
        server.rows("ALTER USER %s@'127.0.0.1' WITH MAX_USER_CONNECTIONS 0", (USER,))
    assert result.returncode == 1, result.stdout + result.stderr
    found = _findings(result)
    assert found[(f"{server.value('SELECT @@hostname')}:3306", "capacity")]["level"] == "ok"
    limit = [f for (_, check), f in found.items() if check == "max_user_connections"]
    assert [f["level"] for f in limit] == ["fail"]
    assert "may open only 5, but the pool may open 6" in limit[0]["message"]


def test_tls_and_timeouts_are_flagged(server: Server, tmp_path: Path) -> None:
    """An alias without ssl_disabled gets a note (the pool shares one TLS context), and one
    without read/write timeouts a warning."""
    (tmp_path / "loose_settings.py").write_text(
        textwrap.dedent(
            """
            import copy
            from tests.settings import *  # noqa: F403
            DATABASES = copy.deepcopy(DATABASES)  # noqa: F405
            DATABASES["default"]["OPTIONS"] = {"connect_timeout": 5}
            """
        )
    )
    result = _check(
        "--alias", "default", "--json", extra_path=tmp_path, settings="loose_settings"
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found = _findings(result)
    assert found[("default", "tls")]["level"] == "note"
    assert "builds a new ssl.SSLContext on every connect" in found[("default", "tls")]["message"]
    assert "The pool's connects share one per process" in found[("default", "tls")]["message"]
    assert found[("default", "timeouts")]["level"] == "warn"
    assert "OPTIONS set no read_timeout, write_timeout" in found[("default", "timeouts")]["message"]


@pytest.mark.parametrize(
    ("options", "version", "level"),
    [
        pytest.param({"ssl_disabled": True}, "1.2.4", "ok", id="ssl_disabled"),
        pytest.param({}, "1.2.4", "note", id="default-1.2-tries-tls"),
        pytest.param({}, "1.1.2", "ok", id="default-1.1-no-tls"),
        pytest.param({"ssl": {"ca": "/ca.pem"}}, "1.2.4", "warn", id="ssl-dict"),
        pytest.param({"ssl": {"ca": "/ca.pem"}}, "1.1.2", "warn", id="ssl-dict-1.1"),
        pytest.param({"ssl": "context"}, "1.2.4", "ok", id="shared-context"),
        pytest.param({"ssl": "context", "ssl_ca": "/ca.pem"}, "1.2.4", "warn", id="context+ca"),
        pytest.param({"ssl_verify_cert": True}, "1.2.4", "warn", id="ssl_verify_cert"),
        pytest.param({"ssl_disabled": True, "ssl_ca": "/ca.pem"}, "1.2.4", "ok", id="disabled"),
    ],
)
def test_tls_rule(options: dict[str, Any], version: str, level: str) -> None:
    """The rule of PyMySQL's Connection.__init__: which OPTIONS build a context per connect."""
    if options.get("ssl") == "context":
        options = {**options, "ssl": ssl.create_default_context()}
    assert _doctor_mysql.tls(options, "PyMySQL", version)[0] == level


@pytest.mark.contract
def test_pymysql_tls_rule_matches_the_installed_driver() -> None:
    """The installed PyMySQL builds a context per connect by default and reuses a given one."""
    import pymysql.connections

    context = ssl.create_default_context()
    kwargs = {"defer_connect": True, "host": DB_HOST, "port": DB_PORT}
    by_default = pymysql.connections.Connection(**kwargs)
    shared = pymysql.connections.Connection(ssl=context, **kwargs)
    disabled = pymysql.connections.Connection(ssl_disabled=True, **kwargs)
    with_ca = pymysql.connections.Connection(ssl=context, ssl_verify_cert=True, **kwargs)
    expected = _doctor_mysql.tls({}, "PyMySQL", pymysql.VERSION_STRING)[0] != "ok"
    assert (getattr(by_default, "ctx", None) is not None) is expected
    assert shared.ctx is context
    assert not disabled.ssl
    assert with_ca.ctx is not context


def test_bad_option_names_the_argument(server: Server) -> None:
    """A value the middleware would refuse is refused here too, with its name, exit 2."""
    result = _check("--pool-size", "-1")
    assert result.returncode == 2
    assert "pool_size must be >= 0, not -1" in result.stderr


def _have_mysqlclient() -> bool:
    try:
        importlib.metadata.version("mysqlclient")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _have_mysqlclient(), reason="mysqlclient is not installed")
def test_mysqlclient_under_gevent_fails(server: Server, tmp_path: Path) -> None:
    """Django on mysqlclient: a failure under gevent workers, fine under gthread."""
    (tmp_path / "mysqlclient_settings.py").write_text(
        textwrap.dedent(
            f"""
            # No pymysql.install_as_MySQLdb(): Django loads mysqlclient's MySQLdb.
            DATABASES = {{
                "default": {{
                    "ENGINE": "django.db.backends.mysql",
                    "NAME": {DB_NAME!r}, "USER": {USER!r}, "PASSWORD": {USER!r},
                    "HOST": {DB_HOST!r}, "PORT": {DB_PORT},
                    "OPTIONS": {{"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30}},
                }}
            }}
            SECRET_KEY = "doctor"
            USE_TZ = True
            """
        )
    )
    gevent = _check("--json", extra_path=tmp_path, settings="mysqlclient_settings")
    assert gevent.returncode == 1, gevent.stdout + gevent.stderr
    driver = _findings(gevent)[("default", "driver")]
    assert driver["level"] == "fail"
    assert "mysqlclient under a gevent worker" in driver["message"]
    threads = _check(
        "--worker-class", "gthread", "--threads", "50", extra_path=tmp_path,
        settings="mysqlclient_settings",
    )  # fmt: skip
    assert threads.returncode == 0, threads.stdout + threads.stderr
    assert "driver: mysqlclient under gthread" in threads.stdout
    assert "50 threads per worker share 20 connections" in threads.stdout


# -- PostgreSQL and SQLite beside MariaDB ---------------------------------------------------

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test", "connect_timeout": 5}


def _pg_value(sql: str) -> Any:
    import psycopg

    try:
        conn = psycopg.connect(**PG, autocommit=True)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {PG['host']}:{PG['port']} ({exc}); these tests "
            f"need the real server, start it first"
        ) from exc
    with conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def _mixed_settings(tmp_path: Path, pg_options: dict[str, Any], pg_user: str = "postgres") -> str:
    """A settings module with a MariaDB alias, a PostgreSQL alias and a SQLite file alias."""
    (tmp_path / "mixed_settings.py").write_text(
        textwrap.dedent(
            f"""
            import copy
            from tests.settings import *  # noqa: F403
            DATABASES = {{
                "default": copy.deepcopy(DATABASES["default"]),  # noqa: F405
                "pg": {{
                    "ENGINE": "django.db.backends.postgresql", "NAME": {PG["dbname"]!r},
                    "USER": {pg_user!r}, "HOST": {PG["host"]!r}, "PORT": {PG["port"]},
                    "OPTIONS": {pg_options!r},
                }},
                "litefile": {{
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": {str(tmp_path / "lite.sqlite3")!r},
                }},
            }}
            """
        )
    )
    return "mixed_settings"


_PG_OPTIONS = {"connect_timeout": 5, "keepalives_idle": 30, "tcp_user_timeout": 30000}


def test_postgresql_alias_is_checked_with_its_own_queries(server: Server, tmp_path: Path) -> None:
    """A MariaDB and a PostgreSQL alias: each server read with its own queries, the
    PostgreSQL capacity less the slots kept for superusers; a SQLite alias is only named."""
    settings = _mixed_settings(tmp_path, _PG_OPTIONS)
    max_connections = int(_pg_value("SHOW max_connections"))
    kept = int(_pg_value("SHOW superuser_reserved_connections"))
    result = _check(
        "--alias", "default", "--alias", "pg", "--alias", "litefile", "--pool-size", "2",
        "--max-overflow", "1", "--json", extra_path=tmp_path, settings=settings,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    servers = {s["vendor"]: s for s in document["servers"]}
    assert servers["postgresql"]["aliases"] == ["pg"]
    assert servers["postgresql"]["max_connections"] == max_connections
    assert servers["postgresql"]["reserved_connections"] >= kept
    assert servers["mysql"]["aliases"] == ["default"]
    found = _findings(result)
    pg_server = servers["postgresql"]["server"]
    capacity = found[(pg_server, "capacity")]
    assert capacity["level"] == "ok"
    # Three pooled aliases: each pool may go two past its cap.
    assert "1 host x 1 worker x (2 + 1 + 2) = 5 connections at most" in capacity["message"]
    assert (
        f"within max_connections {max_connections} less {kept} kept for superusers"
        in (capacity["message"])
    )
    assert found[("pg", "driver")]["message"].startswith("driver: psycopg ")
    assert found[("pg", "timeouts")]["level"] == "ok"
    assert "idle_session_timeout is off" in found[("pg", "lifetime")]["message"]
    assert ("pg", "tls") not in found  # PyMySQL's rule; nothing measured for libpq
    assert found[("litefile", "no_server")]["level"] == "note"
    assert found[("default", "timeouts")]["level"] == "ok"  # the MariaDB alias as before


def test_postgresql_session_timeouts_are_read(server: Server, tmp_path: Path) -> None:
    """idle_session_timeout below max_age warns as wait_timeout does; an
    idle_in_transaction_session_timeout below the pool's timeout warns with two aliases;
    missing libpq timeouts warn (session values, set through the alias's OPTIONS)."""
    options = {"options": "-c idle_session_timeout=60s -c idle_in_transaction_session_timeout=5s"}
    settings = _mixed_settings(tmp_path, options)
    result = _check(
        "--alias", "default", "--alias", "pg", "--max-age", "600", "--timeout", "30",
        "--json", extra_path=tmp_path, settings=settings,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found = _findings(result)
    lifetime = found[("pg", "lifetime")]
    assert lifetime["level"] == "warn"
    assert "not below the server's idle_session_timeout (60 s)" in lifetime["message"]
    in_transaction = found[("pg", "idle_in_transaction")]
    assert in_transaction["level"] == "warn"
    assert "idle_in_transaction_session_timeout 5 s" in in_transaction["message"]
    timeouts = found[("pg", "timeouts")]
    assert timeouts["level"] == "warn"
    assert "no connect_timeout" in timeouts["message"]
    assert "no keepalives_idle or tcp_user_timeout" in timeouts["message"]


@pytest.fixture
def pg_limited_role() -> Any:
    """A PostgreSQL login role of our own with CONNECTION LIMIT 3 (not a superuser)."""
    import psycopg

    role = f"{os.environ.get('WSGI_DB_POOL_TEST_NS', 'wsgi_db_pool')}_doctor"
    with psycopg.connect(**PG, autocommit=True) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 3')
    yield role
    with psycopg.connect(**PG, autocommit=True) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_postgresql_role_connection_limit_fails(
    server: Server, tmp_path: Path, pg_limited_role: str
) -> None:
    """A role's CONNECTION LIMIT below what its pool may open fails, as max_user_connections."""
    settings = _mixed_settings(tmp_path, _PG_OPTIONS, pg_user=pg_limited_role)
    result = _check(
        "--alias", "pg", "--pool-size", "2", "--max-overflow", "2", "--json",
        extra_path=tmp_path, settings=settings,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    [limit] = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "rolconnlimit"]
    assert limit["level"] == "fail"
    assert f"{pg_limited_role} may open only 3, but the pool may open 4" in limit["message"]


# -- worker classes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("worker_class", "says", "never"),
    [
        pytest.param("gevent", "yields to other greenlets", "real threads", id="gevent"),
        pytest.param("gthread", "real threads", "gevent", id="gthread"),
        pytest.param("sync", "one request at a time per process", "gevent", id="sync"),
    ],
)
def test_driver_wording_follows_the_worker_class(
    server: Server, worker_class: str, says: str, never: str
) -> None:
    """The driver finding says what the driver does under the worker class checked."""
    result = _check("--alias", "default", "--worker-class", worker_class, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    message = _findings(result)[("default", "driver")]["message"]
    assert f"PyMySQL under {worker_class}" in message
    assert says in message
    assert never not in message


def test_sync_worker_counts_one_connection_per_alias(server: Server) -> None:
    """A sync worker serves one request at a time: the capacity counts one connection per
    alias and process, and the advice is pool_size=1, max_overflow=0."""
    result = _check(
        "--alias", "default", "--alias", "other", "--worker-class", "sync", "--workers", "8",
        "--hosts", "2", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found = _findings(result)
    [capacity] = [f for (_, check), f in found.items() if check == "capacity"]
    assert (
        "2 hosts x 8 workers x 1 (sync worker: one request at a time) x 2 aliases = 32 "
        "connections at most" in capacity["message"]
    )
    sizing = found[(None, "sizing")]
    assert sizing["level"] == "note"
    assert "pool_size=1, max_overflow=0 per alias is the pool that fits" in sizing["message"]
    fitted = _check("--alias", "default", "--worker-class", "sync", "--pool-size", "1",
                    "--max-overflow", "0", "--json")  # fmt: skip
    assert _findings(fitted)[(None, "sizing")]["level"] == "ok"


def test_sync_workers_that_do_not_fit_are_told_to_be_fewer(server: Server) -> None:
    """Too many sync workers: the advice is fewer workers, not a smaller pool."""
    max_connections = server.value("SELECT @@max_connections")
    workers = max_connections  # one connection each, and the reserve on top
    result = _check(
        "--alias", "default", "--worker-class", "sync", "--workers", str(workers), "--json"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    [capacity] = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "capacity"]
    assert "A sync worker needs one connection per alias" in capacity["message"]
    assert f"at most {max_connections - 10} per host" in capacity["message"]


def test_gthread_worker_counts_its_threads(server: Server) -> None:
    """A gthread worker with fewer threads than the cap opens one connection per thread."""
    result = _check(
        "--alias", "default", "--worker-class", "gthread", "--threads", "4", "--workers", "3",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found = _findings(result)
    [capacity] = [f for (_, check), f in found.items() if check == "capacity"]
    assert "1 host x 3 workers x 4 (threads) = 12 connections at most" in capacity["message"]
    assert "only 4 of pool_size + max_overflow (20)" in found[(None, "sizing")]["message"]


def test_sync_with_threads_is_refused() -> None:
    """gunicorn runs sync with --threads above 1 as gthread: the check asks for gthread."""
    result = _check("--worker-class", "sync", "--threads", "4")
    assert result.returncode == 2
    assert "--worker-class gthread" in result.stderr


# -- timeouts from a MySQL option file -------------------------------------------------------


def _option_file(tmp_path: Path) -> Path:
    path = tmp_path / "my.cnf"
    path.write_text(
        "# the app's own option file\n"
        "[client]\nconnect-timeout = 5\nread_timeout=30\n"
        "[app]\nwrite-timeout='30'  # quoted, as MySQL allows\n"
    )
    return path


@pytest.mark.parametrize(
    ("driver", "group", "missing", "ignored"),
    [
        # Connector/C (mysqlclient) reads connect-timeout from [client] and the named group,
        # and no read or write timeout.
        pytest.param(
            "mysqlclient", None, "read_timeout, write_timeout", "read_timeout, but mysqlclient "
            "does not read it", id="mysqlclient",
        ),
        pytest.param(
            "mysqlclient", "app", "read_timeout, write_timeout", "read_timeout, write_timeout, "
            "but mysqlclient does not read them", id="mysqlclient-group",
        ),
        # PyMySQL reads one group, and no timeout at all.
        pytest.param(
            "PyMySQL", None, "connect_timeout, read_timeout, write_timeout", "connect_timeout, "
            "read_timeout, but PyMySQL does not read them", id="pymysql",
        ),
        pytest.param(
            "PyMySQL", "app", "connect_timeout, read_timeout, write_timeout", "write_timeout, "
            "but PyMySQL does not read it", id="pymysql-group",
        ),
    ],
)  # fmt: skip
def test_option_file_timeouts_count_as_the_driver_reads_them(
    tmp_path: Path, driver: str, group: str | None, missing: str, ignored: str
) -> None:
    """Timeouts in read_default_file count for the driver that reads them, from the groups
    it reads, and the finding names those the driver ignores there."""
    path = _option_file(tmp_path)
    options: dict[str, Any] = {"read_default_file": str(path)}
    if group:
        options["read_default_group"] = group
    level, message = _doctor_mysql.timeouts(options, driver)
    assert level == "warn"
    assert f"{driver} gets no {missing} from OPTIONS or {path}" in message
    assert f"{path} sets {ignored}" in message


def test_option_file_connect_timeout_completes_the_options(tmp_path: Path) -> None:
    """mysqlclient: connect_timeout from the option file, read and write timeouts in OPTIONS."""
    path = tmp_path / "my.cnf"
    path.write_text("[client]\nconnect_timeout=7\n")
    options = {"read_default_file": str(path), "read_timeout": 30, "write_timeout": 30}
    level, message = _doctor_mysql.timeouts(options, "mysqlclient")
    assert level == "ok", message
    assert f"connect_timeout=7 (from {path})" in message


def test_option_file_timeouts_are_reported_through_django(server: Server, tmp_path: Path) -> None:
    """End to end on PyMySQL: the finding names the option file and what PyMySQL ignores."""
    (tmp_path / "optionfile_settings.py").write_text(
        textwrap.dedent(
            f"""
            import copy
            from tests.settings import *  # noqa: F403
            DATABASES = copy.deepcopy(DATABASES)  # noqa: F405
            DATABASES["default"]["OPTIONS"] = {{
                "ssl_disabled": True, "read_default_file": {str(_option_file(tmp_path))!r},
            }}
            """
        )
    )
    result = _check(
        "--alias", "default", "--json", extra_path=tmp_path, settings="optionfile_settings"
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    timeouts = _findings(result)[("default", "timeouts")]
    assert timeouts["level"] == "warn"
    assert (
        "sets connect_timeout, read_timeout, but PyMySQL does not read them"
        in (timeouts["message"])
    )


@pytest.mark.contract
def test_pymysql_reads_no_timeout_from_an_option_file(tmp_path: Path) -> None:
    """PyMySQL takes the named group only, and no timeout, from read_default_file."""
    import pymysql.connections

    path = tmp_path / "my.cnf"
    path.write_text(
        "[client]\nuser=from_client\nread-timeout=1\nconnect-timeout=1\n[app]\nport=3307\n"
    )
    kwargs = {"defer_connect": True, "read_default_file": str(path)}
    plain = pymysql.connections.Connection(**kwargs)  # type: ignore[arg-type]
    assert plain.user == "from_client"
    assert (plain.connect_timeout, plain._read_timeout) == (10, None)
    grouped = pymysql.connections.Connection(**kwargs, read_default_group="app")  # type: ignore[arg-type]
    assert grouped.port == 3307
    assert grouped.user != "from_client"


# -- the help ------------------------------------------------------------------------------


def test_help_shows_pool_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The help's defaults are read from PoolConfig's fields, not written twice."""
    import dataclasses

    from wsgi_db_pool.config import PoolConfig

    fields = {f.name: f for f in dataclasses.fields(PoolConfig)}
    monkeypatch.setattr(fields["pool_size"], "default", 7)
    monkeypatch.setattr(fields["max_age"], "default", 1800.0)
    monkeypatch.setattr(fields["max_idle"], "default", None)
    commands = _doctor._parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    text = " ".join(commands.choices["check"].format_help().split())
    assert "pool_size (default 7)" in text
    assert "max_age in seconds, or 'none' (default 1800)" in text
    assert "max_idle in seconds, or 'none' (default none)" in text
    assert f"max_overflow (default {fields['max_overflow'].default})" in text


def _fleet_plan() -> Any:
    from wsgi_db_pool._doctor_plan import Plan

    return Plan(
        pool_size=5, max_overflow=5, max_age=3600.0, max_idle=600.0, min_size=0, timeout=30.0,
        workers=4, hosts=2, reserve=10, worker_class="gevent", threads=1, aliases=None,
    )  # fmt: skip


def test_cluster_nodes_without_an_address_count_like_the_one_that_answered() -> None:
    """Nodes announcing "AUTO" are left out of the addresses and counted like the node that
    answered (a note says so); the N-1 share is still computed over the cluster's size."""
    facts = {
        "server": "Galera cluster c",
        "max_connections": 45,
        "galera": {"cluster_size": 3, "node": "node3"},
        "nodes": [],
    }
    report = _doctor.Report("s")
    _doctor._cluster_capacity(_fleet_plan(), facts, ["cluster"], 1, report)
    found = {finding.check: finding for finding in report.findings}
    assert found["nodes"].level == "note"
    assert "3 in the cluster, 0 announcing a client address" in found["nodes"].message
    assert found["capacity"].level == "ok"  # 27 a node, 35 of room
    assert found["n_minus_one"].level == "fail"  # 40 a node
    assert "node3 (max_connections 45 less the reserve of 10: 35)" in found["n_minus_one"].message


@pytest.mark.parametrize(
    ("options", "seconds"),
    [
        ("base_port = 4567; evs.suspect_timeout = PT5S; evs.view_forget_timeout = P1D", 5.0),
        ("evs.suspect_timeout = PT1M30S", 90.0),
        ("evs.suspect_timeout = PT0.5S;", 0.5),
        ("evs.inactive_timeout = PT15S", None),
        ("evs.suspect_timeout = P1D", None),
        ("", None),
    ],
)
def test_galera_suspect_timeout_is_read_from_the_provider_options(
    options: str, seconds: float | None
) -> None:
    from wsgi_db_pool._doctor_mysql import suspect_timeout

    assert suspect_timeout(options) == seconds


@pytest.mark.parametrize(("timeout", "level"), [(5.0, "warn"), (7.0, "warn"), (10.0, "ok")])
def test_a_timeout_below_the_cluster_stall_is_named(timeout: float, level: str) -> None:
    """A node lost stalls commits for evs.suspect_timeout and a view change (6 s here):
    a pool timeout that does not outlast it by a second is a warning that says why."""
    import dataclasses

    plan = dataclasses.replace(_fleet_plan(), timeout=timeout)
    facts = {"server": "Galera cluster c", "galera": {"suspect_timeout": 5.0}}
    report = _doctor.Report("s")
    _doctor._cluster_stall(plan, facts, report)
    [finding] = report.findings
    assert (finding.check, finding.level) == ("stall", level)
    assert "about 6 s" in finding.message
    if level == "warn":
        assert "Raise timeout above 7 s" in finding.message
        assert "write_slots" in finding.message
