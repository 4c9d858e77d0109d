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
from wsgi_db_pool import _doctor

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
    """An alias without ssl_disabled and without read/write timeouts gets two warnings."""
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
    assert found[("default", "tls")]["level"] == "warn"
    assert "builds a new ssl.SSLContext on every connect" in found[("default", "tls")]["message"]
    assert found[("default", "timeouts")]["level"] == "warn"
    assert "set no read_timeout, write_timeout" in found[("default", "timeouts")]["message"]


@pytest.mark.parametrize(
    ("options", "version", "level"),
    [
        pytest.param({"ssl_disabled": True}, "1.2.4", "ok", id="ssl_disabled"),
        pytest.param({}, "1.2.4", "warn", id="default-1.2-tries-tls"),
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
    assert _doctor._tls(options, "PyMySQL", version)[0] == level


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
    expected = _doctor._tls({}, "PyMySQL", pymysql.VERSION_STRING)[0] == "warn"
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
