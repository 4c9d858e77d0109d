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

__all__ = ["live_middlewares", "open_middlewares", "register"]

_live: weakref.WeakSet[PoolingMiddleware] = weakref.WeakSet()


def register(middleware: PoolingMiddleware) -> None:
    _live.add(middleware)


def live_middlewares() -> list[PoolingMiddleware]:
    """Every PoolingMiddleware alive in this process."""
    return list(_live)


def open_middlewares() -> list[PoolingMiddleware]:
    """Those not closed: the ones whose pools may still lend connections."""
    return [middleware for middleware in _live if not middleware.closed]


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
