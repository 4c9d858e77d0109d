"""Errors raised by the pool at run time (bad configuration raises TypeError/ValueError)."""

from __future__ import annotations

__all__ = ["PoolClosed", "PoolError", "PoolOverloaded", "PoolTimeout", "PoolUnavailable"]


class PoolError(Exception):
    """Base class of the pool's own run-time errors."""


class PoolTimeout(PoolError):
    """A checkout did not get a connection within the pool's ``timeout``.

    The message names the alias, the cap, how many were in use and waiting, the
    seconds waited and the last connect error, if any; the middleware answers the
    request with ``503 Service Unavailable`` and a ``Retry-After`` header.
    """

    def __init__(self, message: str, waited: float = 0.0) -> None:
        super().__init__(message)
        #: Seconds the checkout took before it gave up.
        self.waited = waited


class PoolClosed(PoolError):
    """The pool was closed (``PoolingMiddleware.close()``); it hands out nothing more."""


class PoolUnavailable(PoolError):
    """The database server is out of reach and the pool has no connection left to give.

    After evidence that the server cannot be reached or refuses connections (refused,
    unreachable, timed out, too many connections), the pool stops connecting on
    requests' paths and tries again by itself, with a jittered backoff that never
    waits more than about 0.1 s for a server that does not answer. Meanwhile a
    request waits for a connection given back; it gets this error (a 503) at once
    only when the pool holds no connection at all.
    """


class PoolOverloaded(PoolError):
    """``max_waiting`` checkouts were already waiting: refused at once (503), not queued."""
