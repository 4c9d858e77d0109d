"""Where a pooled request's time goes: py-spy in process and in the gunicorn worker, plus ablations.

    bench/.venv/bin/python bench/profile_overhead.py [--seconds 10] [--out bench/out/profile.json]

1. In process: the /touch request (connection needed, no round trip) in a loop, once
   through Django's own handler on an open connection and once through
   PoolingMiddleware, each sampled by ``py-spy record`` (raw stacks). Each frame's
   share of the samples, times the request's unprofiled cost, gives microseconds per
   request; the difference between the two loops is the middleware's cost, by frame.
2. Ablations, without a profiler: the pooled request and the pool's checkout+checkin
   timed again with one part replaced by a stub, to measure that part in real time.
3. Under load: a gunicorn worker serving the pooled app while wrk sends primary-key
   reads at 200 clients; ``py-spy record --pid`` on the worker gives the share of its
   CPU spent in wsgi_db_pool's frames, and its CPU time per request.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
VENV_BIN = Path(sys.executable).parent
PY_SPY = str(VENV_BIN / "py-spy")

# The loop the in-process profile samples; it prints the requests it served.
_LOOP = r"""
import os, sys, time
sys.path.insert(0, {here!r})
import micro
mode, seconds = sys.argv[1], float(sys.argv[2])
stock = micro.Stock()
micro.configure_logging("filtered", open(os.devnull, "w"))
pooled = micro.PoolingMiddleware(micro.app.application, pool_size=10, max_overflow=10)
call = micro.request(micro.app.application if mode == "stock" else pooled, "/touch")
unprofiled = None
def run():
    global unprofiled
    call()
    unprofiled = min(micro.per_call_us(call, 2000) for _ in range(5))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(200):
            call()
if mode == "stock":
    run()
else:
    with stock.unbound():
        run()
print("UNPROFILED_US", unprofiled)
"""


def _samples(path: Path, inside: str) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw stacks (outermost frame first) and their counts, those under ``inside``."""
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = stack.split(";")
        if inside and not any(inside in frame for frame in frames):
            continue
        yield frames, int(count_text)


def _frames(path: Path, inside: str) -> tuple[collections.Counter[str], int]:
    """Inclusive sample counts per frame (file and function, no line) under ``inside``."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in _samples(path, inside):
        total += count
        seen = set()
        for frame in frames:
            name = re.sub(r":\d+\)$", ")", frame)
            if name not in seen:
                seen.add(name)
                inclusive[name] += count
    return inclusive, total


# Frames where the pool hands control to the application: below them, time is the app's.
_APP_BOUNDARIES = (
    "WSGIHandler.__call__ (django/core/handlers/wsgi.py",
    "HttpResponseBase.close (django/http/response.py",
    # _Guard (an execute wrapper) calls the statement itself through these.
    "CursorWrapper._execute (django/db/backends/utils.py",
    "CursorWrapper._executemany (django/db/backends/utils.py",
)


def _attributed(path: Path, inside: str) -> tuple[collections.Counter[str], int]:
    """Samples charged to wsgi_db_pool, by its deepest frame, and the samples in all.

    A sample is the pool's when, of its wsgi_db_pool frames and the frames where the
    pool calls the application (Django's handler, the response's close), the deepest
    is a wsgi_db_pool frame: the pool's own code and what it calls (the socket poll,
    Django's connection storage), but not the view it wraps.
    """
    charged: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in _samples(path, inside):
        total += count
        owner = None
        for frame in frames:
            if "wsgi_db_pool/" in frame:
                owner = re.sub(r":\d+\)$", ")", frame)
            elif frame.startswith(_APP_BOUNDARIES):
                owner = None
        if owner is not None:
            charged[owner] += count
    return charged, total


def in_process(seconds: float, real_us: dict[str, float]) -> dict[str, Any]:
    """``real_us``: the unprofiled cost of one stock and one pooled /touch request."""
    loop = Path(tempfile.mkdtemp()) / "loop.py"
    loop.write_text(_LOOP.format(here=str(HERE)))
    shares: dict[str, dict[str, float]] = {}
    unprofiled: dict[str, float] = {}
    for mode in ("stock", "pooled"):
        raw = loop.with_name(f"{mode}.txt")
        done = subprocess.run(
            # --nonblocking: py-spy does not stop the process to sample it, which
            # would tax every syscall (the poll of is_quiet most of all).
            [
                *(PY_SPY, "record", "-r", "1000", "--nonblocking", "-f", "raw", "-o", str(raw)),
                *("--", sys.executable, "-m", "gevent.monkey", str(loop), mode, str(seconds)),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 120,
        )
        found = re.search(r"UNPROFILED_US ([\d.]+)", done.stdout)
        if found is None:
            raise RuntimeError(f"the loop printed nothing: {done.stdout} {done.stderr}")
        unprofiled[mode] = float(found.group(1))
        scale = real_us[mode]
        inclusive, total = _frames(raw, "request.<locals>.call (micro.py")
        shares[mode] = {name: count / total * scale for name, count in inclusive.items()}
        if mode == "pooled":
            charged, total = _attributed(raw, "request.<locals>.call (micro.py")
            pooled_charged = {name: count / total * scale for name, count in charged.items()}
    names = set(shares["stock"]) | set(shares["pooled"])
    rows = []
    for name in names:
        before = shares["stock"].get(name, 0.0)
        after = shares["pooled"].get(name, 0.0)
        rows.append(
            {"frame": name, "stock_us": before, "pooled_us": after, "diff_us": after - before}
        )
    rows.sort(key=lambda r: -abs(r["diff_us"]))
    ours = sorted(pooled_charged.items(), key=lambda item: -item[1])
    return {
        "real_us": real_us,
        "while_sampled_us": unprofiled,
        "overhead_us": real_us["pooled"] - real_us["stock"],
        "charged_us_total": round(sum(pooled_charged.values()), 2),
        "charged_us": [{"frame": name, "us": round(us, 2)} for name, us in ours[:15]],
        "diff": [
            {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
            for r in rows
            if "runpy" not in r["frame"]
            and "loop.py" not in r["frame"]
            and "gevent/monkey" not in r["frame"]
            and "micro.py" not in r["frame"]
        ][:25],
    }


_ABLATE = r"""
import json, os, sys
sys.path.insert(0, {here!r})
import micro
from wsgi_db_pool import _mysql
stock = micro.Stock()
micro.configure_logging("filtered", open(os.devnull, "w"))
mw = micro.PoolingMiddleware(micro.app.application, pool_size=10, max_overflow=10)
call = micro.request(mw, "/touch")
stock_call = micro.request(micro.app.application, "/touch")
pool = mw.pools["default"]
connector = pool.connector
def best(fn, n, r=9):
    fn()
    return min(micro.per_call_us(fn, n) for _ in range(r))
out = {{}}
def measure(label):
    out.setdefault("stock /touch", []).append(best(stock_call, 2000))
    with stock.unbound():
        out.setdefault(label, []).append(best(call, 2000))
        book = lambda: pool.checkin(pool.checkout())
        out.setdefault(label + " | bookkeeping", []).append(best(book, 20000))
real_quiet, real_reset, real_check = _mysql.is_quiet, connector.reset, connector.check
for _ in range(3):
    measure("pooled /touch")
    _mysql.is_quiet = lambda raw: True
    measure("pooled /touch, is_quiet stubbed (no poll syscall)")
    _mysql.is_quiet = real_quiet
    connector.check = lambda conn, ping: None
    measure("pooled /touch, connector.check stubbed")
    connector.check = real_check
    connector.reset = lambda wrapper: None
    measure("pooled /touch, connector.reset stubbed")
    connector.reset = real_reset
print("ABLATE " + json.dumps({{k: min(v) for k, v in out.items()}}))
"""


def ablations() -> dict[str, float]:
    script = Path(tempfile.mkdtemp()) / "ablate.py"
    script.write_text(_ABLATE.format(here=str(HERE)))
    done = subprocess.run(
        [sys.executable, "-m", "gevent.monkey", str(script)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    found = re.search(r"ABLATE (.*)", done.stdout)
    if found is None:
        raise RuntimeError(done.stdout + done.stderr)
    result: dict[str, float] = {k: round(v, 2) for k, v in json.loads(found.group(1)).items()}
    return result


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def under_load(seconds: float) -> dict[str, Any]:
    import run

    out = Path(tempfile.mkdtemp())
    server = run.Server()
    app = run.Gunicorn("ours", out, "profile")
    app.start()
    try:
        run.wrk(app.url, "pk", 8, 1)
        pid = app.worker_pid()
        if pid is None:
            raise RuntimeError("no gunicorn worker found")
        raw = out / "worker.txt"
        load = subprocess.Popen(
            [
                *("wrk", "-t", "1", "-c", "200", "-d", f"{round(seconds) + 2}s", "--timeout"),
                *("10s", "-s", str(HERE / "report.lua"), app.url, "--", "GET", "/pk/", "1000"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)
        cpu_before = _cpu_seconds(pid)
        started = time.monotonic()
        subprocess.run(
            [
                *(PY_SPY, "record", "--pid", str(pid), "-d", str(round(seconds)), "-r", "500"),
                *("--nonblocking", "-f", "raw", "-o", str(raw)),
            ],
            capture_output=True,
            check=True,
            timeout=seconds + 60,
        )
        wall = time.monotonic() - started
        cpu = _cpu_seconds(pid) - cpu_before
        stdout, _ = load.communicate(timeout=60)
        summary = json.loads(stdout.split("WRK_JSON ", 1)[1].splitlines()[0])
    finally:
        app.stop()
        server.close()
    rps = summary["requests"] / (summary["duration_us"] / 1e6)
    charged, total = _attributed(raw, "")
    cpu_per_request_us = cpu / (rps * wall) * 1e6
    # Where the worker's samples end (their leaf frame), by package.
    leaves: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        for label, needle in (
            ("wsgi_db_pool", "wsgi_db_pool/"),
            ("PyMySQL", "pymysql/"),
            ("Django", "django/"),
            ("gunicorn", "gunicorn/"),
            ("gevent", "gevent/"),
            ("the app (bench/app.py)", "app.py"),
        ):
            if needle in leaf:
                leaves[label] += int(count_text)
                break
        else:
            leaves["other (stdlib, asgiref, ...)"] += int(count_text)
    group_share = {label: round(100 * n / total, 1) for label, n in leaves.most_common()}
    group_share["charged to wsgi_db_pool (its frames and what they call)"] = round(
        100 * sum(charged.values()) / total, 1
    )
    ours = sorted(charged.items(), key=lambda item: -item[1])[:12]
    return {
        "clients": 200,
        "rps": round(rps, 1),
        "worker_cpu_share": round(cpu / wall, 3),
        "cpu_per_request_us": round(cpu_per_request_us, 1),
        "samples": total,
        "leaf_percent": group_share,
        "ours_percent": [
            {
                "frame": name,
                "percent": round(100 * count / total, 2),
                "us_per_request": round(count / total * cpu_per_request_us, 2),
            }
            for name, count in ours
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="where a pooled request's time goes")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "profile.json")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    print("profile: ablations", flush=True)
    result["ablations"] = ablations()
    for name, value in result["ablations"].items():
        print(f"  {name:<60} {value:7.2f} us", flush=True)
    print("profile: in process (py-spy on /touch loops)", flush=True)
    real = {
        "stock": result["ablations"]["stock /touch"],
        "pooled": result["ablations"]["pooled /touch"],
    }
    result["in_process"] = in_process(args.seconds, real)
    print(
        f"  charged to wsgi_db_pool {result['in_process']['charged_us_total']:.1f} us of "
        f"{real['pooled']:.1f} us; overhead {result['in_process']['overhead_us']:.1f} us",
        flush=True,
    )
    print("profile: the gunicorn worker under pk read at 200 clients", flush=True)
    result["under_load"] = under_load(args.seconds)
    print(f"  {result['under_load']['leaf_percent']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
