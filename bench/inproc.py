"""What waiting for a connection costs a request: the bench app saturated in process, no HTTP.

    bench/.venv/bin/python bench/inproc.py [--variants ours:20,ours:200,dbpooling:20,...]
        [--rounds 5] [--seconds 5] [--out bench/out/inproc.json]

Each variant is ``config:clients[:handoff]``. A fresh process (gevent's patching first,
as in a gunicorn worker) imports bench/app.py with that configuration and runs
``clients`` greenlets that each call its WSGI callable for /pk/<id> in a loop, with a
yield to the loop between requests; for ``--seconds`` after 1 s of warm-up it counts
requests and its own CPU time. Nothing else runs in that process: no server, no
parsing, no load generator sharing its core, so the CPU per request is the app's,
the pool's and gevent's alone.

At 20 clients (the cap) no request waits for a connection; at 200 almost every one
does. The difference in CPU per request is what waiting costs a request (the switch
away and back, its objects gone cold, the collector walking the young objects of
every parked request), measured for wsgi_db_pool and for django-db-pooling alike.
Rounds are interleaved; the report gives medians and per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WARMUP_S = 1.0


def child(config: str, clients: int, seconds: float, handoff: str | None) -> dict[str, Any]:
    """Run in the measured process: saturate bench/app.py in process, return the counts."""
    from gevent import monkey

    monkey.patch_all()
    import random
    import time

    import gevent

    os.environ["BENCH_CONFIG"] = config
    if handoff:
        os.environ["BENCH_HANDOFF"] = handoff
    sys.path.insert(0, str(HERE))
    import app as bench_app
    from _common import serve

    application = bench_app.application
    counts = {"ok": 0, "failed": 0}
    latencies: list[float] = []
    running = True

    def client(index: int) -> None:
        rng = random.Random(index)
        while running:
            started = time.monotonic()
            status = serve(application, f"/pk/{rng.randrange(1, 1000)}")
            latencies.append(time.monotonic() - started)
            counts["ok" if status == 200 else "failed"] += 1
            gevent.sleep(0)  # the client's round trip: back to the loop before the next

    greenlets = [gevent.spawn(client, i) for i in range(clients)]
    gevent.sleep(WARMUP_S)
    ok, failed = counts["ok"], counts["failed"]
    latencies.clear()
    gc_before = sum(bench_app._gc_seconds)
    cpu, wall = time.process_time(), time.monotonic()
    gevent.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    gc_s = sum(bench_app._gc_seconds) - gc_before
    ok, failed = counts["ok"] - ok, counts["failed"] - failed
    running = False
    gevent.joinall(greenlets, timeout=10.0)
    latencies.sort()
    done = ok + failed
    return {
        "config": config,
        "clients": clients,
        "handoff": handoff,
        "rps": ok / wall,
        "failed": failed,
        "cpu_share": cpu / wall,
        "cpu_us_per_request": cpu / done * 1e6 if done else None,
        "gc_us_per_request": gc_s / done * 1e6 if done else None,
        "p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else None,
    }


def run_variant(variant: str, seconds: float) -> dict[str, Any]:
    config, clients, *rest = variant.split(":", 2)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", config, clients]
    cmd += [str(seconds), rest[0] if rest else ""]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    for line in done.stdout.splitlines():
        if line.startswith("INPROC_JSON "):
            record: dict[str, Any] = json.loads(line.removeprefix("INPROC_JSON "))
            record["variant"] = variant
            return record
    raise RuntimeError(f"{variant}: no result: {done.stdout[-500:]!r} {done.stderr[-2000:]!r}")


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        config, clients, seconds, handoff = sys.argv[2:6]
        record = child(config, int(clients), float(seconds), handoff or None)
        print("INPROC_JSON " + json.dumps(record), flush=True)
        os._exit(0)  # the pools' connections go with the process
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variants", default="ours:20,ours:200,ours:1000,dbpooling:20,dbpooling:200"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "inproc.json")
    args = parser.parse_args()
    import run

    run.create_table()
    variants = args.variants.split(",")
    records: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        for variant in variants:
            record = run_variant(variant, args.seconds)
            record["round"] = round_no
            records.append(record)
            print(
                f"  r{round_no} {variant:<22} {record['rps']:6.0f} req/s"
                f"  CPU {record['cpu_us_per_request']:5.0f} µs/req"
                f"  collector {record['gc_us_per_request']:5.1f} µs/req"
                f"  p50 {record['p50_ms']:6.1f}  p99 {record['p99_ms']:6.1f} ms"
                f"  failed {record['failed']}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1))
    print(summary(records, variants))
    return 0


def summary(records: list[dict[str, Any]], variants: list[str]) -> str:
    """Medians per variant, and each config's CPU per request against its own at the cap."""
    lines = ["variant | req/s | CPU µs/req | collector µs/req | ÷ its CPU at the fewest clients"]
    for variant in variants:
        mine = [r for r in records if r["variant"] == variant]
        config = variant.split(":")[0]
        base_variant = min(
            (v for v in variants if v.split(":")[0] == config), key=lambda v: int(v.split(":")[1])
        )
        ratios = [
            r["cpu_us_per_request"] / b["cpu_us_per_request"]
            for r in mine
            for b in records
            if b["variant"] == base_variant and b["round"] == r["round"]
        ]
        lines.append(
            f"{variant} | {statistics.median(r['rps'] for r in mine):.0f}"
            f" | {statistics.median(r['cpu_us_per_request'] for r in mine):.0f}"
            f" | {statistics.median(r['gc_us_per_request'] for r in mine):.1f}"
            f" | {statistics.median(ratios):.2f} ({' '.join(f'{x:.2f}' for x in ratios)})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
