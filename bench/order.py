"""The order experiment alone: pk read, interleaved rounds of chosen orders of service.

    bench/.venv/bin/python bench/order.py --clients 200,500,1000 --rounds 3 \\
        --variants ours=fifo,ours=barge:100,dbpooling=,stock60= --out /tmp/order

Each variant is ``config=BENCH_HANDOFF`` (empty for a configuration other than ours);
the runs are run.py's (a fresh gunicorn each, wrk, the server's connections sampled),
shorter: 8 s of load, 1 s of warm-up, 1 s after. Writes ``order.json`` (one record a
run) to ``--out``; ANALYSIS.md's order tables are its medians.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="200,500,1000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="ours=fifo,ours=barge:100,dbpooling=,stock60=")
    parser.add_argument("--out", type=Path, default=run.HERE / "out" / "order")
    args = parser.parse_args()
    variants = tuple(
        (config, handoff or None)
        for config, _, handoff in (v.partition("=") for v in args.variants.split(","))
    )
    plan = run.Plan(
        name="order",
        rounds=[],
        duration_s=8,
        tail_s=1,
        warmup_s=1,
        limit_clients=[],
        limit_duration_s=0,
        order_rounds=args.rounds,
        order_clients=tuple(int(c) for c in args.clients.split(",")),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    server = run.Server()
    run.restore_stale_max_connections(server)
    run.create_table()
    records = []
    try:
        records = run.run_order(plan, args.out, server, variants)
    finally:
        server.close()
        (args.out / "order.json").write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
