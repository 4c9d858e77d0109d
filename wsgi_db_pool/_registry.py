"""The PoolingMiddlewares alive in this process, for fork, exit and ``pooled()``.

Kept apart from the middleware so that ``pooled()`` and the doctor find it without
importing each other.
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .middleware import PoolingMiddleware

__all__ = ["is_available", "live_middlewares", "open_middlewares", "register"]

_live: weakref.WeakSet[PoolingMiddleware] = weakref.WeakSet()


def register(middleware: PoolingMiddleware) -> None:
    _live.add(middleware)


def live_middlewares() -> list[PoolingMiddleware]:
    """Every PoolingMiddleware alive in this process."""
    return list(_live)


def open_middlewares() -> list[PoolingMiddleware]:
    """Those not closed: the ones whose pools may still lend connections."""
    return [middleware for middleware in _live if not middleware.closed]


def is_available(alias: str) -> bool:
    """Whether the pool of ``alias`` serves checkouts: False while it is backed off.

    For a database router's ``db_for_read``: a replica whose server is down (its
    connects are refused or time out) makes its pool back off, and from then on this
    answers False until the pool's own probe connects again, so the router can send
    reads to the primary instead of having them answered 503::

        def db_for_read(self, model, **hints):
            return "replica" if wsgi_db_pool.is_available("replica") else "default"

    It reads one attribute of each live pool of ``alias`` (no lock, no I/O), so it is
    cheap on every query. True when no open ``PoolingMiddleware`` pools ``alias``
    (nothing to tell: Django connects as usual). The pool learns that the server is
    down from a failed connect, so the request that made it (one per worker) still
    fails; the replica coming back is seen by the pool's probe within about a second.
    """
    for middleware in open_middlewares():
        pool = middleware.pools.get(alias)
        if pool is not None and pool.backed_off:
            return False
    return True


def _after_fork_in_child() -> None:
    for middleware in list(_live):
        middleware._after_fork()


def _close_all_at_exit() -> None:
    # Idle connections get a COM_QUIT instead of a dropped socket, which the server
    # would count as an aborted client.
    for middleware in list(_live):
        middleware.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
