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
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from django.db import connections

from . import _events, _registry, _storage, _sync
from ._lease import Lease, current_lease

if TYPE_CHECKING:
    from .middleware import PoolingMiddleware

F = TypeVar("F", bound=Callable[..., Any])


def _the_middleware() -> PoolingMiddleware | None:
    """The one open PoolingMiddleware of the process, or None when there is none."""
    found = _registry.open_middlewares()
    if len(found) > 1:
        # Their pools differ in size and aliases: picking one would be a guess.
        raise RuntimeError(
            f"pooled() without middleware= found {len(found)} open PoolingMiddlewares in "
            f"this process and cannot choose; pass middleware=your_application"
        )
    return found[0] if found else None


class PooledScope:
    """A block in which pooled aliases check out from the pools; see ``pooled()``."""

    __slots__ = ("_lease", "_middleware", "_unpooled", "_where")

    def __init__(self, middleware: PoolingMiddleware | None, where: str | None) -> None:
        self._middleware = middleware
        self._where = where
        self._lease: Lease | None = None
        self._unpooled: Unpooled | None = None

    def __enter__(self) -> None:
        current = current_lease.get()
        if current is not None and current.wants_any():
            return  # inside a request or an outer pooled(): share its checkouts
        middleware = self._middleware or _the_middleware()
        where = self._where or _caller()
        if middleware is None:
            self._unpooled = Unpooled()
            _events.resolve(None).debug(
                "db_pool.unpooled", where=where, reason="no open PoolingMiddleware"
            )
            return
        pools = middleware.pools
        joined = joined_aliases(pools)
        if joined:
            pools = {alias: pool for alias, pool in pools.items() if alias not in joined}
            if not pools:
                return  # every alias already in use here: nothing to check out
        lease = Lease(pools, where)
        lease.begin()
        self._lease = lease
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
            lease.finish()


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


def _reclaim_when_owner_dies(lease: Lease) -> None:
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


def unwatch(lease: Lease) -> None:
    """The lease ended normally: stop watching its owner."""
    watch, lease.keepalive = lease.keepalive, None
    if isinstance(watch, tuple):
        owner, ended = watch
        owner.unlink(ended)
    elif watch is not None:
        _watched.pop(watch, None)


# -- what this thread already holds ---------------------------------------------------


def joined_aliases(aliases: Iterable[str]) -> frozenset[str]:
    """Of ``aliases``, those whose wrapper bound here is connected or inside ``atomic()``.

    ``pooled()`` runs on these instead of checking out: a transaction the caller began
    (its own ``atomic()``, a ``TestCase``'s) must see what the block writes and undo it
    on rollback. A bound wrapper that never connected (``django.setup()`` binds one
    while it loads models) holds nothing to join.
    """
    bound = _storage.bound()
    if not bound:
        return frozenset()
    return frozenset(alias for alias in aliases if _in_use(bound.get(alias)))


def _in_use(wrapper: Any) -> bool:
    if wrapper is None or hasattr(wrapper, "_wsgi_db_pool_guard"):
        # A pooled wrapper bound outside any lease was left by one reclaimed from
        # another greenlet (its socket dropped): never the caller's own to join.
        return False
    return _busy(wrapper)


def _busy(wrapper: Any) -> bool:
    return wrapper.connection is not None or bool(wrapper.in_atomic_block)


class Unpooled:
    """A ``pooled()`` block run on Django's own connections, with no pool in the process.

    Made when the block begins; ``end()`` closes what the block connected and unbinds
    what it bound, so a spawned greenlet strands no connection (nothing else would
    close it: Django does that only at the end of a request). Connections the thread
    held before the block are left as they were: the block joined them.
    """

    __slots__ = ("bound", "in_use", "owner")

    def __init__(self) -> None:
        bound = _storage.bound()
        self.owner = _sync.get_ident()
        self.bound = dict(bound)
        # Whatever had a connection stays as it was, even a leftover pooled wrapper.
        self.in_use = {alias for alias, wrapper in bound.items() if _busy(wrapper)}

    def end(self) -> None:
        """Close what the block connected, unbind what it bound; the first error comes last."""
        if self.owner != _sync.get_ident():
            return  # ended from elsewhere: this thread's storage is out of reach
        bound = _storage.bound()
        error: BaseException | None = None
        for alias in [alias for alias in bound if alias in connections.settings]:
            if alias in self.in_use:
                continue
            try:
                bound[alias].close()
            except BaseException as exc:  # Django dropped it all the same; close the others
                error = error or exc
            before = self.bound.get(alias)
            if before is None:
                del bound[alias]
            else:
                bound[alias] = before
        if error is not None:
            raise error
