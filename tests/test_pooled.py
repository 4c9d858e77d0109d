"""``pooled()``: greenlets a view spawns, command-like blocks, greenlets that never give back."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from django.db import connections

import wsgi_db_pool
from tests.app.models import Item
from tests.conftest import Pooled, Server, events


def _one(sql: str) -> Any:
    with connections["default"].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


class Peak:
    """The most server connections of the pool's user seen while it runs (sampled every 5 ms)."""

    def __init__(self, server: Server) -> None:
        self.value = 0
        self._running = True

        def sample() -> None:
            while self._running:
                self.value = max(self.value, server.count())
                gevent.sleep(0.005)

        self._greenlet = gevent.spawn(sample)

    def stop(self) -> int:
        self._running = False
        self._greenlet.join()
        return self.value


@pytest.mark.smoke
def test_greenlets_under_pooled_share_the_cap(
    make_pooled: Callable[..., Pooled], server: Server
) -> None:
    """20 greenlets of one view, each under @pooled, run on at most cap = 3 connections."""
    app = make_pooled(aliases=["default"], pool_size=2, max_overflow=1, timeout=10.0)
    peak = Peak(server)
    try:
        ids = app.json("/spawn/", n=20, seconds=0.02, pooled=1)["conn_ids"]
    finally:
        seen = peak.stop()
    assert len(ids) == 20
    assert len(set(ids)) <= 3
    assert 1 <= seen <= 3
    stats = app.stats()
    assert (stats["in_use"], stats["waiting"]) == (0, 0)
    assert stats["checkouts"] == 20
    # Nothing stranded: every connection is idle in the pool.
    assert server.wait_count(stats["open"]) == stats["open"] == stats["idle"] <= 3
    assert server.connection_ids() <= set(ids)


# The collector finds the stranded sockets unclosed: that is the point, not a test failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_greenlets_without_pooled_strand_their_connections(pooled: Pooled, server: Server) -> None:
    """The contrast, stock Django: 10 spawned greenlets open 10 connections that outlive them."""
    ids = pooled.json("/spawn/", n=10, seconds=0.02)["conn_ids"]
    assert len(set(ids)) == 10
    # The pool lent none of them and knows nothing of them.
    assert pooled.stats()["checkouts"] == 0
    # The greenlets are gone, their connections are not: nothing closes them.
    gevent.sleep(0.05)
    assert server.connection_ids() == set(ids)
    # Only the cyclic garbage collector drops them (without COM_QUIT: aborted clients).
    gc.collect()
    assert server.wait_count(0) == 0


def test_command_like_block(pooled: Pooled, server: Server) -> None:
    """``with pooled():`` outside any request checks out on first use and gives back at the end."""
    with wsgi_db_pool.pooled():
        Item.objects.create(name="from a command")
        first = _one("SELECT CONNECTION_ID()")
        assert pooled.stats()["in_use"] == 1
    assert connections.all(initialized_only=True) == []  # nothing left bound here
    stats = pooled.stats()
    assert (stats["in_use"], stats["idle"], stats["checkouts"]) == (0, 1, 1)
    with wsgi_db_pool.pooled():
        assert _one("SELECT CONNECTION_ID()") == first  # the same pooled connection, reused
        assert Item.objects.count() == 1
    assert server.connection_ids() == {first}
    # A request after the command gets that connection too.
    assert pooled.json("/read/")["conn_id"] == first


def test_pooled_inside_a_request_changes_nothing(pooled: Pooled, server: Server) -> None:
    """A @pooled function called by a view shares the request's checkout instead of its own."""

    @wsgi_db_pool.pooled
    def helper() -> int:
        return int(_one("SELECT CONNECTION_ID()"))

    def view_like() -> tuple[int, int]:
        with wsgi_db_pool.pooled():  # the outer unit of work, as a request would be
            outer = int(_one("SELECT CONNECTION_ID()"))
            return outer, helper()

    outer, inner = gevent.spawn(view_like).get()
    assert outer == inner
    assert pooled.stats()["checkouts"] == 1


def test_greenlet_ending_inside_pooled_is_reclaimed_with_a_leak_event(
    pooled: Pooled, server: Server, logs: list[dict[str, Any]]
) -> None:
    """A greenlet that enters pooled() and ends without leaving loses its connection, and
    ``db_pool.leak`` says where the block began."""

    def abandon() -> int:
        wsgi_db_pool.pooled().__enter__()  # never exited
        return int(_one("SELECT CONNECTION_ID()"))

    leaked = gevent.spawn(abandon).get()
    # gevent runs the reclaim from its loop as soon as the greenlet has ended.
    gevent.sleep(0.01)
    [leak] = events(logs, "db_pool.leak")
    assert leak["where"].rsplit(":", 1)[0].endswith("tests/test_pooled.py")
    assert int(leak["where"].rsplit(":", 1)[1]) == abandon.__code__.co_firstlineno + 1
    stats = pooled.stats()
    assert (stats["in_use"], stats["open"], stats["discards"]) == (0, 0, {"leak": 1})
    assert server.wait_count(0) == 0
    assert leaked not in server.connection_ids()
    # The slot is free again: with pool_size=1, max_overflow=0 this would time out otherwise.
    assert pooled.json("/read/")["conn_id"] != leaked


def test_pooled_with_two_open_middlewares_says_so(make_pooled: Callable[..., Pooled]) -> None:
    """With two open PoolingMiddlewares, pooled() refuses, naming the count and the fix."""
    make_pooled(pool_size=1, max_overflow=0)
    make_pooled(pool_size=1, max_overflow=0)
    with (
        pytest.raises(RuntimeError, match=r"found 2 open .* pass middleware=your_application"),
        wsgi_db_pool.pooled(),
    ):
        pass


def test_decorator_with_middleware_argument(pooled: Pooled, server: Server) -> None:
    """``@pooled(middleware=app)`` decorates a function like ``@pooled`` does."""

    @wsgi_db_pool.pooled(middleware=pooled.mw)
    def task() -> int:
        return int(_one("SELECT CONNECTION_ID()"))

    conn_id = gevent.spawn(task).get()
    assert server.connection_ids() == {conn_id}
    assert pooled.stats()["checkouts"] == 1


def test_blocks_in_a_long_lived_greenlet_do_not_accumulate(
    make_pooled: Callable[..., Pooled], server: Server
) -> None:
    """pooled() blocks that end normally leave nothing behind on the greenlet that ran them."""
    from wsgi_db_pool import _lease

    pooled = make_pooled(pool_size=1, max_overflow=0)

    def leases() -> int:
        gc.collect()
        return sum(type(obj) is _lease.Lease for obj in gc.get_objects())

    def worker() -> None:
        before = leases()
        for _ in range(50):
            with pooled.mw.pooled(), connections["default"].cursor() as cursor:
                cursor.execute("SELECT 1")
        # Still running: nothing may keep the finished blocks' leases alive.
        assert leases() == before

    gevent.spawn(worker).get()
    assert pooled.stats()["in_use"] == 0
    assert server.count() == 1
