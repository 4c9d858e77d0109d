"""A router site under gunicorn's gevent worker: two pools never wait on each other.

Reads go to ``other`` and writes to ``default`` (tests/router.py); half the requests read
first, half write first, so each holds one alias while it asks for the other. Pools of
5 + 5 per alias; the documented bound per alias is ``pool_size + max_overflow +
(pooled aliases - 1)``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool
import pytest

from tests.conftest import OTHER_USER, USER, Server
from tests.test_servers import _get, gunicorn  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

CAP = 10
BOUND = CAP + 3 - 1  # three pooled aliases in tests/router_wsgi.py
ROUTER = "tests.router_wsgi:application"
GUNICORN = ("-k", "gevent", "--worker-connections", "1000")
SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.router_settings"}


def _load(
    port: int, server: Server, paths: list[str], concurrency: int
) -> tuple[list[int], float, dict[str, int]]:
    """Every path once, ``concurrency`` at a time: statuses, req/s, peak connections by user."""
    peaks = {USER: 0, OTHER_USER: 0}
    done = False

    def sample() -> None:
        while not done:
            for user in peaks:
                peaks[user] = max(peaks[user], server.count(user))
            gevent.sleep(0.02)

    sampler = gevent.spawn(sample)
    started = time.monotonic()
    try:
        statuses = [
            status
            for status, _ in gevent.pool.Pool(concurrency).imap_unordered(
                lambda p: _get(port, p, timeout=60), paths
            )
        ]
    finally:
        done = True
        sampler.join()
    return statuses, len(paths) / (time.monotonic() - started), peaks


def _router_paths(n: int) -> list[str]:
    return [f"/router/?first={'write' if i % 2 else 'read'}&name=r{i % 7}" for i in range(n)]


def test_router_both_orders_no_errors_and_at_least_stock_throughput(
    gunicorn: Callable[..., int],  # noqa: F811 - the fixture imported above
    server: Server,
) -> None:
    """Router, both orders, 60 and 200 clients: no error, within the bound, as fast as stock."""
    pooled = gunicorn(*GUNICORN, app=ROUTER, env=SETTINGS)
    stock = gunicorn(*GUNICORN, app=ROUTER, env={**SETTINGS, "ROUTER_STOCK": "1"})
    results: dict[str, Any] = {}
    for clients in (60, 200):
        statuses, rate, peaks = _load(pooled, server, _router_paths(1200), clients)
        results[f"pooled@{clients}"] = (rate, peaks, statuses.count(200))
        assert statuses == [200] * 1200, f"{len(statuses) - statuses.count(200)} errors"
        assert peaks[USER] <= BOUND, peaks
        assert peaks[OTHER_USER] <= BOUND, peaks
    # Stock Django opens a connection per request and alias: 60 clients fit the server.
    statuses, rate, peaks = _load(stock, server, _router_paths(1200), 60)
    results["stock@60"] = (rate, peaks, statuses.count(200))
    print(f"\nrouter: {results}")
    assert results["pooled@60"][0] >= 0.9 * rate, results


def test_three_aliases_in_chains(
    gunicorn: Callable[..., int],  # noqa: F811 - the fixture imported above
    server: Server,
) -> None:
    """Chains of waits over three pools (A then B, B then C, C then A): no error, within bound."""
    port = gunicorn(*GUNICORN, app=ROUTER, env=SETTINGS)
    orders = ["default,other", "other,third", "third,default", "default,other,third"]
    paths = [f"/chain/?order={random.choice(orders)}" for _ in range(1200)]
    statuses, _, peaks = _load(port, server, paths, 200)
    assert statuses == [200] * 1200, f"{len(statuses) - statuses.count(200)} errors"
    # default and third log in as the same user.
    assert peaks[USER] <= 2 * BOUND, peaks
    assert peaks[OTHER_USER] <= BOUND, peaks
