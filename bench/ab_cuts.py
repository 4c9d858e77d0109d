"""Request-path cuts, A/B in one process: each variant patched in, timed, patched out, in turn.

    bench/.venv/bin/python -m gevent.monkey bench/ab_cuts.py [--repeats 15] [--out ab.json]

Every repeat times each variant once, in a rotating order, on the pooled ``/nodb``
request (no checkout), the pooled ``/touch`` request (a checkout and a giveback, no
round trip) and the pool's bookkeeping (checkout + checkin of an idle connection);
the fastest block of each (noise only adds) and the median are reported with the
difference to the first variant. The variants put back the code as it was before a
cut (``before_*`` below, copied from the commit before it), or take a piece out
altogether to bound what cutting it could give.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fairness  # noqa: E402
import micro  # noqa: E402  (checks gevent's patching, sets up Django)

from wsgi_db_pool import _lease, _sync  # noqa: E402
from wsgi_db_pool import middleware as _middleware  # noqa: E402
from wsgi_db_pool import pool as _pool  # noqa: E402
from wsgi_db_pool._closing import Response  # noqa: E402
from wsgi_db_pool.pool import Pool, PooledConnection  # noqa: E402

Patch = Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def patched(target: Any, name: str, value: Any) -> Iterator[None]:
    missing = object()
    space = target.__dict__ if isinstance(target, type) else vars(target)
    old = space.get(name, missing)
    setattr(target, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(target, name)
        else:
            setattr(target, name, old)


@contextlib.contextmanager
def as_is() -> Iterator[None]:
    yield


# -- the code before each cut, copied from the commit before it -------------------------


def before_checkout(
    self: Pool, timeout: float | None = None, *, holding: int = 0
) -> PooledConnection:
    self._check_pid()  # type: ignore[attr-defined]
    start = _pool.monotonic()
    deadline = start + (self._config.timeout if timeout is None else timeout)
    if self._leaked:
        self.drain_leaked()
    while True:
        got = self._take(start, deadline, holding)
        if got is _pool._PROBE:
            return self._probe_for(start, deadline)
        if got is not _pool._SLOT:
            now = got.checked_out_at
            if self._usable(got, now, deadline):
                return self._hand_out(got, start, now)
        entry = self._connect(_pool._Attempt.for_checkout(start, deadline))
        if entry is not None:
            return entry


def before_check_pid(self: Pool) -> None:
    if self._pid != os.getpid():
        self.after_fork()


@contextlib.contextmanager
def checkout_through_check_pid() -> Iterator[None]:
    with patched(Pool, "checkout", before_checkout), patched(Pool, "_check_pid", before_check_pid):
        yield


def lease_through_sync() -> contextlib.AbstractContextManager[None]:
    # The lease asked _sync.get_ident(), a frame around _thread.get_ident().
    return patched(_lease, "_thread", SimpleNamespace(get_ident=_sync.get_ident))


def before_gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def gevent_patched_uncached() -> contextlib.AbstractContextManager[None]:
    return patched(_sync, "gevent_patched", before_gevent_patched)


# -- bounds: a piece taken out altogether -------------------------------------------------


def pool_getpid_cached() -> contextlib.AbstractContextManager[None]:
    # An upper bound: what the pool's os.getpid() (a system call) costs a checkout.
    pid = os.getpid()
    return patched(_pool, "os", SimpleNamespace(getpid=lambda: pid))


def no_pid_syscall_in_middleware() -> contextlib.AbstractContextManager[None]:
    # An upper bound: the middleware's os.getpid() replaced by a cached answer.
    pid = os.getpid()
    return patched(_middleware, "os", SimpleNamespace(getpid=lambda: pid))


@contextlib.contextmanager
def no_response_finalizer() -> Iterator[None]:
    # An upper bound: the response wrapper's __del__ (the reclaim of unclosed responses).
    finalizer = Response.__dict__["__del__"]
    del Response.__del__
    try:
        yield
    finally:
        Response.__del__ = finalizer  # type: ignore[method-assign]


VARIANTS: dict[str, Patch] = {
    "as is": as_is,
    "before: Pool.checkout via _check_pid()": checkout_through_check_pid,
    "before: lease via _sync.get_ident()": lease_through_sync,
    "before: gevent_patched() uncached": gevent_patched_uncached,
    "bound: pool's getpid cached": pool_getpid_cached,
    "bound: middleware's getpid cached": no_pid_syscall_in_middleware,
    "bound: Response without __del__": no_response_finalizer,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--number", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "ab_cuts.json")
    parser.add_argument("--only", help="comma-separated words: the variants named with one")
    args = parser.parse_args()

    stock = micro.Stock()
    micro.configure_logging("filtered", open(os.devnull, "w"))  # noqa: SIM115
    mw = micro.PoolingMiddleware(micro.app.application, pool_size=10, max_overflow=10)
    pool = mw.pools["default"]
    calls: dict[str, Callable[[], None]] = {
        "nodb": micro.request(mw, "/nodb"),
        "touch": micro.request(mw, "/touch"),
        "bookkeeping": lambda: pool.checkin(pool.checkout()),
    }
    numbers = {"nodb": args.number, "touch": args.number, "bookkeeping": args.number * 10}
    contended: dict[str, list[float]] = {n: [] for n in VARIANTS}
    names = [
        name
        for name in VARIANTS
        if name == "as is" or not args.only or any(w in name for w in args.only.split(","))
    ]
    blocks: dict[str, dict[str, list[float]]] = {n: {k: [] for k in calls} for n in names}
    with stock.unbound():
        for fn in calls.values():
            fn()  # warm: the connection is opened once
        for rep in range(args.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                with VARIANTS[name]():
                    for key, fn in calls.items():
                        fn()
                        blocks[name][key].append(micro.per_call_us(fn, numbers[key]))
                    # CPU per contended checkout: 200 greenlets on 20 connections.
                    contended[name].append(fairness.cpu_per_checkout(fairness.ours, 0.3))
    mw.close()
    base = names[0]
    result: dict[str, Any] = {}
    for name in names:
        row = {}
        for key in calls:
            best = min(blocks[name][key])
            row[key] = {
                "min_us": round(best, 3),
                "median_us": round(statistics.median(blocks[name][key]), 3),
                "min_delta_us": round(best - min(blocks[base][key]), 3),
            }
        row["contended_cpu"] = {
            "min_us": min(contended[name]),
            "median_us": statistics.median(contended[name]),
            "min_delta_us": round(min(contended[name]) - min(contended[base]), 3),
        }
        result[name] = row
        print(
            f"{name:<44} "
            + "  ".join(
                f"{key} {row[key]['min_us']:7.2f} ({row[key]['min_delta_us']:+.2f}) "
                f"med {row[key]['median_us']:7.2f}"
                for key in [*calls, "contended_cpu"]
            ),
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
