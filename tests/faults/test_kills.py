"""Connections the server ends: KILL under load, KILL CONNECTION/QUERY mid-query, wait_timeout."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from tests.app.views import WRITES
from tests.conftest import Pooled, Server, events, request
from tests.faults.conftest import running_queries, wait_for
from tests.settings import DB_PORT

pytestmark = pytest.mark.fault

# What a query on a connection killed under it raises: killed (1927), gone away (2006),
# lost during query (2013).
KILLED_CODES = {1927, 2006, 2013}


def test_every_connection_killed_under_load(
    make_pooled: Callable[..., Pooled],
    server: Server,
    request_exceptions: list[BaseException],
    logs: list[dict[str, Any]],
) -> None:
    """Every connection killed under load: only requests in flight fail (500), later ones pass."""
    pooled = make_pooled(aliases=["default"], pool_size=4, max_overflow=2, timeout=5.0)
    cap = 6
    done: list[tuple[float, int]] = []  # (when the request started, its status)
    running = True

    def client() -> None:
        while running:
            started = time.monotonic()
            done.append((started, request(pooled.app, "/hold/", "seconds=0.005").status_code))

    clients = [gevent.spawn(client) for _ in range(30)]
    try:
        wait_for(lambda: len(done) >= 150, what="150 requests before the kill")
        assert pooled.stats()["open"] == cap, "the load should use every slot"
        killed = server.connection_ids()
        assert len(killed) == cap
        server.kill_all()
        wait_for(lambda: not killed & server.connection_ids(), what="the killed connections gone")
        after_kill = time.monotonic()
        wait_for(
            lambda: sum(started > after_kill for started, _ in done) >= 300,
            timeout=15.0,
            what="300 requests after the kill",
        )
    finally:
        running = False
        gevent.joinall(clients, timeout=10.0, raise_error=True)
    assert all(client.dead for client in clients), "a client greenlet hangs"

    before = [status for started, status in done if started <= after_kill]
    after = [status for started, status in done if started > after_kill]
    assert set(after) == {200}, "a request that began after the kill failed"
    assert set(before) <= {200, 500}
    # Each killed connection can fail at most the one request that held it.
    failed = before.count(500)
    assert failed <= cap
    assert len(request_exceptions) == failed
    assert {exc.args[0] for exc in request_exceptions} <= KILLED_CODES, request_exceptions

    stats = pooled.stats()
    assert (stats["in_use"], stats["waiting"], stats["timeouts"]) == (0, 0, 0)
    assert stats["open"] == stats["idle"] <= cap
    assert stats["discards"].get("broken", 0) == cap, stats["discards"]
    assert server.wait_count(stats["open"]) == stats["open"]
    assert not killed & server.connection_ids()
    broken = [e for e in events(logs, "db_pool.discard") if e["reason"] == "broken"]
    assert len(broken) == cap
    # Back to normal: sequential requests reuse one connection and open none.
    connects = stats["connects"]
    ids = {pooled.json("/read/")["conn_id"] for _ in range(5)}
    assert len(ids) == 1
    assert pooled.stats()["connects"] == connects


@pytest.mark.parametrize(
    ("kill", "codes"),
    [
        pytest.param("CONNECTION", KILLED_CODES, id="kill-connection"),
        pytest.param("QUERY", {1317}, id="kill-query"),
    ],
)
def test_kill_during_a_query(
    pooled: Pooled,
    server: Server,
    request_exceptions: list[BaseException],
    logs: list[dict[str, Any]],
    kill: str,
    codes: set[int],
) -> None:
    """KILL CONNECTION mid-query: 500 and discarded; KILL QUERY (1317): 500 and recycled."""
    first = pooled.json("/read/")["conn_id"]
    slow = gevent.spawn(pooled.request, "/sleep-query/", "seconds=5")
    [busy] = wait_for(lambda: running_queries(server, "SELECT SLEEP%"), what="the query running")
    assert busy == first
    server.rows(f"KILL {kill} {busy}")
    exchange = slow.get(timeout=3.0)
    assert exchange.status_code == 500
    [exc] = request_exceptions
    assert exc.args[0] in codes, exc

    stats = pooled.stats()
    assert (stats["in_use"], stats["waiting"]) == (0, 0)
    discarded = [e["reason"] for e in events(logs, "db_pool.discard")]
    if kill == "CONNECTION":
        assert discarded == ["broken"]
        assert (stats["open"], stats["recycles"], stats["discards"]) == (0, 1, {"broken": 1})
        assert server.wait_count(0) == 0
        assert pooled.json("/read/")["conn_id"] != first
    else:
        assert discarded == []
        assert (stats["open"], stats["recycles"], stats["discards"]) == (1, 2, {})
        assert pooled.json("/read/")["conn_id"] == first
    assert pooled.stats()["connects"] == (2 if kill == "CONNECTION" else 1)
    assert server.count() == 1


@pytest.mark.parametrize(
    "pre_ping",
    [
        pytest.param(False, id="no-ping"),
        pytest.param(60.0, id="inside-pre_ping-window"),
        pytest.param(True, id="ping-always"),
    ],
)
def test_idle_connection_expired_by_wait_timeout(
    make_pooled: Callable[..., Pooled],
    add_alias: Callable[..., str],
    server: Server,
    request_exceptions: list[BaseException],
    logs: list[dict[str, Any]],
    pre_ping: bool | float,
) -> None:
    """A connection closed by wait_timeout is replaced at checkout: no error reaches the view."""
    alias = add_alias("short_wait", port=DB_PORT, init_command="SET SESSION wait_timeout = 1")
    pooled = make_pooled(aliases=[alias], pool_size=1, max_overflow=0, pre_ping=pre_ping)
    WRITES.clear()
    pooled.json("/fault-write/", alias=alias, name="first")
    [expired] = server.connection_ids()
    # The fault itself: the server ends the idle session after one second.
    assert server.wait_count(0, timeout=5.0) == 0

    pooled.json("/fault-write/", alias=alias, name="second")
    assert request_exceptions == []
    assert server.committed_names() == ["first", "second"]
    assert WRITES == {"first": "committed", "second": "committed"}
    assert [e["reason"] for e in events(logs, "db_pool.discard", alias)] == ["broken"]
    stats = pooled.stats(alias)
    assert (stats["connects"], stats["checkouts"], stats["discards"]) == (2, 2, {"broken": 1})
    assert expired not in server.connection_ids()
    assert server.count() == stats["open"] == 1
