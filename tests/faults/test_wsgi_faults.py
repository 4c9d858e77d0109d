"""WSGI-side faults: a client gone mid-stream, an inner close() raising, a response never closed."""

from __future__ import annotations

import gc
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.validate import validator

import gevent
import pytest
import structlog
from django.core.signals import request_finished
from django.db import connections
from gevent.pywsgi import WSGIServer

from tests.conftest import Pooled, Server, events, make_environ, request
from tests.faults.conftest import wait_for, wait_for_transactions
from wsgi_db_pool import PoolingMiddleware

pytestmark = pytest.mark.fault


@pytest.fixture
def http(pooled: Pooled) -> Iterator[WSGIServer]:
    """gevent's own WSGI server on a free port, serving the pooled app."""
    server = WSGIServer(("127.0.0.1", 0), pooled.app, log=None, error_log=None)
    server.start()
    yield server
    server.stop(timeout=1)


@pytest.mark.parametrize("write", [False, True], ids=["read-only", "in-a-transaction"])
def test_client_disconnects_mid_stream(
    pooled: Pooled, server: Server, http: WSGIServer, write: bool
) -> None:
    """A client gone mid-stream: the connection comes back, its transaction rolled back."""
    query = "chunks=500&delay=0.01" + ("&write=gone" if write else "")
    client = socket.create_connection(("127.0.0.1", http.server_port))
    client.sendall(f"GET /slow-stream/?{query} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received or not received.split(b"\r\n\r\n", 1)[1].strip():
        received += client.recv(4096)
    assert received.startswith(b"HTTP/1.1 200")
    wait_for(lambda: pooled.stats()["in_use"] == 1, what="the stream's checkout")
    [conn_id] = server.connection_ids()
    if write:
        wait_for_transactions(server, conn_id, 1)
    # Gone at once, as a browser tab closed: RST, not a polite FIN.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()

    wait_for(lambda: pooled.stats()["in_use"] == 0, timeout=3.0, what="the connection back")
    stats = pooled.stats()
    assert (stats["open"], stats["idle"], stats["recycles"], stats["discards"]) == (1, 1, 1, {})
    wait_for_transactions(server, conn_id, 0)
    assert server.committed_names() == []
    assert pooled.json("/read/")["conn_id"] == conn_id
    assert server.connection_ids() == {conn_id}


class _RaisingClose:
    """A response body whose close() raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"body"

    def close(self) -> None:
        self.closed = True
        raise self.error


@pytest.mark.parametrize(
    "error",
    [RuntimeError("close failed"), gevent.GreenletExit()],
    ids=["exception", "greenletexit"],
)
def test_inner_close_raising_still_gives_back(
    make_pooled: Callable[..., Pooled], server: Server, error: BaseException
) -> None:
    """An iterable whose close() raises: the connection still comes back, the error propagates."""
    bodies: list[_RaisingClose] = []

    def app(environ: dict[str, Any], start_response: Any) -> _RaisingClose:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
        start_response("200 OK", [("Content-Type", "text/plain")])
        bodies.append(_RaisingClose(error))
        return bodies[-1]

    mw = PoolingMiddleware(validator(app), aliases=["default"], pool_size=1, max_overflow=0)
    outer = validator(mw)
    try:
        for _ in range(2):
            with pytest.raises(type(error)):
                request(outer, "/")
            assert bodies[-1].closed
            stats = mw.stats()["default"]
            assert (stats["in_use"], stats["idle"], stats["open"]) == (0, 1, 1)
        assert stats["recycles"] == 2
        assert stats["connects"] == 1
        assert server.count() == 1
    finally:
        mw.close()


def test_django_close_raising_still_gives_back(pooled: Pooled, server: Server) -> None:
    """Django's close() raising (a request_finished receiver): given back, error propagated."""

    def receiver(**kwargs: Any) -> None:
        raise RuntimeError("request_finished receiver failed")

    conn_id = pooled.json("/read/")["conn_id"]
    request_finished.connect(receiver)
    try:
        with pytest.raises(RuntimeError, match="receiver failed"):
            pooled.request("/read/")
    finally:
        request_finished.disconnect(receiver)
    stats = pooled.stats()
    assert (stats["in_use"], stats["idle"], stats["recycles"]) == (0, 1, 2)
    assert pooled.json("/read/")["conn_id"] == conn_id


def test_leaked_response_mid_transaction_frees_the_slot_for_a_waiter(
    django_app: Any, server: Server, logs: list[dict[str, Any]]
) -> None:
    """A response never closed: collected, its slot goes to the waiter, its transaction is lost."""
    # No validators: they would rightly complain about the iterable nobody closes.
    mw = PoolingMiddleware(
        django_app,
        aliases=["default"],
        pool_size=1,
        max_overflow=0,
        timeout=5.0,
        logger=structlog.get_logger(),
    )
    try:

        def broken_server() -> tuple[Any, int]:
            # START TRANSACTION, not atomic(): collecting an atomic() generator would run
            # Django's rollback in whichever greenlet the collector runs (docs/RELIABILITY.md).
            environ = make_environ("/slow-stream/", "write=leaked&tx=raw&chunks=3")
            result = mw(environ, lambda status, headers, exc_info=None: None)
            return result, int(next(iter(result)))

        result, leaked = gevent.spawn(broken_server).get()
        wait_for_transactions(server, leaked, 1)
        waiter = gevent.spawn(request, mw, "/read/")
        wait_for(lambda: mw.stats()["default"]["waiting"] == 1, what="a waiter")
        del result  # dropped by the server, never closed
        gc.collect()
        exchange = waiter.get(timeout=1.0)  # at once, not after its 5 s timeout
        assert exchange.status_code == 200
        assert exchange.json()["conn_id"] != leaked

        [leak] = events(logs, "db_pool.leak")
        assert "/slow-stream/" in str(leak["where"])
        stats = mw.stats()["default"]
        assert (stats["in_use"], stats["open"], stats["waiting"]) == (0, 1, 0)
        assert (stats["discards"], stats["leaked_pending"], stats["timeouts"]) == (
            {"leak": 1},
            0,
            0,
        )
        # The leaked socket was dropped: the server rolled its transaction back.
        assert server.wait_count(1) == 1
        assert leaked not in server.connection_ids()
        assert server.committed_names() == []
    finally:
        mw.close()
