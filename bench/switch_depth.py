"""What a greenlet's park and resume cost, by how deep in C-level calls it parks.

    bench/.venv/bin/python bench/switch_depth.py

greenlet copies the part of the C stack a switch would overwrite out to the heap and
back, so a request parked deep inside the ORM (each call through a type's slot, such as
``__call__`` or ``__iter__``, is a C-level frame) pays more per wait than one parked at
the top of its greenlet. 200 greenlets each park 50 times at each depth; CPU time per
park and resume, the fastest of 3.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent

GREENLETS = 200
PARKS = 50


class _Layer:
    """One C-level frame: calling an instance goes through its type's tp_call slot."""

    def __init__(self, inner: Callable[[Callable[[], Any]], Any]) -> None:
        self.inner = inner

    def __call__(self, fn: Callable[[], Any]) -> Any:
        return self.inner(fn)


def _chain(depth: int) -> Callable[[Callable[[], Any]], Any]:
    call: Callable[[Callable[[], Any]], Any] = lambda fn: fn()  # noqa: E731
    for _ in range(depth):
        call = _Layer(call)
    return call


def us_per_park(depth: int) -> float:
    call = _chain(depth)

    def worker() -> None:
        for _ in range(PARKS):
            call(lambda: gevent.sleep(0))

    started = time.process_time()
    gevent.joinall([gevent.spawn(worker) for _ in range(GREENLETS)])
    return (time.process_time() - started) / (GREENLETS * PARKS) * 1e6


def main() -> None:
    for depth in (0, 10, 30, 60):
        print(f"{depth:3d} C-level calls deep: {min(us_per_park(depth) for _ in range(3)):5.2f} µs")


if __name__ == "__main__":
    main()
