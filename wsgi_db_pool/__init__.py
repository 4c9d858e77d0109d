"""Database connection pooling for Django under gevent, as a WSGI middleware.

from django.core.wsgi import get_wsgi_application
from wsgi_db_pool import PoolingMiddleware
application = PoolingMiddleware(get_wsgi_application(), pool_size=10, max_overflow=10)
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from ._registry import is_available
from .errors import PoolClosed, PoolError, PoolOverloaded, PoolTimeout, PoolUnavailable

if TYPE_CHECKING:
    from ._scope import pooled
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
    "is_available",
    "pooled",
]

# Imported on first use (PEP 562), so that the pool core (wsgi_db_pool.pool, .config,
# .errors) imports without Django: only these two bring Django in.
_LAZY = {"PoolingMiddleware": ".middleware", "pooled": "._scope"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup finds it without this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
