"""One TLS context per process for PyMySQL's opportunistic TLS, instead of one per connect.

PyMySQL 1.2 tries TLS on every connect that names no TLS option, and builds a fresh
``ssl.SSLContext`` for it each time: the system's CA bundle loaded for a context that
then verifies nothing (``CERT_NONE``, no host name check). That costs 24-35 ms of CPU a
connect here, during which a gevent worker runs no other greenlet; a pool that
reconnects after a restart does 20 of them back to back. The context depends on nothing
of the connection, so the first one is kept and handed to every later connect alike.

Only that case is shared: a connect given its own TLS options (``ssl``, ``ssl_ca``...)
builds its own context as before. Left alone where PyMySQL's method is not what this
was written against (then every connect builds its own, as without us).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["share_opportunistic_context"]

_shared: Any = None


def share_opportunistic_context() -> bool:
    """Make PyMySQL reuse one context for connects without TLS options; idempotent.

    True when it is in place (PyMySQL imported and its method as expected).
    """
    module = sys.modules.get("pymysql.connections")
    if module is None:
        return False
    connection = module.Connection
    create = connection.__dict__.get("_create_ssl_ctx")
    if create is None:
        return False
    if getattr(create, "_wsgi_db_pool_shared", False):
        return True

    def create_ssl_ctx(self: Any, sslp: Any) -> Any:
        global _shared
        # {}: PyMySQL's own argument for "try TLS, require and verify nothing".
        if type(sslp) is dict and not sslp:
            if _shared is None:
                _shared = create(self, sslp)
            return _shared
        return create(self, sslp)

    create_ssl_ctx._wsgi_db_pool_shared = True  # type: ignore[attr-defined]
    connection._create_ssl_ctx = create_ssl_ctx
    return True
