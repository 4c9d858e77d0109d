"""Two configurations under the same load at the same time: a ratio the machine's drift cancels.

    bench/.venv/bin/python bench/pair.py --pair ours=fifo,dbpooling= [--view pk] \\
        [--clients 200] [--rounds 4] [--seconds 8] [--out bench/out/pair.json]

Each side is order.py's variant, ``config=<order>[+gate:N][+gc:N]``. Every round starts
both gunicorn workers, warms each up, then runs a wrk of ``--clients`` connections
against each in parallel: the two share the two cores (and the machine's other tenants)
for the same seconds, so what slows one slows the other, where runs taken one after the
other here differ by 10-25% from one to the next (ANALYSIS.md). The sides swap their
start order every round. Reported: per round, each side's 2xx req/s and worker CPU per
request, and the medians of the ratios of the second side to the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

import run


def one_round(
    sides: list[str], view: str, clients: int, seconds: float, out: Path
) -> dict[str, Any]:
    apps = {}
    try:
        for side in sides:
            config, _, handoff = side.partition("=")
            with run.variant_environment(handoff or None):
                app = run.Gunicorn(config, out, side.replace("=", "-").replace(":", "_"))
                app.start()
            apps[side] = app
        for app in apps.values():
            run.wrk(app.url, "pk", 8, 1)
        before = {side: app.cpu() for side, app in apps.items()}
        loads: dict[str, dict[str, Any]] = {}

        def load(side: str) -> None:
            loads[side] = run.wrk(apps[side].url, view, clients, seconds)

        threads = [threading.Thread(target=load, args=(side,)) for side in sides]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = {side: app.cpu() for side, app in apps.items()}
    finally:
        for app in apps.values():
            app.stop()
    result = {}
    for side in apps:
        w = loads[side]
        ok = w["requests"] - w["errors"]["status"]
        result[side] = {
            "rps": ok / (w["duration_us"] / 1e6),
            "cpu_us_per_request": None,
            **run.cpu_per_request(before[side], after[side], w["requests"]),
            "errors": sum(w["errors"].values()),
            "p99_ms": w["latency_us"]["p99"] / 1000,
            "max_ms": w["latency_us"]["max"] / 1000,
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", required=True, help="two variants, comma-separated")
    parser.add_argument("--view", default="pk", choices=sorted(run.VIEWS))
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=run.HERE / "out" / "pair.json")
    args = parser.parse_args()
    sides = args.pair.split(",")
    if len(sides) != 2:
        parser.error("--pair takes two variants")
    logs = args.out.parent / "pair-logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = run.Server()
    run.create_table()
    rounds = []
    try:
        for round_no in range(1, args.rounds + 1):
            order = sides if round_no % 2 else sides[::-1]
            result = one_round(order, args.view, args.clients, args.seconds, logs)
            rounds.append(result)
            print(
                f"  r{round_no} "
                + " | ".join(
                    f"{side} {r['rps']:5.0f} req/s cpu {r['cpu_us_per_request']:5.0f} µs/req"
                    f" p99 {r['p99_ms']:6.0f} ms err {r['errors']}"
                    for side, r in result.items()
                ),
                flush=True,
            )
    finally:
        server.close()
    first, second = sides
    rps = [r[second]["rps"] / r[first]["rps"] for r in rounds]
    cpu = [r[second]["cpu_us_per_request"] / r[first]["cpu_us_per_request"] for r in rounds]
    summary = {
        "pair": sides,
        "view": args.view,
        "clients": args.clients,
        "rounds": rounds,
        "rps_ratio_median": statistics.median(rps),
        "rps_ratios": rps,
        "cpu_ratio_median": statistics.median(cpu),
        "cpu_ratios": cpu,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(
        f"{second} ÷ {first}, {args.view} at {args.clients} clients:"
        f" req/s {summary['rps_ratio_median']:.3f}"
        f" ({' '.join(f'{x:.2f}' for x in rps)}), CPU per request"
        f" {summary['cpu_ratio_median']:.3f} ({' '.join(f'{x:.2f}' for x in cpu)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
