"""Requests through the middleware: when a connection is checked out, and that it comes back."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.validate import validator

import gevent
import pytest
from django.core.signals import got_request_exception
from django.db import connections
from django.test import override_settings

from tests.conftest import (
    OTHER_USER,
    USER,
    Exchange,
    PeakSampler,
    Pooled,
    Server,
    events,
    request,
)
from tests.faults.conftest import wait_for
from wsgi_db_pool import PoolClosed


@pytest.fixture
def db_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Change an alias's settings dict in place (the one its wrappers read), undone after."""

    def change(alias: str = "default", **values: Any) -> None:
        for key, value in values.items():
            monkeypatch.setitem(connections.settings[alias], key, value)

    return change


@pytest.fixture
def request_exceptions() -> Iterator[list[BaseException]]:
    """The exceptions Django caught in views (it answers them with a 500)."""
    caught: list[BaseException] = []

    def receiver(sender: Any, request: Any = None, **kwargs: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        assert exc is not None
        caught.append(exc)

    got_request_exception.connect(receiver)
    yield caught
    got_request_exception.disconnect(receiver)


@pytest.mark.smoke
def test_orm_write_then_read(pooled: Pooled, server: Server, logs: list[dict[str, Any]]) -> None:
    """ORM writes are committed and read back on the same, reused server connection."""
    pooled.json("/orm-write/", name="a")
    pooled.json("/orm-write/", name="b")
    assert pooled.json("/orm-read/") == {"names": ["a", "b"]}
    assert server.committed_names() == ["a", "b"]
    stats = pooled.stats()
    assert (stats["connects"], stats["checkouts"], stats["recycles"]) == (1, 3, 3)
    assert (stats["open"], stats["idle"], stats["in_use"]) == (1, 1, 0)
    assert server.count() == 1
    checkouts = events(logs, "db_pool.checkout")
    assert [event["reused"] for event in checkouts] == [False, True, True]
    assert {"waited", "open", "idle", "in_use", "waiting"} <= set(checkouts[0])
    assert len(events(logs, "db_pool.recycle")) == 3
    assert [e["event"] for e in logs if e["event"] == "db_pool.connect"] == ["db_pool.connect"]


@pytest.mark.parametrize(
    ("fail", "status", "committed"),
    [(False, 200, ["x"]), (True, 500, [])],
    ids=["commit", "rollback"],
)
def test_atomic_block(
    pooled: Pooled, server: Server, fail: bool, status: int, committed: list[str]
) -> None:
    """transaction.atomic() commits, or rolls back when the block raises; either way, recycled."""
    pooled.get("/atomic-write/", status=status, name="x", **({"fail": "1"} if fail else {}))
    assert server.committed_names() == committed
    stats = pooled.stats()
    assert (stats["in_use"], stats["recycles"], stats["discards"]) == (0, 1, {})


@pytest.mark.parametrize(
    ("path", "fail", "status", "committed", "in_atomic_block"),
    [
        pytest.param("/write-in-request/", False, 200, ["w"], True, id="atomic-commit"),
        pytest.param("/write-in-request/", True, 500, [], None, id="atomic-rollback"),
        pytest.param("/write-non-atomic/", True, 500, ["w"], None, id="non-atomic-view"),
        pytest.param("/write-non-atomic/", False, 200, ["w"], False, id="non-atomic-commit"),
    ],
)
def test_atomic_requests(
    make_pooled: Callable[..., Pooled],
    server: Server,
    db_settings: Callable[..., None],
    path: str,
    fail: bool,
    status: int,
    committed: list[str],
    in_atomic_block: bool | None,
) -> None:
    """ATOMIC_REQUESTS wraps the view in one transaction on the pooled connection."""
    db_settings(ATOMIC_REQUESTS=True)
    pooled = make_pooled(pool_size=1, max_overflow=0)
    response = pooled.get(path, status=status, name="w", **({"fail": "1"} if fail else {}))
    if in_atomic_block is not None:
        assert response.json == {"in_atomic_block": in_atomic_block}
    assert server.committed_names() == committed
    assert pooled.stats()["in_use"] == 0
    [conn_id] = server.connection_ids()
    assert server.open_transactions(conn_id) == 0
    # Whatever the view did, the next request's transaction is its own.
    pooled.get("/write-in-request/", name="next")
    assert server.committed_names() == [*committed, "next"]


def test_atomic_requests_checks_out_even_without_queries(
    make_pooled: Callable[..., Pooled],
    server: Server,
    db_settings: Callable[..., None],
    logs: list[dict[str, Any]],
) -> None:
    """Under ATOMIC_REQUESTS Django opens a transaction before the view: a checkout, a recycle."""
    db_settings(ATOMIC_REQUESTS=True)
    pooled = make_pooled(pool_size=1, max_overflow=0)
    assert pooled.get("/no-db/").text == "no database here"
    assert len(events(logs, "db_pool.checkout")) == 1
    stats = pooled.stats()
    assert (stats["checkouts"], stats["in_use"], stats["recycles"]) == (1, 0, 1)
    assert server.count() == 1


@pytest.mark.smoke
def test_no_db_view_takes_no_connection(
    make_pooled: Callable[..., Pooled], server: Server, logs: list[dict[str, Any]]
) -> None:
    """A view that never touches the database checks nothing out and opens nothing."""
    pooled = make_pooled()
    for _ in range(3):
        assert pooled.get("/no-db/").text == "no database here"
    pool_events = [e for e in logs if e["event"].startswith("db_pool.")]
    assert pool_events == []
    for alias, stats in pooled.mw.stats().items():
        assert (stats["checkouts"], stats["open"]) == (0, 0), alias
    assert server.count(USER) == 0
    assert server.count(OTHER_USER) == 0


def test_two_aliases_in_one_request(make_pooled: Callable[..., Pooled], server: Server) -> None:
    """A request using both aliases holds one connection of each, as each alias's own user."""
    pooled = make_pooled(aliases=["default", "other"], pool_size=1, max_overflow=0)
    first = pooled.json("/both/")
    second = pooled.json("/both/")
    assert first["other_user"].startswith(f"{OTHER_USER}@")
    assert server.connection_ids(USER) == {first["default"]}
    assert server.connection_ids(OTHER_USER) == {first["other"]}
    assert second == first
    for alias in ("default", "other"):
        stats = pooled.stats(alias)
        assert (stats["connects"], stats["checkouts"], stats["in_use"], stats["idle"]) == (
            1,
            2,
            0,
            1,
        )


def test_unpooled_alias_is_left_to_django(
    make_pooled: Callable[..., Pooled], server: Server
) -> None:
    """An alias outside `aliases` is left to Django: no stats, and Django closes its connection."""
    pooled = make_pooled(aliases=["default"], pool_size=1, max_overflow=0)
    ids = pooled.json("/both/")
    assert set(pooled.mw.stats()) == {"default"}
    assert server.connection_ids(USER) == {ids["default"]}
    # CONN_MAX_AGE=0: Django closes its own connection when the request finishes.
    assert server.wait_count(0, OTHER_USER) == 0


@pytest.mark.smoke
def test_streaming_response_holds_its_connection_until_close(
    pooled: Pooled, server: Server
) -> None:
    """A streaming body that queries keeps its connection until the server calls close()."""
    exchange = pooled.start("/stream/", "chunks=3")
    assert exchange.status_code == 200
    # The view itself ran no query: nothing checked out before the body is read.
    assert pooled.stats()["in_use"] == 0
    conn_id = int(exchange.next_chunk())
    assert pooled.stats()["in_use"] == 1
    assert server.connection_ids() == {conn_id}
    body = exchange.read_rest()
    assert body.split() == [str(conn_id).encode()] * 3
    # Exhausted is not finished: only close() ends the request.
    assert pooled.stats()["in_use"] == 1
    exchange.close()
    stats = pooled.stats()
    assert (stats["in_use"], stats["idle"], stats["recycles"]) == (0, 1, 1)
    assert pooled.json("/read/") == {"conn_id": conn_id}
    assert server.connection_ids() == {conn_id}


def test_response_closed_without_iteration_gives_back(pooled: Pooled, server: Server) -> None:
    """A response closed before its body is read (HEAD, client gone) gives its connection back."""
    exchange = pooled.start("/read/")
    assert pooled.stats()["in_use"] == 1
    exchange.close()
    assert pooled.stats()["in_use"] == 0
    conn_id = pooled.json("/read/")["conn_id"]
    assert server.connection_ids() == {conn_id}
    assert pooled.stats()["connects"] == 1


def test_app_raising_gives_back(pooled: Pooled, server: Server) -> None:
    """When the app raises instead of returning an iterable, the connection is still given back."""
    warm = pooled.json("/read/")["conn_id"]
    with (
        override_settings(DEBUG_PROPAGATE_EXCEPTIONS=True),
        pytest.raises(RuntimeError, match="on purpose"),
    ):
        Exchange(pooled.app, "/raise/")
    stats = pooled.stats()
    assert (stats["in_use"], stats["idle"], stats["checkouts"]) == (0, 1, 2)
    assert pooled.json("/read/")["conn_id"] == warm
    assert server.connection_ids() == {warm}


def test_view_raising_gives_500_and_gives_back(
    pooled: Pooled, server: Server, request_exceptions: list[BaseException]
) -> None:
    """A view's exception becomes Django's 500 and its connection is recycled."""
    warm = pooled.json("/read/")["conn_id"]
    pooled.get("/raise/", status=500)
    assert [type(exc) for exc in request_exceptions] == [RuntimeError]
    stats = pooled.stats()
    assert (stats["in_use"], stats["recycles"], stats["discards"]) == (0, 2, {})
    assert pooled.json("/read/")["conn_id"] == warm


def test_iteration_raising_gives_back_on_close(pooled: Pooled, server: Server) -> None:
    """An exception while the body is iterated propagates; the server's close() gives back."""
    exchange = pooled.start("/stream/", "fail=1")
    conn_id = int(exchange.next_chunk())
    with pytest.raises(RuntimeError, match="after its first chunk"):
        exchange.read_rest()
    assert pooled.stats()["in_use"] == 1
    exchange.close()
    assert pooled.stats()["in_use"] == 0
    assert pooled.json("/read/")["conn_id"] == conn_id


def test_start_response_raising_gives_back(pooled: Pooled, server: Server) -> None:
    """When the server's start_response raises (client gone), the connection is still given back."""
    warm = pooled.json("/read/")["conn_id"]

    class Gone(OSError):
        pass

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        raise Gone("client went away")

    from tests.conftest import make_environ

    with pytest.raises(Gone):
        pooled.app(make_environ("/read/"), start_response)
    stats = pooled.stats()
    assert (stats["in_use"], stats["idle"]) == (0, 1)
    assert pooled.json("/read/")["conn_id"] == warm
    assert server.connection_ids() == {warm}


def test_close_twice_is_harmless(pooled: Pooled, server: Server) -> None:
    """Calling close() twice on the middleware's response gives the connection back once."""
    from tests.conftest import make_environ

    # The middleware's own iterable, not the validator's: its close() is what is tested.
    statuses: list[str] = []
    result = pooled.mw(
        make_environ("/read/"), lambda status, headers, exc_info=None: statuses.append(status)
    )
    body = b"".join(result)
    result.close()
    result.close()
    assert statuses == ["200 OK"]
    assert b"conn_id" in body
    stats = pooled.stats()
    assert (stats["in_use"], stats["idle"], stats["open"], stats["recycles"]) == (0, 1, 1, 1)
    assert server.count() == 1


def test_closed_middleware_answers_503(
    make_pooled: Callable[..., Pooled],
    server: Server,
    logs: list[dict[str, Any]],
    request_exceptions: list[BaseException],
) -> None:
    """After mw.close(), idle connections are closed and a request needing one gets a 503."""
    pooled = make_pooled(pool_size=1, max_overflow=0, retry_after=11)
    pooled.json("/read/")
    pooled.mw.close()
    assert [e["reason"] for e in events(logs, "db_pool.discard")] == ["shutdown"]
    assert server.wait_count(0) == 0
    response = pooled.get("/read/", status=503)
    assert response.headers["Retry-After"] == "11"
    [exc] = request_exceptions
    assert isinstance(exc, PoolClosed)
    assert "default" in str(exc)
    # Requests that need no database are still served.
    assert pooled.get("/no-db/").status_int == 200
    pooled.mw.close()
    assert server.count() == 0
    assert pooled.stats()["open"] == 0


def test_close_with_a_request_in_flight(
    pooled: Pooled, server: Server, logs: list[dict[str, Any]]
) -> None:
    """mw.close() lets a request in flight keep its connection, then closes it on give back."""
    exchange = pooled.start("/stream/")
    conn_id = int(exchange.next_chunk())
    pooled.mw.close()
    assert server.connection_ids() == {conn_id}
    exchange.read_rest()
    exchange.close()
    assert [e["reason"] for e in events(logs, "db_pool.discard")] == ["shutdown"]
    assert pooled.stats()["open"] == 0
    assert server.wait_count(0) == 0


def test_write_slots_keep_reads_going_while_every_write_slot_is_held(
    make_pooled: Callable[..., Pooled], server: Server
) -> None:
    """write_slots: POSTs hold only their own connections, so GETs are served while slow
    writes hold all of those, and the server never counts more than the cap."""
    pooled = make_pooled(
        aliases=["default"], pool_size=2, max_overflow=0, write_slots=1, timeout=5.0
    )
    counter = Server()  # a root connection of the sampler's own greenlet
    with PeakSampler(counter.count) as sampled:
        writes = [
            gevent.spawn(request, pooled.app, "/fault-write/", f"name=slow{i}&sleep=1", "POST")
            for i in range(2)
        ]
        wait_for(
            lambda: pooled.stats("default:writes")["waiting"] == 1,
            what="one write running and one waiting for the write slot",
        )
        started = time.monotonic()
        reads = [pooled.json("/read/")["conn_id"] for _ in range(5)]
        # Not queued behind the 1 s writes: served by the read pool's one connection.
        assert time.monotonic() - started < 0.5
        assert len(set(reads)) == 1
        assert [g.get(timeout=5.0).status_code for g in writes] == [200, 200]
    counter.conn.close()
    assert sampled.peak <= 2
    assert sorted(server.committed_names()) == ["slow0", "slow1"]
    stats = pooled.mw.stats()
    assert (stats["default"]["checkouts"], stats["default:writes"]["checkouts"]) == (5, 2)


def _garbage_of(app: Callable[..., Any], paths: list[str], rounds: int) -> int:
    """Objects the cyclic collector frees after ``rounds`` of requests to each path."""
    for path in paths:  # warm: first-use caches are not garbage
        request(app, path).close()
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for path in paths:
                exchange = request(app, path)
                assert exchange.status_code == 200, path
                exchange.close()
        return gc.collect()
    finally:
        gc.enable()


def test_a_pooled_request_makes_no_cyclic_garbage(
    pooled: Pooled, django_app: Any, server: Server
) -> None:
    """The middleware adds no reference cycle to a request: under load every waiting
    request's objects are walked by the collector, and cycles would add to that work."""
    paths = ["/read/", "/orm-read/", "/no-db/"]
    stock = _garbage_of(validator(django_app), paths, 100)
    ours = _garbage_of(pooled.app, paths, 100)
    assert ours <= stock, (ours, stock)
    assert pooled.stats()["checkouts"] >= 200
