"""proj/celery.py as docs/django.md gives it: the worker builds its PoolingMiddleware in
``worker_init``, which runs in worker processes only, so web processes (which import this
module through proj/__init__.py) keep the one of their wsgi.py."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj", include=["proj.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")

# -- docs/django.md: Celery -------------------------------------------------------------
db = None  # the worker's PoolingMiddleware


@signals.worker_init.connect
def _pool_connections(**kwargs):
    global db
    from django.core.wsgi import get_wsgi_application

    from wsgi_db_pool import PoolingMiddleware

    db = PoolingMiddleware(get_wsgi_application(), pool_size=4, max_overflow=4)


@signals.worker_shutdown.connect
def _close_pools(**kwargs):
    if db is not None:
        db.close()


# -- end of docs/django.md ----------------------------------------------------------------
