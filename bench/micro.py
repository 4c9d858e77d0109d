"""What the middleware costs one request, and what the pool's bookkeeping costs, in one process.

    bench/.venv/bin/python -m gevent.monkey bench/micro.py [--quick] [--out micro.json]

Requests go through the WSGI callable directly (no HTTP, no server), in the main
greenlet, with gevent's patching in force as in a gunicorn gevent worker:

- stock: Django's own handler on a connection that is already open (CONN_MAX_AGE=60,
  the wrapper bound to this greenlet) -- the same request without the middleware;
- pooled: the same handler inside PoolingMiddleware, which checks a pooled
  connection out on first use and gives it back (reset, checkin) on close().

Timings alternate stock and pooled in the same process, block after block, and
take the fastest block of each (timeit's rule: noise only ever adds). The overhead
is measured on /touch (opens the connection if needed, no round trip), so that no
network round trip adds its noise, and on /pk/<id> (one SELECT) for scale; /nodb is
the no-DB request the overhead is compared to. Each is done with structlog
unconfigured, configured with debug events filtered, and with them enabled (rendered
to /dev/null).

Pool bookkeeping alone is ``Pool.checkout()`` + ``Pool.checkin(entry)`` of an idle
connection, against psycopg_pool's ``getconn``/``putconn`` (PostgreSQL at
127.0.0.1:5432, database test) and SQLAlchemy's ``QueuePool`` (``connect()`` and
``close()``, PyMySQL connections), each with one idle connection.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gevent.monkey  # noqa: E402

if not gevent.monkey.is_module_patched("socket"):
    raise SystemExit("run as: python -m gevent.monkey micro.py (gevent must patch first)")

os.environ["BENCH_CONFIG"] = "stock60"  # Django's own handler; we wrap it ourselves
import app  # noqa: E402
import fairness  # noqa: E402
import structlog  # noqa: E402
from _common import connect_app_user, create_table, environ_for  # noqa: E402
from django.db import connections  # noqa: E402

from wsgi_db_pool import PoolingMiddleware, _mysql  # noqa: E402
from wsgi_db_pool.config import PoolConfig  # noqa: E402
from wsgi_db_pool.pool import Pool  # noqa: E402

Timing = dict[str, float]


def _start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    if status[:3] != "200":
        raise RuntimeError(f"unexpected status {status}")


def request(wsgi: Any, path: str) -> Callable[[], None]:
    base = environ_for(path)

    def call() -> None:
        result = wsgi(dict(base), _start_response)
        try:
            for _chunk in result:
                pass
        finally:
            result.close()

    return call


def per_call_us(fn: Callable[[], Any], number: int) -> float:
    """Microseconds per call over ``number`` calls, the cyclic GC off (as timeit does)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in itertools.repeat(None, number):
            fn()
        return (time.perf_counter() - start) / number * 1e6
    finally:
        gc.enable()


def summary(blocks: list[float]) -> Timing:
    return {
        "min_us": round(min(blocks), 3),
        "median_us": round(statistics.median(blocks), 3),
        "blocks": len(blocks),
    }


# -- the stock wrapper, bound to this greenlet or not ------------------------------------


class Stock:
    """Django's own open connection in this greenlet; unbound while the pool serves."""

    def __init__(self) -> None:
        self.wrapper = connections["default"]
        self.wrapper.ensure_connection()
        # Django's own storage (asgiref's Local): a middleware, once made, gives the
        # handler a faster one of its own.
        self.django_storage = connections._connections

    @contextlib.contextmanager
    def django_storage_in_use(self) -> Iterator[None]:
        """Stock Django as it runs without the middleware: its own connection storage."""
        current = connections._connections
        connections._connections = self.django_storage
        connections["default"] = self.wrapper
        try:
            yield
        finally:
            connections._connections = current
            connections["default"] = self.wrapper

    @contextlib.contextmanager
    def unbound(self) -> Iterator[None]:
        del connections["default"]
        try:
            yield
        finally:
            connections["default"] = self.wrapper


# -- logging modes ------------------------------------------------------------------------


def configure_logging(mode: str, sink: Any) -> None:
    structlog.reset_defaults()
    if mode == "unconfigured":
        return
    level = logging.INFO if mode == "filtered" else logging.DEBUG
    structlog.configure(
        processors=[structlog.processors.KeyValueRenderer(key_order=["event"])],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sink),
        cache_logger_on_first_use=True,
    )


@contextlib.contextmanager
def captured_fds() -> Iterator[Callable[[], int]]:
    """Count bytes written to file descriptors 1 and 2 inside the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: os.fstat(sink.fileno()).st_size
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


# -- the middleware against the same request without it ---------------------------------


def measure_requests(
    stock: Stock, repeats: int, numbers: dict[str, int], modes: list[str]
) -> dict[str, Any]:
    paths = {"nodb": "/nodb", "touch": "/touch", "pk": "/pk/5"}
    out: dict[str, Any] = {"modes": {}}
    stock_blocks: dict[str, list[float]] = {view: [] for view in paths}
    # The same stock requests with the middleware's connection storage: against these,
    # the difference is the checkout and giveback alone.
    same_storage_blocks: dict[str, list[float]] = {view: [] for view in paths}
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    for mode in modes:
        configure_logging(mode, devnull)
        middleware = PoolingMiddleware(app.application, pool_size=10, max_overflow=10)
        pooled_blocks: dict[str, list[float]] = {view: [] for view in paths}
        printed = 0
        for _rep in range(repeats):
            for view, path in paths.items():
                number = numbers[view]
                stock_call = request(app.application, path)
                pooled_call = request(middleware, path)
                with stock.unbound():
                    pooled_call()  # warm
                with stock.django_storage_in_use():
                    stock_call()  # warm
                    stock_blocks[view].append(per_call_us(stock_call, number))
                stock_call()
                same_storage_blocks[view].append(per_call_us(stock_call, number))
                with stock.unbound(), captured_fds() as written:
                    pooled_call()
                    pooled_blocks[view].append(per_call_us(pooled_call, number))
                    printed += written()
        stats = middleware.stats()["default"]
        middleware.close()
        result: dict[str, Any] = {
            "pooled": {view: summary(blocks) for view, blocks in pooled_blocks.items()},
            "bytes_printed": printed,
            "checkouts": stats["checkouts"],
            "connects": stats["connects"],
        }
        out["modes"][mode] = result
        print(
            f"  {mode:<13} touch {result['pooled']['touch']['min_us']:7.1f} us  "
            f"pk {result['pooled']['pk']['min_us']:7.1f} us  "
            f"nodb {result['pooled']['nodb']['min_us']:7.1f} us  printed {printed} B",
            flush=True,
        )
    out["stock"] = {view: summary(blocks) for view, blocks in stock_blocks.items()}
    out["stock_same_storage"] = {
        view: summary(blocks) for view, blocks in same_storage_blocks.items()
    }
    for result in out["modes"].values():
        result["overhead_us"] = {
            view: round(result["pooled"][view]["min_us"] - out["stock"][view]["min_us"], 3)
            for view in paths
        }
        result["checkout_giveback_us"] = {
            view: round(
                result["pooled"][view]["min_us"] - out["stock_same_storage"][view]["min_us"], 3
            )
            for view in paths
        }
    structlog.reset_defaults()
    return out


# -- pieces of the overhead, for the profile -------------------------------------------------


def measure_pieces(stock: Stock, repeats: int, number: int) -> dict[str, Timing]:
    """The parts of one pooled request, each timed alone."""
    from wsgi_db_pool import _lease

    configure_logging("filtered", open(os.devnull, "w"))  # noqa: SIM115
    middleware = PoolingMiddleware(app.application, pool_size=10, max_overflow=10)
    with stock.unbound():
        request(middleware, "/touch")()  # one pooled connection, idle now
    pool = middleware.pools["default"]
    connector = pool.connector
    entry = pool.checkout()
    raw = entry.conn.connection
    pool.checkin(entry)

    def bookkeeping() -> None:
        pool.checkin(pool.checkout())

    def quiet() -> None:
        _mysql.is_quiet(raw)

    def reset() -> None:
        connector.reset(entry.conn)

    def lease_empty() -> None:
        lease = _lease.Lease(middleware.pools, "/touch")
        lease.begin()
        lease.finish()

    def lease_full() -> None:
        # What the middleware does around the app for a request that uses the DB:
        # lease, checkout through Django's handler (bind), reset, unbind, checkin.
        lease = _lease.Lease(middleware.pools, "/touch")
        lease.begin()
        connections["default"]
        lease.finish()

    guard = entry.conn._wsgi_db_pool_guard
    # The statement Django 5.2 sends for Item.objects.get(pk=...).
    pk_sql = (
        "SELECT `bench_item`.`id`, `bench_item`.`name`, `bench_item`.`hits` FROM `bench_item` "
        "WHERE `bench_item`.`id` = %s LIMIT 21"
    )

    def noop_execute(sql: Any, params: Any, many: bool, context: Any) -> None:
        return None

    def guard_statement() -> None:
        guard(noop_execute, pk_sql, (5,), False, {})

    def session_regex() -> None:
        _mysql.leaves_session_state(pk_sql)

    pieces = {
        "pool checkout+checkin": bookkeeping,
        "is_quiet (poll of the idle socket)": quiet,
        "connector.reset (autocommit, nothing open)": reset,
        "Lease without checkout": lease_empty,
        "Lease + checkout + release (no WSGI)": lease_full,
        "_Guard per statement (pk SELECT, no-op execute)": guard_statement,
        "of which leaves_session_state() (regex)": session_regex,
    }
    blocks: dict[str, list[float]] = {name: [] for name in pieces}
    # Unbound throughout: connections["default"] misses, as in a fresh request greenlet.
    with stock.unbound():
        for _rep in range(repeats):
            for name, fn in pieces.items():
                fn()
                blocks[name].append(per_call_us(fn, number))
    middleware.close()
    structlog.reset_defaults()
    return {name: summary(b) for name, b in blocks.items()}


# -- pool bookkeeping against other pools ---------------------------------------------------


def measure_pools(stock: Stock, repeats: int, number: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    loops: dict[str, Callable[[], None]] = {}
    closers: list[Callable[[], None]] = []

    configure_logging("filtered", open(os.devnull, "w"))  # noqa: SIM115
    middleware = PoolingMiddleware(app.application, pool_size=10, max_overflow=10)
    with stock.unbound():
        request(middleware, "/touch")()
    ours = middleware.pools["default"]
    loops["wsgi_db_pool Pool"] = lambda: ours.checkin(ours.checkout())
    closers.append(middleware.close)
    # The pool's own bookkeeping: the same defaults, a connector that does nothing (no
    # socket poll, no reset), as issue #14's target reads.
    bare_pool = Pool(
        "noop", fairness._Connector(), PoolConfig(pool_size=10, max_overflow=10), ours._log
    )
    loops["wsgi_db_pool Pool (no-op connector)"] = lambda: bare_pool.checkin(bare_pool.checkout())

    def pymysql_creator() -> Any:
        return connect_app_user(autocommit=False)  # PyMySQL's default, as QueuePool expects

    try:
        from sqlalchemy.pool import QueuePool

        bare = QueuePool(
            pymysql_creator, pool_size=1, max_overflow=0, reset_on_return=None, pre_ping=False
        )
        bare.connect().close()
        loops["SQLAlchemy QueuePool (reset_on_return=None)"] = lambda: bare.connect().close()
        closers.append(bare.dispose)
        default = QueuePool(pymysql_creator, pool_size=1, max_overflow=0)
        default.connect().close()
        loops["SQLAlchemy QueuePool (defaults: rollback on return)"] = lambda: (
            default.connect().close()
        )
        closers.append(default.dispose)
    except Exception as exc:  # measured if it installs and connects, reported if not
        results["SQLAlchemy QueuePool"] = {"error": f"{type(exc).__name__}: {exc}"}

    try:
        from psycopg_pool import ConnectionPool

        pg = ConnectionPool(
            "host=127.0.0.1 port=5432 dbname=test connect_timeout=5",
            min_size=1,
            max_size=1,
            open=True,
        )
        pg.wait(timeout=10)

        def psycopg_loop() -> None:
            pg.putconn(pg.getconn())

        psycopg_loop()
        loops["psycopg_pool ConnectionPool"] = psycopg_loop
        closers.append(pg.close)
    except Exception as exc:
        results["psycopg_pool ConnectionPool"] = {"error": f"{type(exc).__name__}: {exc}"}

    blocks: dict[str, list[float]] = {name: [] for name in loops}
    for _rep in range(repeats):
        for name, fn in loops.items():
            blocks[name].append(per_call_us(fn, number))
    for name, b in blocks.items():
        results[name] = summary(b)
    for close in closers:
        with contextlib.suppress(Exception):
            close()
    structlog.reset_defaults()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description="the middleware's and the pool's own costs")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "micro.json")
    args = parser.parse_args()
    repeats = 5 if args.quick else 15
    numbers = {"nodb": 1000, "touch": 1000, "pk": 300}
    if args.quick:
        numbers = {view: n // 2 for view, n in numbers.items()}
    create_table()
    stock = Stock()
    print("requests, stock against pooled (fastest block of each)", flush=True)
    requests = measure_requests(stock, repeats, numbers, ["unconfigured", "filtered", "enabled"])
    for view, t in requests["stock"].items():
        same = requests["stock_same_storage"][view]["min_us"]
        print(
            f"  stock         {view:<5} {t['min_us']:7.1f} us  "
            f"(with the middleware's storage {same:7.1f} us)",
            flush=True,
        )
    print("pieces", flush=True)
    pieces = measure_pieces(stock, repeats, 20000 if not args.quick else 5000)
    for name, t in pieces.items():
        print(f"  {name:<44} {t['min_us']:7.2f} us", flush=True)
    print("pool bookkeeping", flush=True)
    pools = measure_pools(stock, repeats, 20000 if not args.quick else 5000)
    for name, t in pools.items():
        shown = f"{t['min_us']:7.2f} us" if "min_us" in t else t["error"]
        print(f"  {name:<52} {shown}", flush=True)
    result = {
        "repeats": repeats,
        "numbers": numbers,
        "requests": requests,
        "pieces": pieces,
        "pools": pools,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
