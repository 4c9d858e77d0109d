"""Fairness: 200 greenlets share 20 connections for 5 s; who got one, how often, how late.

    bench/.venv/bin/python -m gevent.monkey bench/fairness.py [--seconds 5] [--out f.json]

Each greenlet loops: check out, hold the connection for a simulated 2 ms query
(``gevent.sleep``), check in, and at once ask again -- the pattern of a busy worker,
and the one where a pool that lets a running greenlet take a freed connection ahead
of the waiters starves them. The same loop runs against wsgi_db_pool's ``Pool``
(with a connector whose connections are plain objects: this measures the pool's
handoff, not a database) and against a pool made of a ``gevent.queue.Queue`` (the
design of django-db-pooling and django-mysql-geventpool).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.monkey
import gevent.queue
import structlog

from wsgi_db_pool.config import PoolConfig
from wsgi_db_pool.pool import Pool

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import order_policy  # noqa: E402

GREENLETS = 200
CONNECTIONS = 20
HOLD_S = 0.002


class _Connector:
    """Connections that are plain objects; nothing to check, reset or close."""

    def connect(self) -> Any:
        return object()

    def classify(self, exc: Exception) -> str:
        return "error"

    def reachable(self) -> bool | None:
        return None

    def check(self, conn: Any, ping: bool) -> str | None:
        return None

    def reset(self, conn: Any) -> str | None:
        return None

    def close(self, conn: Any) -> None:
        pass

    def abort(self, conn: Any) -> None:
        pass

    def lingers(self, conn: Any) -> bool:
        return False

    def end(self, conn: Any) -> str:
        raise AssertionError("no connection lingers here")


def ours(handoff: str = "fifo") -> tuple[Callable[[], Any], Callable[[Any], None]]:
    config = PoolConfig(
        pool_size=CONNECTIONS,
        max_overflow=0,
        timeout=60.0,
        max_age=None,
        max_idle=None,
        pre_ping=False,
    )
    log = structlog.wrap_logger(
        logging.getLogger("fairness"),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    pool = Pool("fairness", _Connector(), config, log)
    # The order of service, as bench/app.py's BENCH_HANDOFF picks it.
    pool._order = order_policy(handoff)()
    # Open all of them first, as the queue-based pool starts full.
    entries = [pool.checkout() for _ in range(CONNECTIONS)]
    for entry in entries:
        pool.checkin(entry)
    return pool.checkout, pool.checkin


def queue_pool() -> tuple[Callable[[], Any], Callable[[Any], None]]:
    queue: gevent.queue.Queue[Any] = gevent.queue.Queue()
    for _ in range(CONNECTIONS):
        queue.put(object())

    def checkout() -> Any:
        return queue.get(timeout=60.0)

    return checkout, queue.put


def measure(
    make: Callable[[], tuple[Callable[[], Any], Callable[[Any], None]]], seconds: float
) -> dict[str, Any]:
    checkout, checkin = make()
    counts = [0] * GREENLETS
    waits: list[float] = []
    longest = [0.0] * GREENLETS
    stop_at = time.monotonic() + seconds

    def worker(n: int) -> None:
        while time.monotonic() < stop_at:
            asked = time.monotonic()
            conn = checkout()
            waited = time.monotonic() - asked
            waits.append(waited)
            if waited > longest[n]:
                longest[n] = waited
            counts[n] += 1
            gevent.sleep(HOLD_S)
            checkin(conn)

    greenlets = [gevent.spawn(worker, n) for n in range(GREENLETS)]
    gevent.joinall(greenlets, timeout=seconds + 70)
    waits.sort()
    return {
        "checkouts": sum(counts),
        "per_greenlet": {
            "min": min(counts),
            "median": statistics.median(counts),
            "max": max(counts),
            "at_most_once": sum(1 for c in counts if c <= 1),
        },
        "wait_ms": {
            "median": round(statistics.median(waits) * 1000, 2),
            "p99": round(waits[int(len(waits) * 0.99)] * 1000, 2),
            "max": round(max(longest) * 1000, 2),
        },
    }


def cpu_per_checkout(
    make: Callable[[], tuple[Callable[[], Any], Callable[[Any], None]]], seconds: float
) -> float:
    """CPU µs per checkout+checkin when every checkout waits: the cost of the handoff itself.

    The same 200 greenlets on 20 connections, holding each for one yield instead of
    2 ms, so that the process is busy with nothing but the pool and the switches.
    """
    checkout, checkin = make()
    done = [0]
    running = [True]

    def worker() -> None:
        while running[0]:
            conn = checkout()
            gevent.sleep(0)
            checkin(conn)
            done[0] += 1

    greenlets = [gevent.spawn(worker) for _ in range(GREENLETS)]
    gevent.sleep(0.2)  # every greenlet queued
    done[0] = 0
    cpu = time.process_time()
    gevent.sleep(seconds)
    used, count = time.process_time() - cpu, done[0]
    running[0] = False
    gevent.joinall(greenlets, timeout=70)
    return round(used / count * 1e6, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description="checkout fairness under contention")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "fairness.json")
    parser.add_argument(
        "--orders", default="fifo", help="wsgi_db_pool's orders of service (BENCH_HANDOFF values)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds")
    args = parser.parse_args()
    if not gevent.monkey.is_module_patched("threading"):
        raise SystemExit("run as: python -m gevent.monkey fairness.py")
    result: dict[str, Any] = {
        "greenlets": GREENLETS,
        "connections": CONNECTIONS,
        "hold_ms": HOLD_S * 1000,
        "seconds": args.seconds,
        "pools": {},
    }
    pools: list[tuple[str, Callable[[], tuple[Callable[[], Any], Callable[[Any], None]]]]] = [
        (
            "wsgi_db_pool Pool" + ("" if handoff == "fifo" else f" {handoff}"),
            functools.partial(ours, handoff),
        )
        for handoff in args.orders.split(",")
    ]
    pools.append(("gevent.queue.Queue", queue_pool))
    for round_no in range(args.rounds):
        for name, make in pools:
            found = measure(make, args.seconds)
            found["cpu_us_per_checkout"] = cpu_per_checkout(make, min(args.seconds, 2.0))
            if args.rounds > 1:
                found["round"] = round_no + 1
                result["pools"].setdefault(name, []).append(found)
            else:
                result["pools"][name] = found
            per, wait = found["per_greenlet"], found["wait_ms"]
            print(
                f"  {name:<20} checkouts {found['checkouts']:6d}  per greenlet min {per['min']}"
                f" median {per['median']} max {per['max']} (<=1: {per['at_most_once']})"
                f"  wait median {wait['median']} ms p99 {wait['p99']} ms max {wait['max']} ms"
                f"  CPU per contended checkout {found['cpu_us_per_checkout']} us",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
