"""Session state one request leaves never reaches the next, however it was set (MariaDB).

Each kind of state is set directly, from a stored function called in a SELECT, from a
procedure, and from a trigger, under each ``reset_session`` mode. No statement text
shows what a routine does, and the server's SERVER_SESSION_STATE_CHANGED flag misses
``SELECT ... INTO @var`` and GET_LOCK(); the default must be safe anyway.
PostgreSQL's equivalents are in tests/test_backends.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import settings
from tests.conftest import DB_NAME, USER, Pooled, Server

# Named locks and roles are server-wide: one of each per test namespace.
LOCK = f"{DB_NAME}.leak"
ROLE = f"{settings.NAMESPACE}_role"
DEFINER = f"'{USER}'@'127.0.0.1'"

# How each kind of state is set, as a statement a routine or trigger can hold too.
BODIES = {
    "user_variable": "SET @secret = 'alice-token'",
    # Not flagged by SERVER_SESSION_STATE_CHANGED on MariaDB 10.11, even when run directly.
    "user_variable_into": "SELECT 'alice-token' INTO @secret",
    "session_variable": "SET SESSION time_zone = '+05:00'",
    "temporary_table": "CREATE TEMPORARY TABLE t_leak (x INT)",
    # Never flagged by SERVER_SESSION_STATE_CHANGED.
    "named_lock": f"DO GET_LOCK('{LOCK}', 0)",
    "prepared_statement": "PREPARE leak_stmt FROM 'SELECT 1'",
    "role": f"SET ROLE {ROLE}",
    # COM_RESET_CONNECTION keeps the current database: the pool puts it back.
    "database": "USE information_schema",
}
# The key of /probe-session/'s answer that shows each kind.
SHOWN_AS = {kind: kind for kind in BODIES} | {"user_variable_into": "user_variable"}
WAYS = ("direct", "function", "procedure", "trigger", "view")
# MariaDB refuses dynamic SQL (PREPARE) in stored functions and triggers, and USE in any
# stored program.
IMPOSSIBLE = {
    ("prepared_statement", "function"),
    ("prepared_statement", "trigger"),
    ("prepared_statement", "view"),
    # A view runs its function in the definer's security context, whose role MariaDB
    # puts back when the statement ends: nothing to leak.
    ("role", "view"),
    ("database", "function"),
    ("database", "view"),
    ("database", "procedure"),
    ("database", "trigger"),
}
MODES = ("auto", "always", "never")

CASES = [
    pytest.param(kind, way, mode, id=f"{mode}-{kind}-{way}")
    for mode in MODES
    for kind in BODIES
    for way in WAYS
    if (kind, way) not in IMPOSSIBLE
]


def _ddl(way: str, body: str) -> tuple[list[str], list[str]]:
    """The statements root runs to make the routine (and what drops it), for ``way``."""
    if way == "function":
        return (
            [
                f"CREATE DEFINER={DEFINER} FUNCTION {DB_NAME}.leak_f() RETURNS INT "
                f"BEGIN {body}; RETURN 1; END"
            ],
            [f"DROP FUNCTION IF EXISTS {DB_NAME}.leak_f"],
        )
    if way == "view":
        # A plain SELECT from a view whose definition calls the function.
        create, drop = _ddl("function", body)
        return (
            [
                *create,
                f"CREATE DEFINER={DEFINER} VIEW {DB_NAME}.leak_v AS SELECT {DB_NAME}.leak_f() AS x",
            ],
            [f"DROP VIEW IF EXISTS {DB_NAME}.leak_v", *drop],
        )
    if way == "procedure":
        return (
            [f"CREATE DEFINER={DEFINER} PROCEDURE {DB_NAME}.leak_p() BEGIN {body}; END"],
            [f"DROP PROCEDURE IF EXISTS {DB_NAME}.leak_p"],
        )
    if way == "trigger":
        return (
            [
                f"CREATE TABLE {DB_NAME}.leak_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
                f"CREATE DEFINER={DEFINER} TRIGGER {DB_NAME}.leak_tr BEFORE INSERT ON "
                f"{DB_NAME}.leak_t FOR EACH ROW BEGIN {body}; END",
            ],
            [f"DROP TABLE IF EXISTS {DB_NAME}.leak_t"],  # drops its trigger too
        )
    return [], []


# What the request runs for each way.
CALLS = {
    "function": "SELECT leak_f()",
    "procedure": "CALL leak_p()",
    "trigger": "INSERT INTO leak_t (v) VALUES (1)",
    "view": "SELECT x FROM leak_v",
}


@pytest.fixture
def routines(server: Server) -> Iterator[Callable[[list[str], list[str]], None]]:
    """Make routines as root for this test; whatever was made is dropped afterwards."""
    drops: list[str] = []

    def make(create: list[str], drop: list[str]) -> None:
        drops[:0] = drop
        for sql in drop + create:
            server.rows(sql)

    yield make
    for sql in drops:
        server.rows(sql)


@pytest.fixture(scope="module")
def role(_server_session: Server) -> Iterator[str]:
    """A role the test user may take with SET ROLE."""
    _server_session.rows(f"CREATE ROLE IF NOT EXISTS {ROLE}")
    _server_session.rows(f"GRANT SELECT ON {DB_NAME}.* TO {ROLE}")
    _server_session.rows(f"GRANT {ROLE} TO {DEFINER}")
    yield ROLE
    _server_session.rows(f"DROP ROLE IF EXISTS {ROLE}")


def _statements(kind: str, way: str, routines: Callable[[list[str], list[str]], None]) -> str:
    if way == "direct":
        return BODIES[kind]
    routines(*_ddl(way, BODIES[kind]))
    return CALLS[way]


def _pooled(make_pooled: Callable[..., Pooled], mode: str) -> Pooled:
    # "auto" is the default: the pool is made without naming it.
    kwargs: dict[str, Any] = {} if mode == "auto" else {"reset_session": mode}
    return make_pooled(pool_size=1, max_overflow=0, **kwargs)


@pytest.mark.parametrize(("kind", "way", "mode"), CASES)
def test_session_state_per_way_and_mode(
    make_pooled: Callable[..., Pooled],
    server: Server,
    routines: Callable[[list[str], list[str]], None],
    role: str,
    kind: str,
    way: str,
    mode: str,
) -> None:
    """State set directly or by a routine is gone for the next request under auto and always;
    under never it stays, as documented."""
    pooled = _pooled(make_pooled, mode)
    sql = _statements(kind, way, routines)
    fresh = pooled.json("/probe-session/", lock=LOCK)
    left = pooled.json("/run-sql/", sql=sql)
    after = pooled.json("/probe-session/", lock=LOCK)
    assert after["conn_id"] == left["conn_id"] == fresh["conn_id"], "not recycled"
    shown = SHOWN_AS[kind]
    if mode == "never":
        assert after[shown] != fresh[shown], f"{kind} set by {way} was expected to stay"
    else:
        assert after == fresh
        # Nor does the server still hold the lock for the idle connection's next user.
        assert server.value("SELECT IS_USED_LOCK(%s)", (LOCK,)) is None
    assert pooled.stats()["discards"] == {}


def test_secret_from_a_function_in_a_select_is_gone(
    make_pooled: Callable[..., Pooled],
    server: Server,
    routines: Callable[[list[str], list[str]], None],
) -> None:
    """Default settings: request 1 runs SELECT f() (f sets @secret); request 2 on the same
    connection does not see @secret."""
    routines(
        [
            f"CREATE DEFINER={DEFINER} FUNCTION {DB_NAME}.f() RETURNS INT "
            "BEGIN SET @secret = 'alice-token'; RETURN 1; END"
        ],
        [f"DROP FUNCTION IF EXISTS {DB_NAME}.f"],
    )
    pooled = make_pooled(pool_size=1)
    first = pooled.json("/run-sql/", sql="SELECT f()")
    second = pooled.json("/probe-session/")
    assert second["conn_id"] == first["conn_id"]
    assert second["user_variable"] == [None, None]


def test_variable_from_a_trigger_is_gone(
    make_pooled: Callable[..., Pooled],
    server: Server,
    routines: Callable[[list[str], list[str]], None],
) -> None:
    """Default settings: request 1 inserts into a table whose trigger sets @trig; request 2 on
    the same connection does not see @trig."""
    routines(
        [
            f"CREATE TABLE {DB_NAME}.audited (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
            f"CREATE DEFINER={DEFINER} TRIGGER {DB_NAME}.audited_bi BEFORE INSERT ON "
            f"{DB_NAME}.audited FOR EACH ROW SET @trig = NEW.v",
        ],
        [f"DROP TABLE IF EXISTS {DB_NAME}.audited"],
    )
    pooled = make_pooled(pool_size=1)
    first = pooled.json("/run-sql/", sql="INSERT INTO audited (v) VALUES (7)")
    second = pooled.json("/probe-session/")
    assert second["conn_id"] == first["conn_id"]
    assert second["user_variable"] == [None, None]


# -- "auto" skips the reset after a request that provably left nothing -------------------


def test_a_clean_read_skips_the_reset(make_pooled: Callable[..., Pooled]) -> None:
    """Two plain SELECT requests on one connection: no COM_RESET_CONNECTION between them
    (it would zero the session's counters), so the primary-key read pays none."""
    pooled = make_pooled(pool_size=1, max_overflow=0)
    first = pooled.json("/session-counter/")
    second = pooled.json("/session-counter/")
    assert second["conn_id"] == first["conn_id"]
    assert second["selects"] > first["selects"]


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("SELECT leak_f()", id="function"),
        pytest.param("SELECT x FROM leak_v", id="view"),
        pytest.param("SELECT 1 INTO @x", id="into-variable"),
        pytest.param("SELECT GET_LOCK('wsgi_db_pool_clean', 0)", id="get_lock"),
        pytest.param("SELECT `leak_f`()", id="quoted-function"),
    ],
)
def test_a_read_that_may_leave_state_is_reset(
    make_pooled: Callable[..., Pooled],
    routines: Callable[[list[str], list[str]], None],
    sql: str,
) -> None:
    """A SELECT that calls a routine, reads a view or sets anything is followed by the
    reset: the next request's session counts only its own SELECT."""
    routines(*_ddl("view", "SET @secret = 'alice-token'"))
    pooled = make_pooled(pool_size=1, max_overflow=0)
    before = pooled.json("/session-counter/")
    pooled.json("/run-sql/", sql=sql)
    after = pooled.json("/session-counter/")
    assert after["conn_id"] == before["conn_id"]
    assert after["selects"] == 1


def test_a_view_made_after_the_connection_is_seen_by_the_next_connection(
    make_pooled: Callable[..., Pooled],
    routines: Callable[[list[str], list[str]], None],
) -> None:
    """Views are read at connect: one made later is known to connections made after it
    (the documented window; max_age bounds it)."""
    pooled = make_pooled(pool_size=1, max_overflow=0, reset_session="auto")
    first = pooled.json("/session-counter/")
    routines(*_ddl("view", "SET @secret = 'alice-token'"))
    pooled.mw.pools["default"].close()  # every connection made again from here
    pooled.mw.pools["default"]._reset_state()
    fresh = pooled.json("/session-counter/")
    assert fresh["conn_id"] != first["conn_id"]
    pooled.json("/run-sql/", sql="SELECT x FROM leak_v")
    after = pooled.json("/probe-session/")
    assert after["conn_id"] == fresh["conn_id"]
    assert after["user_variable"] == [None, None]
