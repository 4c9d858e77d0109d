"""What each ``reset_session`` mode costs the primary-key read under the bench's load.

    bench/.venv/bin/python bench/reset_load.py [--rounds 6] [--seconds 10] [--clients 200]

The bench's own harness (bench/run.py): a fresh gunicorn gevent worker per run serving
bench/app.py with the pool (cap 20), wrk at 200 clients on GET /pk/<id>. The three modes
run interleaved, in an order rotated every round, so that drift falls on every mode
alike. Reported: each mode's median req/s and the median over rounds of its ratio to
"never" within the same round. Writes bench/out/reset_load.json and prints a table.

bench/reset_cost.py measures the same modes serially, in one process, where the
server's time for the reset is on every request's path; here, as in production, the
server works on one core while the worker's Python runs on the other.
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

import run  # noqa: E402
from _common import create_table  # noqa: E402

MODES = ("never", "auto", "always")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    plan = run.quick_plan()
    plan.tail_s = 1.0
    server = run.Server()
    create_table()
    records: list[dict[str, Any]] = []
    try:
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % len(MODES)
            order = MODES[shift:] + MODES[:shift]
            print(f"round {round_no}/{args.rounds}: {', '.join(order)}", flush=True)
            for mode in order:
                os.environ["BENCH_RESET_SESSION"] = mode
                try:
                    record = run.run_one(
                        f"reset-{mode}",
                        round_no,
                        "ours",
                        "pk",
                        args.clients,
                        plan,
                        args.seconds,
                        args.out,
                        server,
                    )
                finally:
                    os.environ.pop("BENCH_RESET_SESSION", None)
                record["reset_session"] = mode
                records.append(record)
    finally:
        server.close()

    summary = summarize(records, args.rounds)
    (args.out / "reset_load.json").write_text(
        json.dumps({"summary": summary, "runs": records}, indent=1)
    )
    print("\n| mode | median req/s | median ratio to never | errors | p99 ms (median) |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        s = summary[mode]
        print(
            f"| {mode} | {s['rps']:.0f} | {s['ratio']:.3f} ({s['ratio_min']:.3f}-"
            f"{s['ratio_max']:.3f}) | {s['errors']} | {s['p99_ms']:.0f} |"
        )
    return 0


def summarize(records: list[dict[str, Any]], rounds: int) -> dict[str, dict[str, float]]:
    by = {(r["reset_session"], r["round"]): r for r in records}
    out = {}
    for mode in MODES:
        mine = [by[(mode, n)] for n in range(1, rounds + 1) if (mode, n) in by]
        ratios = [
            by[(mode, n)]["rps"] / by[("never", n)]["rps"]
            for n in range(1, rounds + 1)
            if (mode, n) in by and ("never", n) in by and by[("never", n)]["rps"]
        ]
        out[mode] = {
            "rps": statistics.median(r["rps"] for r in mine),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "errors": sum(r["errors_total"] for r in mine),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in mine),
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
