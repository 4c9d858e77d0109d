"""Many greenlets at once, as a gevent server runs them: the cap holds, waiters go in order."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from tests.conftest import USER, Pooled, Server, request, root_connect


class Sampler:
    """Watches the pool from its own greenlet: the server's count of its connections, stats()."""

    def __init__(self, pooled: Pooled) -> None:
        self.pooled = pooled
        self.peak_server = 0
        self.peak_open = 0
        self.peak_waiting = 0
        self.samples = 0
        self._running = True
        # Its own root connection: a PyMySQL connection serves one greenlet at a time.
        self._conn = root_connect()
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        with self._conn.cursor() as cursor:
            while self._running:
                cursor.execute(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (USER,)
                )
                self.peak_server = max(self.peak_server, cursor.fetchone()[0])
                stats = self.pooled.stats()
                self.peak_open = max(self.peak_open, stats["open"])
                self.peak_waiting = max(self.peak_waiting, stats["waiting"])
                self.samples += 1
                gevent.sleep(0.001)

    def stop(self) -> None:
        self._running = False
        self._greenlet.get()
        self._conn.close()


@pytest.mark.slow
def test_cap_holds_for_300_concurrent_requests(
    make_pooled: Callable[..., Pooled], server: Server
) -> None:
    """300 concurrent requests all succeed on at most pool_size + max_overflow = 5 connections."""
    pooled = make_pooled(aliases=["default"], pool_size=3, max_overflow=2, timeout=30.0)
    sampler = Sampler(pooled)
    try:
        greenlets = [
            gevent.spawn(request, pooled.app, "/hold/", "seconds=0.005") for _ in range(300)
        ]
        gevent.joinall(greenlets, raise_error=True)
    finally:
        sampler.stop()
    exchanges = [greenlet.value for greenlet in greenlets]
    assert [exchange.status_code for exchange in exchanges] == [200] * 300
    # Each request kept one connection from its first query to its last.
    assert all(exchange.json()["same"] for exchange in exchanges)
    assert sampler.samples >= 10
    assert sampler.peak_server <= 5
    assert sampler.peak_open == 5, "300 requests at once should have used the overflow"
    assert sampler.peak_waiting > 0
    stats = pooled.stats()
    assert (stats["in_use"], stats["waiting"], stats["timeouts"]) == (0, 0, 0)
    # The overflow stays open, idle, until overflow_max_idle: no churn under a burst.
    assert stats["open"] == stats["idle"] == 5
    assert stats["checkouts"] == 300
    assert (stats["connects"], stats["discards"]) == (5, {})
    assert server.wait_count(5) == 5
    used = {exchange.json()["conn_id"] for exchange in exchanges}
    assert server.connection_ids() <= used


def _wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Yield to other greenlets until ``condition()`` holds (they only need to reach a wait)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        gevent.sleep(0.001)


def test_waiters_are_served_first_come_first_served(pooled: Pooled, server: Server) -> None:
    """Waiters get a freed connection in arrival order, and a newcomer does not jump the queue."""
    holder = pooled.start("/stream/")
    holder.next_chunk()
    finished: list[Any] = []

    def waiter(name: int) -> None:
        request(pooled.app, "/read/")
        finished.append(name)

    greenlets = []
    for name in range(5):
        greenlets.append(gevent.spawn(waiter, name))
        _wait_for(lambda name=name: pooled.stats()["waiting"] == name + 1)

    holder.read_rest()
    holder.close()
    # The freed connection went to waiter 0; this newcomer must queue behind all five.
    assert request(pooled.app, "/read/").status_code == 200
    finished.append("newcomer")
    gevent.joinall(greenlets, raise_error=True)
    assert finished == [0, 1, 2, 3, 4, "newcomer"]
    assert pooled.stats()["connects"] == 1


def test_timeouts_under_load_leave_nothing_behind(
    make_pooled: Callable[..., Pooled], server: Server
) -> None:
    """When some requests time out under load, no slot, waiter or connection is left behind."""
    pooled = make_pooled(
        aliases=["default"], pool_size=1, max_overflow=1, timeout=0.2, retry_after=1
    )
    greenlets = [gevent.spawn(request, pooled.app, "/hold/", "seconds=0.1") for _ in range(12)]
    gevent.joinall(greenlets, raise_error=True)
    statuses = [greenlet.value.status_code for greenlet in greenlets]
    assert set(statuses) == {200, 503}
    stats = pooled.stats()
    assert stats["timeouts"] == statuses.count(503)
    assert (stats["in_use"], stats["waiting"]) == (0, 0)
    assert stats["open"] == stats["idle"] <= 2
    assert server.wait_count(stats["open"]) == stats["open"]
    assert request(pooled.app, "/read/").status_code == 200
