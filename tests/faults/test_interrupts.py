"""gevent.Timeout and GreenletExit mid-query inside a transaction: nothing of it is ever committed.

An interrupted command may leave its reply on the socket; a later COMMIT on that socket
could read it as its own while the server commits the partial transaction. These tests
interrupt a view inside ``transaction.atomic()`` after it inserted a row, both when the
interruption leaves the view and when the view swallows it so that the block ends
normally and Django sends COMMIT. Also run against the oldest PyMySQL supported
(see docs/RELIABILITY.md for the command).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pymysql
import pytest

from tests.app.views import RECORDED, WRITES
from tests.conftest import Exchange, Pooled, Server, events, request
from tests.faults.conftest import running_queries, wait_for

pytestmark = pytest.mark.fault

CASES = [
    # (how the view treats it, what interrupts the query, the outcome the test sees)
    pytest.param("escape", "timeout", "raises", id="timeout-leaves-the-view"),
    pytest.param("escape", "kill", "raises", id="greenletexit-leaves-the-view"),
    pytest.param("swallow", "view-timeout", 500, id="silent-timeout-in-atomic-then-commit"),
    pytest.param("catch", "timeout", 500, id="timeout-caught-in-atomic-then-commit"),
    pytest.param("catch", "kill", 500, id="greenletexit-caught-in-atomic-then-commit"),
]


def _serve(pooled: Pooled, query: str, interrupt: str, server: Server) -> Any:
    """Serve one request in its own greenlet and interrupt it mid-query as ``interrupt`` says."""
    if interrupt == "timeout":

        def run() -> Any:
            with gevent.Timeout(0.3):
                return request(pooled.app, "/interrupt-in-atomic/", query)

        serving = gevent.spawn(run)
    else:
        serving = gevent.spawn(request, pooled.app, "/interrupt-in-atomic/", query)
        if interrupt == "kill":
            wait_for(lambda: running_queries(server, "SELECT SLEEP%"), what="the query running")
            serving.kill(block=False)  # GreenletExit inside the query, as a server's shutdown does
    gevent.joinall([serving], timeout=5.0)
    assert serving.dead, "the interrupted request hangs"
    return serving


@pytest.mark.parametrize(("how", "interrupt", "outcome"), CASES)
def test_interrupted_transaction_is_never_committed(
    pooled: Pooled,
    server: Server,
    logs: list[dict[str, Any]],
    request_exceptions: list[BaseException],
    how: str,
    interrupt: str,
    outcome: Any,
) -> None:
    """A query interrupted inside atomic(): connection discarded, slot freed, nothing committed."""
    warm = pooled.json("/read/")["conn_id"]
    serving = _serve(pooled, f"how={how}&name=partial&seconds=1", interrupt, server)

    if outcome == "raises":
        # Not an Exception: Django does not turn it into a 500; it leaves the middleware.
        expected = gevent.Timeout if interrupt == "timeout" else gevent.GreenletExit
        assert isinstance(serving.exception or serving.value, expected)
        assert request_exceptions == []
    else:
        exchange: Exchange = serving.get()
        assert exchange.status_code == outcome
        # The COMMIT failed on the dropped socket instead of committing.
        [exc] = request_exceptions
        assert isinstance(exc, pymysql.Error) or "InterfaceError" in type(exc).__name__, exc
        if how == "catch":
            caught = "Timeout" if interrupt == "timeout" else "GreenletExit"
            assert [f"caught {caught}"] == RECORDED

    # Discarded once the pool has ended the session on the server (off the request's path).
    wait_for(lambda: events(logs, "db_pool.discard"), 5.0, "the discard")
    assert [e["reason"] for e in events(logs, "db_pool.discard")] == ["interrupted"]
    stats = pooled.stats()
    assert (stats["open"], stats["in_use"], stats["waiting"]) == (0, 0, 0)
    assert stats["discards"] == {"interrupted": 1}
    # Once the server has ended that session, its transaction is rolled back for good.
    assert server.wait_count(0, timeout=5.0) == 0
    assert warm not in server.connection_ids()
    assert server.committed_names() == []
    # The slot came back (pool_size=1): the next request neither waits nor fails.
    assert pooled.json("/orm-write/", name="after")["id"]
    assert server.committed_names() == ["after"]
    assert server.count() == 1


def test_writes_interrupted_anywhere_are_all_or_nothing(
    make_pooled: Callable[..., Pooled], server: Server
) -> None:
    """Writes interrupted anywhere: a row is committed only if the view saw its COMMIT succeed."""
    pooled = make_pooled(aliases=["default"], pool_size=1, max_overflow=0, timeout=2.0)
    WRITES.clear()
    for i in range(40):
        # An open connection first (untimed), so that the deadline falls in the write itself:
        # the INSERT, the SLEEP, the COMMIT or after it.
        pooled.json("/read/")
        with gevent.Timeout(0.0005 * i, False):
            request(pooled.app, "/fault-write/", f"name=r{i}&sleep=0.005")
    stats = pooled.stats()
    assert (stats["in_use"], stats["waiting"]) == (0, 0)
    assert set(stats["discards"]) <= {"interrupted"}
    committed = set(server.committed_names())
    outcomes = dict(WRITES)
    assert {"committed", "failed"} <= set(outcomes.values()), outcomes
    for name, state in outcomes.items():
        if state == "committed":
            assert name in committed
        elif state == "failed":
            assert name not in committed, f"{name} was committed though its write failed"
        else:
            assert state == "in_doubt", (name, state)
    assert server.wait_count(stats["open"]) == stats["open"]
