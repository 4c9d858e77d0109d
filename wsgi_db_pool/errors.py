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
    """Connecting failed moments ago, so the pool does not try again yet.

    After a failed connect the pool backs off (0.1 s, doubling up to 2 s) and lets one
    checkout at a time try again, so a server that is down or refusing connections
    is not stampeded; requests that would need a new connection meanwhile fail at
    once (503). Connections already open are still handed out.
    """


class PoolOverloaded(PoolError):
    """``max_waiting`` checkouts were already waiting: refused at once (503), not queued."""
