"""The fast tier: the pool's whole policy on a fake connector, no Django, no server.

Runs alone (``make test-unit``: plain pytest, ``--confcutdir`` keeps the Django setup
of tests/conftest.py out) and inside the main suite under gevent's patching alike:
concurrency comes from ``threading``, which is greenlets once gevent has patched it.

One fixture owns time and chance: the pool's clock is the real one plus an offset the
test moves forward (``clock.advance``), so that waits still end in real time while
ages and idle times jump; its ``random()`` answers what the test queues (0.5 else).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wsgi_db_pool import _backoff, pool
from wsgi_db_pool.config import PoolConfig
from wsgi_db_pool.pool import Pool

_real_monotonic = time.monotonic


class Clock:
    """The pool's monotonic clock: the real one, plus what the test advanced."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return _real_monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Chance:
    """The pool's random(): the queued values first, then 0.5."""

    def __init__(self) -> None:
        self.queued: deque[float] = deque()

    def __call__(self) -> float:
        return self.queued.popleft() if self.queued else 0.5


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The one place that patches the pool's clock and random (see the module docstring)."""
    fake = Clock()
    monkeypatch.setattr(pool, "monotonic", fake)
    return fake


@pytest.fixture(autouse=True)
def chance(monkeypatch: pytest.MonkeyPatch) -> Chance:
    fake = Chance()
    monkeypatch.setattr(pool, "random", fake)
    monkeypatch.setattr(_backoff, "random", fake)
    return fake


# -- the fake connector ---------------------------------------------------------------


class Conn:
    ids = itertools.count()

    def __init__(self) -> None:
        self.id = next(Conn.ids)
        self.closed = False
        self.resets = 0

    def __repr__(self) -> str:
        return f"<Conn {self.id}>"


class Lost(Exception):
    """A connection lost during its setup (a KILL?), as a driver reports it."""


class TooMany(Exception):
    """The server turned the connection away (too many connections)."""


class Interrupted(BaseException):
    """Stands for gevent.Timeout or GreenletExit: not an Exception."""


class Connector:
    """Connections as the server sees them: how many are open (or being opened) at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.live = 0  # entered connect() and not yet failed or closed
        self.peak = 0
        self.connects = 0
        self.connected: list[Conn] = []
        self.closed: list[Conn] = []
        # Who called connect(): the test's threads, or the pool's prober.
        self.callers: list[str] = []
        # Raised by the next connects, one each; then `down`, raised while set.
        self.failures: list[BaseException] = []
        self.down: BaseException | None = None
        self.look: bool | None = None  # what reachable() answers
        self.switch = False  # let other threads run inside connect()
        self.reset_result: Callable[[Conn], str | None] = lambda conn: None
        self.check_result: str | None = None
        # Connections whose session is left running on the server when discarded; end()
        # ends one once `ended` is set (the server's KILL taking its time).
        self.lingering: list[Conn] = []
        self.ended = threading.Event()
        self.ended.set()

    def connect(self) -> Conn:
        with self._lock:
            self.connects += 1
            self.callers.append(threading.current_thread().name)
            self.live += 1
            self.peak = max(self.peak, self.live)
        try:
            if self.switch:
                time.sleep(0)
            if self.failures:
                raise self.failures.pop(0)
            if self.down is not None:
                raise self.down
        except BaseException:
            with self._lock:
                self.live -= 1
            raise
        conn = Conn()
        self.connected.append(conn)
        return conn

    def classify(self, exc: Exception) -> str:
        if isinstance(exc, ConnectionRefusedError):
            return "unreachable"
        if isinstance(exc, TooMany):
            return "refused"
        return "lost" if isinstance(exc, Lost) else "error"

    def reachable(self) -> bool | None:
        return self.look

    def check(self, conn: Conn, ping: bool) -> str | None:
        return self.check_result

    def reset(self, conn: Conn) -> str | None:
        conn.resets += 1
        return self.reset_result(conn)

    def close(self, conn: Conn) -> None:
        self._gone(conn)

    def abort(self, conn: Conn) -> None:
        self._gone(conn)

    def lingers(self, conn: Conn) -> bool:
        return conn in self.lingering

    def end(self, conn: Conn) -> str:
        self.ended.wait()
        self._gone(conn)
        return "killed"

    def _gone(self, conn: Conn) -> None:
        assert not conn.closed, f"{conn} closed twice"
        conn.closed = True
        with self._lock:
            self.live -= 1
            self.closed.append(conn)


class Log:
    """Keeps every event; raises `fail_with` from the event named `fail_on`."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail_on: str | None = None
        self.fail_with: type[BaseException] = Interrupted

    def _emit(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})
        if event == self.fail_on:
            raise self.fail_with(f"interrupted while logging {event}")

    debug = info = warning = _emit

    def is_enabled_for(self, level: int) -> bool:
        return True

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


@pytest.fixture
def make_pool() -> Iterator[Callable[..., Pool]]:
    """Pool(**settings) on a fresh Connector and Log; closed at teardown."""
    made: list[Pool] = []

    def make(**settings: Any) -> Pool:
        config = {
            "pool_size": 2,
            "max_overflow": 0,
            "timeout": 5.0,
            "max_idle": None,
            "rebalance": None,
        }
        config.update(settings)
        made.append(Pool("default", Connector(), PoolConfig(**config), Log()))
        return made[-1]

    yield make
    for each in made:
        each.close()


def connector_of(pool_: Pool) -> Connector:
    assert isinstance(pool_.connector, Connector)
    return pool_.connector


def log_of(pool_: Pool) -> Log:
    assert isinstance(pool_._log, Log)
    return pool_._log


def counts(pool_: Pool) -> tuple[int, int, int]:
    """(open, idle, in_use)."""
    stats = pool_.stats()
    return stats["open"], stats["idle"], stats["in_use"]


class Spawned:
    """A call on its own thread (a greenlet under gevent's patching), its outcome kept."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.value = fn(*args, **kwargs)
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 3.0) -> Any:
        assert self.done.wait(timeout), "the call did not end"
        if self.error is not None:
            raise self.error
        return self.value


def checkin_as_served(pool_: Pool, waiters: list[Spawned]) -> None:
    """Give back what each waiter got, in the order they were served (threads queue in
    any order), so that those still waiting get what the others give back."""
    pending = list(waiters)
    while pending:
        wait_until(lambda: any(w.done.is_set() for w in pending))
        served = next(w for w in pending if w.done.is_set())
        pending.remove(served)
        pool_.checkin(served.result())


def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait for a state another thread reaches; fails the test past ``timeout``."""
    deadline = _real_monotonic() + timeout
    while not condition():
        assert _real_monotonic() < deadline, "condition not reached"
        time.sleep(0.001)
