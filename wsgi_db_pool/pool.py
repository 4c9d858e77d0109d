"""One alias's pool: the cap, the waiters, the idle connections, their lifetime, the stats.

It knows nothing of Django or WSGI: a ``Connector`` makes, checks and closes the
connections it holds. Every blocking call (connect, ping, close) happens outside the
lock, and the lock is never held across a greenlet switch, so a plain lock is enough
under gevent and under real threads alike.

Availability rules (never less available than one connection per request):
a failed connect fails at most the request that made it; the pool backs off only on
evidence that the server is out of reach, and then a prober of its own tries again
(a request that finds a probe due where nothing listened takes its turn: one TCP
connect); while it is backed off, requests wait for a connection given back, and are
answered at once only when the pool has no connection at all.

Several aliases: a request that holds connections of other aliases while it waits for
this one (a router reading from a replica, then writing to the primary) could wait
forever for a connection that only another such waiter can give back. So a checkout by
a request holding ``h`` other connections may open up to ``cap + h`` here, and such
requests are served before those that hold nothing. By induction on ``h`` some request
can always go on (one holding every alias never waits), so pools never deadlock each
other, and a pool never holds more than ``cap + aliases - 1`` connections.
"""

from __future__ import annotations

import enum
import itertools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from random import random
from time import monotonic
from typing import Any, Final, Literal, Protocol, TypeAlias

from . import _order, _sync
from ._backoff import BACKOFF_MAX, EVIDENCE, Backoff
from ._reasons import Reason, Reject
from ._stats import PoolStats
from .config import PoolConfig
from .errors import PoolClosed, PoolError, PoolOverloaded, PoolTimeout, PoolUnavailable

# BACKOFF_MAX: the longest step between two probes (tests wait that long for recovery).
__all__ = ["BACKOFF_MAX", "Connector", "Pool", "PooledConnection", "Reason"]

# Each reset of a pool's state (at start and after a fork) is a new generation.
_generations = itertools.count()


class _Handoff(enum.Enum):
    """What a checkout may get besides a connection."""

    #: A free slot, counted for the caller, to open a connection in.
    SLOT = enum.auto()
    #: A slot past the cap, for a request holding other aliases (logged, then a SLOT).
    RESERVE = enum.auto()
    #: The probe's turn while nothing listens: on a busy worker the prober's timer
    #: fires late (every greenlet that is ready runs a whole request first), and a
    #: refused TCP connect costs the request nothing.
    PROBE = enum.auto()
    #: The pool was closed while the caller waited.
    CLOSED = enum.auto()
    #: The server is out of reach and the pool has no connection left.
    UNAVAILABLE = enum.auto()


class _Checkin(enum.Enum):
    #: checkin()'s default: the pool resets the connection (an explicit None: done already).
    RESET = enum.auto()


# Module names for the members: reading an Enum class's attribute costs a descriptor
# call (about 0.25 us), too much on the checkout and checkin paths.
_SLOT: Final = _Handoff.SLOT
_RESERVE: Final = _Handoff.RESERVE
_PROBE: Final = _Handoff.PROBE
_CLOSED: Final = _Handoff.CLOSED
_UNAVAILABLE: Final = _Handoff.UNAVAILABLE
_RESET: Final = _Checkin.RESET
# Discards after which the server may still be running the holder's statement.
_MAY_LINGER: Final = frozenset({Reason.BROKEN, Reason.INTERRUPTED})


class Connector(Protocol):
    """What the pool needs from the code that owns the connections."""

    def reset(self, conn: Any) -> str | None:
        """Undo a holder's changes before checkin; a discard reason when it cannot."""

    def connect(self) -> Any:
        """Open a new connection, ready to hand out; raise on failure."""

    def classify(self, exc: Exception) -> str:
        """What a failed connect says: "unreachable", "refused", "lost" or "error"."""

    def reachable(self) -> bool | None:
        """A cheap look (a TCP connect) whether anything listens; None when it cannot tell."""

    def check(self, conn: Any, ping: bool) -> str | None:
        """A discard reason if ``conn`` must not be handed out, else None; never raises."""

    def close(self, conn: Any) -> None:
        """Close ``conn`` politely (it may do I/O); never raises."""

    def abort(self, conn: Any) -> None:
        """Drop ``conn``'s socket without any I/O or lock (finalizers, forks); never raises."""

    def lingers(self, conn: Any) -> bool:
        """Whether ``conn``, being discarded, may leave a session on the server that is
        still running a statement (its holder stopped waiting for the reply)."""

    def end(self, conn: Any) -> str:
        """Close a lingering ``conn`` and end its session on the server; may take seconds
        (the pool calls it in the background). The outcome, for the event; never raises
        an Exception."""


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
        "due_at",
        "expires_at",
        "generation",
        "idle_since",
        "rebalance_at",
        "warned",
        "where",
    )

    def __init__(
        self,
        conn: Any,
        now: float,
        max_age: float | None,
        generation: int,
        rebalance: float | None = None,
    ) -> None:
        self.conn = conn
        self.created_at = now
        # Up to 10% early, so that connections opened together do not expire together.
        self.expires_at = math.inf if max_age is None else now + max_age * (1 - 0.1 * random())
        # From then on it may be retired to rebalance, when the pool's pace allows.
        self.rebalance_at = math.inf if rebalance is None else now + rebalance
        # The earlier of the two: one comparison on the checkin path.
        self.due_at = min(self.expires_at, self.rebalance_at)
        self.idle_since = now
        self.checked_out_at = now
        # What the holder was doing, for leak and long-hold events (set by the caller).
        self.where: str | None = None
        self.warned = False
        # The pool's state it belongs to: after a fork, the parent's entries are not ours.
        self.generation = generation


# What a waiter may be handed, under the pool's lock.
_Handed: TypeAlias = (
    PooledConnection | Literal[_Handoff.SLOT, _Handoff.CLOSED, _Handoff.UNAVAILABLE]
)


class _Waiter:
    __slots__ = ("holding", "item", "since", "wakeup")

    def __init__(self, since: float, holding: int = 0) -> None:
        # Set under the pool's lock before the wakeup: what the waiter got.
        self.item: _Handed | None = None
        self.since = since
        # Connections of other aliases its request holds (see the module docstring).
        self.holding = holding
        self.wakeup = _sync.make_wakeup()


class _Attempt:
    """One connect in a slot already counted as open and connecting."""

    __slots__ = ("deadline", "in_use", "start")

    def __init__(self, start: float, deadline: float, in_use: int) -> None:
        self.start = start
        self.deadline = deadline
        # 1 when the slot is a checkout's (counted in use), 0 when it is the pool's own.
        self.in_use = in_use

    @classmethod
    def for_checkout(cls, start: float, deadline: float) -> _Attempt:
        return cls(start, deadline, 1)

    @classmethod
    def for_pool(cls, timeout: float) -> _Attempt:
        start = monotonic()
        return cls(start, start + timeout, 0)


class Pool:
    """Connections of one alias: at most ``cap`` open, waiters served first come first served."""

    #: Makes each pool's order of service (wsgi_db_pool/_order.py); the bench swaps it.
    _order_policy: Callable[[], _order.Order] = _order.Fifo

    def __init__(self, name: str, connector: Connector, config: PoolConfig, log: _Log) -> None:
        self.name = name
        self._order = type(self)._order_policy()
        self.connector = connector
        self._config = config
        self.set_log(log)
        self._cap = config.cap
        self._pool_size = config.pool_size
        self._max_age = config.max_age
        self._max_idle = config.max_idle
        self._overflow_max_idle = config.overflow_max_idle
        self._ping_after = config.ping_after
        self._max_waiting = config.max_waiting
        self._min_size = config.min_size
        self._warn_hold = config.warn_hold
        self._rebalance = config.rebalance
        # The mean seconds between two retirements to rebalance: a full pool is renewed
        # once per ``rebalance``, one connection at a time.
        self._rebalance_pace = 0.0 if config.rebalance is None else config.rebalance / config.cap
        self._reset_state()

    def set_log(self, log: _Log) -> None:
        """Send events to ``log`` from now on."""
        self._log = log
        self._debug = _debug_enabled(log)

    def _reset_state(self) -> None:
        # Never held across a greenlet switch or any I/O: see _sync.allocate_native_lock.
        self._lock = _sync.allocate_native_lock()
        self._generation = next(_generations)
        self._pid = os.getpid()  # the process that owns this state's connections
        self._idle: list[PooledConnection] = []  # a stack: hot on top, the oldest idle at [0]
        self._waiters: deque[_Waiter] = deque()
        # Waiters whose requests hold connections of other aliases: served first.
        self._holders: deque[_Waiter] = deque()
        # Every slot counts against the cap: idle, in use (held by a checkout, or being
        # opened for one), being opened for the pool itself, or being closed.
        self._open = 0
        self._in_use = 0
        self._connecting = 0
        self._closing = 0
        self._closed = False
        # Reclaimed by finalizers, which may not take the lock; drained under it.
        self._leaked: deque[PooledConnection] = deque()
        self._stats = PoolStats()
        # Entries checked out, watched for long holds only when warn_hold is set.
        self._held: set[PooledConnection] | None = set() if self._warn_hold is not None else None
        self._backoff = Backoff()
        self._prober = False  # a prober is running for this generation
        self._probing = False  # a probe (the prober's or a checkout's) is under way
        self._rebalance_next = 0.0  # no retirement to rebalance before this clock time

    # -- checkout ---------------------------------------------------------------

    def checkout(self, timeout: float | None = None, *, holding: int = 0) -> PooledConnection:
        """Take a connection for the caller's exclusive use; wait up to ``timeout`` seconds.

        ``holding``: connections of other aliases the caller holds while it waits
        here; such a checkout is served first, and may go up to ``cap + holding``.

        Raises PoolTimeout when none came in time, PoolClosed after ``close()``,
        PoolUnavailable when the server is out of reach and the pool has no
        connection left, or the connector's own error when a connect it tried failed.
        """
        if self._pid != os.getpid():
            # uWSGI forks in C, and Python's at-fork hooks (after_fork) run only with
            # an option: whatever the server does, never hand out a connection this
            # process did not open. No switch between the look and the reset, so
            # greenlets agree. (Inline: a method call here costs every checkout.)
            self.after_fork()
        start = monotonic()
        deadline = start + (self._config.timeout if timeout is None else timeout)
        if self._leaked:
            self.drain_leaked()
        while True:
            got = self._take(start, deadline, holding)
            if got is _PROBE:
                return self._probe_for(start, deadline)
            if got is not _SLOT:
                now = got.checked_out_at  # set by _take when it took the connection
                if self._usable(got, now, deadline):
                    return self._hand_out(got, start, now)
            # A slot, or a stale connection's (discarded): the caller opens a new one.
            entry = self._connect(_Attempt.for_checkout(start, deadline))
            if entry is not None:
                return entry
            # The pool backed off meanwhile and the slot went back: decide again.

    def _take(
        self, start: float, deadline: float, holding: int
    ) -> PooledConnection | Literal[_Handoff.SLOT, _Handoff.PROBE]:
        """An idle entry, a slot counted for the caller, or the probe's turn; else it waits."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._idle:
                entry = self._idle.pop()
                self._in_use += 1
                stats = self._stats
                stats.checkouts += 1
                stats.wait_buckets[0] += 1
                if self._waiters:
                    self._order.barged()  # kept idle for a barger (_order.py)
                # Straight from the stack no time has passed worth a clock read.
                entry.checked_out_at = start
                return entry
            got = self._no_idle_locked(start, holding)
            # A prober that died (an interrupt) is started again by the next waiter.
            start_prober = (
                isinstance(got, (_Waiter, PoolUnavailable)) and self._claim_prober_locked()
            )
        if start_prober:
            self._start_prober()
        if isinstance(got, _Waiter):
            return self._wait_turn(got, start, deadline)
        if isinstance(got, PoolError):
            reason = Reject.BACKOFF if isinstance(got, PoolUnavailable) else Reject.MAX_WAITING
            self._log.warning("db_pool.reject", **self._counts(), reason=reason.value)
            raise got
        if got is _RESERVE:
            self._log_reserve(holding)
            return _SLOT
        return got

    def _no_idle_locked(
        self, start: float, holding: int
    ) -> Literal[_Handoff.SLOT, _Handoff.RESERVE, _Handoff.PROBE] | _Waiter | PoolError:
        """No idle connection: a slot, the probe's turn, a refusal, or a place in a queue."""
        if self._open < self._cap + holding and not self._backoff.active:
            # Reserve the slot before connect() can yield to another greenlet.
            self._open += 1
            self._in_use += 1
            self._stats.wait_buckets[0] += 1
            if self._open <= self._cap:
                return _SLOT
            self._stats.reserved += 1
            return _RESERVE
        if self._backoff.active and not self._established_locked():
            if self._probe_due_locked():
                self._in_use += 1
                return _PROBE
            self._stats.rejects[Reject.BACKOFF] += 1
            return self._unavailable_error()
        if not holding and self._queue_full_locked():
            self._stats.rejects[Reject.MAX_WAITING] += 1
            return PoolOverloaded(
                f"no connection for alias {self.name!r}: all {self._cap} in use and "
                f"{len(self._waiters)} already waiting (max_waiting={self._max_waiting})"
            )
        waiter = _Waiter(start, holding)
        self._queue_of(waiter).append(waiter)
        return waiter

    def _queue_full_locked(self) -> bool:
        return self._max_waiting is not None and len(self._waiters) >= self._max_waiting

    def _wait_turn(
        self, waiter: _Waiter, start: float, deadline: float
    ) -> PooledConnection | Literal[_Handoff.SLOT]:
        """Queued: what the waiter was handed, or the error that ended its wait."""
        got = self._wait(waiter, start, deadline)
        if got is _CLOSED:
            raise self._closed_error()
        if got is _UNAVAILABLE:
            self._log.warning("db_pool.reject", **self._counts(), reason=Reject.BACKOFF.value)
            raise self._unavailable_error()
        if waiter.holding and self._open > self._cap:
            self._log_reserve(waiter.holding)
        if got is not _SLOT:
            got.checked_out_at = monotonic()  # the caller's now: the wait took time
        return got

    def _log_reserve(self, holding: int) -> None:
        # The pool stepped in: a request holding other aliases got a slot past the cap.
        self._log.info("db_pool.reserve", **self._counts(), holding=holding)

    def _queue_of(self, waiter: _Waiter) -> deque[_Waiter]:
        return self._holders if waiter.holding else self._waiters

    def _established_locked(self) -> int:
        # Connections that may yet be given back: neither being opened nor closed.
        return self._open - self._connecting - self._closing

    def _closed_error(self) -> PoolClosed:
        return PoolClosed(f"the pool of alias {self.name!r} is closed")

    def _unavailable_error(self) -> PoolUnavailable:
        retry_in = max(self._backoff.until - monotonic(), 0.0)
        return PoolUnavailable(
            f"no connection for alias {self.name!r}: the database server is out of reach "
            f"({self._stats.last_connect_error}) and none of the pool's connections is left; "
            f"the pool tries again by itself in {retry_in:.2f} s"
        )

    def _wait(self, waiter: _Waiter, start: float, deadline: float) -> _Handed:
        while True:
            try:
                waiter.wakeup.wait(deadline - monotonic())
            except BaseException:
                # gevent.Timeout or GreenletExit while waiting: give back what may have come.
                self._abandon(waiter)
                raise
            with self._lock:
                if waiter.item is not None:
                    return waiter.item
                if monotonic() >= deadline:
                    # Timed out, and no handoff raced in before the lock.
                    self._queue_of(waiter).remove(waiter)
                    self._stats.timeouts += 1
                    error = self._timeout_error(monotonic() - start)
                    break
            # Woken before the deadline with nothing handed over: wait again.
        self._log.warning("db_pool.timeout", **self._counts(), waited=error.waited)
        raise error

    def _abandon(self, waiter: _Waiter) -> None:
        with self._lock:
            item, waiter.item = waiter.item, _CLOSED
            if item is None:
                self._queue_of(waiter).remove(waiter)
                return
            if item is _SLOT:
                self._in_use -= 1
                self._release_slot_locked()
                return
        if isinstance(item, PooledConnection):
            self._give_back(item)  # never used: no reset

    def _usable(self, entry: PooledConnection, now: float, deadline: float) -> bool:
        """Whether ``entry`` may be handed out; if not it is closed, and its slot kept."""
        try:
            reason = self._stale(entry, now, deadline)
        except BaseException:
            self._give_back(entry, Reason.INTERRUPTED)
            raise
        if reason is None:
            return True
        try:
            self.connector.close(entry.conn)
            with self._lock:
                self._stats.discards[reason] += 1
                self._stats.checkouts -= 1  # counted when taken; the new connection counts
            self._log_discard(reason)
        except BaseException:
            self._release_held_slot()
            raise
        return False

    def _stale(self, entry: PooledConnection, now: float, deadline: float) -> str | None:
        if now >= entry.expires_at:
            return Reason.MAX_AGE
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
                    return Reason.BROKEN
                raise

    def _hand_out(self, entry: PooledConnection, start: float, now: float) -> PooledConnection:
        entry.checked_out_at = now
        entry.warned = False
        if self._held is not None:
            self._held.add(entry)
        if self._debug:
            try:
                self._emit_debug("db_pool.checkout", reused=True, waited=now - start)
            except BaseException:
                # The logger raised, or the caller was interrupted in it: nobody
                # holds the connection yet.
                self._give_back(entry)
                raise
        return entry

    # -- connect ----------------------------------------------------------------

    def _connect(self, attempt: _Attempt) -> PooledConnection | None:
        """Open a connection in the slot the caller holds; None if the slot went back.

        On evidence that the server is out of reach the pool backs off, and the
        caller, rather than fail, waits for a connection given back while the pool
        has any.
        """
        if not self._start_connecting():
            # Backed off since the slot was reserved: no connect on a request's path.
            self._release_held_slot()
            return None
        try:
            conn = self._open_in_slot(attempt)
        except BaseException as exc:
            if self._may_wait_instead(exc, attempt.deadline):
                return None  # the connections left may serve the caller
            raise
        return self._opened_for_checkout(conn, attempt.start)

    def _start_connecting(self) -> bool:
        with self._lock:
            if self._backoff.active:
                return False
            self._connecting += 1
            return True

    def _open_in_slot(self, attempt: _Attempt) -> Any:
        """Connect in a slot already counted as connecting; on failure it is given back.

        A connection lost during its login or setup (a KILL, say) is tried once more
        at once, unless the pool backed off meanwhile.
        """
        retry = True
        while True:
            try:
                return self._open_connection(attempt.start, attempt.deadline)
            except BaseException as exc:
                kind = self._kind(exc)
                if retry and kind == "lost" and monotonic() < attempt.deadline:
                    retry = False
                    if not self._backoff.active:
                        self._log_retry(exc, attempt)
                        continue
                self._connect_failed(exc, kind, attempt)
                raise

    def _log_retry(self, exc: BaseException, attempt: _Attempt) -> None:
        try:
            self._log.info(
                "db_pool.connect_failed",
                **self._counts(),
                error=_describe(exc),
                kind="lost",
                retry=True,
            )
        except BaseException:
            # The logger raised, or the caller was interrupted in it: the slot goes back.
            with self._lock:
                self._connecting -= 1
                self._in_use -= attempt.in_use
                self._release_slot_locked()
            raise

    def _kind(self, exc: BaseException) -> str:
        """What a failed connect says: a Connector.classify kind, "timeout" or "interrupted"."""
        if not isinstance(exc, Exception):
            return "interrupted"  # the caller's own gevent.Timeout or GreenletExit
        if isinstance(exc, PoolTimeout):
            return "timeout"
        try:
            return self.connector.classify(exc)
        except Exception:
            return "error"

    def _may_wait_instead(self, exc: BaseException, deadline: float) -> bool:
        # Only for evidence that the server is out of reach: never for the caller's
        # own interrupt or deadline, nor for an error that is the caller's to see.
        if self._kind(exc) not in EVIDENCE:
            return False
        with self._lock:
            waiting_helps = self._backoff.active and self._established_locked() > 0
            return waiting_helps and monotonic() < deadline

    def _open_connection(self, start: float, deadline: float) -> Any:
        return self._within(start, deadline, self.connector.connect)

    def _within(self, start: float, deadline: float, connect: Callable[[], Any]) -> Any:
        """``connect()``, bounded by the checkout's deadline (under gevent)."""
        with _sync.deadline(deadline - monotonic()) as timer:
            try:
                return connect()
            except BaseException as exc:
                if timer is not None and exc is timer:
                    raise self._timeout_error(monotonic() - start, "connect") from None
                raise

    def _count_opened_locked(self) -> bool:
        """Count a new connection in; True if it ends a backoff (the server is back)."""
        self._connecting -= 1
        self._stats.connects += 1
        recovered = self._backoff.active
        if recovered:
            self._backoff.clear()
        return recovered

    def _opened_for_checkout(self, conn: Any, start: float) -> PooledConnection:
        """A connection opened in a checkout's slot: counted in, and the caller's."""
        entry = PooledConnection(
            conn, monotonic(), self._max_age, self._generation, self._rebalance
        )
        with self._lock:
            self._stats.checkouts += 1
            if self._count_opened_locked():
                self._grant_slots_locked(entry.created_at)
                recovered = True
            else:
                recovered = False
        if self._held is not None:
            self._held.add(entry)
        try:
            self._log_opened(entry, start, recovered)
            if self._debug:
                self._emit_debug("db_pool.checkout", reused=False, waited=entry.created_at - start)
        except BaseException:
            self._give_back(entry)  # never used: no reset
            raise
        return entry

    def _opened_for_pool(self, conn: Any, start: float) -> None:
        """A connection the pool opened for itself (warm-up, the prober): delivered."""
        entry = PooledConnection(
            conn, monotonic(), self._max_age, self._generation, self._rebalance
        )
        with self._lock:
            recovered = self._count_opened_locked()
        try:
            self._log_opened(entry, start, recovered)
        finally:
            self._deliver(entry)

    def _log_opened(self, entry: PooledConnection, start: float, recovered: bool) -> None:
        seconds = round(entry.created_at - start, 6)
        self._log.info("db_pool.connect", **self._counts(), seconds=seconds)
        if recovered:
            self._log.info("db_pool.recovered", **self._counts())

    def _connect_failed(self, exc: BaseException, kind: str, attempt: _Attempt) -> None:
        """Count a failed connect in and give its slot back; back off on evidence."""
        start_prober = False
        with self._lock:
            self._connecting -= 1
            if kind != "interrupted":
                # (An interrupt of the caller's own says nothing of the server.)
                self._stats.connect_errors += 1
                self._stats.last_connect_error = _describe(exc)
            if kind == "timeout":
                # Our own deadline says nothing of the server (the wait may have used
                # it up); the driver's connect_timeout does, and is "unreachable".
                self._stats.timeouts += 1
            elif kind in EVIDENCE and not self._backoff.active:
                self._backoff.failed(kind, monotonic())
                start_prober = self._claim_prober_locked()
            self._in_use -= attempt.in_use
            self._release_slot_locked()
        if start_prober:
            self._start_prober()
        self._log_connect_failed(exc, kind)

    def _log_connect_failed(self, exc: BaseException, kind: str) -> None:
        if isinstance(exc, PoolTimeout):
            self._log.warning("db_pool.timeout", **self._counts(), waited=exc.waited)
        elif kind != "interrupted":
            self._log.warning(
                "db_pool.connect_failed",
                **self._counts(),
                error=self._stats.last_connect_error,
                kind=kind,
                backoff=self._backoff.active,
            )

    # -- the prober: the pool's own reconnects while backed off ---------------------

    def _claim_prober_locked(self) -> bool:
        # True: the caller must start the prober (one per pool, while backed off).
        if self._prober or self._closed or not self._backoff.active:
            return False
        self._prober = True
        return True

    def _start_prober(self) -> None:
        # threading as it is now: a greenlet once gevent has patched it.
        thread = threading.Thread(
            target=self._probe, args=(self._generation,), name="wsgi_db_pool-prober", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._prober = False  # the next refused checkout or reaper tick tries again
            raise

    def _probe_due_locked(self) -> bool:
        # Reserves the slot and the probe's turn when it is due.
        if (
            self._probing
            or self._backoff.kind != "down"
            or monotonic() < self._backoff.until
            or self._open >= self._cap
        ):
            return False
        self._probing = True
        self._open += 1
        self._connecting += 1
        return True

    def _probe_for(self, start: float, deadline: float) -> PooledConnection:
        """The probe's turn, taken by a checkout: a connection, or PoolUnavailable at once.

        Taken only when the last look was refused (nothing listened), which costs one
        round trip; the look is bounded by the checkout's deadline all the same.
        """
        try:
            conn = self._within(start, deadline, lambda: self._probe_connect(start, deadline))
        except BaseException as exc:
            self._probe_failed(exc, _Attempt.for_checkout(start, deadline))
            if not isinstance(exc, Exception):
                raise
            self._log.warning("db_pool.reject", **self._counts(), reason=Reject.BACKOFF.value)
            raise self._unavailable_error() from exc
        with self._lock:
            self._probing = False
        return self._opened_for_checkout(conn, start)

    def _probe_failed(self, exc: BaseException, attempt: _Attempt) -> None:
        kind = "down" if isinstance(exc, _NothingListens) else self._kind(exc)
        if kind == "timeout":
            kind = "unreachable"  # no answer within the probe's own deadline
        start_prober = False
        with self._lock:
            self._probing = False
            self._connecting -= 1
            self._in_use -= attempt.in_use
            if kind != "interrupted":
                self._backoff.failed(kind, monotonic())
                if kind == "down":
                    self._stats.rejects[Reject.BACKOFF] += attempt.in_use
                else:
                    self._stats.connect_errors += 1
                    self._stats.last_connect_error = _describe(exc)
                start_prober = self._claim_prober_locked()
            self._release_slot_locked()
        if start_prober:
            self._start_prober()

    def _probe(self, generation: int) -> None:
        """While backed off: wait the backoff's step, try one connect, repeat."""
        try:
            while self._probe_once(generation):
                pass
        except BaseException:
            # The reaper's next tick (or the next refused checkout) starts another.
            with self._lock:
                if self._generation == generation:
                    self._prober = False
            raise

    def _probe_once(self, generation: int) -> bool:
        """One step of the prober; False when it has nothing more to do."""
        with self._lock:
            delay = self._probe_delay_locked(generation)
        if delay is None:
            return False
        if delay > 0:
            time.sleep(delay)  # looked up now: gevent's once it has patched time
            return True
        return self._probe_now(generation)

    def _probe_delay_locked(self, generation: int) -> float | None:
        """Seconds until the next probe; 0: now (its slot reserved); None: nothing to do."""
        if self._generation != generation:
            return None  # the parent's prober, carried over by a fork
        if self._closed or not self._backoff.active:
            # Decided under the lock that starts probers: none is ever missing.
            self._prober = False
            return None
        delay = self._backoff.until - monotonic()
        if delay <= 0 and (self._open >= self._cap or self._probing):
            # Every slot holds a connection, or a checkout is probing: look later.
            delay = self._backoff.ceiling
        if delay > 0:
            return delay
        self._probing = True
        self._open += 1
        self._connecting += 1
        return 0.0

    def _probe_now(self, generation: int) -> bool:
        attempt = _Attempt.for_pool(self._config.timeout)
        try:
            conn = self._probe_connect(attempt.start, attempt.deadline)
        except BaseException as exc:
            if self._generation != generation:
                return False  # forked meanwhile: these counters are not ours
            self._probe_failed(exc, attempt)
            if isinstance(exc, Exception):
                return True
            raise
        if self._generation != generation:
            self.connector.abort(conn)
            return False
        with self._lock:
            self._probing = False
        self._opened_for_pool(conn, attempt.start)
        return True  # the next step sees the backoff over and ends

    def _probe_connect(self, start: float, deadline: float) -> Any:
        # The cheap look first, where the last evidence was that nothing answered:
        # a full connect costs PyMySQL a TLS context even against a closed port. Only
        # a refusal is taken as final; a look that cannot tell leads to a connect.
        if self._backoff.kind in ("down", "unreachable"):
            listening = self.connector.reachable()
            if listening is False:
                raise _NothingListens
            if listening and self._backoff.kind == "down":
                self._listening_again()
        return self._open_connection(start, deadline)

    def _listening_again(self) -> None:
        # Nothing listened, and now something does: the server is back from a restart.
        # Requests may connect at once (at most the cap), as they would without a
        # pool, rather than wait for this probe's login, which on a busy worker takes
        # a scheduling round per round trip. If their connects fail, that is evidence
        # again, and the pool backs off again. (A port that answered all along, with
        # timeouts or shutdown errors, says nothing by accepting: only a login does.)
        with self._lock:
            if not self._backoff.active or self._backoff.kind != "down":
                return
            self._backoff.clear()
            self._grant_slots_locked(monotonic())
        self._log.info("db_pool.recovered", **self._counts())

    # -- checkin ----------------------------------------------------------------

    def checkin(
        self,
        entry: PooledConnection,
        reason: Reason | str | Literal[_Checkin.RESET] | None = _Checkin.RESET,
    ) -> None:
        """Give back a connection the caller checked out: recycled, or discarded (closed).

        ``checkin(entry)``: the connector resets it first (``Connector.reset``); a
        reason the reset returns discards it with that reason, and a BaseException
        from the reset (``gevent.Timeout``, ``GreenletExit``) discards it as
        "interrupted" and is raised again once its slot is free.
        ``checkin(entry, reason)``: no reset; a reason discards it, ``None`` says the
        caller reset it already and it is recycled.
        Either way, a connection past its ``max_age`` or given back to a closed pool
        is discarded, and its slot is freed even if a close or an event raises.
        """
        if reason is _RESET:
            reason = None
            if entry.generation == self._generation and not self._closed:
                try:
                    reason = self.connector.reset(entry.conn)
                except BaseException:
                    self._give_back(entry, Reason.INTERRUPTED)
                    raise
        if entry.generation != self._generation:
            # Checked out before this process forked: its socket is the parent's.
            self.connector.abort(entry.conn)
            return
        now = monotonic()
        held = now - entry.checked_out_at
        long_hold = False
        if self._held is not None:
            self._held.discard(entry)
            long_hold = not entry.warned and held >= self._warn_hold  # type: ignore[operator]
        if reason is None and now >= entry.due_at:
            reason = self._retirement(entry, now)
        try:
            if reason is None:
                reason = self._recycle(entry, now, held)
            if reason is not None:
                if reason in _MAY_LINGER and self.connector.lingers(entry.conn):
                    self._end_later(entry, reason, held)
                else:
                    self._discard(entry, reason, held=held)
        finally:
            # Events last: a logger that raises cannot keep the entry from coming back.
            if long_hold:
                self._warn_long_hold(entry, held, still_held=False)
            if self._leaked:
                self.drain_leaked()

    def _retirement(self, entry: PooledConnection, now: float) -> Reason | None:
        """Why a connection past ``due_at`` is given back closed: ``max_age``, or its
        turn to rebalance; None when the pace allows no retirement yet (recycled)."""
        if now >= entry.expires_at:
            return Reason.MAX_AGE
        with self._lock:
            return Reason.REBALANCE if self._rebalance_turn_locked(entry, now) else None

    def _rebalance_turn_locked(self, entry: PooledConnection, now: float) -> bool:
        """Whether ``entry`` (idle, or being given back: never one in use) is retired now.

        Only one connection per pace, and the pace jittered (half to one and a half of
        it), so that a pool never reconnects in a burst, nor the workers of a fleet in
        step. The connection opened in its place goes where the balancer sends new
        ones (HAProxy's ``leastconn``: to a node that came back).
        """
        if now < entry.rebalance_at:
            return False
        if now < self._rebalance_next:
            # Not the pool's turn: the checkins before it need not ask (nor lock) again.
            entry.due_at = min(entry.expires_at, self._rebalance_next)
            return False
        self._rebalance_next = now + self._rebalance_pace * (0.5 + random())
        return True

    def _give_back(self, entry: PooledConnection, reason: Reason | str | None = None) -> None:
        """Give back a connection no holder used (an abandoned handoff, an event that
        raised before the caller held it): recycled or discarded, never reset."""
        # An explicit reason, None included, skips the reset (one frame less for the
        # checkin of every request than the other way round).
        self.checkin(entry, reason)

    def _recycle(self, entry: PooledConnection, now: float, held: float) -> Reason | None:
        """Hand ``entry`` to the longest waiter or keep it idle; a discard reason if neither."""
        with self._lock:
            if self._closed:
                return Reason.SHUTDOWN
            waiter = None
            kept = False
            if self._waiters or self._holders:
                # The order may keep it idle for a barger until the loop turns: only
                # from the waiters' own OS thread, whose loop runs _serve_idle (a
                # thread without a running hub would never hand it on).
                kept = (
                    not self._holders
                    and self._order.barge(self._waiters, now)
                    and self._waiters[0].wakeup.local()
                )
                if not kept:
                    waiter = self._next_waiter_locked(self._open, now)
            handed = waiter is not None
            if waiter is not None:
                self._hand_entry_locked(entry, now, waiter)
            elif self._open > self._cap:
                return Reason.RESERVE  # opened past the cap for a request holding other aliases
            else:
                # Kept up to the cap: connections beyond pool_size close after
                # overflow_max_idle (the reaper), not on every checkin, so a load
                # that swings does not reopen them each time.
                entry.idle_since = now
                self._idle.append(entry)
                self._in_use -= 1
            self._stats.recycles += 1
        if kept:
            _sync.call_soon(self._serve_idle)
        if self._debug:
            self._emit_debug("db_pool.recycle", held=held, handed=handed)
        return None

    def _serve_idle(self) -> None:
        """From the event loop: idle connections no barger took go to the waiters."""
        with self._lock:
            if self._closed:
                return
            now = monotonic()
            while self._idle and (self._waiters or self._holders):
                waiter = self._next_waiter_locked(self._open, now)
                if waiter is None:
                    return
                self._in_use += 1
                self._hand_entry_locked(self._idle.pop(), now, waiter)

    def _deliver(self, entry: PooledConnection) -> None:
        """A connection the pool opened for itself: to the longest waiter, or idle."""
        now = monotonic()
        with self._lock:
            if self._closed:
                self._closing += 1
            else:
                waiter = self._next_waiter_locked(self._open, now)
                if waiter is not None:
                    self._in_use += 1
                    self._hand_entry_locked(entry, now, waiter)
                    self._grant_slots_locked(now)
                else:
                    self._idle.append(entry)
                return
        self._discard(entry, Reason.SHUTDOWN)

    def _hand_entry_locked(self, entry: PooledConnection, now: float, waiter: _Waiter) -> None:
        # Straight to the waiter: a greenlet that comes later must not find it idle first.
        entry.checked_out_at = now
        entry.idle_since = now
        entry.warned = False
        if self._held is not None:
            self._held.add(entry)
        self._stats.checkouts += 1
        self._hand_locked(waiter, entry, now)

    def _discard(
        self, entry: PooledConnection, reason: Reason | str, *, held: float | None = None
    ) -> None:
        # Close before the slot is freed, so the server never sees more than the cap;
        # free it even if the close is interrupted. ``held``: the seconds a holder had
        # it (its slot counts in use); None for one the pool held, counted as closing.
        try:
            self.connector.close(entry.conn)
        finally:
            try:
                with self._lock:
                    self._stats.discards[reason] += 1
                    if held is None:
                        self._closing -= 1
                    else:
                        self._in_use -= 1
                    self._release_slot_locked()
            finally:
                # Logged last: a logger that raises or yields cannot cost the slot.
                self._log_discard(reason, held)

    def _end_later(self, entry: PooledConnection, reason: Reason | str, held: float) -> None:
        """Discard a connection whose session may still be running a statement on the
        server (cut at read_timeout, or interrupted): the server counts that session
        until it ends, so its slot stays counted (as closing) until the connector has
        ended it there. In the background: the holder's request does not wait for it."""
        with self._lock:
            self._in_use -= 1
            self._closing += 1
        thread = threading.Thread(
            target=self._end, args=(entry, reason, held), name="wsgi_db_pool-end", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            self._discard(entry, reason)  # no thread: closed here, the slot freed
            raise

    def _end(self, entry: PooledConnection, reason: Reason | str, held: float) -> None:
        start = monotonic()
        outcome = "interrupted"
        try:
            outcome = self.connector.end(entry.conn)
        finally:
            if entry.generation == self._generation:  # else forked meanwhile: not ours
                with self._lock:
                    self._stats.discards[reason] += 1
                    self._closing -= 1
                    self._release_slot_locked()
                self._log_discard(reason, held)
                log = self._log.info if outcome in ("killed", "gone") else self._log.warning
                log(
                    "db_pool.end_session",
                    **self._counts(),
                    outcome=outcome,
                    seconds=round(monotonic() - start, 6),
                )

    def _release_held_slot(self) -> None:
        with self._lock:
            self._in_use -= 1
            self._release_slot_locked()

    def _release_slot_locked(self) -> None:
        # A freed slot goes to the next waiter, who may open a connection in it; not
        # while backed off: the prober opens the next connection.
        if not self._closed and not self._backoff.active:
            now = monotonic()
            waiter = self._next_waiter_locked(self._open, now)
            if waiter is not None:
                self._in_use += 1
                self._hand_locked(waiter, _SLOT, now)
                return
        self._open -= 1
        if self._backoff.active and not self._established_locked():
            # Out of reach and nothing left to give back: waiting would only time out.
            for queue in (self._holders, self._waiters):
                self._stats.rejects[Reject.BACKOFF] += len(queue)
                while queue:
                    self._hand_locked(queue.popleft(), _UNAVAILABLE, monotonic())

    def _grant_slots_locked(self, now: float) -> None:
        # Back from a backoff: the free slots go to the next waiters at once.
        if self._backoff.active:
            return
        while True:
            waiter = self._next_waiter_locked(self._open + 1, now)
            if waiter is None:
                return
            self._open += 1
            self._in_use += 1
            self._hand_locked(waiter, _SLOT, now)

    def _next_waiter_locked(self, open_: int, now: float) -> _Waiter | None:
        """Who is served, ``open_`` connections being open then; taken off its queue.

        Requests holding other aliases first, each up to ``cap`` plus what it holds;
        then one of the others (the order's pick: the oldest, as shipped), up to ``cap``.
        """
        if self._holders:
            for waiter in self._holders:
                if open_ <= self._cap + waiter.holding:
                    self._holders.remove(waiter)
                    self._stats.reserved += open_ > self._cap
                    return waiter
        if self._waiters and open_ <= self._cap:
            return self._order.take(self._waiters, now)
        return None

    def _hand_locked(self, waiter: _Waiter, item: _Handed, now: float) -> None:
        # Taken off its queue by the caller, under the lock: nobody can barge in.
        if item is not _UNAVAILABLE:  # the histogram is of waits that got something
            self._stats.waited(now - waiter.since)
        waiter.item = item
        waiter.wakeup.set()

    def _log_discard(self, reason: Reason | str, held: float | None = None) -> None:
        if held is None:
            self._log.info("db_pool.discard", **self._counts(), reason=str(reason))
        else:
            fields = {"reason": str(reason), "held": round(held, 6)}
            self._log.info("db_pool.discard", **self._counts(), **fields)

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
            drained = []
            while self._leaked:
                entry = self._leaked.popleft()
                drained.append(entry)
                self._stats.discards[Reason.LEAK] += 1
                self._in_use -= 1
                self._release_slot_locked()
        for entry in drained:
            self._log.warning(
                "db_pool.leak",
                **self._counts(),
                held=round(monotonic() - entry.checked_out_at, 6),
                where=entry.where,
            )

    # -- upkeep -----------------------------------------------------------------

    def reap(self) -> None:
        """Close idle connections past their time, warn of long holds; the reaper calls this.

        ``max_age`` closes any, and ``rebalance`` any at its paced turn; ``max_idle``
        those above ``min_size``; ``overflow_max_idle`` those above ``pool_size``.
        """
        self.drain_leaked()
        now = monotonic()
        with self._lock:
            start_prober = self._claim_prober_locked()
            expired = self._expire_idle_locked(now)
        if start_prober:
            self._start_prober()
        self._discard_all(expired)
        if self._held is not None:
            for entry in list(self._held):
                held = now - entry.checked_out_at
                if not entry.warned and held >= self._warn_hold:  # type: ignore[operator]
                    self._warn_long_hold(entry, held, still_held=True)

    def _expire_idle_locked(self, now: float) -> list[tuple[PooledConnection, Reason]]:
        """Take the idle connections past their time off the stack, counted as closing."""
        expired: list[tuple[PooledConnection, Reason]] = []
        keep = []
        # Oldest idle first, so the ones that shrink the pool are the coldest.
        open_ = self._open
        for entry in self._idle:
            reason = self._expired(entry, now, open_)
            if reason is None:
                keep.append(entry)
            else:
                expired.append((entry, reason))
                open_ -= 1
        if expired:
            self._idle[:] = keep
            self._closing += len(expired)
        return expired

    def _expired(self, entry: PooledConnection, now: float, open_: int) -> Reason | None:
        if now >= entry.due_at:
            if now >= entry.expires_at:
                return Reason.MAX_AGE
            if self._rebalance_turn_locked(entry, now):
                return Reason.REBALANCE
        idle = now - entry.idle_since
        if (
            self._overflow_max_idle is not None
            and open_ > self._pool_size
            and idle >= self._overflow_max_idle
        ):
            return Reason.OVERFLOW
        if self._max_idle is not None and open_ > self._min_size and idle >= self._max_idle:
            return Reason.MAX_IDLE
        return None

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

        Stops at the first failure: the prober then takes over if it was evidence.
        """
        while True:
            with self._lock:
                if self._closed or self._open >= self._min_size or self._backoff.active:
                    return
                self._open += 1
                self._connecting += 1
            attempt = _Attempt.for_pool(self._config.timeout)
            try:
                conn = self._open_in_slot(attempt)
            except Exception:
                return  # the slot is given back, the error counted and logged
            self._opened_for_pool(conn, attempt.start)

    def close(self) -> None:
        """Close every idle connection and refuse later checkouts; twice is harmless.

        Connections in use are closed when they are given back; waiters get PoolClosed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            self._closing += len(idle)
            waiters = [*self._holders, *self._waiters]
            self._holders, self._waiters = deque(), deque()
            # Marked under the lock, so that a waiter timing out meanwhile sees it.
            for waiter in waiters:
                waiter.item = _CLOSED
        for waiter in waiters:
            waiter.wakeup.set()
        self._discard_all([(entry, Reason.SHUTDOWN) for entry in idle])

    def _discard_all(self, entries: list[tuple[PooledConnection, Reason]]) -> None:
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
    def backed_off(self) -> bool:
        """Whether the pool is backed off: a connect failed with evidence that the server
        is out of reach, and until a probe succeeds no request connects (checkouts wait
        for a connection given back, or are answered PoolUnavailable at once when none
        is left). One attribute read, no lock and no I/O."""
        return self._backoff.active

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (in this process: a parent's close is not the child's)."""
        return self._closed and self._pid == os.getpid()

    # -- numbers ----------------------------------------------------------------

    def _counts(self) -> dict[str, Any]:
        return {
            "alias": self.name,
            "open": self._open,
            "idle": len(self._idle),
            "in_use": self._in_use,
            "waiting": len(self._waiters) + len(self._holders),
        }

    def _emit_debug(self, event: str, **fields: Any) -> None:
        for key in ("waited", "held"):
            if key in fields:
                fields[key] = round(fields[key], 6)
        self._log.debug(event, **self._counts(), **fields)

    def stats(self) -> dict[str, Any]:
        """The pool's state and running totals, as a plain dict with stable keys."""
        with self._lock:
            counts = self._counts()
            del counts["alias"]
            return {
                **counts,
                "pool_size": self._pool_size,
                "max_overflow": self._cap - self._pool_size,
                **self._stats.totals(),
                "leaked_pending": len(self._leaked),
                "connecting": self._connecting,
                "reserved": self._stats.reserved,
                "backed_off": self._backoff.active,
            }

    def _timeout_error(self, waited: float, doing: str = "wait") -> PoolTimeout:
        what = "connecting took" if doing == "connect" else "waited"
        msg = (
            f"no connection for alias {self.name!r}: {what} {waited:.2f} s "
            f"(timeout={self._config.timeout} s); {self._in_use} of {self._cap} in use "
            f"(pool_size={self._pool_size} + max_overflow={self._cap - self._pool_size}), "
            f"{len(self._waiters) + len(self._holders)} waiting"
        )
        if self._stats.last_connect_error:
            msg += f"; last connect error: {self._stats.last_connect_error}"
        return PoolTimeout(msg, round(waited, 6))


class _NothingListens(Exception):
    """The prober's cheap look found nothing listening at the server's address."""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _debug_enabled(log: Any) -> bool:
    is_enabled_for = getattr(log, "is_enabled_for", None)
    if is_enabled_for is None:
        return True
    return bool(is_enabled_for(10))  # logging.DEBUG
