"""rebalance: connections older than it are retired one at a time, idle or given back only."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wsgi_db_pool.config import PoolConfig
from wsgi_db_pool.pool import Pool

from .conftest import Chance, Clock, connector_of, counts

pytestmark = pytest.mark.unit


def test_a_connection_older_than_rebalance_is_retired_when_given_back(
    make_pool: Callable[..., Pool], clock: Clock
) -> None:
    """Given back after rebalance seconds: closed as "rebalance"; the next checkout opens one."""
    pool = make_pool(pool_size=2, rebalance=10.0, max_age=None)
    entry = pool.checkout()
    clock.advance(9.0)
    pool.checkin(entry)
    assert not entry.conn.closed
    entry = pool.checkout()
    clock.advance(1.0)
    pool.checkin(entry)
    assert entry.conn.closed
    assert pool.stats()["discards"] == {"rebalance": 1}
    fresh = pool.checkout()
    assert fresh.conn is not entry.conn
    pool.checkin(fresh)


def test_retirements_are_paced_one_per_rebalance_over_cap(
    make_pool: Callable[..., Pool], clock: Clock, chance: Chance
) -> None:
    """Four connections due at once: one retired, then one per rebalance / cap (jittered)."""
    pool = make_pool(pool_size=4, rebalance=40.0, max_age=None)  # a pace of 10 s
    held = [pool.checkout() for _ in range(4)]
    clock.advance(40.0)
    chance.queued.extend([0.5, 0.0, 1.0])  # steps of 10, 5 and 15 s
    for entry in held:
        pool.checkin(entry)
    assert [entry.conn.closed for entry in held] == [True, False, False, False]
    seen = []
    for step in (9.9, 0.1, 4.9, 0.1, 14.9, 0.1):
        clock.advance(step)
        pool.reap()  # the idle ones are the reaper's
        seen.append(pool.stats()["discards"].get("rebalance", 0))
    assert seen == [1, 2, 2, 3, 3, 4]
    assert counts(pool) == (0, 0, 0)


def test_a_connection_in_use_is_never_retired(make_pool: Callable[..., Pool], clock: Clock) -> None:
    """The reaper leaves a held connection alone however old; it goes when given back."""
    pool = make_pool(pool_size=2, rebalance=10.0, max_age=None)
    entry = pool.checkout()
    clock.advance(100.0)
    pool.reap()
    assert not entry.conn.closed
    assert counts(pool) == (1, 0, 1)
    pool.checkin(entry)
    assert entry.conn.closed
    assert pool.stats()["discards"] == {"rebalance": 1}


def test_a_checkout_takes_a_due_connection_rather_than_connect(
    make_pool: Callable[..., Pool], clock: Clock
) -> None:
    """Idle and due: a checkout still gets it (no connect on the request's path)."""
    pool = make_pool(pool_size=2, rebalance=10.0, max_age=None)
    entry = pool.checkout()
    pool.checkin(entry)
    clock.advance(11.0)
    again = pool.checkout()
    assert again is entry
    assert connector_of(pool).connects == 1
    pool.checkin(again)
    assert pool.stats()["discards"] == {"rebalance": 1}


def test_rebalance_none_keeps_connections_until_max_age(
    make_pool: Callable[..., Pool], clock: Clock, chance: Chance
) -> None:
    """Off: only max_age retires a connection."""
    pool = make_pool(pool_size=2, rebalance=None, max_age=100.0)
    chance.queued.append(0.0)  # max_age exactly
    entry = pool.checkout()
    clock.advance(99.0)
    pool.checkin(entry)
    pool.reap()
    assert not entry.conn.closed
    clock.advance(1.0)
    pool.reap()
    assert pool.stats()["discards"] == {"max_age": 1}


def test_max_age_comes_first_and_needs_no_turn(
    make_pool: Callable[..., Pool], clock: Clock, chance: Chance
) -> None:
    """Past max_age too: discarded as "max_age" even when the pace allows no retirement."""
    pool = make_pool(pool_size=2, rebalance=10.0, max_age=20.0)
    chance.queued.extend([0.0, 0.0])  # both max_age exactly
    first, second = pool.checkout(), pool.checkout()
    clock.advance(20.0)
    pool.checkin(first)
    pool.checkin(second)
    assert pool.stats()["discards"] == {"max_age": 2}


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(0, ValueError, id="zero"),
        pytest.param(-1.0, ValueError, id="negative"),
        pytest.param(float("inf"), ValueError, id="inf"),
        pytest.param("60", TypeError, id="str"),
        pytest.param(True, TypeError, id="bool"),
    ],
)
def test_rebalance_is_validated(value: object, error: type[Exception]) -> None:
    """A positive number of seconds or None; the message names it."""
    with pytest.raises(error, match="rebalance"):
        PoolConfig(rebalance=value)  # type: ignore[arg-type]


def test_the_reaper_keeps_the_pace() -> None:
    """The reaper runs at least once per rebalance / cap, so idle due connections go."""
    assert PoolConfig().reap_interval == 15.0  # 300 s over a cap of 20
    assert PoolConfig(rebalance=20.0, pool_size=5, max_overflow=5).reap_interval == 2.0
