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

import _thread
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

import micro  # noqa: E402  (checks gevent's patching, sets up Django)

from wsgi_db_pool import _lease  # noqa: E402
from wsgi_db_pool import middleware as _middleware  # noqa: E402
from wsgi_db_pool._closing import Response  # noqa: E402
from wsgi_db_pool.pool import Pool  # noqa: E402

Patch = Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def patched(target: Any, name: str, value: Any) -> Iterator[None]:
    old = target.__dict__[name] if isinstance(target, type) else getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, old)


@contextlib.contextmanager
def as_is() -> Iterator[None]:
    yield


def no_pool_pid_check() -> contextlib.AbstractContextManager[None]:
    # An upper bound: what the pool's own pid check costs a checkout.
    return patched(Pool, "_check_pid", lambda self: None)


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


def get_ident_direct() -> contextlib.AbstractContextManager[None]:
    # The lease asks _thread (gevent's, once patched) itself, not through _sync's frame.
    return patched(_lease, "_sync", SimpleNamespace(get_ident=_thread.get_ident))


VARIANTS: dict[str, Patch] = {
    "as is": as_is,
    "no pid check in Pool.checkout (bound)": no_pool_pid_check,
    "middleware getpid cached (bound)": no_pid_syscall_in_middleware,
    "Response without __del__ (bound)": no_response_finalizer,
    "lease: _thread.get_ident direct": get_ident_direct,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--number", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "ab_cuts.json")
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
    names = list(VARIANTS)
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
        result[name] = row
        print(
            f"{name:<44} "
            + "  ".join(
                f"{key} {row[key]['min_us']:7.2f} ({row[key]['min_delta_us']:+.2f}) "
                f"med {row[key]['median_us']:7.2f}"
                for key in calls
            ),
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
