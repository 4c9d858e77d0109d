"""One alias's pool: the cap, the waiters, the idle connections, their lifetime, the stats.

It knows nothing of Django or WSGI: a ``Connector`` makes, checks and closes the
connections it holds. Every blocking call (connect, ping, close) happens outside the
lock, and the lock is never held across a greenlet switch, so a plain lock is enough
under gevent and under real threads alike.
"""

from __future__ import annotations

import itertools
import math
import time
from bisect import bisect_left
from collections import Counter, deque
from random import random
from typing import Any, Protocol

from . import _sync
from .config import PoolConfig
from .errors import PoolClosed, PoolOverloaded, PoolTimeout, PoolUnavailable

__all__ = ["Connector", "Pool", "PooledConnection"]

# Each reset of a pool's state (at start and after a fork) is a new generation.
_generations = itertools.count()

# Backoff after a failed connect: first step and ceiling, in seconds.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0

# Upper bounds, in seconds, of the checkout wait histogram in stats().
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# A waiter handed _SLOT may open a connection of its own under the cap;
# one handed _CLOSED raises PoolClosed.
_SLOT: Any = object()
_CLOSED: Any = object()


class Connector(Protocol):
    """What the pool needs from the code that owns the connections."""

    def reset(self, conn: Any) -> str | None:
        """Undo a holder's changes before checkin; a discard reason when it cannot."""

    def connect(self) -> Any:
        """Open a new connection, ready to hand out; raise on failure."""

    def check(self, conn: Any, ping: bool) -> str | None:
        """A discard reason if ``conn`` must not be handed out, else None; never raises."""

    def close(self, conn: Any) -> None:
        """Close ``conn`` politely (it may do I/O); never raises."""

    def abort(self, conn: Any) -> None:
        """Drop ``conn``'s socket without any I/O or lock (finalizers, forks); never raises."""


class _Log(Protocol):
    def debug(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...


class PooledConnection:
    """A connection with the times the pool keeps for it."""

    __slots__ = (
        "checked_out_at",
        "conn",
        "created_at",
        "expires_at",
        "generation",
        "idle_since",
        "warned",
        "where",
    )

    def __init__(self, conn: Any, now: float, max_age: float | None, generation: int) -> None:
        self.conn = conn
        self.created_at = now
        # Up to 10% early, so that connections opened together do not expire together.
        self.expires_at = math.inf if max_age is None else now + max_age * (1 - 0.1 * random())
        self.idle_since = now
        self.checked_out_at = now
        # What the holder was doing, for leak and long-hold events (set by the caller).
        self.where: str | None = None
        self.warned = False
        # The pool's state it belongs to: after a fork, the parent's entries are not ours.
        self.generation = generation


class _Waiter:
    __slots__ = ("item", "since", "wakeup")

    def __init__(self, since: float) -> None:
        # Set under the pool's lock before the wakeup: what the waiter got.
        self.item: Any = None
        self.since = since
        self.wakeup = _sync.make_wakeup()


class Pool:
    """Connections of one alias: at most ``cap`` open, waiters served first come first served."""

    def __init__(self, name: str, connector: Connector, config: PoolConfig, log: _Log) -> None:
        self.name = name
        self.connector = connector
        self._config = config
        self.set_log(log)
        self._cap = config.cap
        self._pool_size = config.pool_size
        self._max_age = config.max_age
        self._max_idle = config.max_idle
        self._ping_after = config.ping_after
        self._max_waiting = config.max_waiting
        self._min_size = config.min_size
        self._warn_hold = config.warn_hold
        self._reset_state()

    def set_log(self, log: _Log) -> None:
        """Send events to ``log`` from now on."""
        self._log = log
        self._debug = _debug_enabled(log)

    def _reset_state(self) -> None:
        # Never held across a greenlet switch or any I/O: see _sync.allocate_native_lock.
        self._lock = _sync.allocate_native_lock()
        self._generation = next(_generations)
        self._idle: list[PooledConnection] = []  # a stack: hot on top, the oldest idle at [0]
        self._waiters: deque[_Waiter] = deque()
        self._open = 0  # connected, connecting, or closing: all count against the cap
        self._in_use = 0
        self._closed = False
        # Reclaimed by finalizers, which may not take the lock; drained under it.
        self._leaked: deque[PooledConnection] = deque()
        self._connects = 0
        self._checkouts = 0
        self._recycles = 0
        self._timeouts = 0
        self._connect_errors = 0
        self._discards: Counter[str] = Counter()
        self._last_connect_error: str | None = None
        self._rejects: Counter[str] = Counter()
        # Queue time of checkouts that got a connection or a slot: one count per
        # bucket of WAIT_BUCKETS, the last for longer ones.
        self._wait_buckets = [0] * (len(WAIT_BUCKETS) + 1)
        self._wait_sum = 0.0
        # Entries checked out, watched for long holds only when warn_hold is set.
        self._held: set[PooledConnection] | None = set() if self._warn_hold is not None else None
        # After a failed connect: no new connect before _backoff_until, then one
        # at a time (_probing) until one succeeds.
        self._backoff = 0.0
        self._backoff_until = 0.0
        self._probing = False

    # -- checkout ---------------------------------------------------------------

    def checkout(self, timeout: float | None = None) -> PooledConnection:
        """Take a connection for the caller's exclusive use; wait up to ``timeout`` seconds.

        Raises PoolTimeout when none came in time, PoolClosed after ``close()``, or the
        connector's own error when a new connection cannot be opened.
        """
        start = time.monotonic()
        deadline = start + (self._config.timeout if timeout is None else timeout)
        waiter = None
        entry = None
        shed = None
        if self._leaked:
            self.drain_leaked()
        with self._lock:
            if self._closed:
                raise PoolClosed(f"the pool of alias {self.name!r} is closed")
            if self._idle:
                entry = self._idle.pop()
                self._in_use += 1
                self._checkouts += 1
                self._wait_buckets[0] += 1
            elif self._open < self._cap:
                # Reserve the slot before connect() can yield to another greenlet.
                self._open += 1
                self._in_use += 1
                self._wait_buckets[0] += 1
            elif self._max_waiting is not None and len(self._waiters) >= self._max_waiting:
                self._rejects["max_waiting"] += 1
                shed = PoolOverloaded(
                    f"no connection for alias {self.name!r}: all {self._cap} in use and "
                    f"{len(self._waiters)} already waiting (max_waiting={self._max_waiting})"
                )
            else:
                waiter = _Waiter(start)
                self._waiters.append(waiter)
        if shed is not None:
            self._log.warning("db_pool.reject", **self._counts(), reason="max_waiting")
            raise shed
        if waiter is not None:
            got = self._wait(waiter, start, deadline)
            if got is _CLOSED:
                raise PoolClosed(f"the pool of alias {self.name!r} is closed")
            if got is not _SLOT:
                entry = got
        if entry is not None:
            # Straight from the idle stack, no time has passed worth a clock read.
            now = start if waiter is None else time.monotonic()
            try:
                reason = self._stale(entry, now, deadline)
            except BaseException:
                self.checkin(entry, "interrupted")
                raise
            if reason is None:
                entry.checked_out_at = now
                entry.warned = False
                if self._held is not None:
                    self._held.add(entry)
                if self._debug:
                    try:
                        self._emit_debug("db_pool.checkout", reused=True, waited=now - start)
                    except BaseException:
                        # The logger raised, or the caller was interrupted in it:
                        # nobody holds the connection yet.
                        self.checkin(entry)
                        raise
                return entry
            # Keep the slot: the stale connection's place goes to a new one.
            try:
                self.connector.close(entry.conn)
                with self._lock:
                    self._discards[reason] += 1
                self._log_discard(reason)
            except BaseException:
                self._release_slot()
                raise
        return self._connect(start, deadline, counted=entry is not None)

    def _wait(self, waiter: _Waiter, start: float, deadline: float) -> Any:
        while True:
            try:
                waiter.wakeup.wait(deadline - time.monotonic())
            except BaseException:
                # gevent.Timeout or GreenletExit while waiting: give back what may have come.
                self._abandon(waiter)
                raise
            with self._lock:
                if waiter.item is not None:
                    return waiter.item
                if time.monotonic() >= deadline:
                    # Timed out, and no handoff raced in before the lock.
                    self._waiters.remove(waiter)
                    self._timeouts += 1
                    error = self._timeout_error(time.monotonic() - start)
                    break
            # Woken before the deadline with nothing handed over: wait again.
        self._log.warning("db_pool.timeout", **self._counts(), waited=error.waited)
        raise error

    def _abandon(self, waiter: _Waiter) -> None:
        with self._lock:
            item, waiter.item = waiter.item, _CLOSED
            if item is None:
                self._waiters.remove(waiter)
                return
        if item is _CLOSED:
            return
        if item is _SLOT:
            self._release_slot()
        else:
            self.checkin(item)

    def _stale(self, entry: PooledConnection, now: float, deadline: float) -> str | None:
        if now >= entry.expires_at:
            return "max_age"
        # No max_idle here: a request that needs a connection should get the idle
        # one; shrinking a quiet pool is the reaper's job.
        ping = self._ping_after is not None and now - entry.idle_since >= self._ping_after
        if not ping:
            return self.connector.check(entry.conn, False)
        with _sync.deadline(deadline - now) as timer:
            try:
                return self.connector.check(entry.conn, True)
            except BaseException as exc:
                if timer is not None and exc is timer:
                    return "broken"
                raise

    def _connect(
        self, start: float, deadline: float, counted: bool, *, warmup: bool = False
    ) -> PooledConnection:
        """Open a connection in a slot the caller holds; ``counted``: its checkout is.

        ``warmup``: for the pool itself (min_size), not a checkout: neither counted,
        nor watched for long holds, nor logged as ``db_pool.checkout``.
        """
        now = time.monotonic()
        probe = False
        with self._lock:
            refused = now < self._backoff_until or self._probing
            if refused:
                self._rejects["backoff"] += 1
                if counted:
                    self._checkouts -= 1
            elif self._backoff:
                self._probing = probe = True  # the one connect allowed after a failure
        if refused:
            self._release_slot()
            self._log.warning("db_pool.reject", **self._counts(), reason="backoff")
            raise PoolUnavailable(
                f"no connection for alias {self.name!r}: connecting failed moments ago "
                f"({self._last_connect_error}); the next try is allowed in "
                f"{max(self._backoff_until - now, 0.0):.2f} s"
            )
        try:
            with _sync.deadline(deadline - now) as timer:
                try:
                    conn = self.connector.connect()
                except BaseException as exc:
                    if timer is not None and exc is timer:
                        raise self._timeout_error(time.monotonic() - start, "connect") from None
                    raise
        except BaseException as exc:
            with self._lock:
                if counted:
                    self._checkouts -= 1
                if probe:
                    self._probing = False
                if isinstance(exc, Exception):
                    self._connect_failed_locked(exc, probe)
            self._release_slot()
            if not isinstance(exc, Exception):
                # The caller's own gevent.Timeout or GreenletExit: nothing is known
                # of the server, so no backoff and no connect error.
                raise
            if isinstance(exc, PoolTimeout):
                self._log.warning("db_pool.timeout", **self._counts(), waited=exc.waited)
            else:
                self._log.warning(
                    "db_pool.connect_failed",
                    **self._counts(),
                    error=self._last_connect_error,
                    backoff=self._backoff,
                )
            raise
        now = time.monotonic()
        entry = PooledConnection(conn, now, self._max_age, self._generation)
        with self._lock:
            self._connects += 1
            if not counted and not warmup:
                self._checkouts += 1
            # Whichever attempt succeeds, the server takes connections again.
            self._probing = False
            self._backoff = 0.0
            self._backoff_until = 0.0
        if warmup:
            self._log.info("db_pool.connect", **self._counts(), seconds=round(now - start, 6))
            return entry
        if self._held is not None:
            self._held.add(entry)
        try:
            self._log.info("db_pool.connect", **self._counts(), seconds=round(now - start, 6))
            if self._debug:
                self._emit_debug("db_pool.checkout", reused=False, waited=now - start)
        except BaseException:
            # The logger raised (or the caller was interrupted in it): nobody holds
            # the new connection yet, so it goes back to the pool.
            self.checkin(entry)
            raise
        return entry

    def _connect_failed_locked(self, exc: Exception, probe: bool) -> None:
        self._connect_errors += 1
        self._last_connect_error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, PoolTimeout):
            # Our own deadline says nothing of the server (the wait may have used
            # it up); the driver's connect_timeout gives 2003, which does.
            self._timeouts += 1
            return
        # A failed probe doubles the wait; attempts that were already under way
        # when the server went away fail together and count as one failure.
        backoff = self._backoff * 2 if probe else self._backoff
        self._backoff = min(max(backoff, BACKOFF_FIRST), BACKOFF_MAX)
        self._backoff_until = max(self._backoff_until, time.monotonic() + self._backoff)

    def _timeout_error(self, waited: float, doing: str = "wait") -> PoolTimeout:
        what = "connecting took" if doing == "connect" else "waited"
        msg = (
            f"no connection for alias {self.name!r}: {what} {waited:.2f} s "
            f"(timeout={self._config.timeout} s); {self._in_use} of {self._cap} in use "
            f"(pool_size={self._pool_size} + max_overflow={self._cap - self._pool_size}), "
            f"{len(self._waiters)} waiting"
        )
        if self._last_connect_error:
            msg += f"; last connect error: {self._last_connect_error}"
        return PoolTimeout(msg, round(waited, 6))

    # -- checkin ----------------------------------------------------------------

    def checkin(
        self, entry: PooledConnection, reason: str | None = None, *, fresh: bool = False
    ) -> None:
        """Give ``entry`` back: recycled for reuse, or discarded (closed) with ``reason``.

        ``fresh``: a connection just opened for the pool (warm-up), not a recycle.
        """
        if entry.generation != self._generation:
            # Checked out before this process forked: its socket is the parent's.
            self.connector.abort(entry.conn)
            return
        now = time.monotonic()
        held = now - entry.checked_out_at
        long_hold = False
        if self._held is not None:
            self._held.discard(entry)
            long_hold = not fresh and not entry.warned and held >= self._warn_hold  # type: ignore[operator]
        if reason is None and now >= entry.expires_at:
            reason = "max_age"
        try:
            self._put_back(entry, reason, now, held, fresh)
        finally:
            # Events last: a logger that raises cannot keep the entry from coming back.
            if long_hold:
                self._warn_long_hold(entry, held, still_held=False)
            if self._leaked:
                self.drain_leaked()

    def _put_back(
        self, entry: PooledConnection, reason: str | None, now: float, held: float, fresh: bool
    ) -> None:
        handed = False
        if reason is None:
            with self._lock:
                if self._closed:
                    reason = "shutdown"
                elif self._waiters:
                    # Straight to the longest waiter: a greenlet that comes later must
                    # not find it idle first.
                    entry.checked_out_at = now
                    entry.idle_since = now
                    entry.warned = False
                    if self._held is not None:
                        self._held.add(entry)
                    self._hand_locked(entry, now)
                    self._recycles += not fresh
                    self._checkouts += 1
                    handed = True
                elif len(self._idle) < self._pool_size:
                    entry.idle_since = now
                    self._idle.append(entry)
                    self._in_use -= 1
                    self._recycles += not fresh
                else:
                    reason = "overflow"
            if reason is None:
                if self._debug and not fresh:
                    self._emit_debug("db_pool.recycle", held=held, handed=handed)
                return
        self._discard(entry, reason, held=held)

    def _discard(self, entry: PooledConnection, reason: str, **fields: Any) -> None:
        # Close before the slot is freed, so the server never sees more than the cap;
        # free it even if the close is interrupted.
        try:
            self.connector.close(entry.conn)
        finally:
            try:
                self._release_slot(reason)
            finally:
                # Logged last: a logger that raises or yields cannot cost the slot.
                self._log_discard(reason, **fields)

    def _release_slot(self, discarded: str | None = None) -> None:
        with self._lock:
            if discarded is not None:
                self._discards[discarded] += 1
            self._release_slot_locked()

    def _release_slot_locked(self) -> None:
        # A freed slot goes to the longest waiter, who may open a connection in it.
        if self._waiters and not self._closed:
            self._hand_locked(_SLOT, time.monotonic())
        else:
            self._open -= 1
            self._in_use -= 1

    def _hand_locked(self, item: Any, now: float) -> None:
        # The longest waiter gets it; under the lock, so nobody can barge in.
        waiter = self._waiters.popleft()
        waited = now - waiter.since
        self._wait_sum += waited
        self._wait_buckets[bisect_left(WAIT_BUCKETS, waited)] += 1
        waiter.item = item
        waiter.wakeup.set()

    def _log_discard(self, reason: str, **fields: Any) -> None:
        if "held" in fields:
            fields["held"] = round(fields["held"], 6)
        self._log.info("db_pool.discard", **self._counts(), reason=reason, **fields)

    # -- leaks: no lock, no I/O ------------------------------------------------------

    def reclaim(self, entry: PooledConnection) -> None:
        """Take back a connection whose holder vanished; safe from a finalizer.

        It drops the socket without I/O and queues the slot; the next checkout,
        checkin or reaper tick (or, under gevent, the event loop at once) frees it.
        """
        self.connector.abort(entry.conn)
        if entry.generation != self._generation:
            return  # the parent's: its slot was never counted here
        self._leaked.append(entry)
        _sync.call_soon(self.drain_leaked)

    def drain_leaked(self) -> None:
        """Free the slots of reclaimed connections and wake waiters for them."""
        if not self._leaked:
            return
        with self._lock:
            drained = self._drain_leaked_locked()
        for entry in drained:
            self._log.warning(
                "db_pool.leak",
                **self._counts(),
                held=round(time.monotonic() - entry.checked_out_at, 6),
                where=entry.where,
            )

    def _drain_leaked_locked(self) -> list[PooledConnection]:
        drained = []
        while self._leaked:
            entry = self._leaked.popleft()
            drained.append(entry)
            self._discards["leak"] += 1
            self._release_slot_locked()
        return drained

    # -- upkeep -----------------------------------------------------------------

    def reap(self) -> None:
        """Close idle connections past ``max_idle`` or ``max_age``, warn of long holds.

        ``max_idle`` never takes the pool below ``min_size``; the reaper calls this.
        """
        self.drain_leaked()
        now = time.monotonic()
        expired: list[tuple[PooledConnection, str]] = []
        with self._lock:
            keep = []
            # Oldest idle first, so the ones that shrink the pool are the coldest.
            spare = self._open - self._min_size
            for entry in self._idle:
                if now >= entry.expires_at:
                    expired.append((entry, "max_age"))
                    spare -= 1
                elif (
                    self._max_idle is not None
                    and spare > 0
                    and now - entry.idle_since >= self._max_idle
                ):
                    expired.append((entry, "max_idle"))
                    spare -= 1
                else:
                    keep.append(entry)
            if expired:
                self._idle[:] = keep
                # Still counted open (and in_use, as "closing") until closed below.
                self._in_use += len(expired)
        self._discard_all([(entry, reason) for entry, reason in expired])
        if self._held is not None:
            for entry in list(self._held):
                held = now - entry.checked_out_at
                if not entry.warned and held >= self._warn_hold:  # type: ignore[operator]
                    self._warn_long_hold(entry, held, still_held=True)

    def _warn_long_hold(self, entry: PooledConnection, held: float, still_held: bool) -> None:
        entry.warned = True
        self._log.warning(
            "db_pool.long_hold",
            **self._counts(),
            held=round(held, 6),
            still_held=still_held,
            where=entry.where,
        )

    def fill(self) -> None:
        """Open connections one at a time until ``min_size`` are open (warm-up, refill).

        Stops at the first failure: the backoff then governs when to try again.
        """
        while True:
            with self._lock:
                if (
                    self._closed
                    or self._open >= self._min_size
                    or time.monotonic() < self._backoff_until
                ):
                    return
                self._open += 1
                self._in_use += 1
            start = time.monotonic()
            try:
                entry = self._connect(
                    start, start + self._config.timeout, counted=False, warmup=True
                )
            except Exception:
                return  # the slot is freed, the error logged and backed off by _connect
            self.checkin(entry, fresh=True)

    def close(self) -> None:
        """Close every idle connection and refuse later checkouts; twice is harmless.

        Connections in use are closed when they are given back; waiters get PoolClosed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            self._in_use += len(idle)
            waiters, self._waiters = self._waiters, deque()
            # Marked under the lock, so that a waiter timing out meanwhile sees it.
            for waiter in waiters:
                waiter.item = _CLOSED
        for waiter in waiters:
            waiter.wakeup.set()
        self._discard_all([(entry, "shutdown") for entry in idle])

    def _discard_all(self, entries: list[tuple[PooledConnection, str]]) -> None:
        # Every one is closed and its slot freed even if one close is interrupted;
        # the first BaseException is raised again at the end.
        error: BaseException | None = None
        for entry, reason in entries:
            try:
                self._discard(entry, reason)
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error

    def after_fork(self) -> None:
        """Forget the parent's connections without touching their sockets' server side."""
        for entry in [*self._idle, *self._leaked]:
            self.connector.abort(entry.conn)
        self._reset_state()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    # -- numbers ----------------------------------------------------------------

    def _counts(self) -> dict[str, Any]:
        return {
            "alias": self.name,
            "open": self._open,
            "idle": len(self._idle),
            "in_use": self._in_use,
            "waiting": len(self._waiters),
        }

    def _emit_debug(self, event: str, **fields: Any) -> None:
        for key in ("waited", "held"):
            if key in fields:
                fields[key] = round(fields[key], 6)
        self._log.debug(event, **self._counts(), **fields)

    def _wait_histogram(self) -> dict[str, Any]:
        buckets = _cumulative(self._wait_buckets)
        return {"buckets": buckets, "sum": round(self._wait_sum, 6), "count": buckets[-1][1]}

    def stats(self) -> dict[str, Any]:
        """The pool's state and running totals, as a plain dict with stable keys."""
        with self._lock:
            counts = self._counts()
            del counts["alias"]
            return {
                **counts,
                "pool_size": self._pool_size,
                "max_overflow": self._cap - self._pool_size,
                "connects": self._connects,
                "connect_errors": self._connect_errors,
                "checkouts": self._checkouts,
                "recycles": self._recycles,
                "discards": dict(self._discards),
                "timeouts": self._timeouts,
                "rejects": dict(self._rejects),
                "wait_seconds": self._wait_histogram(),
                "leaked_pending": len(self._leaked),
            }


def _cumulative(counts: list[int]) -> list[tuple[float | str, int]]:
    # The last bound is "+Inf", as Prometheus writes it: JSON has no infinity.
    total = 0
    result: list[tuple[float | str, int]] = []
    bounds: tuple[float | str, ...] = (*WAIT_BUCKETS, "+Inf")
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        result.append((bound, total))
    return result


def _debug_enabled(log: Any) -> bool:
    is_enabled_for = getattr(log, "is_enabled_for", None)
    if is_enabled_for is None:
        return True
    return bool(is_enabled_for(10))  # logging.DEBUG
