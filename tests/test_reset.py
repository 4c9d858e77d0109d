"""What one request leaves on a connection never reaches the next one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections
from django.test import override_settings

from tests.conftest import DB_NAME, Pooled, Server, events
from tests.faults.conftest import wait_for


def _assert_clean(state: dict[str, Any]) -> None:
    """The connection a request is given looks like a fresh one, to Django and to the server."""
    assert state["server_in_transaction"] == 0
    assert state["server_autocommit"] == 1
    assert state["autocommit"] is True
    assert state["in_atomic_block"] is False
    assert state["savepoint_ids"] == []
    assert state["atomic_blocks"] == 0
    assert state["needs_rollback"] is False
    assert state["run_on_commit"] == 0
    assert state["closed_in_transaction"] is False
    # Django's session setup survives reuse.
    assert state["isolation"] == "READ-COMMITTED"


LEFT_OPEN = [
    pytest.param("raw", "raise", False, id="raw-start-transaction-raise", marks=pytest.mark.smoke),
    pytest.param("raw", "return", False, id="raw-start-transaction-return"),
    pytest.param("raw", "raise", True, id="raw-start-transaction-propagated"),
    pytest.param("sql_autocommit", "raise", False, id="sql-autocommit-off-raise"),
    pytest.param("sql_autocommit", "return", False, id="sql-autocommit-off-return"),
    pytest.param("autocommit", "raise", False, id="set-autocommit-false-raise"),
    pytest.param("autocommit", "return", False, id="set-autocommit-false-return"),
    pytest.param("atomic", "raise", False, id="atomic-never-exited-raise"),
    pytest.param("atomic", "return", True, id="atomic-never-exited-return"),
]


@pytest.mark.parametrize(("how", "then", "propagate"), LEFT_OPEN)
def test_open_transaction_is_rolled_back(
    pooled: Pooled, server: Server, logs: list[dict[str, Any]], how: str, then: str, propagate: bool
) -> None:
    """A transaction a request leaves open is rolled back, never committed, before reuse."""
    params = f"how={how}&then={then}&name=leaked"
    with override_settings(DEBUG_PROPAGATE_EXCEPTIONS=propagate):
        if propagate and then == "raise":
            with pytest.raises(RuntimeError, match="transaction still open"):
                pooled.request("/leave-open/", params)
        else:
            exchange = pooled.request("/leave-open/", params)
            assert exchange.status_code == (200 if then == "return" else 500)
    [conn_id] = server.connection_ids()
    assert server.open_transactions(conn_id) == 0
    assert pooled.stats()["in_use"] == 0
    assert server.committed_names() == []

    state = pooled.json("/state/")
    assert state["conn_id"] == conn_id, "the connection was not recycled"
    _assert_clean(state)
    assert state["rows_visible"] == 0
    assert [e["reason"] for e in events(logs, "db_pool.discard")] == []

    # A later commit on that connection commits only its own row.
    pooled.json("/orm-write/", name="after")
    assert server.committed_names() == ["after"]


def test_atomic_state_does_not_leak(pooled: Pooled, server: Server) -> None:
    """Savepoints, open atomic blocks and pending on_commit callbacks die with their request."""
    conn_id = pooled.json("/leave-atomic-state/", name="leaked")["conn_id"]
    assert server.committed_names() == []
    state = pooled.json("/state/")
    assert state["conn_id"] == conn_id
    _assert_clean(state)
    assert state["recorded"] == [], "an on_commit callback of a rolled back request ran"

    hooked = pooled.json("/commit-hook/")
    assert hooked["recorded"] == ["clean on_commit"]
    assert server.committed_names() == ["hooked"]


def test_queries_log_is_cleared(pooled: Pooled, server: Server) -> None:
    """Under DEBUG, a request does not inherit the queries the previous one logged."""
    with override_settings(DEBUG=True):
        assert pooled.json("/queries/", n="5")["logged"] >= 5
        state = pooled.json("/state/")
    assert state["queries_logged"] == 0
    assert server.count() == 1


def test_execute_wrapper_is_removed(pooled: Pooled, server: Server) -> None:
    """An execute_wrapper a request never removed does not wrap the next request's queries."""
    from tests.app.views import RECORDED

    fresh = pooled.json("/state/")["execute_wrappers"]
    conn_id = pooled.json("/leak-execute-wrapper/")["conn_id"]
    assert RECORDED == ["wrapped: SELECT CONNECTION_ID()"]
    RECORDED.clear()
    state = pooled.json("/state/")
    assert state["conn_id"] == conn_id
    assert state["execute_wrappers"] == fresh
    assert RECORDED == []


@pytest.mark.parametrize(
    "kind",
    [
        "user_variable",
        "temporary_table",
        "named_lock",
        "session_variable",
        "isolation_level",
        "prepared_statement",
    ],
)
def test_session_state_does_not_leak(pooled: Pooled, server: Server, kind: str) -> None:
    """Session state a request leaves (variables, temp tables, locks) is gone for the next."""
    fresh = pooled.json("/session/")
    conn_id = pooled.json("/leave-session-state/", kind=kind)["conn_id"]
    assert conn_id == fresh["conn_id"]
    assert server.value("SELECT IS_USED_LOCK('wsgi_db_pool_leak')") is None
    after = pooled.json("/session/")
    assert after["conn_id"] == conn_id, "the connection was not recycled"
    assert after[kind] == fresh[kind]
    assert after == fresh


@pytest.mark.parametrize("then", ["nothing", "query"])
def test_view_closing_its_connection_loses_no_slot(
    make_pooled: Callable[..., Pooled], server: Server, logs: list[dict[str, Any]], then: str
) -> None:
    """A view that closes its connection (and maybe reconnects) keeps the cap and frees the slot."""
    pooled = make_pooled(pool_size=1, max_overflow=0, timeout=0.5)
    result = pooled.json("/close/", then=then)
    closed_id = result["closed_id"]
    # The server ends a session a moment after the client's QUIT (seen late on a loaded
    # machine): the session must go, within the wait, not be there at the first look.
    wait_for(lambda: closed_id not in server.connection_ids(), what="the closed session gone")
    assert pooled.stats()["in_use"] == 0
    # One slot only: if it were lost, this would wait 0.5 s and get a 503.
    after = pooled.json("/read/")["conn_id"]
    assert after != closed_id
    if then == "query":
        # Django reconnected the pooled wrapper itself; that connection is the pooled one now.
        assert after == result["new_id"]
    else:
        assert [e["reason"] for e in events(logs, "db_pool.discard")] == ["closed"]
    assert server.wait_count(1) == 1
    assert server.connection_ids() == {after}
    stats = pooled.stats()
    assert (stats["open"], stats["in_use"], stats["idle"]) == (1, 0, 1)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"CONN_MAX_AGE": 0}, id="max-age-0"),
        pytest.param({"CONN_MAX_AGE": 60}, id="max-age-60"),
        pytest.param({"CONN_MAX_AGE": None}, id="max-age-none"),
        pytest.param({"CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True}, id="health-checks"),
    ],
)
def test_django_settings_do_not_close_or_ping_behind_the_pool(
    make_pooled: Callable[..., Pooled],
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
    overrides: dict[str, Any],
) -> None:
    """CONN_MAX_AGE and CONN_HEALTH_CHECKS neither close nor ping a pooled connection."""
    for key, value in overrides.items():
        monkeypatch.setitem(connections.settings["default"], key, value)
    # "never": a session reset would zero the session counters this test reads.
    pooled = make_pooled(pool_size=1, max_overflow=0, reset_session="never")
    first = pooled.json("/read/")["conn_id"]
    ids: list[int] = []
    counted = pooled.session_counted(
        lambda: ids.extend(pooled.json("/read/")["conn_id"] for _ in range(15))
    )
    assert ids == [first] * 15
    assert server.connection_ids() == {first}
    assert pooled.stats()["connects"] == 1
    # No COM_PING (Django's health check), no other statement, no new connection.
    assert counted["com_admin_commands"] == 0
    assert counted["questions"] == 15


def test_callproc_state_is_reset(pooled: Pooled, server: Server) -> None:
    """State a stored procedure leaves (callproc skips execute wrappers) is reset for the next."""
    server.rows(f"DROP PROCEDURE IF EXISTS {DB_NAME}.leave_variable")
    server.rows(f"CREATE PROCEDURE {DB_NAME}.leave_variable() BEGIN SET @from_procedure = 42; END")
    try:
        called = pooled.json("/call-procedure/")
        after = pooled.json("/procedure-variable/")
    finally:
        server.rows(f"DROP PROCEDURE IF EXISTS {DB_NAME}.leave_variable")
    assert after["conn_id"] == called["conn_id"], "the same connection served both"
    assert after["value"] is None
