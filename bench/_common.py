"""What the app, the driver and the microbenchmarks share: names, the table, the configs."""

from __future__ import annotations

import gc
import io
import itertools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

# Order of the tables and of each round.
CONFIGS = ("stock0", "stock60", "dbpooling", "dbcp", "geventpool", "ours")
LABELS = {
    "stock0": "Django CONN_MAX_AGE=0",
    "stock60": "Django CONN_MAX_AGE=60",
    "dbpooling": "django-db-pooling 0.0.4",
    "dbcp": "django-db-connection-pool",
    "geventpool": "django-mysql-geventpool",
    "ours": "wsgi_db_pool",
}
PEERS = ("dbpooling", "dbcp", "geventpool")
POOLED = ("dbpooling", "dbcp", "geventpool", "ours")

DB_HOST = os.environ.get("BENCH_DB_HOST", "127.0.0.1")
DB_PORT = int(os.environ.get("BENCH_DB_PORT", "3306"))
# The app logs in as its own user: PROCESSLIST filtered by it counts the app's connections.
DB_USER = "wsgi_db_pool_bench"
DB_NAME = "wsgi_db_pool_bench"
TABLE = "bench_item"
ITEMS = 1000

if DB_HOST not in ("127.0.0.1", "localhost", "::1"):
    raise SystemExit(f"the bench talks to a loopback MariaDB only, not {DB_HOST!r}")


def connect_app_user(port: int | None = None, **kw: object):  # type: ignore[no-untyped-def]
    """A PyMySQL connection as the bench user, outside Django (``port``: not BENCH_DB_PORT)."""
    import pymysql

    options: dict[str, object] = {
        "host": DB_HOST,
        "port": port or DB_PORT,
        "user": DB_USER,
        "password": DB_USER,
        "database": DB_NAME,
        "ssl_disabled": True,
        "autocommit": True,
        "connect_timeout": 5,
    }
    options.update(kw)
    return pymysql.connect(**options)


def connect_root(port: int | None = None):  # type: ignore[no-untyped-def]
    """A root connection (empty password) for the server's view of things."""
    import pymysql

    return pymysql.connect(
        host=DB_HOST,
        port=port or DB_PORT,
        user="root",
        password="",
        ssl_disabled=True,
        autocommit=True,
        connect_timeout=5,
        read_timeout=30,
    )


def create_table(port: int | None = None) -> None:
    """Create and fill bench_item if missing (the driver does it, never the server)."""
    conn = connect_app_user(port)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                " id BIGINT AUTO_INCREMENT PRIMARY KEY,"
                " name VARCHAR(100) NOT NULL,"
                " hits BIGINT NOT NULL DEFAULT 0"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )
            cursor.executemany(
                f"INSERT IGNORE INTO {TABLE} (id, name) VALUES (%s, %s)",
                [(pk, f"item {pk}") for pk in range(1, ITEMS + 1)],
            )
    finally:
        conn.close()


def per_second(call: Callable[[], None], number: int) -> float:
    """Requests per second over ``number`` calls, the cyclic GC off (as timeit does)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in itertools.repeat(None, number):
            call()
        return number / (time.perf_counter() - start)
    finally:
        gc.enable()


def order_policy(handoff: str) -> Any:
    """BENCH_HANDOFF's order of service: fifo, lifo, bounded:<ms>, adaptive:<factor>, barge:<ms>."""
    from wsgi_db_pool import _order

    name, _, arg = handoff.partition(":")
    if name == "fifo":
        return _order.Fifo
    if name == "lifo":
        return _order.Lifo
    if name == "bounded":
        return lambda: _order.BoundedLifo(float(arg or 100) / 1000)
    if name == "adaptive":
        return lambda: _order.AdaptiveLifo(float(arg or 2))
    if name == "barge":
        return lambda: _order.BoundedBarging(float(arg or 100) / 1000)
    if name == "bargex":  # the bound at <factor> times the mean wait, at least 20 ms
        return lambda: _order.BoundedBarging(0.02, float(arg or 2))
    raise ValueError(
        f"BENCH_HANDOFF={handoff!r}: fifo, lifo, bounded:<ms>, adaptive:<factor>, barge:<ms>"
    )


def environ_for(path: str) -> dict[str, Any]:
    """A GET request's WSGI environ, as a server would build it (no body)."""
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


class _Statuses(list[str]):
    """A ``start_response`` that keeps the statuses it was given."""

    def __call__(self, status: str, headers: Any, exc_info: Any = None) -> None:
        self.append(status)


def serve(application: Any, path: str) -> int:
    """One GET through a WSGI callable as a server does it (call, iterate, close): its status."""
    statuses = _Statuses()
    result = application(environ_for(path), statuses)
    try:
        for _chunk in result:
            pass
    finally:
        result.close()
    return int(statuses[0][:3]) if statuses else 0
