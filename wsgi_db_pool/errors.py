"""Errors raised by the pool at run time (bad configuration raises TypeError/ValueError)."""

from __future__ import annotations

__all__ = ["PoolClosed", "PoolError", "PoolTimeout"]


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
