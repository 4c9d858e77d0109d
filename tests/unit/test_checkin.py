"""The giveback: the pool resets at checkin, frees the slot whatever happens, counts it all."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wsgi_db_pool import PoolTimeout
from wsgi_db_pool.pool import Pool, Reason

from .conftest import Interrupted, Spawned, connector_of, counts, log_of, wait_until

pytestmark = pytest.mark.unit


def test_checkin_resets_then_recycles(make_pool: Callable[..., Pool]) -> None:
    """checkin(entry): one reset by the pool, then the connection is idle for reuse."""
    pool = make_pool(pool_size=1)
    entry = pool.checkout()
    pool.checkin(entry)
    assert entry.conn.resets == 1
    assert counts(pool) == (1, 1, 0)
    assert pool.checkout() is entry


def test_a_reason_from_the_reset_discards(make_pool: Callable[..., Pool]) -> None:
    """A reset that answers with a reason: the connection is closed with it, the slot freed."""
    pool = make_pool(pool_size=1)
    connector_of(pool).reset_result = lambda conn: "reset_failed"
    entry = pool.checkout()
    pool.checkin(entry)
    assert entry.conn.closed
    assert counts(pool) == (0, 0, 0)
    assert pool.stats()["discards"] == {"reset_failed": 1}
    assert log_of(pool).named("db_pool.discard")[-1]["reason"] == "reset_failed"


def test_an_interrupted_reset_discards_and_raises_after_freeing_the_slot(
    make_pool: Callable[..., Pool],
) -> None:
    """A BaseException in the reset: discarded as interrupted, slot free, then re-raised."""
    pool = make_pool(pool_size=1)

    def interrupted(conn: object) -> str | None:
        raise Interrupted("gevent.Timeout in the reset")

    connector_of(pool).reset_result = interrupted
    entry = pool.checkout()
    with pytest.raises(Interrupted):
        pool.checkin(entry)
    assert entry.conn.closed
    assert counts(pool) == (0, 0, 0)
    assert pool.stats()["discards"] == {"interrupted": 1}
    connector_of(pool).reset_result = lambda conn: None
    pool.checkin(pool.checkout())  # the one slot is usable again


@pytest.mark.parametrize("reason", [Reason.BROKEN, "closed", Reason.INTERRUPTED])
def test_an_explicit_reason_discards_without_a_reset(
    make_pool: Callable[..., Pool], reason: str
) -> None:
    """checkin(entry, reason): no reset; discarded with the reason (an enum or its string)."""
    pool = make_pool(pool_size=1)
    entry = pool.checkout()
    pool.checkin(entry, reason)
    assert (entry.conn.resets, entry.conn.closed) == (0, True)
    assert pool.stats()["discards"] == {str(reason): 1}
    assert type(next(iter(pool.stats()["discards"]))) is str


def test_an_explicit_none_recycles_without_a_reset(make_pool: Callable[..., Pool]) -> None:
    """checkin(entry, None): the caller reset it already; recycled as it is."""
    pool = make_pool(pool_size=1)
    entry = pool.checkout()
    pool.checkin(entry, None)
    assert entry.conn.resets == 0
    assert counts(pool) == (1, 1, 0)


def test_a_connection_never_used_goes_back_without_a_reset(
    make_pool: Callable[..., Pool],
) -> None:
    """The checkout's own event raises after the handoff: given back, not reset, slot free."""
    pool = make_pool(pool_size=1)
    pool.checkin(pool.checkout())
    log = log_of(pool)
    log.fail_on = "db_pool.checkout"
    with pytest.raises(Interrupted):
        pool.checkout()
    log.fail_on = None
    entry = pool.checkout(timeout=0.01)
    assert entry.conn.resets == 1, "only the first holder's checkin reset it"
    pool.checkin(entry)


def test_a_waiter_whose_event_raises_gives_the_handoff_back_unreset(
    make_pool: Callable[..., Pool],
) -> None:
    """A connection handed to a waiter that fails before it holds it: back without a reset."""
    pool = make_pool(pool_size=1)
    held = pool.checkout()
    waiter = Spawned(pool.checkout)
    wait_until(lambda: pool.stats()["waiting"] == 1)
    log_of(pool).fail_on = "db_pool.checkout"
    pool.checkin(held)
    with pytest.raises(Interrupted):
        waiter.result()
    log_of(pool).fail_on = None
    assert held.conn.resets == 1, "reset once, by the holder's checkin"
    assert counts(pool) == (1, 1, 0)


def test_a_parents_connection_is_dropped_without_a_reset(make_pool: Callable[..., Pool]) -> None:
    """Checked out before a fork, given back in the child: socket dropped, no I/O, no count."""
    pool = make_pool(pool_size=1)
    entry = pool.checkout()
    pool.after_fork()
    pool.checkin(entry)
    assert (entry.conn.resets, entry.conn.closed) == (0, True)
    assert counts(pool) == (0, 0, 0)


def test_stats_count_what_happened(make_pool: Callable[..., Pool]) -> None:
    """stats(): the same keys as ever, and each total moved by what the pool did."""
    pool = make_pool(pool_size=1, max_overflow=1, max_waiting=5)
    connector_of(pool).failures = [ValueError("access denied")]
    with pytest.raises(ValueError, match="access denied"):
        pool.checkout()
    first, second = pool.checkout(), pool.checkout()
    with pytest.raises(PoolTimeout):
        pool.checkout(timeout=0.01)
    pool.checkin(first)
    pool.checkin(second, "broken")
    pool.checkin(pool.checkout())
    stats = pool.stats()
    assert list(stats) == [
        "open",
        "idle",
        "in_use",
        "waiting",
        "pool_size",
        "max_overflow",
        "connects",
        "connect_errors",
        "checkouts",
        "recycles",
        "discards",
        "timeouts",
        "rejects",
        "wait_seconds",
        "leaked_pending",
        "connecting",
        "reserved",
        "backed_off",
    ]
    wait = stats.pop("wait_seconds")
    assert stats == {
        "open": 1,
        "idle": 1,
        "in_use": 0,
        "waiting": 0,
        "pool_size": 1,
        "max_overflow": 1,
        "connects": 2,
        "connect_errors": 1,
        "checkouts": 3,
        "recycles": 2,
        "discards": {"broken": 1},
        "timeouts": 1,
        "rejects": {},
        "leaked_pending": 0,
        "connecting": 0,
        "reserved": 0,
        "backed_off": False,
    }
    # Three served at once (the failed connect's slot too), one timed out: not counted.
    assert wait["count"] == 4
    assert wait["buckets"][0] == (0.001, 4)
    assert wait["buckets"][-1] == ("+Inf", 4)


@pytest.mark.parametrize("reason", [Reason.BROKEN, Reason.INTERRUPTED])
def test_a_lingering_session_keeps_its_slot_until_ended_off_the_holders_path(
    make_pool: Callable[..., Pool], reason: Reason
) -> None:
    """A discard whose session may still run on the server: checkin returns at once, the
    slot stays counted until the connector ended the session, then goes to a waiter."""
    pool = make_pool(pool_size=1)
    connector = connector_of(pool)
    entry = pool.checkout()
    connector.lingering.append(entry.conn)
    connector.ended.clear()  # the server is slow to end it
    pool.checkin(entry, reason)  # returns: the holder does not wait for the KILL
    assert not entry.conn.closed
    assert counts(pool) == (1, 0, 0)
    waiter = Spawned(pool.checkout, 2.0)
    with pytest.raises(AssertionError):
        waiter.result(0.1)  # the slot is still the lingering session's
    assert connector.live == 1  # what the server counts: never above the cap
    connector.ended.set()
    got = waiter.result()
    assert entry.conn.closed
    assert got.conn is not entry.conn
    assert connector.peak == 1
    assert pool.stats()["discards"] == {reason.value: 1}
    ended = log_of(pool).named("db_pool.end_session")
    assert [e["outcome"] for e in ended] == ["killed"]
    pool.checkin(got)


def test_a_discard_that_does_not_linger_is_closed_on_the_spot(
    make_pool: Callable[..., Pool],
) -> None:
    """A broken connection whose session is over (the server closed it): closed in checkin."""
    pool = make_pool(pool_size=1)
    entry = pool.checkout()
    pool.checkin(entry, Reason.BROKEN)
    assert entry.conn.closed
    assert counts(pool) == (0, 0, 0)
    assert log_of(pool).named("db_pool.end_session") == []
