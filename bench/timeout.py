"""What `timeout` must cover: 503s of a CPU-bound worker at 500 clients, per timeout.

    python -m gevent.monkey bench/timeout.py [--clients 500] [--cpu-ms 8] [--timeouts 5,10,30]

In one process, as in one gunicorn gevent worker whose ``worker_connections`` admits every
client: each client greenlet sends ``--requests`` requests in a row to a login-like view
(a primary-key read, ``--cpu-ms`` of CPU with the connection held, as a password hash
takes, then an UPDATE inside ``atomic()``) through ``PoolingMiddleware(pool_size=5,
max_overflow=5)``. The worker can serve at most 1000 / cpu_ms requests a second, so by
Little's law a request waits about ``clients * cpu_ms / 1000`` seconds for its turn,
whatever the pool's size: a ``timeout`` shorter than that answers 503 to requests the
worker would have served a little later. Prints one row per timeout; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gevent  # noqa: E402
import gevent.monkey  # noqa: E402

if not gevent.monkey.is_module_patched("socket"):
    raise SystemExit("run as: python -m gevent.monkey bench/timeout.py")

os.environ["BENCH_CONFIG"] = "stock60"  # Django's own handler; the pool is wrapped here
import app  # noqa: E402
from _common import ITEMS, create_table, serve  # noqa: E402
from django.db import transaction  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from wsgi_db_pool import PoolingMiddleware  # noqa: E402

_ROUNDS = 1


def _calibrate(cpu_ms: float) -> int:
    """PBKDF2 rounds that take about ``cpu_ms`` here (a password check's work)."""
    rounds = 1000
    while True:
        started = time.perf_counter()
        hashlib.pbkdf2_hmac("sha256", b"password", b"salt", rounds)
        took = (time.perf_counter() - started) * 1000
        if took >= 50:  # long enough to time well
            return max(int(rounds * cpu_ms / took), 1)
        rounds *= 2


def login(request: HttpRequest, pk: int) -> HttpResponse:
    """Read the user, check the password (CPU, connection held), record the login."""
    item = app.Item.objects.get(pk=pk)
    hashlib.pbkdf2_hmac("sha256", b"password", item.name.encode(), _ROUNDS)
    with transaction.atomic():
        app.Item.objects.filter(pk=pk).update(hits=item.hits + 1)
    return HttpResponse("ok\n", content_type="text/plain")


def run(timeout: float, clients: int, requests: int) -> dict[str, Any]:
    application = PoolingMiddleware(app.application, pool_size=5, max_overflow=5, timeout=timeout)
    statuses: list[int] = []
    latencies: list[float] = []

    def client(n: int) -> None:
        for i in range(requests):
            started = time.monotonic()
            status = serve(application, f"/login/{(n * requests + i) % ITEMS + 1}")
            latencies.append(time.monotonic() - started)
            statuses.append(status)

    started = time.monotonic()
    gevent.joinall([gevent.spawn(client, n) for n in range(clients)], raise_error=True)
    took = time.monotonic() - started
    application.close()
    latencies.sort()
    return {
        "timeout": timeout,
        "requests": len(statuses),
        "503": statuses.count(503),
        "other_errors": sum(s not in (200, 503) for s in statuses),
        "share_503": round(statuses.count(503) / len(statuses), 4),
        "p50_s": round(statistics.median(latencies), 3),
        "p99_s": round(latencies[int(len(latencies) * 0.99) - 1], 3),
        "req_per_s": round(len(statuses) / took, 1),
    }


def main() -> int:
    global _ROUNDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--requests", type=int, default=3, help="in a row, per client")
    parser.add_argument("--cpu-ms", type=float, default=8.0)
    parser.add_argument("--timeouts", default="5,10,30")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    create_table()
    app.urlpatterns.append(path("login/<int:pk>", login))
    _ROUNDS = _calibrate(args.cpu_ms)
    rows = [
        run(float(t), args.clients, args.requests) for t in args.timeouts.split(",") if t.strip()
    ]
    load = os.getloadavg()[0]
    print(f"clients {args.clients}, cpu {args.cpu_ms} ms a request, load average {load:.2f}")
    print("| timeout | requests | 503 | share | p50 | p99 | req/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['timeout']:g} s | {row['requests']} | {row['503']} | "
            f"{row['share_503']:.1%} | {row['p50_s']} s | {row['p99_s']} s | {row['req_per_s']} |"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                {"clients": args.clients, "cpu_ms": args.cpu_ms, "load": load, "rows": rows},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
