"""Database connection pooling for Django under gevent, as a WSGI middleware.

from django.core.wsgi import get_wsgi_application
from wsgi_db_pool import PoolingMiddleware
application = PoolingMiddleware(get_wsgi_application(), pool_size=10, max_overflow=10)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._scope import pooled
from .errors import PoolClosed, PoolError, PoolOverloaded, PoolTimeout, PoolUnavailable
from .middleware import PoolingMiddleware

try:
    __version__ = version("wsgi_db_pool")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "PoolClosed",
    "PoolError",
    "PoolOverloaded",
    "PoolTimeout",
    "PoolUnavailable",
    "PoolingMiddleware",
    "__version__",
    "pooled",
]
