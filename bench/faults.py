"""Faults side by side: stock Django, the peer pools and ours, killed and restarted under load.

    bench/.venv/bin/python -m gevent.monkey bench/faults.py            # about 16 minutes
    bench/.venv/bin/python -m gevent.monkey bench/faults.py --smoke --out /tmp/x

Everything runs against a PRIVATE mariadbd on a free loopback port (tests/faults/
mariadb.py), never the shared server on 3306: one scenario restarts the server and the
others KILL connections and read global counters, which other users of a shared server
would feel or disturb. For each configuration and scenario a fresh
``gunicorn -k gevent -w 1`` serves bench/app.py pointed at that server
(BENCH_DB_PORT), and loadgen.py, in this process, sends ``GET /pk/<random id>`` on a
fixed beat per client while the scenario plays its fault:

    kills     50 clients, 20 s; once a second KILL one random connection of the app user
    restart   50 clients; after 3 s SIGTERM the server, start it 3 s later, 4 s more load
    swing     60 s: 100 clients for 5 s, 5 clients for 5 s, and again

Two rounds: every configuration in every scenario, then all of it again.

Raw results go to bench/out/faults.json, the tables to bench/FAULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import gevent
import pymysql

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # for tests.faults.mariadb

import faults_report  # noqa: E402
from _common import DB_NAME, DB_USER, ITEMS, connect_root, create_table  # noqa: E402
from loadgen import FAILED, Load  # noqa: E402
from run import Gunicorn  # noqa: E402

from tests.faults.mariadb import PrivateMariaDB  # noqa: E402

FAULT_CONFIGS = ("stock60", "ours", "dbpooling", "dbcp", "geventpool")
# Every pool with a wait timeout waits 30 s (ours' default, SQLAlchemy's, HikariCP's);
# the client gives up at loadgen.CLIENT_TIMEOUT_S before that.
POOL_TIMEOUT_S = 30
# Above what stock Django can open at 100 clients plus what its collected-late
# connections keep: a refusal (1040) would be the private server's limit, not the app's.
PRIVATE_MAX_CONNECTIONS = 300
# Restart scenario: a failure that started this long after the server was back counts
# as "failed after it was back"; the server's connect counter is read this long after.
SETTLE_S = 0.25
CONNECTS_WINDOW_S = 1.0
SAMPLE_EVERY_S = 0.1
BUCKET_S = 0.1  # the time series' resolution


@dataclass
class Plan:
    """What one invocation runs."""

    name: str
    configs: tuple[str, ...]
    scenarios: tuple[str, ...]
    every_s: float = 0.05  # each client's beat
    # Single runs of a fault vary (the time to the first success did by 30x between two
    # runs here): the report shows every round's value side by side.
    rounds: int = 2
    kill_clients: int = 50
    kill_seconds: int = 20
    restart_clients: int = 50
    restart_lead_s: float = 3.0
    restart_down_s: float = 3.0
    restart_after_s: float = 4.0
    swing_high: int = 100
    swing_low: int = 5
    swing_phase_s: float = 5.0
    swing_seconds: float = 60.0
    notes: list[str] = field(default_factory=list)


def full_plan() -> Plan:
    return Plan("full", FAULT_CONFIGS, ("kills", "restart", "swing"))


def smoke_plan() -> Plan:
    return Plan(
        "smoke",
        ("stock60", "ours"),
        ("kills",),
        kill_clients=10,
        kill_seconds=3,
        rounds=1,
        notes=["smoke mode: two configurations, one 3 s scenario; not a measurement"],
    )


# -- the private server ---------------------------------------------------------------------


def status(conn: pymysql.connections.Connection, name: str) -> int:
    with conn.cursor() as cursor:
        cursor.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
        return int(cursor.fetchone()[1])


def app_connection_ids(conn: pymysql.connections.Connection) -> list[int]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (DB_USER,))
        return [row[0] for row in cursor.fetchall()]


class Private:
    """The private mariadbd with the bench's database, user and table."""

    def __init__(self) -> None:
        self.db = PrivateMariaDB()
        self.port = self.db.port
        # Connects the driver itself causes at a start (the start's login probe and the
        # connection reading the counter), subtracted from the first second's count.
        self.own_connects = 0

    def create(self) -> None:
        self.db.install()
        self.db.start()
        self.own_connects = self.connects()
        self.configure()
        with contextlib.closing(self.root()) as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS {DB_NAME}")
            cursor.execute(f"CREATE USER IF NOT EXISTS '{DB_USER}'@'%' IDENTIFIED BY '{DB_USER}'")
            cursor.execute(f"GRANT ALL PRIVILEGES ON {DB_NAME}.* TO '{DB_USER}'@'%'")
        create_table(self.port)

    def configure(self) -> None:
        """Global settings, which a restart forgets: set again after every start."""
        with contextlib.closing(self.root()) as conn, conn.cursor() as cursor:
            cursor.execute(f"SET GLOBAL max_connections = {PRIVATE_MAX_CONNECTIONS}")

    def root(self) -> pymysql.connections.Connection:
        return connect_root(self.port)

    def connects(self) -> int:
        """The server's Connections counter, through a connection of its own."""
        with contextlib.closing(self.root()) as conn:
            return status(conn, "Connections")

    def settle(self) -> int:
        """Up, and no app connection left (KILL stragglers: this server is ours)."""
        if self.db.process is None:  # a restart scenario that broke off while it was down
            self.db.start()
            self.configure()
        with contextlib.closing(self.root()) as conn:
            for _ in range(50):
                ids = app_connection_ids(conn)
                if not ids:
                    return 0
                gevent.sleep(0.1)
            with conn.cursor() as cursor:
                for conn_id in ids:
                    with contextlib.suppress(pymysql.MySQLError):
                        cursor.execute(f"KILL {int(conn_id)}")
            return len(ids)

    def destroy(self) -> None:
        self.db.destroy()


# -- the scenarios -------------------------------------------------------------------------


def sleep_until(moment: float) -> None:
    gevent.sleep(max(moment - time.monotonic(), 0.0))


def kill_random(conn: pymysql.connections.Connection) -> bool:
    """KILL one random connection of the app user; False if there was none to kill."""
    ids = app_connection_ids(conn)
    if not ids:
        return False
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"KILL {int(random.choice(ids))}")
    except pymysql.MySQLError as exc:
        if exc.args[0] == 1094:  # unknown thread: it ended by itself meanwhile
            return False
        raise
    return True


def scenario_kills(private: Private, load: Load, plan: Plan) -> dict[str, Any]:
    with contextlib.closing(private.root()) as observer:
        t0 = time.monotonic()
        load.add(plan.kill_clients)
        kills = 0
        for second in range(1, plan.kill_seconds):
            sleep_until(t0 + second)
            kills += kill_random(observer)
        sleep_until(t0 + plan.kill_seconds)
        load.stop()
    failed = sum(1 for _, _, code in load.done if code != 200)
    return {
        "t0": t0,
        "kills": kills,
        "failed_per_kill": round(failed / kills, 2) if kills else None,
    }


def scenario_restart(private: Private, load: Load, plan: Plan) -> dict[str, Any]:
    t0 = time.monotonic()
    load.add(plan.restart_clients)
    sleep_until(t0 + plan.restart_lead_s)
    down_at = time.monotonic()
    private.db.stop()  # SIGTERM; returns once mariadbd has exited
    stopped_at = time.monotonic()
    sleep_until(down_at + plan.restart_down_s)
    # Returns once root can log in, polling every 10 ms: the moment "back" is timed from.
    private.db.start()
    up_at = time.monotonic()
    sleep_until(up_at + CONNECTS_WINDOW_S)
    first_second = private.connects() - private.own_connects
    # A pool that lost slots to failed reconnects holds fewer connections under the
    # same load once it has recovered: look over the last 2 s.
    sleep_until(up_at + plan.restart_after_s - 2.0)
    sampler = PeakSampler(private)
    sleep_until(up_at + plan.restart_after_s)
    peak_at_end = sampler.stop()
    load.stop()
    private.configure()
    back = [(start, end, code) for start, end, code in load.done if end >= up_at]
    successes = [end for _, end, code in back if code == 200]
    late = [code for start, _, code in load.done if start > up_at + SETTLE_S and code != 200]
    failed_starts = [start for start, _, code in load.done if code != 200]
    return {
        "t0": t0,
        "down_at_s": round(down_at - t0, 3),
        "shutdown_s": round(stopped_at - down_at, 3),
        "up_at_s": round(up_at - t0, 3),
        "first_success_ms": round((min(successes) - up_at) * 1000, 1) if successes else None,
        "failed_after_back": len(late),
        # How long after the server was back users still saw failures (negative: none).
        "last_failure_after_back_ms": (
            round((max(failed_starts) - up_at) * 1000, 1) if failed_starts else None
        ),
        "connects_first_second": first_second,
        "peak_connections_last_2s": peak_at_end,
    }


class PeakSampler:
    """Counts the app user's server connections every SAMPLE_EVERY_S, in a greenlet."""

    def __init__(self, private: Private) -> None:
        # Connected before it returns: a caller reading Connections next does not count it.
        self.conn = private.root()
        self.samples: list[int] = []
        self.running = True
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        with contextlib.closing(self.conn):
            while self.running:
                self.samples.append(len(app_connection_ids(self.conn)))
                gevent.sleep(SAMPLE_EVERY_S)

    def stop(self) -> int | None:
        """The peak seen."""
        self.running = False
        self.greenlet.join(5)
        return max(self.samples) if self.samples else None


def scenario_swing(private: Private, load: Load, plan: Plan) -> dict[str, Any]:
    sampler = PeakSampler(private)
    with contextlib.closing(private.root()) as counter:
        # One connection read at every phase boundary: the counter counts only the app.
        connects = [status(counter, "Connections")]
        t0 = time.monotonic()
        phases = round(plan.swing_seconds / plan.swing_phase_s)
        for phase in range(phases):
            wanted = plan.swing_high if phase % 2 == 0 else plan.swing_low
            if wanted > load.clients:
                load.add(wanted - load.clients)
            else:
                load.remove(load.clients - wanted)
            sleep_until(t0 + (phase + 1) * plan.swing_phase_s)
            connects.append(status(counter, "Connections"))
        load.stop()
    peak = sampler.stop()
    return {
        "t0": t0,
        "connects_at_phase_ends": connects,
        "connects": connects[-1] - connects[0],
        # After the first high/low cycle: what a pool keeps paying once it has filled.
        "connects_after_first_cycle": connects[-1] - connects[min(2, len(connects) - 1)],
        "peak_connections": peak,
    }


SCENARIOS: dict[str, Callable[[Private, Load, Plan], dict[str, Any]]] = {
    "kills": scenario_kills,
    "restart": scenario_restart,
    "swing": scenario_swing,
}


# -- one configuration in one scenario ------------------------------------------------------


def summarize(load: Load, t0: float) -> dict[str, Any]:
    """Counts by outcome and a time series of (ok, failed) per BUCKET_S since t0."""
    codes = Counter(code for _, _, code in load.done)
    series: dict[int, list[int]] = {}
    for start, _, code in load.done:
        bucket = series.setdefault(int((start - t0) / BUCKET_S), [0, 0])
        bucket[code != 200] += 1
    last = max(series, default=-1)
    return {
        "requests": len(load.done),
        "ok": codes[200],
        "failed": len(load.done) - codes[200],
        "status_503": codes[503],
        "status_5xx_other": sum(n for code, n in codes.items() if code >= 500 and code != 503),
        "no_answer": codes[FAILED],
        "codes": {str(code): n for code, n in sorted(codes.items())},
        "client_exceptions": dict(load.exceptions),
        "series_bucket_s": BUCKET_S,
        "series": [series.get(i, [0, 0]) for i in range(last + 1)],
    }


def run_one(private: Private, config: str, scenario: str, plan: Plan, out: Path) -> dict[str, Any]:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"config": config, "scenario": scenario}
    record["leftovers_killed"] = private.settle()
    record["loadavg_1m"] = round(os.getloadavg()[0], 2)
    app = Gunicorn(config, logs, f"faults-{scenario}-{config}")
    try:
        app.start()
    except RuntimeError as exc:
        record["error"] = f"gunicorn did not start: {exc}"
        app.stop()
        return record
    worker = app.worker_pid()
    load = Load(app.port, "/pk/", ITEMS, every=plan.every_s)
    try:
        record.update(SCENARIOS[scenario](private, load, plan))
    except Exception as exc:  # a scenario that breaks is reported, not fatal to the rest
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        load.stop()
        record["worker_restarted"] = app.worker_pid() != worker
        record["server_alive"] = app.proc is not None and app.proc.poll() is None
        record["app_errors"] = app.stop()
    record.update(summarize(load, record.pop("t0", time.monotonic())))
    return record


def print_line(record: dict[str, Any]) -> None:
    keys = ("requests", "failed", "status_503", "no_answer", "kills", "first_success_ms")
    keys += ("failed_after_back", "connects_first_second", "connects", "peak_connections")
    shown = " ".join(f"{k}={record[k]}" for k in keys if k in record)
    print(f"  {record['scenario']:<8} {record['config']:<11} {shown} {record.get('error', '')}")


# -- the whole run -------------------------------------------------------------------------


def environment(private: Private) -> dict[str, Any]:
    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(HERE.parent), *args], capture_output=True)
        return done.stdout.decode().strip()

    dirty = git("status", "--porcelain", "--", "wsgi_db_pool", "bench")
    with contextlib.closing(private.root()) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT VERSION()")
        mariadb = cursor.fetchone()[0]
    names = ["Django", "PyMySQL", "gevent", "gunicorn", "django-db-pooling"]
    names += ["django-db-connection-pool", "django-mysql-geventpool", "SQLAlchemy"]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": (git("rev-parse", "--short", "HEAD") or "unknown")
        + (" + uncommitted changes" if dirty else ""),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "mariadb": mariadb,
        "packages": {name: ver(name) for name in names},
    }


def run_all(plan: Plan, out: Path, report_dir: Path) -> dict[str, Any]:
    started = time.monotonic()
    private = Private()
    results: dict[str, Any] = {"plan": plan.__dict__, "runs": []}
    try:
        private.create()
        print(f"private mariadbd on 127.0.0.1:{private.port} ({private.db.base})", flush=True)
        os.environ["BENCH_DB_PORT"] = str(private.port)
        os.environ["BENCH_POOL_TIMEOUT"] = str(POOL_TIMEOUT_S)
        results["environment"] = environment(private)
        results["private_max_connections"] = PRIVATE_MAX_CONNECTIONS
        results["driver_connects_at_start"] = private.own_connects
        # Rounds outermost: a burst of load from other users of the machine then hits
        # one round of a configuration, not all of its runs.
        for round_no in range(1, plan.rounds + 1):
            for scenario in plan.scenarios:
                for config in plan.configs:
                    record = run_one(private, config, scenario, plan, out)
                    record["round"] = round_no
                    print_line(record)
                    results["runs"].append(record)
                    save(results, out, started)
    finally:
        private.destroy()
    save(results, out, started)
    faults_report.write(results, report_dir)
    return results


def save(results: dict[str, Any], out: Path, started: float) -> None:
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (out / "faults.json").write_text(json.dumps(results, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: ours and stock60, kills")
    parser.add_argument("--configs", help="comma-separated subset of " + ",".join(FAULT_CONFIGS))
    parser.add_argument("--scenarios", help="comma-separated subset of " + ",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=HERE / "out", help="faults.json and logs")
    parser.add_argument("--report-dir", type=Path, help="where FAULTS.md goes")
    args = parser.parse_args(argv)
    plan = smoke_plan() if args.smoke else full_plan()
    if args.configs:
        wanted = args.configs.split(",")
        unknown = sorted(set(wanted) - set(FAULT_CONFIGS))
        if unknown:
            parser.error(f"--configs: unknown {unknown}; known: {', '.join(FAULT_CONFIGS)}")
        plan.configs = tuple(c for c in FAULT_CONFIGS if c in wanted)
    if args.scenarios:
        wanted = args.scenarios.split(",")
        unknown = sorted(set(wanted) - set(SCENARIOS))
        if unknown:
            parser.error(f"--scenarios: unknown {unknown}; known: {', '.join(SCENARIOS)}")
        plan.scenarios = tuple(s for s in SCENARIOS if s in wanted)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report_dir = args.report_dir or (out if args.smoke else HERE)

    # SIGTERM/SIGHUP run the finally blocks: gunicorn stopped, the private server removed.
    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)
    results = run_all(plan, out, report_dir)
    print(f"done in {results['elapsed_s']:.0f} s: {report_dir / 'FAULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
