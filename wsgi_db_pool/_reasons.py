"""Why the pool closed a connection or refused a checkout: the one list of each.

Both are ``str`` enums, so a reason compares equal to its plain string ("broken"),
is a ``stats()`` key and an event field as it always was, and a connector may still
answer with a plain string.
"""

from __future__ import annotations

import enum

__all__ = ["Reason", "Reject"]


class _PlainStr(str, enum.Enum):
    # The plain string in str(), format() and f-strings on every Python version.
    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)


class Reason(_PlainStr):
    """Why a connection was discarded (closed and forgotten): ``stats()["discards"]`` keys."""

    #: Opened beyond pool_size and idle past overflow_max_idle.
    OVERFLOW = "overflow"
    #: Older than max_age (with up to 10% of jitter).
    MAX_AGE = "max_age"
    #: Idle past max_idle, above min_size.
    MAX_IDLE = "max_idle"
    #: The connection is gone (lost, killed, or failed its check or ping).
    BROKEN = "broken"
    #: Its holder closed it.
    CLOSED = "closed"
    #: Its holder was interrupted (gevent.Timeout, GreenletExit) while using or resetting it.
    INTERRUPTED = "interrupted"
    #: The reset at checkin failed.
    RESET_FAILED = "reset_failed"
    #: Given back or idle after the pool was closed.
    SHUTDOWN = "shutdown"
    #: Its holder vanished without giving it back (reclaimed, socket dropped).
    LEAK = "leak"
    #: Opened past the cap for a request holding other aliases, and given back.
    RESERVE = "reserve"
    #: Older than rebalance, retired at its paced turn so that its replacement may land
    #: on another server behind the balancer (a node that came back).
    REBALANCE = "rebalance"


class Reject(_PlainStr):
    """Why a checkout was refused at once: ``stats()["rejects"]`` keys."""

    #: max_waiting checkouts were already waiting.
    MAX_WAITING = "max_waiting"
    #: The server is out of reach and the pool has no connection left.
    BACKOFF = "backoff"
