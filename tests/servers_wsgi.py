"""The test app as gunicorn loads it: Django's WSGI handler wrapped in the pool.

With TEST_WARM_PARENT=1 the module serves one pooled request while it is imported, so
under ``--preload`` the arbiter holds an idle pooled connection before it forks;
``/parent-conn-id`` answers that connection's server-side id.
"""

import io
import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from django.core.wsgi import get_wsgi_application

from wsgi_db_pool import PoolingMiddleware

pooled = PoolingMiddleware(
    get_wsgi_application(),
    aliases=["default"],
    pool_size=int(os.environ.get("TEST_POOL_SIZE", "2")),
    max_overflow=int(os.environ.get("TEST_MAX_OVERFLOW", "1")),
    timeout=20.0,
)


def _serve_once(path: str) -> bytes:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "preload",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
    }
    result = pooled(environ, lambda status, headers, exc_info=None: None)
    try:
        return b"".join(result)
    finally:
        result.close()  # type: ignore[attr-defined]


PARENT_CONN_ID = None
if os.environ.get("TEST_WARM_PARENT") == "1":
    PARENT_CONN_ID = json.loads(_serve_once("/read/"))["conn_id"]


def application(environ, start_response):  # type: ignore[no-untyped-def]
    if environ.get("PATH_INFO") == "/parent-conn-id":
        body = json.dumps({"conn_id": PARENT_CONN_ID}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    return pooled(environ, start_response)
