"""Backoff: after evidence that the server is out of reach, only the prober connects."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wsgi_db_pool import PoolUnavailable
from wsgi_db_pool._backoff import BACKOFF_CEILING, BACKOFF_FIRST, BACKOFF_MAX, Backoff
from wsgi_db_pool.pool import Pool

from .conftest import (
    Chance,
    Lost,
    Spawned,
    TooMany,
    checkin_as_served,
    connector_of,
    counts,
    log_of,
    wait_until,
)

pytestmark = pytest.mark.unit

PROBER = "wsgi_db_pool-prober"

# Each kind of evidence, as the connect failures that give it.
EVIDENCE = [
    pytest.param([ConnectionRefusedError("refused")], id="unreachable"),
    pytest.param([TooMany("too many connections")], id="refused"),
    pytest.param([Lost("lost"), Lost("lost again")], id="lost-twice"),
]


@pytest.mark.parametrize("failures", EVIDENCE)
def test_while_backed_off_only_the_prober_connects(
    make_pool: Callable[..., Pool], failures: list[BaseException]
) -> None:
    """Checkouts wait for a connection given back instead of connecting; it serves them."""
    pool = make_pool(pool_size=3)
    connector = connector_of(pool)
    held = pool.checkout()  # established: requests wait for it rather than fail
    connector.failures = list(failures)
    connector.down = failures[-1]
    first = Spawned(pool.checkout)
    wait_until(lambda: pool.stats()["backed_off"] and pool.stats()["waiting"] == 1)
    before = len(connector.callers)
    crowd = [Spawned(pool.checkout) for _ in range(5)]
    wait_until(lambda: pool.stats()["waiting"] == 6)
    assert set(connector.callers[before:]) <= {PROBER}, "a checkout connected while backed off"
    pool.checkin(held)
    assert first.result() is held, "the longest waiter got the connection given back"
    connector.down = None  # the server is back: the prober's connection, then slots
    pool.checkin(held)
    checkin_as_served(pool, crowd)
    wait_until(lambda: not pool.stats()["backed_off"])
    stats = pool.stats()
    assert (stats["waiting"], stats["in_use"], stats["rejects"]) == (0, 0, {})


def test_with_no_connection_left_checkouts_fail_at_once(
    make_pool: Callable[..., Pool],
) -> None:
    """Out of reach and nothing open: the connect's own error, then PoolUnavailable."""
    pool = make_pool(pool_size=2)
    connector = connector_of(pool)
    connector.down = ConnectionRefusedError("refused")
    with pytest.raises(ConnectionRefusedError):
        pool.checkout()
    for _ in range(20):
        with pytest.raises(PoolUnavailable, match="out of reach"):
            pool.checkout(timeout=30.0)
    assert set(connector.callers[1:]) <= {PROBER}
    assert pool.stats()["rejects"] == {"backoff": 20}


def test_waiters_are_refused_when_the_last_connection_goes(
    make_pool: Callable[..., Pool],
) -> None:
    """Backed off with waiters: the last connection discarded, they get PoolUnavailable."""
    pool = make_pool(pool_size=2)
    connector = connector_of(pool)
    held = pool.checkout()
    connector.down = ConnectionRefusedError("refused")
    waiters = [Spawned(pool.checkout) for _ in range(2)]
    wait_until(lambda: pool.stats()["waiting"] == 2 and pool.stats()["backed_off"])
    pool.checkin(held, "broken")
    for waiter in waiters:
        with pytest.raises(PoolUnavailable):
            waiter.result()
    assert counts(pool) == (0, 0, 0)
    assert pool.stats()["rejects"] == {"backoff": 2}


def test_the_prober_recovers_and_serves_the_waiters(make_pool: Callable[..., Pool]) -> None:
    """The server back: the prober's connection ends the backoff, every waiter is served."""
    pool = make_pool(pool_size=3)
    connector = connector_of(pool)
    held = pool.checkout()
    connector.down = ConnectionRefusedError("refused")
    waiters = [Spawned(pool.checkout) for _ in range(4)]
    wait_until(lambda: pool.stats()["waiting"] == 4 and pool.stats()["backed_off"])
    connector.down = None
    # Two of the four without any given back: the prober's, then a slot.
    wait_until(lambda: sum(w.done.is_set() for w in waiters) == 2)
    assert PROBER in connector.callers
    stats = pool.stats()
    assert (stats["backed_off"], stats["open"], stats["waiting"]) == (False, 3, 2)
    pool.checkin(held)
    checkin_as_served(pool, waiters)
    assert counts(pool) == (3, 3, 0)
    assert len(log_of(pool).named("db_pool.recovered")) == 1


def test_where_nothing_listened_service_resumes_once_it_listens(
    make_pool: Callable[..., Pool],
) -> None:
    """Nothing listening, nothing open: refused at once, then served once it listens."""
    pool = make_pool(pool_size=2)
    connector = connector_of(pool)
    connector.down = ConnectionRefusedError("refused")
    connector.look = False
    with pytest.raises(ConnectionRefusedError):
        pool.checkout()
    wait_until(lambda: pool._backoff.kind == "down")
    connector.down = None
    connector.look = True
    entry = wait_for_a_checkout(pool)
    assert not pool.stats()["backed_off"]
    pool.checkin(entry)


def wait_for_a_checkout(pool: Pool) -> object:
    """Checkouts until one is not refused (the prober may win the race)."""
    got: list[object] = []

    def attempt() -> bool:
        try:
            got.append(pool.checkout())
        except PoolUnavailable:
            return False
        return True

    wait_until(attempt)
    return got[0]


def test_backoff_steps_double_up_to_the_ceiling_with_jitter(chance: Chance) -> None:
    """Steps double from BACKOFF_FIRST to the kind's ceiling; jitter takes half to all."""
    backoff = Backoff()
    steps = []
    for _ in range(8):
        chance.queued.append(1.0)  # the whole step
        backoff.failed("lost", now=0.0)
        steps.append(round(backoff.until, 9))
    assert steps == [0.005, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01]
    chance.queued.append(0.0)
    backoff.failed("lost", now=0.0)
    assert backoff.until == BACKOFF_CEILING["lost"] / 2
    # Refused or dropped for 9 s: ceilings ten times as long.
    chance.queued.append(1.0)
    backoff.failed("lost", now=9.0)
    assert backoff.until == pytest.approx(9.0 + 10 * BACKOFF_CEILING["lost"])
    # Nothing answering for 90 s: the same, and never more than BACKOFF_MAX.
    backoff.clear()
    for n in range(12):
        chance.queued.append(1.0)
        backoff.failed("unreachable", now=90.0 * (n > 0))
    assert backoff.until == pytest.approx(90.0 + min(10 * BACKOFF_CEILING["unreachable"], 1.0))
    chance.queued.append(1.0)
    backoff.failed("unreachable", now=300.0)
    assert backoff.until == 300.0 + BACKOFF_MAX
    backoff.clear()
    assert not backoff.active
    chance.queued.append(1.0)
    backoff.failed("nonsense", now=100.0)
    assert (backoff.kind, backoff.until) == ("unreachable", 100.0 + BACKOFF_FIRST)
