"""The pool's own bookkeeping under interruptions, failing loggers and forks (a fake connector).

Pure pool logic, so no server: what matters here is that no slot is lost or counted twice.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from wsgi_db_pool import PoolTimeout, PoolUnavailable
from wsgi_db_pool.config import PoolConfig
from wsgi_db_pool.pool import Pool


class _Log:
    def __init__(self) -> None:
        self.fail_on: str | None = None
        # gevent re-raises KeyboardInterrupt from a greenlet in the main one.
        self.fail_with: type[BaseException] = KeyboardInterrupt

    def _emit(self, event: str, **fields: Any) -> None:
        if event == self.fail_on:
            raise self.fail_with(f"interrupted while logging {event}")

    debug = info = warning = _emit

    def is_enabled_for(self, level: int) -> bool:
        return True


class _Interrupted(BaseException):
    pass


class _Conn:
    ids = itertools.count()

    def __init__(self) -> None:
        self.id = next(_Conn.ids)
        self.closed = False


class _Lost(Exception):
    """A connection lost during its setup (a KILL?), as a driver reports it."""


class _Connector:
    def __init__(self) -> None:
        self.on_close: Callable[[_Conn], None] | None = None
        # Raised by the next connects, one each, then connects succeed again.
        self.failures: list[Exception] = []
        # Raised by every connect while set (the server is out of reach).
        self.down: Exception | None = None
        # What the cheap TCP look answers (None: it cannot tell).
        self.look: Callable[[], bool | None] | None = None
        self.connects = 0

    def connect(self) -> _Conn:
        self.connects += 1
        if self.failures:
            raise self.failures.pop(0)
        if self.down is not None:
            raise self.down
        return _Conn()

    def classify(self, exc: Exception) -> str:
        if isinstance(exc, ConnectionRefusedError):
            return "unreachable"
        return "lost" if isinstance(exc, _Lost) else "error"

    def reachable(self) -> bool | None:
        if self.look is not None:
            return self.look()
        return None

    def check(self, conn: _Conn, ping: bool) -> str | None:
        return None

    def reset(self, conn: _Conn) -> str | None:
        return None

    def close(self, conn: _Conn) -> None:
        if self.on_close is not None:
            self.on_close(conn)
        conn.closed = True

    def abort(self, conn: _Conn) -> None:
        conn.closed = True

    def lingers(self, conn: _Conn) -> bool:
        return False

    def end(self, conn: _Conn) -> str:
        raise AssertionError("no connection lingers here")


def _pool(**kwargs: Any) -> Pool:
    config = {"pool_size": 3, "max_overflow": 0, "timeout": 0.2, "max_idle": None}
    config.update(kwargs)
    return Pool("default", _Connector(), PoolConfig(**config), _Log())


def _counts(pool: Pool) -> tuple[int, int, int]:
    stats = pool.stats()
    return stats["open"], stats["idle"], stats["in_use"]


def _all_slots_usable(pool: Pool, cap: int) -> None:
    held = [pool.checkout() for _ in range(cap)]
    for entry in held:
        pool.checkin(entry)


@pytest.mark.parametrize("how", ["reap", "close"])
def test_an_interrupted_close_loses_no_slot(how: str) -> None:
    """A BaseException while closing one of several idle connections frees every slot."""
    pool = _pool(max_idle=1e-6) if how == "reap" else _pool()
    entries = [pool.checkout() for _ in range(3)]
    for entry in entries:
        pool.checkin(entry)
    closes: list[_Conn] = []

    def interrupt_first(conn: _Conn) -> None:
        closes.append(conn)
        if len(closes) == 1:
            raise KeyboardInterrupt("interrupted close")

    pool.connector.on_close = interrupt_first  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        getattr(pool, how)()
    assert len(closes) == 3, "every connection is closed, not only the first"
    assert _counts(pool) == (0, 0, 0)
    if how == "reap":
        pool.connector.on_close = None  # type: ignore[attr-defined]
        _all_slots_usable(pool, 3)


@pytest.mark.parametrize(
    "event", ["db_pool.discard", "db_pool.connect", "db_pool.checkout", "db_pool.checkout reused"]
)
def test_a_logger_that_raises_loses_no_slot(event: str) -> None:
    """An event that raises (or is interrupted) while a slot is held does not keep the slot."""
    pool = _pool(pool_size=1)
    log: _Log = pool._log  # type: ignore[assignment]
    if event.endswith(" reused"):
        pool.checkin(pool.checkout())  # the next checkout takes the idle connection
        event = event.removesuffix(" reused")
    log.fail_on = event
    if event == "db_pool.discard":
        entry = pool.checkout()
        action: Callable[[], object] = lambda: pool.checkin(entry, "broken")  # noqa: E731
    else:
        action = pool.checkout
    with pytest.raises(KeyboardInterrupt):
        action()
    log.fail_on = None
    assert _counts(pool)[2] == 0, "nothing is held"
    held = pool.checkout()  # the one slot is usable, and it is the only one
    with pytest.raises(PoolTimeout):
        pool.checkout(timeout=0.05)
    pool.checkin(held)


def test_entries_from_before_a_fork_are_not_counted_in_the_child() -> None:
    """A connection checked out in the parent and given back in the child is dropped, not pooled."""
    pool = _pool(pool_size=3)
    mine = pool.checkout()
    parents = [pool.checkout(), pool.checkout()]
    pool.checkin(mine)
    pool.after_fork()  # as os.register_at_fork does in the child
    pool.checkin(parents[0])
    pool.reclaim(parents[1])
    pool.drain_leaked()
    assert parents[0].conn.closed
    assert parents[1].conn.closed
    assert mine.conn.closed
    assert _counts(pool) == (0, 0, 0)
    _all_slots_usable(pool, 3)
    assert pool.stats()["discards"] == {}


# -- the wait: a one-shot wakeup per waiting checkout ---------------------------------------


@pytest.mark.parametrize("order", ["fifo", "barging"])
def test_a_checkin_from_another_os_thread_wakes_the_waiter(
    order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection given back from a real OS thread reaches the greenlet waiting in the hub.

    With barging too: kept idle for a barger, it would wait for a loop turn in the
    giving thread, which has no running loop."""
    import gevent
    import gevent.monkey

    from wsgi_db_pool import _order

    if order == "barging":
        monkeypatch.setattr(Pool, "_order_policy", lambda: _order.BoundedBarging(60.0))
    start_thread = gevent.monkey.get_original("_thread", "start_new_thread")
    pool = _pool(pool_size=1, timeout=30)
    held = pool.checkout()
    waiter = gevent.spawn(pool.checkout)
    gevent.sleep(0)  # the waiter is queued
    assert pool.stats()["waiting"] == 1
    # Nothing else wakes the hub: only the checkin's own wakeup can end the wait before
    # the waiter's 30 s deadline, and this fails the test first.
    with gevent.Timeout(5, AssertionError("the waiter was not woken by the checkin")):
        start_thread(pool.checkin, (held,))
        got = waiter.get()
    assert got is held
    assert _counts(pool) == (1, 0, 1)
    pool.checkin(got)


def test_a_waiter_interrupted_after_its_handoff_gives_it_back() -> None:
    """GreenletExit between the handoff and the waiter's resumption loses no connection."""
    import gevent

    pool = _pool(pool_size=1, timeout=30)
    held = pool.checkout()
    waiter = gevent.spawn(pool.checkout)
    gevent.sleep(0)
    waiter.kill(block=False)  # the GreenletExit is thrown in from the hub...
    pool.checkin(held)  # ...before the wakeup of this handoff runs
    waiter.join()
    assert isinstance(waiter.value, gevent.GreenletExit)
    assert _counts(pool) == (1, 1, 0), "the handed connection went back to the pool"
    assert pool.checkout(timeout=0) is held


def test_a_late_wakeup_never_resumes_a_greenlet_blocked_elsewhere() -> None:
    """A waiter that timed out and then blocks on something else is not woken by a stale handoff."""
    import gevent
    import gevent.event

    from wsgi_db_pool import _sync

    wakeup = _sync.make_wakeup()
    later = gevent.event.AsyncResult()
    seen: list[object] = []

    def wait_then_block() -> None:
        wakeup.wait(0.001)  # times out
        seen.append(later.get())

    greenlet = gevent.spawn(wait_then_block)
    gevent.sleep(0.01)  # the waiter timed out and now blocks on `later`
    wakeup.set()  # a stale wakeup
    gevent.idle()  # let the hub run it
    assert not greenlet.dead, "the stale wakeup resumed the greenlet"
    assert seen == [], "the stale wakeup resumed the greenlet"
    later.set("value")
    greenlet.join()
    assert seen == ["value"]


def test_a_logger_that_raises_in_a_handed_checkout_loses_no_slot() -> None:
    """The checkout event of a waiter that was handed a connection raises: it goes back."""
    import gevent

    pool = _pool(pool_size=1, timeout=30)
    held = pool.checkout()
    waiter = gevent.spawn(pool.checkout)
    gevent.sleep(0)
    log: _Log = pool._log  # type: ignore[assignment]
    log.fail_on = "db_pool.checkout"
    log.fail_with = _Interrupted
    pool.checkin(held)
    waiter.join()
    log.fail_on = None
    assert isinstance(waiter.exception, _Interrupted)
    assert _counts(pool) == (1, 1, 0)
    assert pool.checkout(timeout=0) is held


def test_a_wait_never_ends_before_its_timeout_after_busy_greenlets() -> None:
    """The loop's cached clock lags behind CPU-bound greenlets; the deadline does not."""
    import time

    import gevent

    pool = _pool(pool_size=1, timeout=0.2)
    held = pool.checkout()
    gevent.sleep(0.001)  # resumed by a timer: the loop's clock stands still until it runs again
    busy_until = time.perf_counter() + 0.3
    while time.perf_counter() < busy_until:
        pass
    with pytest.raises(PoolTimeout) as info:
        pool.checkout()
    assert info.value.waited >= 0.2, "the checkout gave up before its timeout"
    pool.checkin(held)


# -- availability: what a failed connect may cost --------------------------------------


def test_a_failure_that_says_nothing_of_the_server_does_not_back_off() -> None:
    """Bad credentials fail the caller only: the next checkout connects, nobody is refused."""
    pool = _pool()
    pool.connector.failures = [ValueError("access denied")]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="access denied"):
        pool.checkout()
    assert not pool.stats()["backed_off"]
    pool.checkin(pool.checkout())
    assert (pool.stats()["connect_errors"], pool.stats()["rejects"]) == (1, {})


def test_a_connection_lost_during_setup_is_tried_once_more() -> None:
    """A connect lost after the server took it (a KILL in the setup) costs the caller nothing."""
    pool = _pool()
    connector: _Connector = pool.connector  # type: ignore[assignment]
    connector.failures = [_Lost("lost during setup")]
    entry = pool.checkout()
    assert connector.connects == 2
    stats = pool.stats()
    assert (stats["connects"], stats["connect_errors"], stats["backed_off"]) == (1, 0, False)
    pool.checkin(entry)
    # Lost twice in a row is the server's doing (a listener that drops connections at
    # the door): evidence, and a backoff.
    fresh = _pool()
    fresh.connector.failures = [_Lost("lost"), _Lost("lost again")]  # type: ignore[attr-defined]
    with pytest.raises(_Lost, match="again"):
        fresh.checkout()
    assert fresh.stats()["backed_off"]
    fresh.close()


def test_while_backed_off_a_request_waits_for_a_connection_given_back() -> None:
    """Out of reach with a connection open: the caller whose connect failed waits for it."""
    pool = _pool(pool_size=2, timeout=5.0)
    connector: _Connector = pool.connector  # type: ignore[assignment]
    held = pool.checkout()
    connector.down = ConnectionRefusedError("refused")
    got: list[Any] = []
    waiter = gevent.spawn(lambda: got.append(pool.checkout()))
    _wait_until(lambda: pool.stats()["waiting"] == 1)
    assert pool.stats()["backed_off"]
    # A newcomer waits its turn too: no 503 while a connection may come back.
    newcomer = gevent.spawn(pool.checkout)
    _wait_until(lambda: pool.stats()["waiting"] == 2)
    pool.checkin(held)
    waiter.join(timeout=1.0)
    assert [entry.conn for entry in got] == [held.conn]
    pool.checkin(got[0])
    assert newcomer.get(timeout=1.0).conn is held.conn
    assert pool.stats()["rejects"] == {}


def test_with_no_connection_left_requests_fail_at_once() -> None:
    """Out of reach and nothing open: the connect's own error, then 503s without a connect."""
    pool = _pool(pool_size=2, timeout=5.0)
    connector: _Connector = pool.connector  # type: ignore[assignment]
    connector.down = ConnectionRefusedError("refused")
    with pytest.raises(ConnectionRefusedError):
        pool.checkout()
    connects = connector.connects
    started = time.monotonic()
    for _ in range(50):
        with pytest.raises(PoolUnavailable, match="out of reach"):
            pool.checkout()
    assert time.monotonic() - started < 0.5, "refused requests must not wait"
    # Only the prober connects meanwhile, paced by the backoff (0.01 s doubling).
    assert connector.connects - connects <= 10
    assert pool.stats()["rejects"] == {"backoff": 50}


def test_the_prober_reconnects_by_itself_and_serves_the_waiters() -> None:
    """The server back: the prober's connection goes to the longest waiter, then slots to all."""
    pool = _pool(pool_size=3, timeout=5.0)
    connector: _Connector = pool.connector  # type: ignore[assignment]
    held = pool.checkout()
    connector.down = ConnectionRefusedError("refused")
    waiters = [gevent.spawn(pool.checkout) for _ in range(4)]
    _wait_until(lambda: pool.stats()["waiting"] == 4 and pool.stats()["backed_off"])
    connector.down = None
    # Two of four get a connection without any being given back: the free slots.
    _wait_until(lambda: sum(w.dead for w in waiters) == 2)
    stats = pool.stats()
    assert (stats["backed_off"], stats["open"], stats["waiting"]) == (False, 3, 2)
    served = [w for w in waiters if w.dead]
    for entry in [held, *(w.value for w in served)]:
        pool.checkin(entry)
    gevent.joinall(waiters, timeout=1.0, raise_error=True)
    for w in waiters:
        if w not in served:
            pool.checkin(w.value)
    assert _counts(pool) == (3, 3, 0)


def test_connections_being_closed_are_not_in_use() -> None:
    """in_use counts what requests hold: closes by the reaper or at shutdown do not show."""
    pool = _pool(pool_size=2)
    for entry in [pool.checkout(), pool.checkout()]:
        pool.checkin(entry)
    seen: list[tuple[int, int, int]] = []
    pool.connector.on_close = lambda conn: seen.append(_counts(pool))  # type: ignore[attr-defined]
    pool.close()
    assert [in_use for _, _, in_use in seen] == [0, 0]
    assert [open_ for open_, _, _ in seen] == [2, 1]


def test_the_overflow_stays_idle_until_overflow_max_idle() -> None:
    """Connections above pool_size are reused across bursts, closed once idle long enough."""
    pool = _pool(pool_size=1, max_overflow=2, overflow_max_idle=0.2)
    connector: _Connector = pool.connector  # type: ignore[assignment]
    for _ in range(3):  # three bursts of three
        held = [pool.checkout() for _ in range(3)]
        for entry in held:
            pool.checkin(entry)
    assert connector.connects == 3
    pool.reap()
    assert _counts(pool) == (3, 3, 0), "not idle long enough yet"
    time.sleep(0.2)  # the idle time the setting names, no race involved
    pool.reap()
    assert _counts(pool) == (1, 1, 0)
    assert pool.stats()["discards"] == {"overflow": 2}


def _wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        gevent.sleep(0.001)


# -- several pools: requests holding one alias while they wait for another ---------------


def _hold_in_order(pools: list[Pool], order: list[int], holding: bool, hold: float) -> None:
    held = []
    try:
        for i in order:
            held.append(pools[i].checkout(holding=len(held) if holding else 0))
            gevent.sleep(hold)
    finally:
        for pool, entry in zip([pools[i] for i in order], held, strict=False):
            pool.checkin(entry)


@pytest.mark.parametrize(
    ("orders", "holding"),
    [
        pytest.param([[0, 1], [1, 0]], True, id="two-aliases-both-orders"),
        pytest.param([[0, 1], [1, 2], [2, 0]], True, id="three-aliases-chain"),
        pytest.param([[0, 1, 2], [2, 1, 0], [1, 2, 0]], True, id="three-aliases-all-three"),
        pytest.param([[0, 1], [1, 0]], False, id="unaware-pools-deadlock"),
    ],
)
def test_pools_never_wait_on_each_other(orders: list[list[int]], holding: bool) -> None:
    """Requests taking aliases in any order never deadlock; each pool stays within cap + k - 1."""
    pools = [_pool(pool_size=1, max_overflow=1, timeout=1.0) for _ in range(3)]
    peaks = [0, 0, 0]

    def sample() -> None:
        while True:
            for i, pool in enumerate(pools):
                peaks[i] = max(peaks[i], pool.stats()["open"])
            gevent.sleep(0)

    sampler = gevent.spawn(sample)
    crowd = [
        gevent.spawn(_hold_in_order, pools, orders[n % len(orders)], holding, 0.002)
        for n in range(60)
    ]
    gevent.joinall(crowd, timeout=10.0)
    sampler.kill()
    errors = [g.exception for g in crowd if g.exception is not None]
    if not holding:
        # Without knowing what a request holds, both pools fill with requests that
        # wait for the other: only the timeout ends it.
        assert any(isinstance(e, PoolTimeout) for e in errors)
        return
    assert errors == []
    assert sum(pool.stats()["reserved"] for pool in pools) > 0, "the reserve was never needed"
    aliases = len({i for order in orders for i in order})
    assert max(peaks) <= 2 + aliases - 1
    for pool in pools:
        stats = pool.stats()
        assert (stats["in_use"], stats["waiting"], stats["timeouts"]) == (0, 0, 0)
        assert stats["open"] == stats["idle"] <= 2


# -- the review's cases: what must not wedge or leak ------------------------------------


def test_a_logger_failing_on_the_retry_event_loses_no_slot() -> None:
    """A connect lost in its setup, then the retry's event raises: the slot comes back."""
    pool = _pool(pool_size=2)
    connector: _Connector = pool.connector  # type: ignore[assignment]
    connector.failures = [_Lost("lost during setup")]
    pool._log.fail_on = "db_pool.connect_failed"  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        pool.checkout()
    pool._log.fail_on = None  # type: ignore[attr-defined]
    stats = pool.stats()
    assert (stats["open"], stats["in_use"], stats["connecting"]) == (0, 0, 0)
    _all_slots_usable(pool, 2)


def test_warm_up_tries_a_lost_connect_once_more() -> None:
    """min_size warm-up: one connect lost in its setup is tried again, and no backoff starts."""
    pool = _pool(pool_size=2, min_size=1)
    pool.connector.failures = [_Lost("killed during setup")]  # type: ignore[attr-defined]
    pool.fill()
    stats = pool.stats()
    assert (stats["open"], stats["idle"], stats["backed_off"]) == (1, 1, False)


def test_a_port_that_accepts_but_fails_logins_is_still_backed_off() -> None:
    """TCP accepted, logins time out: the look does not end the backoff; connects stay paced."""
    pool = _pool(pool_size=3, timeout=5.0)
    connector: _Connector = pool.connector  # type: ignore[assignment]
    held = pool.checkout()  # one open, so requests wait instead of failing at once
    connector.down = ConnectionRefusedError("connect timed out")  # classified unreachable
    connector.look = lambda: True
    connects = connector.connects
    crowd = [gevent.spawn(pool.checkout, 0.5) for _ in range(20)]
    gevent.joinall(crowd, timeout=2.0)
    # The first failure, then the prober alone, paced by steps of 5 ms and more.
    assert connector.connects - connects <= 1 + 0.5 / 0.005
    assert pool.stats()["backed_off"]
    pool.checkin(held)


def test_a_checkout_taking_the_probe_turn_keeps_its_deadline() -> None:
    """The look hangs (SYNs dropped): a checkout probing gives up within its own timeout."""
    pool = _pool(pool_size=2, timeout=5.0)
    connector: _Connector = pool.connector  # type: ignore[assignment]
    connector.down = ConnectionRefusedError("refused")
    connector.look = lambda: False
    with pytest.raises(ConnectionRefusedError):
        pool.checkout()
    _wait_until(lambda: pool._backoff.kind == "down")
    connector.look = lambda: gevent.sleep(2.0)  # type: ignore[func-returns-value]
    started = time.monotonic()
    outcomes = []
    for _ in range(3):
        with contextlib.suppress(PoolUnavailable):
            outcomes.append(pool.checkout(timeout=0.2))
        gevent.sleep(0.02)
    assert outcomes == []
    assert time.monotonic() - started < 3 * 0.2 + 0.5
