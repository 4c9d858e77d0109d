"""A node back in HAProxy: the pool's connections spread over all three nodes again.

Only new connections go to a node that comes back (``balance leastconn``); ``rebalance``
retires the pool's connections one at a time, idle or given back, so that their
replacements go there. Measured on the nodes themselves: the app's sessions in each
node's PROCESSLIST, sampled while a steady load runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import gevent
import pytest

from tests.cluster.conftest import ClusterView
from tests.conftest import Pooled
from tests.faults.conftest import wait_for
from tests.faults.test_availability import Load

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

POOL = 6  # pool_size = min_size: the reaper keeps six open, so the spread is theirs
REBALANCE = 6.0  # a pace of one retirement per second on average (REBALANCE / POOL)
PACE = REBALANCE / POOL
#: docs/scale-out.md: a busy pool has a connection on a node back in the balancer within
#: ``rebalance + 2 * rebalance / cap``, and has renewed them all within 2.5 x ``rebalance``.
COVERED_WITHIN = REBALANCE + 2 * PACE
EVEN_WITHIN = 2.5 * REBALANCE
NODES = {"node1", "node2", "node3"}


def _pooled(make_pooled: Callable[..., Pooled], rebalance: float | None) -> Pooled:
    return make_pooled(
        aliases=["cluster"],
        pool_size=POOL,
        max_overflow=0,
        min_size=POOL,
        timeout=10.0,
        rebalance=rebalance,
    )


def _load(pooled: Pooled) -> Load:
    query = urlencode(
        [("alias", "cluster"), ("sql", "SELECT COUNT(*) FROM app_item"), ("sql", "SELECT 1")]
    )
    return Load(pooled.app, "/run-sql/", query, 8, 0.1, "cluster").start()


def _watch(
    cluster: ClusterView, since: float, seconds: float
) -> list[tuple[float, dict[str, int]]]:
    """The app's sessions per node every 0.25 s for ``seconds``: (seconds since, spread)."""
    samples = []
    end = since + seconds
    while time.monotonic() < end:
        spread = cluster.spread()
        samples.append((round(time.monotonic() - since, 2), spread))
        gevent.sleep(0.25)
    return samples


def _changes(samples: list[tuple[float, dict[str, int]]]) -> list[tuple[float, dict[str, int]]]:
    """The samples where the spread changed, for the report."""
    return [x for i, x in enumerate(samples) if i == 0 or x[1] != samples[i - 1][1]]


def _first(
    samples: list[tuple[float, dict[str, int]]], test: Callable[[dict[str, int]], bool]
) -> float | None:
    return next((at for at, spread in samples if test(spread)), None)


def _covers(spread: dict[str, int]) -> bool:
    return all(spread.get(node, 0) >= 1 for node in NODES)


def _even(spread: dict[str, int]) -> bool:
    """Every node within one of the others (2, 2, 2 of six; 1, 2, 2 while one is replaced)."""
    counts = [spread.get(node, 0) for node in NODES]
    return min(counts) >= 1 and max(counts) - min(counts) <= 1


@pytest.mark.parametrize("rebalance", [REBALANCE, None], ids=["rebalance", "off"])
def test_connections_move_to_a_node_back_in_haproxy(
    cluster: ClusterView, make_pooled: Callable[..., Pooled], rebalance: float | None
) -> None:
    """node2 drained while the pool fills, then ready: covered within the documented bound
    with rebalance; with it off, node2 gets none of the pool's connections."""
    haproxy = cluster.cluster.haproxy
    haproxy.command("set server galera/node2 state drain")  # no new connections
    pooled = _pooled(make_pooled, rebalance)
    load = _load(pooled)
    try:
        wait_for(lambda: cluster.spread() == {"node1": 3, "node2": 0, "node3": 3}, 10.0, "filled")
        haproxy.command("set server galera/node2 state ready")
        samples = _watch(cluster, time.monotonic(), EVEN_WITHIN + 1.0)
    finally:
        load.stop()
    print(f"\nrebalance={rebalance}: {_changes(samples)}")
    assert load.failed() == []
    covered = _first(samples, _covers)
    if rebalance is None:
        assert covered is None
        assert all(spread.get("node2", 0) == 0 for _, spread in samples)
        return
    assert covered is not None
    assert covered <= COVERED_WITHIN
    even = _first(samples, _even)
    assert even is not None
    assert even <= EVEN_WITHIN
    stats = pooled.stats("cluster")
    assert stats["discards"].get("rebalance", 0) >= POOL // 3
    assert set(stats["discards"]) == {"rebalance"}


def test_connections_spread_after_a_killed_node_rejoins(
    cluster: ClusterView, make_pooled: Callable[..., Pooled]
) -> None:
    """kill -9 of node2 under load, rejoin by IST: the pool covers all three nodes again
    within the documented bound after HAProxy marks it up."""
    pooled = _pooled(make_pooled, REBALANCE)
    load = _load(pooled)
    haproxy = cluster.cluster.haproxy
    node2 = cluster.node("node2")
    report: dict[str, Any] = {}
    try:
        wait_for(lambda: sum(cluster.spread().values()) == POOL, 10.0, "filled")
        report["before"] = cluster.spread()
        node2.kill()
        wait_for(lambda: "node2" not in haproxy.up(), 10.0, "node2 marked down")
        # The pool refills on the survivors (the reaper's fill, or the load's connects).
        wait_for(lambda: sum(cluster.spread().values()) == POOL, 15.0, "refilled on two nodes")
        report["down"] = cluster.spread()
        rejoin_at = time.monotonic()
        node2.rejoin()
        wait_for(lambda: "node2" in haproxy.up(), 15.0, "node2 marked up", every=0.05)
        up_at = time.monotonic()
        report["up_after_restart"] = round(up_at - rejoin_at, 1)
        samples = _watch(cluster, up_at, EVEN_WITHIN + 1.0)
    finally:
        load.stop()
    print(f"\nkill and rejoin: {report}, after up: {_changes(samples)}")
    assert report["down"].get("node2", 0) == 0
    covered = _first(samples, _covers)
    assert covered is not None
    assert covered <= COVERED_WITHIN
    even = _first(samples, _even)
    assert even is not None
    assert even <= EVEN_WITHIN
    failed_after_up = load.failed(since=up_at)
    assert failed_after_up == []
