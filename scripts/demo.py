"""The main job, shown: a gunicorn gevent worker under a burst stays within its cap.

`make demo` runs this. It starts example_wsgi.py under gunicorn (one gevent worker, a
small pool), fires a bounded burst of concurrent requests at it, counts the server's
connections of the app's own database user every 100 ms, and prints what it saw. It
exits non-zero if any request failed or the server ever saw more connections than
pool_size + max_overflow.

    .venv/bin/python scripts/demo.py                   # the default burst
    .venv/bin/python scripts/demo.py --compare         # then stock Django, same burst
    .venv/bin/python scripts/demo.py --worker-class gthread --threads 50
    .venv/bin/python scripts/demo.py --preload

DATABASE_URL names an account that may create users (default: root on 127.0.0.1).
"""

from __future__ import annotations

# The load generator and the sampler are greenlets: patch before anything imports socket.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO, Any  # noqa: E402
from urllib.parse import quote  # noqa: E402

import dj_database_url  # noqa: E402
import gevent  # noqa: E402
import pymysql  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "gunicorn.conf.py"
DEMO_USER = "wsgi_db_pool_demo"
DEFAULT_URL = "mysql://root@127.0.0.1:3306/test"
LOOPBACK_HOSTS = {"", "127.0.0.1", "localhost", "::1"}
# Must match example_wsgi.py.
ITEMS = 100
STREAM_ROWS = 50
# What the burst asks for, by weight.
MIX = {"read": 40, "write": 25, "stream": 15, "fanout": 5, "nodb": 10, "slow": 5}
FANOUT = 3
SAMPLE_EVERY = 0.1


@dataclass
class Result:
    kind: str
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class Samples:
    counts: list[int] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(self.counts, default=0)


# --- the database side ---------------------------------------------------------------


def admin_connect(db: dict[str, Any]) -> pymysql.connections.Connection[Any]:
    host = db.get("HOST") or "127.0.0.1"
    return pymysql.connect(
        host=host,
        port=int(db.get("PORT") or 3306),
        user=db.get("USER") or "root",
        password=db.get("PASSWORD") or "",
        database=db.get("NAME") or None,
        autocommit=True,
        connect_timeout=5,
        read_timeout=10,
        write_timeout=10,
        ssl_disabled=host in LOOPBACK_HOSTS,
    )


def create_demo_user(admin: pymysql.connections.Connection[Any], db: dict[str, Any]) -> str:
    """(Re)create the app's own account so PROCESSLIST can count its connections alone.

    Returns a DATABASE_URL for it. The account's host is the one the server sees for
    this process, which is also where gunicorn will connect from.
    """
    password = secrets.token_hex(16)
    with admin.cursor() as cursor:
        cursor.execute("SELECT SUBSTRING_INDEX(USER(), '@', -1)")
        (client_host,) = cursor.fetchone()
        account = (DEMO_USER, client_host)
        cursor.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (*account, password))
        cursor.execute("ALTER USER %s@%s IDENTIFIED BY %s", (*account, password))
        name = db["NAME"].replace("`", "``")
        cursor.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO %s@%s", account)
    host = db.get("HOST") or "127.0.0.1"
    netloc = f"[{host}]" if ":" in host else host
    port = db.get("PORT") or 3306
    return f"mysql://{DEMO_USER}:{password}@{netloc}:{port}/{quote(db['NAME'])}"


def drop_demo_user(admin: pymysql.connections.Connection[Any]) -> None:
    with admin.cursor() as cursor:
        cursor.execute("SELECT Host FROM mysql.user WHERE User = %s", (DEMO_USER,))
        for (host,) in cursor.fetchall():
            cursor.execute("DROP USER IF EXISTS %s@%s", (DEMO_USER, host))


def server_connections(admin: pymysql.connections.Connection[Any]) -> int:
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (DEMO_USER,)
        )
        (count,) = cursor.fetchone()
    return int(count)


def headroom(admin: pymysql.connections.Connection[Any]) -> int:
    """Half the connections the server has left, less a reserve of 10 for others."""
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT @@max_connections, (SELECT COUNT(*) FROM information_schema.PROCESSLIST)"
        )
        limit, connected = cursor.fetchone()
    return max(10, (int(limit) - int(connected) - 10) // 2)


def sample_forever(admin: pymysql.connections.Connection[Any], samples: Samples) -> None:
    while True:
        samples.counts.append(server_connections(admin))
        gevent.sleep(SAMPLE_EVERY)


# --- gunicorn ------------------------------------------------------------------------


def _gunicorn_version() -> tuple[int, ...]:
    version = importlib.metadata.version("gunicorn")
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


class Server:
    """gunicorn serving example_wsgi:application on a port the kernel picks."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], label: str) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix=f"demo-{label}-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "gunicorn", "--workers", "1", "-k", args.worker_class]
        if CONFIG.exists():
            # gunicorn would read it from the current folder anyway; say so. Its hooks
            # close the pools when the worker exits; the options below win over it.
            cmd += ["--config", str(CONFIG)]
        if args.worker_class == "gevent":
            cmd += ["--worker-connections", "1000"]
        else:
            cmd += ["--threads", str(args.threads)]
        if args.preload:
            cmd += ["--preload"]
        cmd += ["--bind", "127.0.0.1:0", "--graceful-timeout", "10", "--log-level", "info"]
        if _gunicorn_version() >= (25, 1):
            # Several gunicorns (the demo's, the tests') would share one default path.
            cmd += ["--no-control-socket"]
        cmd += ["example_wsgi:application"]
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.port = 0

    def wait_ready(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with status {self.proc.returncode}")
            if not self.port:
                found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.log())
                self.port = int(found.group(1)) if found else 0
            if self.port and self._answers():
                return
            gevent.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer within {seconds:.0f} s")

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/nodb")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def get_json(self, url: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", url)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stop(self) -> int | None:
        """SIGTERM: gunicorn finishes what is in flight and the worker exits cleanly."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# --- the load ------------------------------------------------------------------------


def plan(total: int, seed: int = 1) -> Iterator[tuple[str, int]]:
    rng = random.Random(seed)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=total)
    for kind in kinds:
        yield kind, rng.randint(1, ITEMS)


def one_request(conn: http.client.HTTPConnection, kind: str, pk: int) -> str:
    """Send one request and check its answer; returns "" when right, else what was wrong."""
    method, url = {
        "read": ("GET", f"/read/{pk}"),
        "write": ("POST", f"/write/{pk}"),
        "stream": ("GET", "/stream"),
        "fanout": ("GET", f"/fanout/{pk}"),
        "nodb": ("GET", "/nodb"),
        "slow": ("GET", "/slow"),
    }[kind]
    conn.request(method, url, body=b"" if method == "POST" else None)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        return f"HTTP {response.status}: {body[:200]!r}"
    if kind in ("read", "write", "fanout") and json.loads(body).get("id") != pk:
        return f"wrong body: {body[:200]!r}"
    if kind == "fanout":
        names = json.loads(body)["names"]
        if len(names) != FANOUT or None in names:
            return f"a lookup went missing: {body[:200]!r}"
    if kind == "stream":
        lines = body.decode().splitlines()
        if len(lines) != STREAM_ROWS + 1 or not lines[-1].startswith("total\t"):
            return f"truncated stream: {len(lines)} lines"
    return ""


def client(port: int, work: Iterator[tuple[str, int]], results: list[Result]) -> None:
    """One keep-alive HTTP client taking requests from the shared plan until it runs out."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for kind, pk in work:
            started = time.perf_counter()
            try:
                problem = one_request(conn, kind, pk)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                conn.close()  # the next request opens a new connection
            results.append(Result(kind, time.perf_counter() - started, not problem, problem))
    finally:
        conn.close()


def burst(port: int, total: int, concurrency: int, deadline: float) -> tuple[list[Result], float]:
    """Run ``total`` requests on ``concurrency`` clients; unfinished ones count as errors."""
    results: list[Result] = []
    work = plan(total)
    started = time.perf_counter()
    clients = [gevent.spawn(client, port, work, results) for _ in range(concurrency)]
    gevent.joinall(clients, timeout=deadline)
    gevent.killall(clients, block=True, timeout=5)
    elapsed = time.perf_counter() - started
    for _ in range(total - len(results)):
        results.append(Result("?", deadline, False, f"unfinished after {deadline:.0f} s"))
    return results, elapsed


def logged_events(log: str) -> str:
    """Count the pool's events in the worker's log, discards by reason."""
    counts: Counter[str] = Counter()
    for line in log.splitlines():
        found = re.search(r"event='(db_pool\.\w+)'", line)
        if found:
            reason = re.search(r"reason='(\w+)'", line)
            counts[found.group(1) + (f" ({reason.group(1)})" if reason else "")] += 1
    return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items()))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- one run -------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    results: list[Result]
    elapsed: float
    samples: Samples
    baseline: int
    after_burst: int
    after_stop: int
    stats: Any
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def errors(self) -> list[Result]:
        return [r for r in self.results if not r.ok]


def run(
    args: argparse.Namespace,
    admin: pymysql.connections.Connection[Any],
    app_url: str,
    *,
    pooled: bool,
) -> Run:
    label = "wsgi_db_pool" if pooled else "stock Django"
    env = dict(os.environ, DATABASE_URL=app_url, DB_POOL_LOG_LEVEL="INFO")
    env.pop("DB_POOL_DISABLED", None)
    env.update(DB_POOL_SIZE=str(args.pool_size), DB_POOL_MAX_OVERFLOW=str(args.max_overflow))
    if not pooled:
        env.update(DB_POOL_DISABLED="1", DB_CONN_MAX_AGE="60")
    baseline = server_connections(admin)
    server = Server(args, env, "pool" if pooled else "stock")
    samples = Samples()
    try:
        print(f"\n{label}: gunicorn log in {server.log_path}")
        server.wait_ready()
        sampler = gevent.spawn(sample_forever, admin, samples)
        try:
            results, elapsed = burst(server.port, args.requests, args.concurrency, args.deadline)
            gevent.sleep(0.3)  # let a last checkin and its close reach the server
        finally:
            sampler.kill()
        if sampler.exception is not None:
            raise RuntimeError(f"counting the server's connections failed: {sampler.exception}")
        after_burst = server_connections(admin)
        samples.counts.append(after_burst)
        stats = server.get_json("/stats") if pooled else None
    except BaseException:
        server.stop()
        print(f"the end of the gunicorn log ({server.log_path}):\n{server.log()[-4000:]}")
        raise
    server.stop()
    # The worker has exited; its sockets are closed by the kernel at the latest.
    after_stop = server_connections(admin)
    for _ in range(20):
        if after_stop == 0:
            break
        gevent.sleep(0.1)
        after_stop = server_connections(admin)
    return Run(
        label, results, elapsed, samples, baseline, after_burst, after_stop, stats, server.log_path
    )


def report(run: Run, cap: int | None) -> None:
    ok = [r for r in run.results if r.ok]
    seconds = [r.seconds for r in ok]
    print(f"\n== {run.label} ==")
    print(f"requests              {len(run.results)}")
    print(f"errors                {len(run.errors)}")
    print(f"requests/s            {len(ok) / run.elapsed:.0f}  ({run.elapsed:.2f} s)")
    print(f"latency p50 / p99     {percentile(seconds, 0.5) * 1000:.1f} ms / ", end="")
    print(f"{percentile(seconds, 0.99) * 1000:.1f} ms")
    for kind in MIX:
        mine = [r.seconds for r in ok if r.kind == kind]
        count = sum(1 for r in run.results if r.kind == kind)
        print(
            f"  {kind:<8} {count:>5} requests   p50 {percentile(mine, 0.5) * 1000:7.1f} ms"
            f"   p99 {percentile(mine, 0.99) * 1000:7.1f} ms"
        )
    cap_text = f" (cap {cap})" if cap is not None else ""
    print(
        f"server connections    peak {run.samples.peak}{cap_text}; before {run.baseline}, "
        f"after the burst {run.after_burst}, after gunicorn stopped {run.after_stop}"
    )
    print(f"                      ({len(run.samples.counts)} samples, one every 100 ms)")
    if run.errors:
        print("first errors:")
        for problem, n in Counter(r.detail for r in run.errors).most_common(5):
            print(f"  {n} x {problem}")
    events = logged_events(run.log)
    if events:
        print(f"events logged         {events}")
    if run.stats is not None:
        print("GET /stats (each value as JSON)")
        for alias, numbers in run.stats.items():
            print(f"  alias {alias!r}")
            for key, value in numbers.items():
                print(f"    {key:<15} {json.dumps(value, separators=(', ', ': '))}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--pool-size", type=int, default=5)
    parser.add_argument("--max-overflow", type=int, default=5)
    parser.add_argument("--worker-class", choices=["gevent", "gthread"], default="gevent")
    parser.add_argument("--threads", type=int, default=50, help="gthread only")
    parser.add_argument("--preload", action="store_true", help="gunicorn --preload")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds per burst")
    parser.add_argument(
        "--compare", action="store_true", help="run the same burst on stock Django after"
    )
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    db = dict(dj_database_url.parse(url))
    try:
        admin = admin_connect(db)
    except pymysql.err.OperationalError as exc:
        print(f"cannot reach MariaDB/MySQL at {db.get('HOST')}:{db.get('PORT')}: {exc}")
        print("start the server, or point DATABASE_URL at one (an account that may create users)")
        return 2

    if args.compare:
        # Stock Django keeps one connection per concurrent client and opens more for the
        # fan-out threads: leave the server room for its other clients.
        room = headroom(admin)
        if args.concurrency > room:
            print(
                f"--compare: concurrency {args.concurrency} -> {room} for both runs, so that "
                f"stock Django stays well under the server's max_connections"
            )
            args.concurrency = room

    cap = args.pool_size + args.max_overflow
    config = " -c gunicorn.conf.py" if CONFIG.exists() else ""
    preload = " --preload" if args.preload else ""
    print(
        f"gunicorn{config} -k {args.worker_class} --workers 1{preload}, "
        f"pool_size={args.pool_size}, max_overflow={args.max_overflow} (cap {cap}); "
        f"{args.requests} requests at concurrency {args.concurrency}; mix {MIX}"
    )
    try:
        app_url = create_demo_user(admin, db)
        pooled = run(args, admin, app_url, pooled=True)
        report(pooled, cap)
        if args.compare:
            report(run(args, admin, app_url, pooled=False), None)
    except RuntimeError as exc:
        print(f"\nFAILED: {exc}")
        return 1
    finally:
        drop_demo_user(admin)
        admin.close()

    problems = check(pooled, cap)
    if problems:
        print("\nFAILED: " + "; ".join(problems))
        print(f"the end of the gunicorn log ({pooled.log_path}):\n{pooled.log[-4000:]}")
        return 1
    print(
        f"\nOK: {len(pooled.results)} requests without an error, peak server connections "
        f"{pooled.samples.peak} <= cap {cap}, every connection given back"
    )
    return 0


def check(run: Run, cap: int) -> list[str]:
    """What went wrong in the pooled run, if anything."""
    problems = []
    if run.errors:
        problems.append(f"{len(run.errors)} requests failed")
    if run.samples.peak > cap:
        problems.append(f"the server saw {run.samples.peak} connections, above the cap {cap}")
    for alias, numbers in (run.stats or {}).items():
        if numbers["in_use"] or numbers["waiting"]:
            problems.append(
                f"after the burst, alias {alias!r} still had {numbers['in_use']} connections "
                f"in use and {numbers['waiting']} requests waiting"
            )
    return problems


if __name__ == "__main__":
    sys.exit(main())
