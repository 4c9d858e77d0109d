"""The pool's own bookkeeping under interruptions, failing loggers and forks (a fake connector).

Pure pool logic, so no server: what matters here is that no slot is lost or counted twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from wsgi_db_pool import PoolTimeout
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


class _Connector:
    def __init__(self) -> None:
        self.on_close: Callable[[_Conn], None] | None = None

    def connect(self) -> _Conn:
        return _Conn()

    def classify(self, exc: Exception) -> str:
        return "unreachable" if isinstance(exc, ConnectionRefusedError) else "error"

    def reachable(self) -> bool:
        return True

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


def test_a_checkin_from_another_os_thread_wakes_the_waiter() -> None:
    """A connection given back from a real OS thread reaches the greenlet waiting in the hub."""
    import gevent
    import gevent.monkey

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
