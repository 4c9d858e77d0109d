"""The test app as uWSGI loads it, shaped like the ``wsgi.py`` of docs/servers.md.

``/whoami/?seconds=S`` answers the worker's pid and the server-side id of the pooled
connection that served it, after holding it ``S`` seconds; other paths go to the Django
test app. With TEST_WARM_PARENT=1 one pooled request is served while the module is
imported: without ``lazy-apps`` that is the master, before it forks the workers, and its
connection id is written to TEST_WARM_FILE. TEST_UWSGI_SNIPPET=0 leaves out the docs'
uWSGI lines, as a user who skipped them would.
"""

import io
import json
import os
from typing import Any
from urllib.parse import parse_qs

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.uwsgi_settings")

from django.core.wsgi import get_wsgi_application
from django.db import connection

from wsgi_db_pool import PoolingMiddleware

django_app = get_wsgi_application()


def whoami(environ: dict[str, Any], start_response: Any) -> Any:
    """One query on the request's pooled connection; the pid answers for the process."""
    if environ.get("PATH_INFO") != "/whoami/":
        return django_app(environ, start_response)
    seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("seconds", ["0"])[0])
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID(), SLEEP(%s)", [seconds])
        conn_id = cursor.fetchone()[0]
    body = json.dumps({"pid": os.getpid(), "conn_id": conn_id}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


application = PoolingMiddleware(
    whoami,
    aliases=["default"],
    pool_size=int(os.environ.get("TEST_POOL_SIZE", "2")),
    max_overflow=int(os.environ.get("TEST_MAX_OVERFLOW", "2")),
    timeout=20.0,
    reset_session=os.environ.get("TEST_RESET_SESSION", "auto"),
)

if os.environ.get("TEST_WARM_PARENT") == "1":
    # A query while the app is imported, as some projects make (a cache warm-up).
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/whoami/",
        "QUERY_STRING": "",
        "SERVER_NAME": "import",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
    }
    result = application(environ, lambda status, headers, exc_info=None: None)
    try:
        warm = json.loads(b"".join(result))
    finally:
        result.close()  # type: ignore[attr-defined]
    with open(os.environ["TEST_WARM_FILE"], "a") as f:
        f.write(json.dumps(warm) + "\n")

if os.environ.get("TEST_UWSGI_SNIPPET", "1") == "1":
    # -- docs/servers.md: uWSGI ---------------------------------------------------------
    try:
        import uwsgi
    except ImportError:  # not under uWSGI
        pass
    else:
        if uwsgi.worker_id() == 0:
            # Loaded in the master (no lazy-apps), which serves no request and never
            # runs exit hooks: close what the import opened before the workers fork.
            application.close()
        previous = getattr(uwsgi, "atexit", None)

        def _close_pools() -> None:
            application.close()
            if previous is not None:
                previous()

        uwsgi.atexit = _close_pools
    # -- end of docs/servers.md ---------------------------------------------------------
