"""PyMySQL's opportunistic TLS context, built once per process once a pool connects.

PyMySQL 1.2 builds a fresh ``ssl.SSLContext`` (the system's CA bundle loaded) on every
connect that names no TLS option: 24-35 ms of CPU during which a gevent worker runs
nothing else. After a restart a pool reconnects its whole cap at once, and the first
request to succeed waited behind all of those builds (measured: 0.34 s).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import pymysql

from tests.conftest import Pooled, Server
from tests.settings import DB_NAME, USER


def _connect_without_tls_options() -> pymysql.connections.Connection:
    # No ssl_disabled, no ssl_*: PyMySQL tries TLS and requires nothing, its default.
    return pymysql.connect(host="127.0.0.1", user=USER, password=USER, database=DB_NAME)


def _one(conn: pymysql.connections.Connection, sql: str) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def test_connects_without_tls_options_share_one_context_once_a_pool_connected(
    server: Server, make_pooled: Callable[..., Pooled]
) -> None:
    """After a pooled MySQL alias connects, PyMySQL connects that name no TLS option reuse
    one context, still one that requires and verifies nothing, and still work."""
    pooled = make_pooled(pool_size=1, max_overflow=0)
    assert pooled.web.get("/read/").status_int == 200
    first, second = _connect_without_tls_options(), _connect_without_tls_options()
    try:
        assert first.ctx is second.ctx
        assert first.ctx.verify_mode == ssl.CERT_NONE
        assert first.ctx.check_hostname is False
        assert not first._ssl_required
        assert _one(first, "SELECT 1") == 1
        assert _one(second, "SELECT 2") == 2
    finally:
        first.close()
        second.close()


def test_a_connect_with_its_own_tls_options_builds_its_own_context(
    server: Server, make_pooled: Callable[..., Pooled]
) -> None:
    """Only the no-options case is shared: TLS options of the connect's own get a context
    of their own, every time, as PyMySQL builds it."""
    pooled = make_pooled(pool_size=1, max_overflow=0)
    assert pooled.web.get("/read/").status_int == 200
    conn = _connect_without_tls_options()
    try:
        create = type(conn)._create_ssl_ctx
        own = create(conn, {"verify_mode": "required"})
        again = create(conn, {"verify_mode": "required"})
        assert own is not again
        assert own is not conn.ctx
        assert own.verify_mode == ssl.CERT_REQUIRED
    finally:
        conn.close()
