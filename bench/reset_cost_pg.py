"""What each ``reset_session`` mode costs a primary-key read on PostgreSQL, in one process.

    .venv/bin/python -m gevent.monkey bench/reset_cost_pg.py [--rounds 30] [--number 200]

The PostgreSQL twin of bench/reset_cost.py (same interleaving, same report), on a
database of its own (``wsgi_db_pool_bench_pg``) on the local PostgreSQL (127.0.0.1:5432,
user postgres, trust), made and dropped by the script.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import gevent.monkey

if not gevent.monkey.is_module_patched("socket"):
    raise SystemExit("run as: python -m gevent.monkey reset_cost_pg.py (gevent must patch first)")

import django
import psycopg
from django.conf import settings

SERVER = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
DB_NAME = "wsgi_db_pool_bench_pg"
MODES = ("never", "auto", "always")

settings.configure(
    DEBUG=False,
    SECRET_KEY="wsgi-db-pool-bench-not-a-secret",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": DB_NAME,
            "USER": SERVER["user"],
            "HOST": SERVER["host"],
            "PORT": SERVER["port"],
        }
    },
    USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connections, models  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from wsgi_db_pool import PoolingMiddleware  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import per_second  # noqa: E402


class Item(models.Model):
    name = models.CharField(max_length=100)
    objects: ClassVar[models.Manager[Item]] = models.Manager()

    class Meta:
        app_label = "bench_pg"
        db_table = "bench_item"


def pk_read(request: HttpRequest) -> HttpResponse:
    return HttpResponse(Item.objects.get(pk=5).name, content_type="text/plain")


urlpatterns = [path("pk", pk_read)]


def _server(sql: str) -> None:
    with psycopg.connect(**SERVER, dbname="postgres", autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql)


def create_database() -> None:
    _server(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    _server(f'CREATE DATABASE "{DB_NAME}"')
    wrapper = connections.create_connection("default")  # not bound, not pooled
    try:
        with wrapper.schema_editor() as editor:
            editor.create_model(Item)
        with wrapper.cursor() as cursor:
            cursor.execute(
                "INSERT INTO bench_item (id, name) SELECT n, 'item ' || n "
                "FROM generate_series(1, 10) AS n"
            )
    finally:
        wrapper.close()


def request(wsgi: Any, url: str) -> Callable[[], None]:
    base = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": url,
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }

    def call() -> None:
        environ = dict(base, **{"wsgi.input": io.BytesIO()})
        result = wsgi(environ, lambda status, headers, exc_info=None: None)
        try:
            for _chunk in result:
                pass
        finally:
            result.close()

    return call


def main() -> int:
    parser = argparse.ArgumentParser(description="the cost of each reset_session mode, PostgreSQL")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--number", type=int, default=200)
    args = parser.parse_args()
    create_database()
    django_app = get_wsgi_application()
    middlewares = {
        mode: PoolingMiddleware(django_app, pool_size=1, max_overflow=0, reset_session=mode)
        for mode in MODES
    }
    calls = {mode: request(mw, "/pk") for mode, mw in middlewares.items()}
    try:
        for call in calls.values():
            for _ in range(50):
                call()
        rates: dict[str, list[float]] = {mode: [] for mode in MODES}
        for index in range(args.rounds):
            for mode in MODES[index % 3 :] + MODES[: index % 3]:
                rates[mode].append(per_second(calls[mode], args.number))
    finally:
        for mw in middlewares.values():
            mw.close()
        _server(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    print(f"GET /pk, {args.rounds} interleaved rounds of {args.number} requests per mode")
    for mode in MODES:
        best = max(rates[mode]) / max(rates["never"])
        rounds = statistics.median(
            rate / never for rate, never in zip(rates[mode], rates["never"], strict=True)
        )
        print(
            f"  {mode:<7} best {max(rates[mode]):8.1f}/s  median "
            f"{statistics.median(rates[mode]):8.1f}/s  best ratio {best:.4f}  "
            f"median round ratio {rounds:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
