"""The response iterable the middleware returns: chunks pass through, close() gives back.

A class, not a generator: a generator that never started runs no ``finally`` when
closed, so a HEAD request or an early disconnect would keep the connections.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class ClosingIterator:
    """Iterates ``iterable`` (or ``body`` in its place); ``close()`` closes it, then releases."""

    __slots__ = ("_body", "_iterable", "_iterator", "_on_leak", "_release")

    def __init__(
        self,
        iterable: Iterable[bytes],
        release: Callable[[], None],
        on_leak: Callable[[], None],
        body: Iterable[bytes] | None = None,
    ) -> None:
        self._iterable = iterable
        self._body = body
        self._iterator: Iterator[bytes] | None = None
        self._release: Callable[[], None] | None = release
        self._on_leak = on_leak

    def __iter__(self) -> ClosingIterator:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._iterable if self._body is None else self._body)
        return next(self._iterator)

    def close(self) -> None:
        """Close the inner iterable (Django sends request_finished there), then release."""
        release, self._release = self._release, None
        if release is None:
            return
        try:
            close: Any = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            release()

    def __del__(self) -> None:
        # The server dropped the response without closing it: nothing will give
        # the connections back, so reclaim them without I/O or locks.
        if self._release is not None:
            self._release = None
            # At interpreter exit modules may be half torn down: nothing to save then.
            with contextlib.suppress(Exception):
                self._on_leak()
