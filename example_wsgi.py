"""A complete Django app in one file, its connections pooled by wsgi_db_pool.

Serve it with any of:

    gunicorn -k gevent --worker-connections 1000 example_wsgi:application
    gunicorn -k gthread --threads 20 example_wsgi:application
    gunicorn -k gevent --preload example_wsgi:application

Configuration comes from the environment:

    DATABASE_URL          mysql://root@127.0.0.1:3306/test (parsed by dj-database-url;
                          add ?ssl-ca=/path/ca.pem for a server reached over the network)
    DB_POOL_SIZE          10     connections kept open per alias and process
    DB_POOL_MAX_OVERFLOW  10     extra connections opened under load, closed after 30 s idle
    DB_POOL_TIMEOUT       30     seconds a request waits for a connection, then 503
    DB_POOL_MAX_AGE       3600   seconds before a connection is replaced ("none": never)
    DB_POOL_MAX_IDLE      600    seconds a spare connection may sit idle ("none": forever)
    DB_POOL_PRE_PING      60     idle seconds after which a checkout pings first
    DB_POOL_RETRY_AFTER   5      the Retry-After header of a 503, in seconds
    DB_POOL_MAX_WAITING   none   requests that may wait per alias; more get 503 at once
    DB_POOL_RESET_SESSION auto   reset session state on checkin: auto, always, never
    DB_POOL_LOG_LEVEL     INFO   level of the "wsgi_db_pool" logger (DEBUG shows checkouts)
    DB_POOL_DISABLED      unset  "1" serves stock Django instead, for comparison
    DB_CONN_MAX_AGE       60     Django's CONN_MAX_AGE, used only when the pool is disabled

Endpoints: GET /read/<pk>, POST /write/<pk>, GET /nodb, GET /stream,
GET /fanout/<pk>, GET /slow, GET /stats (GET also answers HEAD).
"""

from __future__ import annotations

import math
import os
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import dj_database_url
import pymysql

# Django's MySQL backend imports "MySQLdb"; PyMySQL stands in for it. PyMySQL does its
# I/O through the socket module, which gevent patches; mysqlclient does not yield.
pymysql.install_as_MySQLdb()

import django  # noqa: E402  (after install_as_MySQLdb, before anything imports django.db)
from django.conf import settings  # noqa: E402

LOOPBACK_HOSTS = {"", "127.0.0.1", "localhost", "::1"}


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _env_seconds_or_none(name: str, default: float) -> float | None:
    value = os.environ.get(name, str(default))
    return None if value.lower() == "none" else float(value)


def _env_int_or_none(name: str) -> int | None:
    value = os.environ.get(name, "none")
    return None if value.lower() == "none" else int(value)


def _database() -> dict[str, Any]:
    pooled = os.environ.get("DB_POOL_DISABLED", "") != "1"
    db: dict[str, Any] = dict(
        dj_database_url.parse(
            os.environ.get("DATABASE_URL", "mysql://root@127.0.0.1:3306/test"),
            # The pool decides when a pooled connection closes and ignores CONN_MAX_AGE;
            # the value matters only for the stock-Django comparison.
            conn_max_age=0 if pooled else _env_int("DB_CONN_MAX_AGE", 60),
        )
    )
    options = db.setdefault("OPTIONS", {})
    # PyMySQL waits forever for a server that stops answering unless told otherwise.
    options.setdefault("connect_timeout", 5)
    options.setdefault("read_timeout", 30)
    options.setdefault("write_timeout", 30)
    # PyMySQL 1.2 tries TLS on every connect unless told not to, and builds a new
    # ssl.SSLContext each time: about 25 ms of CPU that stalls every greenlet of the
    # worker, even when the server has TLS turned off.
    if "ssl" in options:
        # "?ssl-ca=/path/ca.pem" in DATABASE_URL: dj-database-url turns it into
        # {"ssl": {"ca": path}}. Build ONE context here and share it: PyMySQL's
        # Connection._create_ssl_ctx returns an SSLContext given as "ssl" unchanged, so
        # no connect pays for a new one. A context given this way makes TLS required.
        options["ssl"] = ssl.create_default_context(cafile=options["ssl"].get("ca"))
    elif db.get("HOST", "") in LOOPBACK_HOSTS or db.get("HOST", "").startswith("/"):
        # Loopback or a unix socket: nothing to protect, so no TLS at all.
        options.setdefault("ssl_disabled", True)
    # Any other server: PyMySQL's default (TLS when offered, unverified, a new context
    # per connect). Give it a CA with ?ssl-ca= to verify the server and share the context.
    return db


settings.configure(
    DEBUG=os.environ.get("DJANGO_DEBUG", "") == "1",
    SECRET_KEY=os.environ.get("SECRET_KEY", "example-wsgi-db-pool-not-a-secret"),
    ALLOWED_HOSTS=os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(","),
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    DATABASES={"default": _database()},
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    USE_TZ=True,
    LOGGING={
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s %(message)s"}
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
        "loggers": {
            # The pool's events arrive here when the app has not configured structlog.
            "wsgi_db_pool": {
                "handlers": ["stderr"],
                "level": os.environ.get("DB_POOL_LOG_LEVEL", "INFO"),
                "propagate": False,
            },
        },
    },
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection, connections, models, transaction  # noqa: E402
from django.http import (  # noqa: E402
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.http import require_POST, require_safe  # noqa: E402

from wsgi_db_pool import PoolingMiddleware, pooled  # noqa: E402

ITEMS = 100
STREAM_ROWS = 50


class Item(models.Model):
    name = models.CharField(max_length=100)
    hits = models.BigIntegerField(default=0)

    objects: ClassVar[models.Manager[Item]] = models.Manager()

    class Meta:
        app_label = "example"
        db_table = "wsgi_db_pool_example_item"


def create_table() -> None:
    """Create and fill the table if missing; safe when several workers race to do it.

    It uses a connection of its own, outside the pool and outside Django's per-thread
    storage, and closes it: under --preload this runs in gunicorn's arbiter, and
    nothing opened there may be inherited by the forked workers.
    """
    wrapper = connections.create_connection("default")
    try:
        with wrapper.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS wsgi_db_pool_example_item ("
                " id BIGINT AUTO_INCREMENT PRIMARY KEY,"
                " name VARCHAR(100) NOT NULL,"
                " hits BIGINT NOT NULL DEFAULT 0"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )
            cursor.executemany(
                "INSERT IGNORE INTO wsgi_db_pool_example_item (id, name) VALUES (%s, %s)",
                [(pk, f"item {pk}") for pk in range(1, ITEMS + 1)],
            )
    finally:
        wrapper.close()


@require_safe
def read(request: HttpRequest, pk: int) -> HttpResponse:
    """A primary-key read: one statement, connection checked out for it."""
    item = get_object_or_404(Item, pk=pk)
    return JsonResponse({"id": item.pk, "name": item.name, "hits": item.hits})


@require_POST
def write(request: HttpRequest, pk: int) -> HttpResponse:
    """A write inside a transaction: the pool must return the connection committed."""
    with transaction.atomic():
        item = get_object_or_404(Item.objects.select_for_update(), pk=pk)
        item.hits += 1
        item.save(update_fields=["hits"])
    return JsonResponse({"id": item.pk, "hits": item.hits})


@require_safe
def nodb(request: HttpRequest) -> HttpResponse:
    """No database use: such a request never waits for, nor holds, a connection."""
    return HttpResponse("ok\n", content_type="text/plain")


@require_safe
def stream(request: HttpRequest) -> HttpResponseBase:
    """A body generated after the view returned, querying as it goes."""

    def rows() -> Iterator[str]:
        # This runs while the server sends the body, after the view has returned: the
        # connection stays checked out until the server closes the response.
        queryset = Item.objects.order_by("pk").values_list("pk", "name", "hits")
        for pk, name, hits in queryset[:STREAM_ROWS].iterator(chunk_size=10):
            yield f"{pk}\t{name}\t{hits}\n"
        yield f"total\t{Item.objects.count()}\n"

    return StreamingHttpResponse(rows(), content_type="text/plain")


FANOUT = 3


def _lookup(pk: int, names: dict[int, str | None]) -> None:
    names[pk] = Item.objects.filter(pk=pk).values_list("name", flat=True).first()


def _pooled_or_closing(func: Callable[..., None]) -> Callable[..., None]:
    """``pooled(func)``, or for stock Django: close the thread's connection afterwards."""
    if isinstance(application, PoolingMiddleware):
        return pooled(func)

    def call(*args: Any) -> None:
        try:
            func(*args)
        finally:
            connection.close()

    return call


@require_safe
def fanout(request: HttpRequest, pk: int) -> HttpResponse:
    """Three lookups at once, each in a thread of its own (a greenlet under gevent).

    The threads are not the request: ``pooled()`` lends them the pool, each checks out
    on its first query and gives back when it returns. The view itself queries nothing
    before joining them, so it holds no connection while it waits.
    """
    names: dict[int, str | None] = {}
    work = _pooled_or_closing(_lookup)
    pks = [(pk + step - 1) % ITEMS + 1 for step in range(FANOUT)]
    threads = [threading.Thread(target=work, args=(each, names)) for each in pks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return JsonResponse({"id": pk, "names": [names.get(each) for each in pks]})


@require_safe
def slow(request: HttpRequest) -> HttpResponse:
    """A 50 ms query: holds its connection long enough to make the others wait."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT SLEEP(0.05)")
        cursor.fetchone()
    return HttpResponse("slept\n", content_type="text/plain")


@require_safe
def stats(request: HttpRequest) -> HttpResponse:
    """The pool's counters for this worker process, per alias."""
    if not isinstance(application, PoolingMiddleware):
        return JsonResponse({"error": "the pool is disabled (DB_POOL_DISABLED=1)"}, status=404)
    return JsonResponse(_finite(application.stats()))


def _finite(value: Any) -> Any:
    """``value`` with infinite floats as "+Inf": JSON has no Infinity, and jq rejects it."""
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


urlpatterns = [
    path("read/<int:pk>", read),
    path("write/<int:pk>", write),
    path("nodb", nodb),
    path("stream", stream),
    path("fanout/<int:pk>", fanout),
    path("slow", slow),
    path("stats", stats),
]

create_table()

application: Any
if os.environ.get("DB_POOL_DISABLED", "") == "1":
    application = get_wsgi_application()
else:
    application = PoolingMiddleware(
        get_wsgi_application(),
        pool_size=_env_int("DB_POOL_SIZE", 10),
        max_overflow=_env_int("DB_POOL_MAX_OVERFLOW", 10),
        timeout=_env_float("DB_POOL_TIMEOUT", 30.0),
        max_age=_env_seconds_or_none("DB_POOL_MAX_AGE", 3600.0),
        max_idle=_env_seconds_or_none("DB_POOL_MAX_IDLE", 600.0),
        pre_ping=_env_float("DB_POOL_PRE_PING", 60.0),
        retry_after=_env_int("DB_POOL_RETRY_AFTER", 5),
        max_waiting=_env_int_or_none("DB_POOL_MAX_WAITING"),
        reset_session=os.environ.get("DB_POOL_RESET_SESSION", "auto"),
    )
