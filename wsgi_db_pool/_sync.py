"""Blocking primitives that follow gevent's monkey patching.

The pool may be built before gevent patches the standard library (gunicorn
``--preload`` imports the app in the arbiter, the gevent worker patches after the
fork). Every primitive is therefore looked up when it is made, not at import, and
the pool makes its own again after a fork.
"""

from __future__ import annotations

import _thread
import contextlib
import select
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any, Protocol

# The longest wait a lock takes (threading.TIMEOUT_MAX is about 292 years); and past a
# day, a deadline is no deadline.
TIMEOUT_MAX = min(threading.TIMEOUT_MAX, 24 * 3600.0)


def allocate_native_lock() -> Any:
    """A real OS lock, even under gevent's patching, for critical sections that never switch.

    No greenlet can block on it while another holds it, because the holder never
    yields inside; it is half the cost of gevent's lock and also correct across
    real threads.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original("_thread", "allocate_lock")()
    return _thread.allocate_lock()


def get_ident() -> int:
    """The current thread's ident, or the current greenlet's under gevent's patching."""
    return _thread.get_ident()


_patched = False


def gevent_patched() -> bool:
    """Whether gevent has patched ``threading`` in this process (never imports gevent)."""
    global _patched
    # Asked on every contended checkout; a patch is never undone, so a yes is kept.
    if not _patched:
        monkey = sys.modules.get("gevent.monkey")
        _patched = monkey is not None and bool(monkey.is_module_patched("threading"))
    return _patched


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Any]:
    """Bound a blocking call to ``seconds`` under gevent; yields the timer, or None.

    Under real threads nothing can interrupt a socket call safely: the driver's own
    ``connect_timeout``/``read_timeout`` options bound it there.
    """
    if seconds >= TIMEOUT_MAX or not gevent_patched():
        yield None
        return
    import gevent

    timer = gevent.Timeout(max(seconds, 0.0))
    timer.start()
    try:
        yield timer
    finally:
        timer.close()


def tcp_reachable(host: str, port: int, timeout: float) -> bool | None:
    """Whether something accepts TCP connections at ``host:port``; closed at once.

    False only when every address refused (nothing listens); None when it cannot
    tell (a timeout, a name that does not resolve, no route). Through ``socket`` as it
    is now: cooperative once gevent has patched it.
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return False
    except OSError:
        return None
    sock.close()
    return True


def call_soon(fn: Any) -> None:
    """Run ``fn`` soon from gevent's event loop; a no-op without gevent's patching.

    Safe from a finalizer: it only appends to the loop's callback list. Under real
    threads the pool's next checkout, checkin or reaper tick does the work instead.
    """
    if gevent_patched():
        import gevent

        gevent.get_hub().loop.run_callback(fn)


class Wakeup(Protocol):
    """A one-shot signal for one waiting checkout: ``set()`` once, ``wait()`` until then."""

    def set(self) -> None:
        """Wake the waiter; never blocks, never switches (called under the pool's lock)."""

    def wait(self, seconds: float) -> None:
        """Block until ``set()`` or ``seconds`` pass (or sooner: the caller checks the clock)."""

    def local(self) -> bool:
        """Whether the caller runs in the OS thread whose event loop this waiter waits in."""


def make_wakeup() -> Wakeup:
    """A wakeup for the current greenlet under gevent's patching, else for the thread."""
    if gevent_patched():
        return _GreenWakeup()
    return _LockWakeup()


class _LockWakeup:
    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        self._lock.release()

    def wait(self, seconds: float) -> None:
        self._lock.acquire(True, min(max(seconds, 0.0), TIMEOUT_MAX))

    def local(self) -> bool:
        return False  # no event loop: nothing runs a callback for it


_real_get_ident: Any = None


class _GreenWakeup:
    # A gevent lock with a timeout costs a Timeout exception object, a link and a
    # notifier callback per wait; the hub's Waiter and one loop timer are all a
    # one-shot handoff needs. Waiter.switch, run from the hub, is ignored once the
    # waiter has stopped waiting (a late timer or wake-up is harmless).
    __slots__ = ("_loop", "_thread", "_waiter")

    def __init__(self) -> None:
        global _real_get_ident
        # Made under the pool's lock: no import statement (gevent.hub is loaded by
        # the patching that brought us here), and get_hub() only reads the thread's.
        hub_module = sys.modules["gevent.hub"]
        if _real_get_ident is None:
            _real_get_ident = sys.modules["gevent.monkey"].get_original("_thread", "get_ident")
        hub = hub_module.get_hub()
        self._loop = hub.loop
        self._waiter = hub_module.Waiter(hub)
        self._thread = _real_get_ident()

    def set(self) -> None:
        if _real_get_ident() == self._thread:
            self._loop.run_callback(self._waiter.switch, None)
        else:
            # Given back from another OS thread (gevent's threadpool, a real thread).
            self._loop.run_callback_threadsafe(self._waiter.switch, None)

    def local(self) -> bool:
        return bool(_real_get_ident() == self._thread)

    def wait(self, seconds: float) -> None:
        # update=True: the loop's cached time lags by whatever CPU the greenlets run
        # in this iteration took, and the timer would fire early by as much.
        timer = self._loop.timer(min(max(seconds, 0.0), TIMEOUT_MAX))
        timer.start(self._waiter.switch, None, update=True)
        try:
            self._waiter.get()
        finally:
            timer.close()


_poll: Any = None


def new_poller(fd: int) -> Any:
    """A poll object on ``fd`` for readability, from the original ``select.poll``.

    gevent replaces select.poll with one that waits on its hub; a zero-timeout check
    must not give up the CPU. Resolved once: either way it is the original.
    """
    global _poll
    if _poll is None:
        monkey = sys.modules.get("gevent.monkey")
        _poll = monkey.get_original("select", "poll") if monkey else select.poll
    poller = _poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return poller
