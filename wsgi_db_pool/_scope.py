"""``pooled()``: pooled connections for work that is not a WSGI request.

Greenlets spawned inside a view, management commands, Celery tasks on a gevent pool
and scripts get no request, so Django would open (and strand) connections of its
own for them. Inside ``pooled()`` they check out from the same pools as requests do
and give back when the block ends.

What the caller already holds comes first: inside a request (or an outer block) the
block shares its checkouts, and an alias whose connection this thread already uses
(an open ``atomic()``, a ``TestCase``'s transaction, a command that has queried) is
joined, not checked out again, so the transaction stays whole. With no middleware in
the process (tests, Celery's eager mode, pooling switched off) the block runs on
Django's own connections and closes those it opened.
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _django, _events

if TYPE_CHECKING:
    from .middleware import PoolingMiddleware

F = TypeVar("F", bound=Callable[..., Any])


def _the_middleware() -> PoolingMiddleware | None:
    """The one open PoolingMiddleware of the process, or None when there is none."""
    from .middleware import live_middlewares

    found = [m for m in live_middlewares() if not m.closed]
    if len(found) > 1:
        # Their pools differ in size and aliases: picking one would be a guess.
        raise RuntimeError(
            f"pooled() without middleware= found {len(found)} open PoolingMiddlewares in "
            f"this process and cannot choose; pass middleware=your_application"
        )
    return found[0] if found else None


class PooledScope:
    """A block in which pooled aliases check out from the pools; see ``pooled()``."""

    __slots__ = ("_lease", "_middleware", "_token", "_unpooled", "_where")

    def __init__(self, middleware: PoolingMiddleware | None, where: str | None) -> None:
        self._middleware = middleware
        self._where = where
        self._lease: _django.Lease | None = None
        self._token: Any = None
        self._unpooled: _django.Unpooled | None = None

    def __enter__(self) -> None:
        current = _django.current_lease.get()
        if current is not None and current.wants_any():
            return  # inside a request or an outer pooled(): share its checkouts
        middleware = self._middleware or _the_middleware()
        where = self._where or _caller()
        if middleware is None:
            self._unpooled = _django.Unpooled()
            _events.resolve(None).debug(
                "db_pool.unpooled", where=where, reason="no open PoolingMiddleware"
            )
            return
        pools = middleware.pools
        joined = _django.joined_aliases(pools)
        if joined:
            pools = {alias: pool for alias, pool in pools.items() if alias not in joined}
            if not pools:
                return  # every alias already in use here: nothing to check out
        lease = _django.Lease(pools, where)
        lease.set_aside()
        self._lease = lease
        self._token = _django.current_lease.set(lease)
        _reclaim_when_owner_dies(lease)

    def __call__(self, func: F) -> F:
        """``@pooled(middleware=app)``: decorate ``func`` as ``@pooled`` does."""
        return pooled(func, middleware=self._middleware)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        unpooled, self._unpooled = self._unpooled, None
        if unpooled is not None:
            unpooled.end()
        lease, self._lease = self._lease, None
        if lease is not None:
            unwatch(lease)
            lease.finish(self._token)


@overload
def pooled(func: F, *, middleware: PoolingMiddleware | None = ...) -> F: ...
@overload
def pooled(func: None = ..., *, middleware: PoolingMiddleware | None = ...) -> PooledScope: ...


def pooled(
    func: Callable[..., Any] | None = None, *, middleware: PoolingMiddleware | None = None
) -> Any:
    """Lend pooled connections to a block or a function that is not a WSGI request.

    ``with pooled(): ...`` or ``@pooled`` (also ``@pooled(middleware=app)``). The
    pools are those of ``middleware``, by default the one open ``PoolingMiddleware``
    of the process (with several open, pass ``middleware=``). Connections are checked
    out on first use and given back when the block or call ends. Inside a request (or
    another ``pooled()``) it changes nothing, and an alias whose connection this
    thread already uses (inside ``atomic()`` or a ``TestCase``, or once a command has
    queried) stays on that connection. With no open middleware the block runs on
    Django's own connections and closes those it opened (a debug ``db_pool.unpooled``
    event). A greenlet that ends without giving back has its connections reclaimed
    and a ``db_pool.leak`` event names where the block began.
    """
    if func is None:
        return PooledScope(middleware, None)

    where = f"{func.__module__}.{func.__qualname__}"

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        with PooledScope(middleware, where):
            return func(*args, **kwargs)

    return call


def _caller() -> str:
    frame = sys._getframe(2)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


# Watches on plain greenlets, kept here so that they outlive the greenlet's frames.
_watched: dict[int, Any] = {}


def _reclaim_when_owner_dies(lease: _django.Lease) -> None:
    # A greenlet that ends while still holding a lease will never give it back;
    # reclaim its connections then (no I/O, no lock: see Pool.reclaim).
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return
    owner = greenlet.getcurrent()
    if owner.parent is None:
        return  # a thread's main greenlet ends with its thread: nothing to watch
    rawlink = getattr(owner, "rawlink", None)
    if rawlink is not None:
        # gevent's Greenlet: called from the hub when it ends, even if still referenced;
        # unlinked when the block ends, or a long-lived greenlet keeps every lease.
        def ended(_greenlet: Any) -> None:
            lease.reclaim()

        rawlink(ended)
        lease.keepalive = (owner, ended)
        return
    key = id(lease)

    def gone(_ref: Any) -> None:
        _watched.pop(key, None)
        lease.reclaim()

    _watched[key] = weakref.ref(owner, gone)
    lease.keepalive = key


def unwatch(lease: _django.Lease) -> None:
    """The lease ended normally: stop watching its owner."""
    watch, lease.keepalive = lease.keepalive, None
    if isinstance(watch, tuple):
        owner, ended = watch
        owner.unlink(ended)
    elif watch is not None:
        _watched.pop(watch, None)
