"""What each ``reset_session`` mode costs a primary-key read, in one process.

    .venv/bin/python -m gevent.monkey bench/reset_cost.py [--quick] [--out reset_cost.json]

The same GET /pk/<id> (one SELECT through the ORM) goes through three middlewares,
one per mode ("never", "auto", "always"), each with one pooled connection to the
local MariaDB. Rounds interleave the modes, in an order rotated every round, so
that drift (other clients of the server, CPU frequency) falls on every mode alike;
each round times a block of requests per mode. Reported: the ratio of each mode's best
block to "never"'s best (timeit's rule: noise only takes throughput away), and the
median over rounds of the ratio taken within each round.

Requests run in the main greenlet, back to back, as in bench/micro.py: between one
request's checkin and the next one's checkout there is only the end of one request
and the start of the next, the least time "auto" gets to have its reset answered.

Needs the bench's MariaDB user and database (bench/setup.sh makes them; so does this
script, with the same statements, when they are missing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gevent.monkey  # noqa: E402

if not gevent.monkey.is_module_patched("socket"):
    raise SystemExit("run as: python -m gevent.monkey reset_cost.py (gevent must patch first)")

os.environ["BENCH_CONFIG"] = "stock60"  # Django's own handler; the middlewares are ours
import app  # noqa: E402
from _common import DB_NAME, DB_USER, connect_root, create_table, per_second  # noqa: E402
from micro import request  # noqa: E402

from wsgi_db_pool import PoolingMiddleware  # noqa: E402

MODES = ("never", "auto", "always")
PATH = "/pk/5"


def ensure_database() -> None:
    """The bench user and database, as bench/setup.sh creates them."""
    conn = connect_root()
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS {DB_NAME}")
            for host in ("%", "localhost"):
                cursor.execute(
                    f"CREATE USER IF NOT EXISTS '{DB_USER}'@'{host}' IDENTIFIED BY '{DB_USER}'"
                )
                cursor.execute(f"GRANT ALL PRIVILEGES ON {DB_NAME}.* TO '{DB_USER}'@'{host}'")
    finally:
        conn.close()


def measure(rounds: int, number: int) -> dict[str, Any]:
    middlewares = {
        mode: PoolingMiddleware(app.application, pool_size=1, max_overflow=0, reset_session=mode)
        for mode in MODES
    }
    calls = {mode: request(mw, PATH) for mode, mw in middlewares.items()}
    for call in calls.values():
        for _ in range(50):  # connect, fill the caches
            call()
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for index in range(rounds):
        order = MODES[index % len(MODES) :] + MODES[: index % len(MODES)]
        for mode in order:
            rates[mode].append(per_second(calls[mode], number))
        shown = "  ".join(f"{mode} {rates[mode][-1]:7.0f}/s" for mode in MODES)
        print(f"  round {index + 1:2d}: {shown}", flush=True)
    stats = {mode: mw.stats()["default"] for mode, mw in middlewares.items()}
    for mw in middlewares.values():
        mw.close()
    ratios = {
        mode: [rate / never for rate, never in zip(rates[mode], rates["never"], strict=True)]
        for mode in MODES
    }
    return {
        "rounds": rounds,
        "number": number,
        "per_second": {mode: rates[mode] for mode in MODES},
        "median_per_second": {mode: round(statistics.median(rates[mode]), 1) for mode in MODES},
        "best_per_second": {mode: round(max(rates[mode]), 1) for mode in MODES},
        "ratio_to_never": {
            mode: {
                # timeit's rule: noise only ever takes throughput away.
                "best": round(max(rates[mode]) / max(rates["never"]), 4),
                "median": round(statistics.median(ratios[mode]), 4),
                "min": round(min(ratios[mode]), 4),
                "max": round(max(ratios[mode]), 4),
            }
            for mode in MODES
        },
        "connects": {mode: stats[mode]["connects"] for mode in MODES},
        "discards": {mode: stats[mode]["discards"] for mode in MODES},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="the cost of each reset_session mode")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--number", type=int, default=None)
    parser.add_argument(
        "--server-isolation",
        action="store_true",
        help="Django's OPTIONS isolation_level=None: the session keeps the server's isolation "
        "level, and a reset needs no statement after it",
    )
    parser.add_argument("--out", type=Path, default=HERE / "out" / "reset_cost.json")
    args = parser.parse_args()
    if args.server_isolation:
        from django.db import connections

        connections.settings["default"]["OPTIONS"]["isolation_level"] = None
    rounds = args.rounds or (6 if args.quick else 20)
    number = args.number or (300 if args.quick else 1000)
    ensure_database()
    create_table()
    print(f"GET {PATH}, {rounds} interleaved rounds of {number} requests per mode", flush=True)
    result = measure(rounds, number)
    print("req/s (best, median) and the ratio to never (of the best; per round: median, min-max)")
    for mode in MODES:
        ratio = result["ratio_to_never"][mode]
        print(
            f"  {mode:<7} {result['best_per_second'][mode]:8.1f}/s "
            f"{result['median_per_second'][mode]:8.1f}/s  best {ratio['best']:.4f}  "
            f"rounds {ratio['median']:.4f} ({ratio['min']:.4f}-{ratio['max']:.4f})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
