"""The router site as gunicorn loads it: pooled (pools 5 + 5), or stock with ROUTER_STOCK=1."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.router_settings")

from django.core.wsgi import get_wsgi_application

from wsgi_db_pool import PoolingMiddleware

django_app = get_wsgi_application()

if os.environ.get("ROUTER_STOCK") == "1":
    application = django_app
else:
    application = PoolingMiddleware(
        django_app, aliases=["default", "other", "third"], pool_size=5, max_overflow=5
    )
