"""The benchmark's Django app, one file; BENCH_CONFIG picks how connections are handled.

    BENCH_CONFIG=ours gunicorn -k gevent --worker-connections 2000 --chdir bench app:application

Configurations (the cap, BENCH_CAP = BENCH_POOL_SIZE + BENCH_MAX_OVERFLOW, is shared):

    stock0      stock Django, CONN_MAX_AGE=0: a connect and a close per request
    stock60     stock Django, CONN_MAX_AGE=60: one connection per greenlet, kept
    dbpooling   django-db-pooling 0.0.4: set_pool_size(pool_size, max_outstanding=cap)
    dbcp        django-db-connection-pool: its MySQL ENGINE, POOL_OPTIONS size/overflow
    geventpool  django-mysql-geventpool: its ENGINE, OPTIONS MAX_CONNS=cap
    ours        PoolingMiddleware(get_wsgi_application(), pool_size, max_overflow)

Every configuration talks to MariaDB through PyMySQL installed as MySQLdb, TLS off,
with connect/read/write timeouts, as the user wsgi_db_pool_bench, so that the
server's PROCESSLIST filtered by that user counts this app's connections only.
Where a peer has a wait timeout it is set to ours (5 s), below the client's.

Endpoints: GET /pk/<id>, GET /nodb, GET /slow, POST /write/<id>, GET /touch, and GET /cpu
(the worker's CPU and garbage-collector seconds, for the driver). BENCH_GC_TUNE=N (an
experiment, for every configuration alike): the collector frozen after startup and its
young generation collected every N allocations.
The table (bench_item) is created by the bench driver, never here: importing this
module opens no connection.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import threading
import time
from collections import Counter
from typing import Any, ClassVar

import pymysql
from _common import CONFIGS, DB_HOST, DB_NAME, DB_PORT, DB_USER, TABLE, order_policy

# Django's MySQL backend (and every peer) imports "MySQLdb"; PyMySQL stands in for it
# and yields to gevent, where mysqlclient would block the whole worker.
pymysql.install_as_MySQLdb()

import django  # noqa: E402
from django.conf import settings  # noqa: E402

CONFIG = os.environ.get("BENCH_CONFIG", "ours")
if CONFIG not in CONFIGS:
    raise SystemExit(f"BENCH_CONFIG must be one of {', '.join(CONFIGS)}, not {CONFIG!r}")

POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "10"))
MAX_OVERFLOW = int(os.environ.get("BENCH_MAX_OVERFLOW", "10"))
CAP = POOL_SIZE + MAX_OVERFLOW
POOL_TIMEOUT = float(os.environ.get("BENCH_POOL_TIMEOUT", "5"))


def _database() -> dict[str, Any]:
    db: dict[str, Any] = {
        "ENGINE": "django.db.backends.mysql",
        "NAME": DB_NAME,
        "USER": DB_USER,
        "PASSWORD": DB_USER,
        "HOST": DB_HOST,
        "PORT": DB_PORT,
        # ssl_disabled: PyMySQL 1.2 builds a TLS context per connect otherwise (~25 ms
        # of CPU that stalls the whole gevent worker).
        "OPTIONS": {
            "ssl_disabled": True,
            "connect_timeout": 5,
            "read_timeout": 30,
            "write_timeout": 30,
        },
        "CONN_MAX_AGE": 0,
    }
    if CONFIG == "stock60":
        db["CONN_MAX_AGE"] = 60
    elif CONFIG == "dbpooling":
        # Its README: "set conn_max_age to a value larger than 0"; with 0 Django would
        # close every pooled connection on request_finished.
        db["CONN_MAX_AGE"] = 60
    elif CONFIG == "dbcp":
        db["ENGINE"] = "dj_db_conn_pool.backends.mysql"
        # Keys upper-case (the peer lower-cases them into QueuePool's arguments).
        # PRE_PING (True) and RECYCLE (900 s) stay at the peer's defaults.
        db["POOL_OPTIONS"] = {
            "POOL_SIZE": POOL_SIZE,
            "MAX_OVERFLOW": MAX_OVERFLOW,
            "TIMEOUT": POOL_TIMEOUT,
        }
    elif CONFIG == "geventpool":
        db["ENGINE"] = "django_mysql_geventpool.backends.mysql"
        # The peer forces CONN_MAX_AGE=0 itself: close() hands the DB-API connection
        # back to its queue. It has no wait timeout (queue.get() blocks forever).
        db["OPTIONS"]["MAX_CONNS"] = CAP
    return db


settings.configure(
    DEBUG=False,
    SECRET_KEY="wsgi-db-pool-bench-not-a-secret",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django_mysql_geventpool"] if CONFIG == "geventpool" else [],
    MIDDLEWARE=[],
    DATABASES={"default": _database()},
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    USE_TZ=True,
    LOGGING={
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"class": "logging.StreamHandler"}},
        # The pool's events when structlog is unconfigured: warnings and up only.
        "loggers": {
            "wsgi_db_pool": {"handlers": ["stderr"], "level": "WARNING", "propagate": False}
        },
    },
)
django.setup()

from django.core.signals import got_request_exception  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection, models, transaction  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


class Item(models.Model):
    name = models.CharField(max_length=100)
    hits = models.BigIntegerField(default=0)

    objects: ClassVar[models.Manager[Item]] = models.Manager()

    class Meta:
        app_label = "bench"
        db_table = TABLE


def pk_read(request: HttpRequest, pk: int) -> HttpResponse:
    """One primary-key SELECT."""
    item = Item.objects.get(pk=pk)
    return HttpResponse(f"{item.pk} {item.name} {item.hits}\n", content_type="text/plain")


def nodb(request: HttpRequest) -> HttpResponse:
    """No database use at all."""
    return HttpResponse("ok\n", content_type="text/plain")


def slow(request: HttpRequest) -> HttpResponse:
    """A 50 ms statement: it holds its connection while others wait."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT SLEEP(0.05)")
        cursor.fetchone()
    return HttpResponse("slept\n", content_type="text/plain")


def write(request: HttpRequest, pk: int) -> HttpResponse:
    """An UPDATE inside transaction.atomic (BEGIN, UPDATE, COMMIT)."""
    with transaction.atomic():
        updated = Item.objects.filter(pk=pk).update(hits=models.F("hits") + 1)
    return HttpResponse(f"{updated}\n", content_type="text/plain")


def touch(request: HttpRequest) -> HttpResponse:
    """Makes sure the connection is open without a round trip (the microbenchmark's)."""
    connection.ensure_connection()
    return HttpResponse("ok\n", content_type="text/plain")


# The worker's CPU time and the cyclic collector's share of it, read by the bench driver
# before and after a run (GET /cpu): a fair order keeps every request's objects alive
# for the mean wait, and the collector walks them (ANALYSIS.md).
_gc_seconds = [0.0, 0.0, 0.0]
_gc_runs = [0, 0, 0]
_gc_started = [0.0]


def _time_collector(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        _gc_seconds[info["generation"]] += time.perf_counter() - _gc_started[0]
        _gc_runs[info["generation"]] += 1


gc.callbacks.append(_time_collector)


def cpu(request: HttpRequest) -> HttpResponse:
    """The worker's CPU seconds so far, and the collector's seconds and runs by generation."""
    body = {"cpu_s": time.process_time(), "gc_s": _gc_seconds, "gc_runs": _gc_runs}
    return HttpResponse(json.dumps(body), content_type="application/json")


def _method(name: str, view: Any) -> Any:
    def only(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        if request.method != name:
            return HttpResponse(status=405)
        response: HttpResponse = view(request, **kwargs)
        return response

    return only


# Why requests failed, by exception type and MySQL error code, written to
# BENCH_ERRORS_FILE: one counter per request instead of a traceback per request (which
# would slow a failing configuration down further). A writer thread (a greenlet under
# gevent) started by the first failure rewrites the file twice a second, because a
# worker that gunicorn has to kill at the end of its graceful timeout runs no atexit.
_errors: Counter[str] = Counter()
_writer: threading.Thread | None = None


def _count_error(sender: Any, request: Any = None, **kwargs: Any) -> None:
    global _writer
    exc = sys.exc_info()[1]
    if exc is None:
        return
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        name += f"({args[0]})"
    _errors[name] += 1
    if _writer is None and os.environ.get("BENCH_ERRORS_FILE"):
        _writer = threading.Thread(target=_write_errors_forever, daemon=True)
        _writer.start()


def _write_errors() -> None:
    target = os.environ.get("BENCH_ERRORS_FILE")
    if target:
        with open(target + ".tmp", "w") as out:
            json.dump(dict(_errors), out)
        os.replace(target + ".tmp", target)


def _write_errors_forever() -> None:
    written = -1
    while True:
        total = sum(_errors.values())
        if total != written:
            _write_errors()
            written = total
        time.sleep(0.5)


got_request_exception.connect(_count_error)
atexit.register(_write_errors)

urlpatterns = [
    path("pk/<int:pk>", _method("GET", pk_read)),
    path("nodb", _method("GET", nodb)),
    path("slow", _method("GET", slow)),
    path("write/<int:pk>", _method("POST", write)),
    path("touch", _method("GET", touch)),
    path("cpu", _method("GET", cpu)),
]

application: Any = get_wsgi_application()


if CONFIG == "dbpooling":
    from django_db_pooling import pooling

    # Its README's wsgi.py: size the pool, then patch ConnectionHandler.__getitem__.
    pooling.set_pool_size(POOL_SIZE, max_outstanding=CAP, timeout=POOL_TIMEOUT)
    pooling.apply_patch()
elif CONFIG == "ours":
    from wsgi_db_pool import PoolingMiddleware

    if "BENCH_HANDOFF" in os.environ:
        # The order experiment only (run.py's "order" phase): which waiter a freed
        # connection goes to (wsgi_db_pool/_order.py), everything else unchanged.
        # A private switch of the pool, never a setting of the library.
        from wsgi_db_pool.pool import Pool

        Pool._order_policy = order_policy(os.environ["BENCH_HANDOFF"])

    application = PoolingMiddleware(
        application,
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        timeout=POOL_TIMEOUT,
        # A bench-only knob: what the session reset costs under load.
        reset_session=os.environ.get("BENCH_RESET_SESSION", "auto"),
    )


if os.environ.get("BENCH_GATE"):
    # Experiment: a first-come-first-served admission gate of BENCH_GATE requests
    # around the application, so that requests past it wait with a shallow stack.
    from collections import deque as _deque

    import gevent.hub as _hub

    class _Gate:
        def __init__(self, app: Any, size: int) -> None:
            self.app = app
            self.free = size
            self.waiters: _deque[Any] = _deque()

        def leave(self) -> None:
            if self.waiters:
                waiter = self.waiters.popleft()
                _hub.get_hub().loop.run_callback(waiter.switch, None)
            else:
                self.free += 1

        def __call__(self, environ: Any, start_response: Any) -> Any:
            if self.free > 0 and not self.waiters:
                self.free -= 1
            else:
                waiter = _hub.Waiter()
                self.waiters.append(waiter)
                waiter.get()
            try:
                result = self.app(environ, start_response)
            except BaseException:
                self.leave()
                raise
            return _GateBody(self, result)

    class _GateBody:
        def __init__(self, gate: _Gate, result: Any) -> None:
            self.gate = gate
            self.result = result

        def __iter__(self) -> Any:
            return iter(self.result)

        def close(self) -> None:
            try:
                close = getattr(self.result, "close", None)
                if close is not None:
                    close()
            finally:
                gate, self.gate = self.gate, None
                if gate is not None:
                    gate.leave()

    application = _Gate(application, int(os.environ["BENCH_GATE"]))


if os.environ.get("BENCH_GC_TUNE"):
    # Experiment: the collector tuned as for a long-running server, the same for every
    # configuration: what the app loaded is frozen out of the collector's way, and the
    # young generation is collected every BENCH_GC_TUNE allocations instead of 700.
    gc.collect()
    gc.freeze()
    gc.set_threshold(int(os.environ["BENCH_GC_TUNE"]), 10, 10)
