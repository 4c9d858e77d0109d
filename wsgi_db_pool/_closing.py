"""One request's WSGI side: the ``start_response`` the app calls, the iterable the server closes.

A class, not a generator: a generator that never started runs no ``finally`` when
closed, so a HEAD request or an early disconnect would keep the connections. One
object per request does both jobs, because it runs on every request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol


class Holder(Protocol):
    """What the request holds: given back on close, reclaimed if never closed."""

    unavailable: BaseException | None

    def finish(self) -> None: ...
    def reclaim(self) -> None: ...


def unavailable(retry_after: int) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    """The 503 answered when no database connection could be had in time."""
    body = (
        f"Service Unavailable: no database connection could be had in time. "
        f"Retry after {retry_after} seconds.\n"
    ).encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Retry-After", str(retry_after)),
    ]
    return "503 Service Unavailable", headers, [body]


class Response:
    """Passes the app's ``start_response`` and body through; ``close()`` gives back."""

    __slots__ = ("_body", "_holder", "_iterable", "_retry_after", "_start_response")

    def __init__(self, start_response: Any, holder: Holder, retry_after: int) -> None:
        self._start_response = start_response
        self._holder: Holder | None = holder
        self._retry_after = retry_after
        self._iterable: Iterable[bytes] = ()
        self._body: list[bytes] | None = None

    def start_response(self, status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
        """Given to the app; turns a 500 caused by an unreachable database into a 503."""
        # Django turns every exception into a 500 before a middleware could see it;
        # the holder knows whether the database was out of reach.
        holder = self._holder
        if holder is not None and holder.unavailable is not None and status[:3] == "500":
            status, headers, self._body = unavailable(self._retry_after)
        return self._start_response(status, headers, *exc_info)

    def wrap(self, iterable: Iterable[bytes]) -> Response:
        """Take the app's iterable; the server gets this object in its place."""
        self._iterable = iterable
        return self

    def __iter__(self) -> Iterator[bytes]:
        # The server iterates the app's own iterator (no Python frame per chunk)
        # and calls close() on this object, as PEP 3333 has it.
        return iter(self._iterable if self._body is None else self._body)

    def close(self) -> None:
        """Close the app's iterable (Django sends request_finished there), then give back."""
        holder, self._holder = self._holder, None
        if holder is None:
            return
        iterable, self._iterable = self._iterable, ()
        # A server that keeps the response and passed a bound start_response makes a
        # cycle through us; let go of both so that refcounting frees the request.
        self._start_response = None
        try:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        finally:
            holder.finish()

    def __del__(self) -> None:
        # The server dropped the response without closing it: nothing will give the
        # connections back, so reclaim them without I/O or locks.
        holder, self._holder = self._holder, None
        if holder is not None:
            # At interpreter exit modules may be half torn down (no contextlib then
            # either): nothing is left to save.
            try:  # noqa: SIM105
                holder.reclaim()
            except Exception:
                pass
