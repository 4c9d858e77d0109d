"""A fork that Python's at-fork hooks never saw (uWSGI forks in C): the pid check at checkout.

The "child" is this process with ``os.getpid`` patched to answer another pid, so nothing
forks; the pool logic uses the fake connector of test_pool_logic, the middleware the
real MariaDB.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.conftest import Pooled, Server
from tests.test_pool_logic import _counts, _pool

CHILD_PID = os.getpid() + 100_000


@pytest.fixture
def as_child(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to become the child: os.getpid() answers another pid from then on."""

    def fork() -> None:
        monkeypatch.setattr(os, "getpid", lambda: CHILD_PID)

    return fork


def test_checkout_after_an_unseen_fork_never_hands_out_the_parents_connection(
    as_child: Callable[[], None],
) -> None:
    """The parent's idle connection is dropped (not closed on the server) and a new one opened."""
    pool = _pool(pool_size=2)
    parents = pool.checkout()
    pool.checkin(parents)
    assert _counts(pool) == (1, 1, 0)
    as_child()
    mine = pool.checkout()
    assert mine.conn is not parents.conn
    assert parents.conn.closed  # the child's copy of the socket, dropped
    assert pool.connector.connects == 2  # type: ignore[attr-defined]
    assert _counts(pool) == (1, 0, 1)
    pool.checkin(mine)
    # The check runs once: the child's own connection is reused from then on.
    assert pool.checkout().conn is mine.conn


def test_a_connection_checked_out_before_the_fork_is_not_pooled_in_the_child(
    as_child: Callable[[], None],
) -> None:
    """Given back in the child after its first checkout, the parent's entry is dropped."""
    pool = _pool(pool_size=2)
    parents = pool.checkout()
    as_child()
    mine = pool.checkout()
    pool.checkin(parents)
    assert parents.conn.closed
    assert _counts(pool) == (1, 0, 1)
    pool.checkin(mine)
    assert _counts(pool) == (1, 1, 0)


def test_a_pool_closed_in_the_parent_serves_in_the_child(as_child: Callable[[], None]) -> None:
    """A parent that closes its pools after loading the app (uWSGI's master) forks open ones."""
    pool = _pool(pool_size=2)
    pool.checkin(pool.checkout())
    pool.close()
    assert pool.closed
    as_child()
    assert not pool.closed
    entry = pool.checkout()
    assert not entry.conn.closed
    pool.checkin(entry)
    assert _counts(pool) == (1, 1, 0)


def test_the_middleware_resets_and_restarts_its_reaper_in_an_unseen_child(
    make_pooled: Callable[..., Pooled], server: Server, as_child: Callable[[], None]
) -> None:
    """The first request in the child opens its own connection, and the reaper runs again."""
    app = make_pooled(aliases=["default"], pool_size=1, max_overflow=0, timeout=2.0)
    parents = app.json("/read/")["conn_id"]
    reaper = app.mw._stop
    assert reaper is not None
    as_child()
    # What a C fork leaves: the parent's reaper thread does not run in the child.
    mine = app.json("/read/")["conn_id"]
    assert mine != parents
    assert app.mw._stop is not None
    assert app.mw._stop is not reaper
    reaper.set()  # the "parent's" reaper, which here shares the process
    # Dropped without a COM_QUIT (in a real fork only the child's copy of the socket).
    assert server.connection_ids() == {mine}
    assert app.stats()["open"] == 1
    assert app.json("/read/")["conn_id"] == mine
