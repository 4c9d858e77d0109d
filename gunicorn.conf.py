"""gunicorn settings for a Django app pooled by wsgi_db_pool, served by gevent workers.

    gunicorn -c gunicorn.conf.py mysite.wsgi:application

gunicorn also reads ``./gunicorn.conf.py`` by itself when started in this folder, and
options on the command line win over this file, so ``-k gthread --threads 8`` or
``--workers 1`` still work. Copy it next to your project and adjust.

Sizing: every worker process holds up to ``pool_size + max_overflow`` connections per
pooled alias, so ``hosts x workers x (pool_size + max_overflow)`` must stay under the
server's ``max_connections``; ``python -m wsgi_db_pool check --workers N --hosts H``
checks it against the real server (docs/operations.md has a worked example).

``--preload`` is safe with wsgi_db_pool: a forked worker forgets the pools' connections
of the arbiter without touching them, and if ``django.db`` was imported before gevent
patched the worker (``--preload`` does exactly that), the first request makes Django's
connection storage greenlet-local again (event ``db_pool.storage_rebound``). Either way,
keep Django out of this file: nothing here imports it at module level.

Metrics (optional, ``pip install 'wsgi_db_pool[prometheus]'``): with
``PROMETHEUS_MULTIPROC_DIR`` set in the environment that starts gunicorn, each worker
copies its pool numbers into prometheus_client's multiprocess files every
``WSGI_DB_POOL_METRICS_INTERVAL`` seconds (default 5); see docs/metrics.md.
"""

from __future__ import annotations

import glob
import os
from typing import Any

# -- workers --------------------------------------------------------------------------------

# gevent: one process serves many requests at once, each in a greenlet; the pool keeps
# them to pool_size + max_overflow connections per alias. gunicorn needs the
# `gunicorn[gevent]` extra for it.
worker_class = "gevent"
# Processes per host. More processes use more cores but multiply the connections:
# count them in the sizing above. gunicorn's own default reads WEB_CONCURRENCY too.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Concurrent requests per gevent worker. Requests beyond the pool's cap wait for a
# connection up to the pool's `timeout`, then get 503 with Retry-After.
worker_connections = 1000
# A worker silent this long is killed and replaced. Keep it above the pool's
# `timeout` plus your slowest request.
timeout = 30
# SIGTERM: in-flight requests get this long to finish and give their connections back.
graceful_timeout = 30
# The control socket lives at one path per user: several gunicorns on one machine
# (a deploy, tests) would fight over it. Remove this line if you use `gunicornc`.
control_socket_disable = True


# -- hooks --------------------------------------------------------------------------------------
# Names not starting with an underscore are read by gunicorn as settings, hence the
# underscores on the helpers.


def _pooling_middlewares(worker: Any) -> list[Any]:
    """The PoolingMiddleware(s) this worker serves: its WSGI app, or one it wraps."""
    from wsgi_db_pool import PoolingMiddleware
    from wsgi_db_pool.middleware import live_middlewares

    app = getattr(worker, "wsgi", None)
    for _ in range(10):
        if isinstance(app, PoolingMiddleware):
            return [app]
        app = getattr(app, "app", None)  # a middleware around ours
    # A plain function or another wrapper: every middleware alive in this process.
    return [middleware for middleware in live_middlewares() if not middleware.closed]


def on_starting(server: Any) -> None:
    """The arbiter, before any worker: empty the multiprocess metrics folder of a past run."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder and os.path.isdir(folder):
        for path in glob.glob(os.path.join(folder, "*.db")):
            os.remove(path)


def post_worker_init(worker: Any) -> None:
    """In each worker, after the app loaded (and gevent patched): start the metrics push."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from wsgi_db_pool.prometheus import MultiprocessPush
    except ImportError:
        worker.log.warning("PROMETHEUS_MULTIPROC_DIR is set but prometheus_client is missing")
        return
    interval = float(os.environ.get("WSGI_DB_POOL_METRICS_INTERVAL", "5"))
    worker._wsgi_db_pool_pushes = [
        MultiprocessPush(middleware, interval=interval).start()
        for middleware in _pooling_middlewares(worker)
    ]


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, as it exits: close the pools politely, then push the final numbers.

    ``close()`` sends COM_QUIT on every idle connection (the server would otherwise
    count aborted clients); connections still in use are closed as their requests
    give them back. It is harmless if the interpreter's exit closes them again.
    """
    if os.getpid() != worker.pid:
        # gunicorn also calls this in the arbiter for a worker that vanished; the
        # arbiter's own pools (--preload) must stay open for the workers it forks.
        return
    closed = 0
    for middleware in _pooling_middlewares(worker):
        middleware.close()
        closed += 1
    for push in getattr(worker, "_wsgi_db_pool_pushes", ()):
        push.stop()
    worker.log.info(
        "wsgi_db_pool: closed %d pooling middleware(s) in worker %s", closed, worker.pid
    )


def child_exit(server: Any, worker: Any) -> None:
    """In the arbiter, once a worker is gone: drop its live gauges from the metrics."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(worker.pid)
