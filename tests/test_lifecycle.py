"""A pooled connection's life: reuse, its cost, pings, age limits, server kills, timeouts, leaks."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pymysql
import pytest
from django.db import connections
from django.test import override_settings

import wsgi_db_pool
from tests.conftest import (
    OTHER_USER,
    ROOT,
    USER,
    Pooled,
    Server,
    events,
    make_environ,
    request,
)
from tests.faults.conftest import wait_for
from wsgi_db_pool import PoolingMiddleware


@pytest.mark.smoke
def test_connections_are_reused_with_conn_max_age_zero(
    pooled: Pooled, server: Server, logs: list[dict[str, Any]]
) -> None:
    """With Django's CONN_MAX_AGE = 0, requests still share one server connection."""
    assert connections.settings["default"]["CONN_MAX_AGE"] == 0
    ids = [pooled.json("/read/")["conn_id"]]
    ids.extend(pooled.json("/read/")["conn_id"] for _ in range(15))
    assert len(set(ids)) == 1
    assert server.connection_ids() == set(ids)
    assert len(events(logs, "db_pool.connect")) == 1
    stats = pooled.stats()
    assert (stats["connects"], stats["checkouts"], stats["recycles"]) == (1, 16, 16)


def test_warm_pool_costs_one_command_per_query(
    make_pooled: Callable[..., Pooled], server: Server
) -> None:
    """A warm pool adds no round trip: a one-query request costs the server exactly one command
    (with reset_session="never"; the default's reset rides on that command's write, and
    tests/faults/test_isolation.py counts it)."""
    # A session reset would also zero the session counters this test reads.
    pooled = make_pooled(pool_size=1, max_overflow=0, reset_session="never")
    pooled.json("/read/")
    n = 20

    def requests() -> None:
        for _ in range(n):
            pooled.json("/read/")

    counted = pooled.session_counted(requests)
    assert counted["questions"] + counted["com_admin_commands"] == n
    assert pooled.stats()["connects"] == 1


@pytest.mark.parametrize(
    ("pre_ping", "pings"),
    [
        # Five requests, and the checkout of the probe that closes the window.
        pytest.param(True, 6, id="always"),
        pytest.param(0, 6, id="zero-seconds"),
        pytest.param(60.0, 0, id="default-recently-used"),
        pytest.param(False, 0, id="never"),
    ],
)
def test_pre_ping(
    make_pooled: Callable[..., Pooled], server: Server, pre_ping: bool | float, pings: int
) -> None:
    """pre_ping=True pings on every checkout; the default skips a connection used moments ago."""
    kwargs = {} if pre_ping == 60.0 else {"pre_ping": pre_ping}
    # "never": a session reset would zero the session counters this test reads.
    pooled = make_pooled(pool_size=1, max_overflow=0, reset_session="never", **kwargs)
    pooled.json("/read/")
    counted = pooled.session_counted(lambda: [pooled.json("/read/") for _ in range(5)])
    # A ping is one statement, DO 1 (a Galera node out of sync answers COM_PING).
    assert counted["com_admin_commands"] == 0
    assert counted["questions"] == 5 + pings
    assert pooled.stats()["connects"] == 1


def test_the_ping_leaves_a_clean_session_clean(make_pooled: Callable[..., Pooled]) -> None:
    """pre_ping's DO 1 is not the request's statement: plain reads still skip the reset
    (which would zero the session's counters between them)."""
    pooled = make_pooled(pool_size=1, max_overflow=0, pre_ping=True)
    # The second checkout pings; a reset after it would show in the third.
    counts = [pooled.json("/session-counter/") for _ in range(3)]
    assert len({count["conn_id"] for count in counts}) == 1
    assert counts[0]["selects"] < counts[1]["selects"] < counts[2]["selects"]


@pytest.mark.smoke
@pytest.mark.parametrize(
    "pre_ping", [pytest.param(60.0, id="default"), pytest.param(False, id="no-ping")]
)
def test_connection_killed_while_idle(
    make_pooled: Callable[..., Pooled], server: Server, logs: list[dict[str, Any]], pre_ping: float
) -> None:
    """A connection killed on the server while idle is discarded; the next request succeeds."""
    pooled = make_pooled(pool_size=1, max_overflow=0, pre_ping=pre_ping)
    killed = pooled.json("/read/")["conn_id"]
    server.kill(killed)
    assert server.wait_count(0) == 0
    fresh = pooled.json("/read/")["conn_id"]
    assert fresh != killed
    assert server.connection_ids() == {fresh}
    assert [e["reason"] for e in events(logs, "db_pool.discard")] == ["broken"]
    stats = pooled.stats()
    assert (stats["connects"], stats["discards"], stats["in_use"], stats["open"]) == (
        2,
        {"broken": 1},
        0,
        1,
    )


def test_connection_killed_during_request(
    pooled: Pooled, server: Server, logs: list[dict[str, Any]]
) -> None:
    """A connection killed mid-request gives that request a 500 and is discarded, not recycled."""
    first = pooled.json("/read/")["conn_id"]
    exchange = pooled.start("/stream/", "chunks=2")
    assert int(exchange.next_chunk()) == first
    server.kill(first)
    assert server.wait_count(0) == 0
    with pytest.raises(Exception, match=r"2013|Lost connection|gone away"):
        exchange.read_rest()
    exchange.close()
    assert [e["reason"] for e in events(logs, "db_pool.discard")] == ["broken"]
    assert pooled.json("/read/")["conn_id"] != first
    assert pooled.stats()["open"] == 1


def test_max_age(
    make_pooled: Callable[..., Pooled], server: Server, logs: list[dict[str, Any]]
) -> None:
    """A connection older than max_age is closed instead of reused."""
    pooled = make_pooled(pool_size=1, max_overflow=0, max_age=0.2, max_idle=None)
    old = pooled.json("/read/")["conn_id"]
    gevent.sleep(0.3)  # past max_age, on purpose
    new = pooled.json("/read/")["conn_id"]
    assert new != old
    assert [e["reason"] for e in events(logs, "db_pool.discard")] == ["max_age"]
    assert server.wait_count(1) == 1
    assert server.connection_ids() == {new}


def test_max_idle(
    make_pooled: Callable[..., Pooled], server: Server, logs: list[dict[str, Any]]
) -> None:
    """A connection idle longer than max_idle is closed, even if no request comes."""
    pooled = make_pooled(pool_size=1, max_overflow=0, max_idle=0.2, max_age=None)
    old = pooled.json("/read/")["conn_id"]
    assert server.connection_ids() == {old}
    # No request: only the pool's own upkeep can close it.
    assert server.wait_count(0, timeout=3.0) == 0
    assert [e["reason"] for e in events(logs, "db_pool.discard")] == ["max_idle"]
    assert pooled.stats()["open"] == 0
    assert pooled.json("/read/")["conn_id"] != old


@pytest.mark.smoke
def test_timeout_answers_503_with_retry_after(
    make_pooled: Callable[..., Pooled], server: Server, logs: list[dict[str, Any]]
) -> None:
    """With every connection in use, a request waits `timeout`, then gets 503 with Retry-After."""
    pooled = make_pooled(pool_size=1, max_overflow=0, timeout=0.5, retry_after=7)
    holder = pooled.start("/stream/")
    held = int(holder.next_chunk())

    started = time.monotonic()
    # Another request, in a greenlet of its own as a server would serve it.
    response = gevent.spawn(pooled.get, "/read/", status=503).get()
    waited = time.monotonic() - started

    assert 0.4 <= waited <= 3.0
    assert response.headers["Retry-After"] == "7"
    [timeout] = events(logs, "db_pool.timeout")
    assert timeout["waited"] >= 0.4
    stats = pooled.stats()
    assert (stats["timeouts"], stats["open"], stats["in_use"], stats["waiting"]) == (1, 1, 1, 0)
    assert server.connection_ids() == {held}

    holder.read_rest()
    holder.close()
    assert pooled.json("/read/")["conn_id"] == held
    assert pooled.stats()["in_use"] == 0


@pytest.mark.parametrize("propagate", [False, True], ids=["django-500", "propagated"])
def test_unreachable_server_answers_503(
    make_pooled: Callable[..., Pooled], server: Server, propagate: bool
) -> None:
    """A refused connect (2003) answers 503 at once with Retry-After, and loses no slot."""
    pooled = make_pooled(
        aliases=["default", "unreachable"], pool_size=1, max_overflow=0, timeout=2.0, retry_after=3
    )
    started = time.monotonic()
    with override_settings(DEBUG_PROPAGATE_EXCEPTIONS=propagate):
        for _ in range(3):
            exchange = pooled.request("/read/", "alias=unreachable")
            assert exchange.status_code == 503
            assert exchange.header("Retry-After") == "3"
    # Refused at once, not after waiting out the timeout for a slot.
    assert time.monotonic() - started < 2.0
    stats = pooled.stats("unreachable")
    assert (stats["open"], stats["in_use"], stats["waiting"], stats["timeouts"]) == (0, 0, 0, 0)
    assert stats["connect_errors"] >= 1
    assert pooled.json("/read/")["conn_id"] in server.connection_ids()


def test_is_available_turns_false_once_the_pool_backs_off(
    make_pooled: Callable[..., Pooled], server: Server
) -> None:
    """is_available(): False once a refused connect backed the alias's pool off; True for
    a pool that serves and for an alias no pool serves."""
    pooled = make_pooled(aliases=["default", "unreachable"], pool_size=1, max_overflow=0)
    assert pooled.request("/read/", "alias=unreachable").status_code == 503
    assert pooled.stats("unreachable")["backed_off"]
    assert not wsgi_db_pool.is_available("unreachable")
    assert pooled.request("/read/").status_code == 200
    assert wsgi_db_pool.is_available("default")
    assert wsgi_db_pool.is_available("lite")  # not pooled: Django's own


@pytest.fixture
def server_full(server: Server) -> Iterator[None]:
    """The server at max_connections: new connections of ordinary users get error 1040."""
    original = int(server.value("SELECT @@GLOBAL.max_connections"))
    fillers: list[pymysql.connections.Connection] = []

    def connect(user: str) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=ROOT["host"], port=ROOT["port"], user=user, password=user, ssl_disabled=True
        )

    try:
        # The smallest limit MariaDB takes; other clients' connections count too.
        server.rows("SET GLOBAL max_connections = 10")
        for _ in range(12):
            try:
                fillers.append(connect(OTHER_USER))
            except pymysql.OperationalError as exc:
                full = exc
                break
        else:
            full = None
        assert full is not None, "max_connections = 10 was not reached"
        assert full.args[0] == 1040, full
        with pytest.raises(pymysql.OperationalError) as refused:
            connect(USER)
        assert refused.value.args[0] == 1040
        yield
    finally:
        server.rows(f"SET GLOBAL max_connections = {original}")
        for filler in fillers:
            filler.close()


def test_too_many_connections_answers_503(
    make_pooled: Callable[..., Pooled], server: Server, server_full: None
) -> None:
    """A server refusing connections (1040) gives 503 with Retry-After, and loses no slot."""
    pooled = make_pooled(pool_size=1, max_overflow=0, timeout=2.0, retry_after=9)
    for _ in range(2):
        response = pooled.get("/read/", status=503)
        assert response.headers["Retry-After"] == "9"
    stats = pooled.stats()
    assert (stats["open"], stats["in_use"], stats["timeouts"]) == (0, 0, 0)
    assert stats["connect_errors"] >= 1


def test_interrupted_query_is_discarded(
    pooled: Pooled, server: Server, logs: list[dict[str, Any]]
) -> None:
    """A request interrupted mid-query (gevent.Timeout) discards its connection."""
    first = pooled.json("/read/")["conn_id"]
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.2):
        pooled.request("/sleep-query/", "seconds=1")
    # Once the pool has ended its session on the server, off the request's path.
    wait_for(lambda: events(logs, "db_pool.discard"), 5.0, "the discard")
    assert [e["reason"] for e in events(logs, "db_pool.discard")] == ["interrupted"]
    assert [e["outcome"] for e in events(logs, "db_pool.end_session")] == ["killed"]
    stats = pooled.stats()
    assert (stats["open"], stats["in_use"]) == (0, 0)
    assert pooled.json("/read/")["conn_id"] != first


def test_leaked_response_is_reclaimed(
    django_app: Any, server: Server, logs: list[dict[str, Any]]
) -> None:
    """A response never closed is reclaimed when collected, and db_pool.leak names its path."""
    import structlog

    # No validators here: they would rightly complain about the iterable nobody closes.
    mw = PoolingMiddleware(
        django_app,
        aliases=["default"],
        pool_size=1,
        max_overflow=0,
        timeout=2.0,
        logger=structlog.get_logger(),
    )
    try:

        def broken_server() -> tuple[Any, int]:
            result = mw(make_environ("/stream/"), lambda status, headers, exc_info=None: None)
            return result, int(next(iter(result)))

        result, leaked = gevent.spawn(broken_server).get()
        assert server.connection_ids() == {leaked}
        assert mw.stats()["default"]["in_use"] == 1
        del result  # never closed, as by a buggy server
        gc.collect()
        # One connection only: if the leaked one were not reclaimed this would time out.
        fresh = request(mw, "/read/")
        assert fresh.status_code == 200
        assert fresh.json()["conn_id"] != leaked
        [leak] = events(logs, "db_pool.leak")
        assert "/stream/" in str(leak.get("path", leak.get("where")))
        stats = mw.stats()["default"]
        assert (stats["in_use"], stats["open"], stats["discards"]) == (0, 1, {"leak": 1})
        assert server.wait_count(1) == 1
        assert leaked not in server.connection_ids()
    finally:
        mw.close()


def test_a_response_dropped_in_its_own_greenlet_leaves_nothing_bound(
    django_app: Any, server: Server
) -> None:
    """The greenlet that dropped a response goes on: its next request gets a live connection."""
    mw = PoolingMiddleware(django_app, aliases=["default"], pool_size=1, max_overflow=0)
    try:

        def drop_then_serve() -> tuple[bool, int, int]:
            result = mw(make_environ("/stream/"), lambda status, headers, exc_info=None: None)
            leaked = int(next(iter(result)))
            del result  # never closed: reclaimed here, in this greenlet
            gc.collect()
            still_bound = hasattr(connections._connections, "default")
            return still_bound, leaked, request(mw, "/read/").json()["conn_id"]

        still_bound, leaked, fresh = gevent.spawn(drop_then_serve).get()
        assert still_bound is False
        assert fresh != leaked
        assert server.wait_count(1) == 1
    finally:
        mw.close()


def test_a_late_reclaim_leaves_the_running_requests_connection_bound(
    make_pooled: Callable[..., Pooled],
) -> None:
    """A dropped response collected during the greenlet's next request leaves that one alone."""
    from wsgi_db_pool import _lease

    pooled = make_pooled(pool_size=2, max_overflow=0)
    pools = pooled.mw.pools

    def two_requests() -> tuple[Any, Any]:
        connections["default"] = object()  # bound before any request: set aside
        first = _lease.Lease(pools, "/first", False)
        first.begin()
        connections["default"].ensure_connection()
        _lease.current_lease.reset(first.token)  # its response is dropped, never closed
        second = _lease.Lease(pools, "/second", False)
        second.begin()
        mine = connections["default"]
        mine.ensure_connection()
        first.reclaim()  # the dropped response is collected now
        seen = connections["default"]
        second.finish()
        return mine, seen

    mine, seen = gevent.spawn(two_requests).get()
    assert seen is mine
    assert pooled.stats()["in_use"] == 0


def test_request_in_a_greenlet_with_a_bound_wrapper_still_uses_the_pool(
    pooled: Pooled, server: Server
) -> None:
    """A request served where Django already bound a wrapper (as after django.setup()) is pooled."""

    def serve() -> tuple[Any, Any, Any]:
        # As in a server's main thread after django.setup(): bound, never connected.
        before = connections["default"]
        conn_id = request(pooled.app, "/read/").json()["conn_id"]
        after = connections["default"]
        return before, after, conn_id

    before, after, conn_id = gevent.spawn(serve).get()
    assert pooled.stats()["checkouts"] == 1
    assert server.connection_ids() == {conn_id}
    assert after is before
    assert before.connection is None
