"""When a pool may try to connect again after evidence that its server is out of reach."""

from __future__ import annotations

from random import random

__all__ = [
    "BACKOFF_CEILING",
    "BACKOFF_FIRST",
    "BACKOFF_GROWTH",
    "BACKOFF_MAX",
    "EVIDENCE",
    "Backoff",
]

# The first step, and the ceilings of the steps by what the evidence was. Where
# nothing listens, a probe is one refused TCP connect (Connector.reachable): every
# 5 ms at first, so service resumes as soon as the server listens. Connections dropped
# at the door or turned away (1040) are often over within a second, and stock Django
# tries again on every request: every 10 ms at first (steps of 0.25-1 s failed more
# requests than stock after a short refusal; tests/faults/test_availability.py).
# Where nothing answers, a look may last the connect timeout: every 80 ms at first.
BACKOFF_FIRST = 0.005
BACKOFF_CEILING = {"down": 0.005, "unreachable": 0.08, "lost": 0.01, "refused": 0.01}
# Seconds of outage that add one more ceiling to a kind's ceiling: ten times as long
# after 90 s where nothing listens or answers, after 9 s where connections are
# dropped or refused; never more than BACKOFF_MAX.
BACKOFF_GROWTH = {"down": 10.0, "unreachable": 10.0, "lost": 1.0, "refused": 1.0}
BACKOFF_MAX = 1.0

# What a connect failure says (Connector.classify): "unreachable", "refused" and a
# repeated "lost" are evidence that the server is out of reach; "lost" once may be a
# KILL during the session's setup and is tried again at once; "error" (bad
# credentials, unknown database) fails the caller and says nothing of the server.
EVIDENCE = frozenset({"unreachable", "refused", "lost"})


class Backoff:
    """The steps between a pool's probes while its server is out of reach.

    Steps double from BACKOFF_FIRST up to the kind's ceiling, each with full jitter
    (half to all of the step), so that the workers that lost one server do not
    probe it in step; the ceilings grow with the outage's age (BACKOFF_GROWTH, up to
    BACKOFF_MAX), so a long one is not probed as often as a restart. Only
    the prober's failures lengthen it: connects that were already under way when the
    server went away fail together and count once. Not thread-safe: the pool calls it
    under its lock.
    """

    __slots__ = ("failures", "kind", "since", "until")

    def __init__(self) -> None:
        self.failures = 0
        #: The last evidence: "down" (nothing listens), "unreachable", "lost" or "refused".
        self.kind = ""
        self.since = 0.0
        #: The clock time before which nobody connects.
        self.until = 0.0

    @property
    def active(self) -> bool:
        """Whether the pool is backed off (no connect on a request's path)."""
        return self.failures > 0

    @property
    def ceiling(self) -> float:
        """The shortest step of the current kind: how soon the prober looks again."""
        return BACKOFF_CEILING[self.kind]

    def failed(self, kind: str, now: float) -> None:
        """One more failure of ``kind`` at clock time ``now``: the next step begins."""
        if not self.failures:
            self.since = now
        self.failures += 1
        self.kind = kind if kind in BACKOFF_CEILING else "unreachable"
        grown = 1 + (now - self.since) / BACKOFF_GROWTH[self.kind]
        ceiling = min(BACKOFF_CEILING[self.kind] * grown, BACKOFF_MAX)
        step = min(BACKOFF_FIRST * 2 ** min(self.failures - 1, 20), ceiling)
        self.until = now + step * (0.5 + 0.5 * random())

    def clear(self) -> None:
        """The server took a connection again."""
        self.failures = 0
        self.until = 0.0
