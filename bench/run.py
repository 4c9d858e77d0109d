"""Run the whole benchmark; write bench/RESULTS.md and bench/results.png.

    bench/run.sh            # the full run (about 30 minutes on 2 cores)
    bench/run.sh --quick    # a few minutes, fewer and shorter runs
    bench/.venv/bin/python bench/run.py --smoke --out /tmp/x   # seconds, one config

Every load run starts a fresh gunicorn (-k gevent, one worker, --worker-connections
2000) serving bench/app.py with one configuration, warms it up, puts wrk on it in a
process of its own, samples the app user's server connections every 100 ms, waits
after the load to count what is left open, and stops the server. Rounds go through
every configuration in turn (A, B, C, ... then again). Raw results go to
bench/out/ (ignored by git); the report is rendered from them by report.py.

The targets a run is judged by (report.py): req/s at least the best peer's and stock
``CONN_MAX_AGE=60``'s; and, since by Little's law the mean latency is clients / req/s
whatever the order in which a pool serves its waiters, the tail against that mean:
p99 at most 3x the mean latency, no request over 1 s, no error.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    CONFIGS,
    DB_USER,
    ITEMS,
    connect_root,
    create_table,
)

VENV_BIN = Path(sys.executable).parent
# Longer than every pool's wait timeout (5 s), so that a pool's own timeout shows as
# its error answer and not as the client giving up.
WRK_TIMEOUT_S = 10
WORKER_CONNECTIONS = 2000
SAMPLE_EVERY_S = 0.1
LIMIT_MAX_CONNECTIONS = 60
CAP = 20  # BENCH_POOL_SIZE 10 + BENCH_MAX_OVERFLOW 10 in app.py
STATE_FILE = HERE / "out" / "max_connections.restore"

# view: (method, path, keys drawn at random to append to the path)
VIEWS = {
    "pk": ("GET", "/pk/", ITEMS),
    "nodb": ("GET", "/nodb", 0),
    "slow": ("GET", "/slow", 0),
    "write": ("POST", "/write/", ITEMS),
}


@dataclass
class Plan:
    """What one invocation runs: rounds of (view, clients), the limit phase, the rest."""

    name: str
    rounds: list[list[tuple[str, int]]]
    duration_s: float
    tail_s: float
    warmup_s: float
    limit_clients: list[int]
    limit_duration_s: float
    # After a run of the max_connections phase: its left-open count is not reported.
    limit_tail_s: float = 1.0
    configs: tuple[str, ...] = CONFIGS
    micro: bool = True
    fairness_s: float = 5.0
    profile_s: float = 10.0
    # Rounds of the order experiment: pk read, ours with each order of service
    # (bench/app.py BENCH_HANDOFF) against django-db-pooling and stock, interleaved.
    order_rounds: int = 0
    order_clients: tuple[int, ...] = (200, 500, 1000)
    notes: list[str] = field(default_factory=list)


def full_plan() -> Plan:
    everything = [("pk", 50), ("pk", 200), ("pk", 500), ("pk", 1000)]
    everything += [("nodb", 200), ("slow", 200), ("write", 200)]
    # The targets compare medians of pk read at 200, 500 and 1000, their tails against
    # the mean latency (clients / req/s), and the served no-DB request against stock:
    # those run in every round, the rest once.
    again = [("pk", 200), ("pk", 500), ("pk", 1000), ("nodb", 200)]
    return Plan(
        name="full",
        rounds=[everything, again, again],
        duration_s=10,
        tail_s=5,
        warmup_s=1,
        limit_clients=[50, 200, 500, 1000],
        limit_duration_s=6,
        order_rounds=3,
    )


def quick_plan() -> Plan:
    return Plan(
        name="quick",
        rounds=[[("pk", 200), ("pk", 1000), ("nodb", 200), ("slow", 200), ("write", 200)]],
        duration_s=3,
        tail_s=2,
        warmup_s=1,
        limit_clients=[1000],
        limit_duration_s=3,
        fairness_s=2.0,
        profile_s=4.0,
        order_rounds=1,
        notes=["quick mode: one round, 3 s runs, 2 s tail; medians are single runs"],
    )


def smoke_plan() -> Plan:
    return Plan(
        name="smoke",
        rounds=[[("pk", 20)]],
        duration_s=2,
        tail_s=1,
        warmup_s=1,
        limit_clients=[],
        limit_duration_s=0,
        configs=("ours",),
        micro=False,
        fairness_s=0,
        profile_s=0,
        notes=["smoke mode: one configuration, one short run; not a measurement"],
    )


# -- the server, as MariaDB sees it ------------------------------------------------------


class Server:
    """MariaDB seen through a root connection of the bench's own."""

    def __init__(self) -> None:
        self.conn = connect_root()

    def value(self, sql: str, args: Any = None) -> Any:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, args)
            row = cursor.fetchone()
            return row[0] if row else None

    def app_connections(self) -> int:
        return int(
            self.value(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
                (DB_USER,),
            )
        )

    def other_connections(self) -> int:
        # Everyone but the app and this very connection.
        return int(
            self.value(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE USER <> %s AND ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'",
                (DB_USER,),
            )
        )

    def wait_app_connections(self, expected: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            count = self.app_connections()
            if count <= expected or time.monotonic() >= deadline:
                return count
            time.sleep(0.1)

    def kill_app_leftovers(self) -> int:
        """KILL connections of the bench user only (never another user's)."""
        with self.conn.cursor() as cursor:
            cursor.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (DB_USER,)
            )
            ids = [row[0] for row in cursor.fetchall()]
            for conn_id in ids:
                with contextlib.suppress(Exception):
                    cursor.execute("KILL %s", (conn_id,))
        return len(ids)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class Sampler(threading.Thread):
    """Counts the app user's server connections every 100 ms while a load runs."""

    def __init__(self) -> None:
        super().__init__(name="connection-sampler", daemon=True)
        self.server = Server()
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while True:
                self.samples.append(self.server.app_connections())
                if self._stop_event.wait(SAMPLE_EVERY_S):
                    return
        finally:
            self.server.close()

    def stop(self) -> list[int]:
        self._stop_event.set()
        self.join(10)
        return self.samples


@contextlib.contextmanager
def max_connections(server: Server, value: int) -> Iterator[int]:
    """SET GLOBAL max_connections for the block; restored in a finally (and at next start).

    The old value is written to a file first, so that a run killed without running
    its finally is repaired by the next run (see restore_stale_max_connections).
    """
    old = int(server.value("SELECT @@GLOBAL.max_connections"))
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({"restore": old, "set": value}))
    try:
        server.value(f"SET GLOBAL max_connections = {int(value)}")
        yield old
    finally:
        restorer = Server()  # our own connection may be the one that broke
        try:
            restorer.value(f"SET GLOBAL max_connections = {int(old)}")
        finally:
            restorer.close()
        STATE_FILE.unlink(missing_ok=True)


def restore_stale_max_connections(server: Server) -> None:
    """Undo a SET GLOBAL a killed run left behind, if nobody changed it since."""
    if not STATE_FILE.exists():
        return
    state = json.loads(STATE_FILE.read_text())
    now = int(server.value("SELECT @@GLOBAL.max_connections"))
    if now == state["set"]:
        server.value(f"SET GLOBAL max_connections = {int(state['restore'])}")
        print(f"restored max_connections={state['restore']} left at {now} by a killed run")
    STATE_FILE.unlink()


# -- the app under gunicorn ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """One gunicorn master with one gevent worker serving app.py with ``config``."""

    def __init__(self, config: str, logs: Path, tag: str) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logs / f"{tag}.log"
        self.errors_path = logs / f"{tag}.errors.json"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env.update(BENCH_CONFIG=self.config, BENCH_ERRORS_FILE=str(self.errors_path))
        cmd = [
            str(VENV_BIN / "gunicorn"),
            "-k",
            "gevent",
            "-w",
            "1",
            "--worker-connections",
            str(WORKER_CONNECTIONS),
            "--backlog",
            "2048",
            "-b",
            f"127.0.0.1:{self.port}",
            "--chdir",
            str(HERE),
            "--graceful-timeout",
            "10",
            "--log-level",
            "warning",
            "app:application",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn ({self.config}) exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/nodb", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn ({self.config}) did not answer: {self.log_path}")
            time.sleep(0.05)

    def cpu(self) -> dict[str, Any] | None:
        """The worker's CPU and collector seconds (app.py /cpu); None if it does not answer."""
        try:
            with urllib.request.urlopen(self.url + "/cpu", timeout=10) as response:
                body: dict[str, Any] = json.loads(response.read())
                return body
        except OSError:
            return None

    def worker_pid(self) -> int | None:
        if self.proc is None:
            return None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            pids = path.read_text().split()
            if pids:
                return int(pids[0])
        return None

    def stop(self) -> dict[str, int]:
        """SIGTERM, wait, SIGKILL our own process group if needed; the worker's error counts."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the group we started, by its id
                proc.wait(10)
        try:
            errors: dict[str, int] = json.loads(self.errors_path.read_text())
        except (OSError, ValueError):
            errors = {}
        return errors


# -- one load -----------------------------------------------------------------------------


def wrk(url: str, view: str, clients: int, seconds: float) -> dict[str, Any]:
    method, path, keys = VIEWS[view]
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"loopback only, not {url}")
    cmd = [
        "wrk",
        "-t",
        "1",
        "-c",
        str(clients),
        "-d",
        f"{max(round(seconds), 1)}s",  # wrk takes whole seconds
        "--timeout",
        f"{WRK_TIMEOUT_S}s",
        "-s",
        str(HERE / "report.lua"),
        url,
        "--",
        method,
        path,
        str(keys),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            result: dict[str, Any] = json.loads(line[len("WRK_JSON ") :])
            return result
    raise RuntimeError(f"wrk printed no summary: {done.stdout!r} {done.stderr!r}")


def run_one(
    phase: str,
    round_no: int,
    config: str,
    view: str,
    clients: int,
    plan: Plan,
    seconds: float,
    out: Path,
    server: Server,
    tail_s: float | None = None,
) -> dict[str, Any]:
    tail_s = plan.tail_s if tail_s is None else tail_s
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tag = f"{phase}-r{round_no}-{config}-{view}-{clients}"
    before = server.wait_app_connections(0, 15)
    if before:
        # A previous server's connections (only the bench user's) that never went.
        server.kill_app_leftovers()
        before = server.wait_app_connections(0, 5)
    loadavg = os.getloadavg()[0]
    app = Gunicorn(config, logs, tag)
    app.start()
    try:
        if plan.warmup_s:
            wrk(app.url, view, min(clients, 8), plan.warmup_s)
        cpu_before = app.cpu()
        sampler = Sampler()
        sampler.start()
        try:
            result = wrk(app.url, view, clients, seconds)
        finally:
            samples = sampler.stop()
        cpu_after = app.cpu()
        time.sleep(tail_s)
        left_open = server.app_connections()
        alive = app.proc is not None and app.proc.poll() is None
    finally:
        server_errors = app.stop()
    errors = result["errors"]
    duration = result["duration_us"] / 1e6
    ok = result["requests"] - errors["status"]
    record = {
        "phase": phase,
        "round": round_no,
        "config": config,
        "view": view,
        "clients": clients,
        "seconds": seconds,
        "duration_s": duration,
        "requests": result["requests"],
        "ok": ok,
        "rps": ok / duration if duration else 0.0,
        "errors": errors,
        "errors_total": sum(errors.values()),
        "latency_ms": {k: v / 1000 for k, v in result["latency_us"].items()},
        "peak": max(samples) if samples else None,
        "samples": len(samples),
        "before": before,
        "left_open": left_open,
        "tail_s": tail_s,
        "server_errors": server_errors,
        "server_alive": alive,
        "loadavg_1m": round(loadavg, 2),
        "log": str(app.log_path.relative_to(out)),
        **cpu_per_request(cpu_before, cpu_after, result["requests"]),
    }
    lat = record["latency_ms"]
    print(
        f"  {tag:<34} {record['rps']:8.0f} req/s  p50 {lat['p50']:7.1f}  p99 {lat['p99']:7.1f}"
        f"  max {lat['max']:7.1f} ms  err {record['errors_total']:5d}"
        f"  peak {record['peak']}  left {left_open}"
        f"  cpu {record.get('cpu_us_per_request', 0):5.0f}"
        f" gc {record.get('gc_us_per_request', 0):4.1f} us/req",
        flush=True,
    )
    return record


def cpu_per_request(
    before: dict[str, Any] | None, after: dict[str, Any] | None, requests: int
) -> dict[str, float]:
    """The worker's CPU and garbage-collector microseconds per answered request (app.py /cpu).

    Taken around the whole load, so the few requests still in flight at either end
    are a rounding error at these rates.
    """
    if before is None or after is None or not requests:
        return {}
    gc_s = sum(after["gc_s"]) - sum(before["gc_s"])
    return {
        "cpu_us_per_request": round((after["cpu_s"] - before["cpu_s"]) / requests * 1e6, 1),
        "gc_us_per_request": round(gc_s / requests * 1e6, 2),
        "gc_runs": [a - b for a, b in zip(after["gc_runs"], before["gc_runs"], strict=True)],
    }


# -- what first come, first served costs ---------------------------------------------------

# (configuration, BENCH_HANDOFF): the shipped order of service and the best candidate of
# wsgi_db_pool/_order.py (ANALYSIS.md has them all; bench/order.py runs any), then the
# peer. Stock runs in every round of the main phase.
ORDER_VARIANTS: tuple[tuple[str, str | None], ...] = (
    ("ours", "fifo"),
    ("ours", "barge:100"),
    ("dbpooling", None),
)


_VARIANT_KNOBS = {"gate": "BENCH_GATE", "gc": "BENCH_GC_TUNE"}


@contextlib.contextmanager
def variant_environment(handoff: str | None) -> Iterator[None]:
    """app.py's experiment switches for a variant ``<order>[+gate:N][+gc:N]`` while a server starts.

    The order (BENCH_HANDOFF) applies to ours only; the gate and the collector's tuning
    to any configuration.
    """
    names = ["BENCH_HANDOFF", *_VARIANT_KNOBS.values()]
    if handoff:
        order, *extras = handoff.split("+")
        if order:
            os.environ["BENCH_HANDOFF"] = order
        for extra in extras:
            name, _, value = extra.partition(":")
            if name not in _VARIANT_KNOBS or not value:
                raise ValueError(f"variant {handoff!r}: +gate:N or +gc:N, not +{extra}")
            os.environ[_VARIANT_KNOBS[name]] = value
    try:
        yield
    finally:
        for name in names:
            os.environ.pop(name, None)


def run_order(
    plan: Plan,
    out: Path,
    server: Server,
    variants: tuple[tuple[str, str | None], ...] = ORDER_VARIANTS,
) -> list[dict[str, Any]]:
    """pk read: ours with each order of service, the peer and stock, interleaved per round."""
    records = []
    for round_no in range(1, plan.order_rounds + 1):
        print(f"order experiment, round {round_no}/{plan.order_rounds}", flush=True)
        for clients in plan.order_clients:
            for config, handoff in variants:
                if config not in plan.configs:
                    continue
                with variant_environment(handoff):
                    record = run_one(
                        f"order-{handoff}" if handoff else "order",
                        round_no,
                        config,
                        "pk",
                        clients,
                        plan,
                        plan.duration_s,
                        out,
                        server,
                    )
                record["handoff"] = handoff
                records.append(record)
    return records


# -- the other measurements, in processes of their own ------------------------------------


def run_python(script: str, args: list[str], out_json: Path, timeout: float) -> dict[str, Any]:
    # gevent patches before anything else is imported, as gunicorn's worker does.
    cmd = [sys.executable, "-m", "gevent.monkey", str(HERE / script), "--out", str(out_json)]
    subprocess.run(cmd + args, check=True, timeout=timeout)
    result: dict[str, Any] = json.loads(out_json.read_text())
    return result


# -- the whole run ------------------------------------------------------------------------


def environment(server: Server) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        mem_gib = int(kb) / 1024 / 1024
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    packages = [
        "wsgi_db_pool",
        "Django",
        "PyMySQL",
        "gevent",
        "greenlet",
        "gunicorn",
        "structlog",
        "django-db-pooling",
        "django-db-connection-pool",
        "django-mysql-geventpool",
        "SQLAlchemy",
        "psycopg",
        "psycopg-pool",
    ]
    # The package is measured as it is in the working tree: name that state.
    source = hashlib.sha256()
    for path in sorted((HERE.parent / "wsgi_db_pool").glob("*.py")):
        source.update(path.name.encode() + b"\0" + path.read_bytes())
    commit = subprocess.run(
        ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "wsgi_db_pool"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": (commit or "unknown") + (" + uncommitted changes" if dirty else ""),
        "source_sha256": source.hexdigest()[:12],
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_gib, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "mariadb": server.value("SELECT VERSION()"),
        "max_connections": int(server.value("SELECT @@GLOBAL.max_connections")),
        "max_user_connections": int(
            server.value(
                "SELECT max_user_connections FROM mysql.user WHERE user = %s LIMIT 1",
                (DB_USER,),
            )
            or 0
        ),
        "wrk": (wrk_version.splitlines() or ["?"])[0].split(" [")[0],
        "packages": {name: ver(name) for name in packages},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes in all")
    mode.add_argument("--smoke", action="store_true", help="seconds, one configuration")
    parser.add_argument("--configs", help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=HERE / "out", help="raw results and logs")
    parser.add_argument(
        "--report-dir", type=Path, default=None, help="where RESULTS.md and results.png go"
    )
    parser.add_argument("--skip-load", action="store_true", help="micro and fairness only")
    parser.add_argument(
        "--order-only",
        action="store_true",
        help="run only the order experiment and merge it into an existing results.json",
    )
    args = parser.parse_args(argv)

    plan = smoke_plan() if args.smoke else quick_plan() if args.quick else full_plan()
    if args.configs:
        wanted = tuple(args.configs.split(","))
        unknown = [c for c in wanted if c not in CONFIGS]
        if unknown:
            parser.error(f"--configs: unknown {unknown}; known: {', '.join(CONFIGS)}")
        plan.configs = tuple(c for c in CONFIGS if c in wanted)
    report_dir = args.report_dir or (HERE if plan.name != "smoke" else args.out)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if shutil.which("wrk") is None:
        print("wrk is missing: run bench/setup.sh (bench/run.sh does)", file=sys.stderr)
        return 2

    # SIGTERM/SIGHUP run the finally blocks (server stop, max_connections restore).
    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)

    started = time.monotonic()
    server = Server()
    restore_stale_max_connections(server)
    create_table()
    if args.order_only:
        return order_only(plan, out, report_dir, server)
    results: dict[str, Any] = {
        "plan": {
            "name": plan.name,
            "rounds": plan.rounds,
            "duration_s": plan.duration_s,
            "tail_s": plan.tail_s,
            "warmup_s": plan.warmup_s,
            "limit_clients": plan.limit_clients,
            "limit_duration_s": plan.limit_duration_s,
            "limit_tail_s": plan.limit_tail_s,
            "configs": plan.configs,
            "notes": plan.notes,
            "cap": CAP,
            "wrk_timeout_s": WRK_TIMEOUT_S,
            "worker_connections": WORKER_CONNECTIONS,
            "limit_max_connections": LIMIT_MAX_CONNECTIONS,
        },
        "environment": environment(server),
        "runs": [],
    }
    results_path = out / "results.json"

    def save() -> None:
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        results["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        results_path.write_text(json.dumps(results, indent=1))

    try:
        if not args.skip_load:
            for round_no, scenarios in enumerate(plan.rounds, 1):
                print(f"round {round_no}/{len(plan.rounds)}", flush=True)
                for config in plan.configs:
                    for view, clients in scenarios:
                        results["runs"].append(
                            run_one(
                                "main",
                                round_no,
                                config,
                                view,
                                clients,
                                plan,
                                plan.duration_s,
                                out,
                                server,
                            )
                        )
                        save()
            if plan.limit_clients:
                others = server.other_connections()
                print(
                    f"max_connections={LIMIT_MAX_CONNECTIONS} phase "
                    f"({others} connections of other users open now)",
                    flush=True,
                )
                with max_connections(server, LIMIT_MAX_CONNECTIONS) as old:
                    results["limit"] = {"restored_to": old, "other_connections_at_start": others}
                    for config in plan.configs:
                        for clients in plan.limit_clients:
                            record = run_one(
                                "limit",
                                1,
                                config,
                                "pk",
                                clients,
                                plan,
                                plan.limit_duration_s,
                                out,
                                server,
                                tail_s=plan.limit_tail_s,
                            )
                            record["other_connections"] = server.other_connections()
                            results["runs"].append(record)
                            save()
                print(f"max_connections restored to {old}", flush=True)
            if plan.order_rounds:
                results["runs"] += run_order(plan, out, server)
                save()
        if plan.micro:
            print("microbenchmark", flush=True)
            quick = ["--quick"] if plan.name != "full" else []
            results["micro"] = run_python("micro.py", quick, out / "micro.json", 900)
            save()
        if plan.profile_s:
            print("profile", flush=True)
            script = str(HERE / "profile_overhead.py")
            cmd = [sys.executable, script, "--seconds", str(plan.profile_s)]
            subprocess.run([*cmd, "--out", str(out / "profile.json")], check=True, timeout=900)
            results["profile"] = json.loads((out / "profile.json").read_text())
            save()
        if plan.fairness_s:
            print("fairness", flush=True)
            results["fairness"] = run_python(
                "fairness.py", ["--seconds", str(plan.fairness_s)], out / "fairness.json", 300
            )
            save()
    finally:
        save()
        server.close()

    import report

    written = report.write(results, report_dir)
    print(f"done in {results['elapsed_s']:.0f} s: " + ", ".join(str(p) for p in written))
    return 0


def order_only(plan: Plan, out: Path, report_dir: Path, server: Server) -> int:
    """Run the order experiment alone and merge it into the last run's results.json."""
    results_path = out / "results.json"
    if not results_path.exists():
        print(f"--order-only merges into {results_path}, which is missing", file=sys.stderr)
        return 2
    results: dict[str, Any] = json.loads(results_path.read_text())
    plan.order_rounds = plan.order_rounds or 1
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        records = run_order(plan, out, server)
    finally:
        server.close()
    results["runs"] = [r for r in results["runs"] if not r["phase"].startswith("order")]
    results["runs"] += records
    results["order_run"] = {
        "measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "loadavg_start": loadavg,
    }
    results_path.write_text(json.dumps(results, indent=1))
    import report

    written = report.write(results, report_dir)
    print("order experiment merged: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
