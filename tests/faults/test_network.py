"""Network faults between pool and MariaDB, through the proxy: stalls, silent drops, no server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from tests.conftest import Pooled, Server, events, request
from tests.faults.conftest import FAST_OPTIONS, wait_for
from tests.faults.proxy import Proxy
from wsgi_db_pool import PoolError, PoolOverloaded, PoolUnavailable
from wsgi_db_pool._backoff import BACKOFF_CEILING
from wsgi_db_pool.pool import BACKOFF_MAX

pytestmark = pytest.mark.fault

# The driver timeouts of the proxied alias: what bounds a request on a stalled network.
CONNECT_TIMEOUT = FAST_OPTIONS["connect_timeout"]
READ_TIMEOUT = FAST_OPTIONS["read_timeout"]


def first_success(pooled: Pooled, alias: str, within: float) -> tuple[float, list[int]]:
    """Request until one succeeds: (seconds taken, statuses before it); fail after ``within``."""
    started = time.monotonic()
    statuses: list[int] = []
    while True:
        status = request(pooled.app, "/read/", f"alias={alias}").status_code
        if status == 200:
            return time.monotonic() - started, statuses
        statuses.append(status)
        assert time.monotonic() - started < within, f"no success within {within} s: {statuses}"
        gevent.sleep(0.02)


def test_network_stall(
    make_pooled: Callable[..., Pooled],
    proxy: Proxy,
    proxied: str,
    server: Server,
    request_exceptions: list[BaseException],
) -> None:
    """A stall fails requests within the driver's timeouts; none hangs; the pool serves again."""
    pooled = make_pooled(aliases=[proxied], pool_size=2, max_overflow=0, timeout=5.0)
    warm = [gevent.spawn(request, pooled.app, "/hold/", f"alias={proxied}") for _ in range(2)]
    gevent.joinall(warm, raise_error=True)
    assert pooled.stats(proxied)["idle"] == 2

    # One request holds a connection between two queries when the network stalls.
    holder = gevent.spawn(request, pooled.app, "/hold/", f"alias={proxied}&seconds=0.3")
    wait_for(lambda: pooled.stats(proxied)["in_use"] == 1, what="the holder's checkout")
    proxy.stall()
    stalled_at = time.monotonic()
    crowd = [gevent.spawn(request, pooled.app, "/read/", f"alias={proxied}") for _ in range(8)]
    everyone = [holder, *crowd]
    # A slot whose statement was cut at read_timeout stays held while the pool tries to
    # end that session on the server (item 4 of issue #15): on a stalled network that
    # try fails at connect_timeout, and a request waiting for the slot waits that long.
    bound = 2 * CONNECT_TIMEOUT + READ_TIMEOUT
    gevent.joinall(everyone, timeout=bound + 2.0, raise_error=True)
    assert all(g.dead for g in everyone), "a request hangs on the stalled network"
    took = time.monotonic() - stalled_at
    statuses = sorted(g.value.status_code for g in everyone)
    # Queries on open connections die of read_timeout (2013: a 500), the rest find no
    # connection (connect_timeout, then the backoff: 503).
    assert set(statuses) == {500, 503}, statuses
    assert took < bound + 1.0
    driver_errors = [exc for exc in request_exceptions if not isinstance(exc, PoolError)]
    assert {exc.args[0] for exc in driver_errors} <= {2013, 2003}, driver_errors
    stats = pooled.stats(proxied)
    # Nothing open but the prober's attempt (the network is still stalled).
    assert (stats["open"] - stats["connecting"], stats["in_use"], stats["waiting"]) == (0, 0, 0)
    assert stats["discards"] == {"broken": 2}

    proxy.resume()
    took, before = first_success(pooled, proxied, within=BACKOFF_MAX + 1.0)
    assert set(before) <= {503}
    statuses = [
        g.get().status_code
        for g in gevent.joinall(
            [gevent.spawn(request, pooled.app, "/read/", f"alias={proxied}") for _ in range(10)],
            raise_error=True,
        )
    ]
    assert statuses == [200] * 10
    stats = pooled.stats(proxied)
    assert (stats["in_use"], stats["waiting"], stats["open"]) == (0, 0, 2)
    # The connections that timed out are gone on the server too, once their bytes flowed.
    assert server.wait_count(2) == 2


@pytest.mark.parametrize(
    ("pre_ping", "first_status"),
    [
        pytest.param(True, 200, id="pinged"),
        pytest.param(60.0, 500, id="inside-pre_ping-window"),
    ],
)
def test_connection_silently_dropped_while_idle(
    make_pooled: Callable[..., Pooled],
    proxy: Proxy,
    proxied: str,
    server: Server,
    logs: list[dict[str, Any]],
    pre_ping: bool | float,
    first_status: int,
) -> None:
    """Lost without a FIN: a ping catches it; inside pre_ping's window one query fails."""
    pooled = make_pooled(aliases=[proxied], pool_size=1, max_overflow=0, pre_ping=pre_ping)
    lost = pooled.json("/read/", alias=proxied)["conn_id"]
    assert proxy.forget_upstream() == 1
    assert server.wait_count(0) == 0

    started = time.monotonic()
    first = request(pooled.app, "/read/", f"alias={proxied}")
    assert first.status_code == first_status
    # Either way the dead connection costs one read_timeout, no more.
    assert time.monotonic() - started < READ_TIMEOUT + 1.0
    fresh = pooled.json("/read/", alias=proxied)["conn_id"]
    assert fresh != lost
    assert [e["reason"] for e in events(logs, "db_pool.discard", proxied)] == ["broken"]
    stats = pooled.stats(proxied)
    assert (stats["open"], stats["in_use"], stats["connects"]) == (1, 0, 2)
    assert server.connection_ids() == {fresh}


@pytest.mark.parametrize(
    ("mode", "codes"),
    [
        pytest.param("drop", {2013}, id="closed-at-once"),
        pytest.param("refuse", {1040}, id="too-many-connections"),
    ],
)
def test_server_down_many_waiters_no_stampede(
    make_pooled: Callable[..., Pooled],
    proxy: Proxy,
    proxied: str,
    server: Server,
    request_exceptions: list[BaseException],
    mode: str,
    codes: set[int],
) -> None:
    """Server down: 100 requests cost at most 2 x `cap` connects, get 503 at once; it resumes."""
    cap = 5
    pooled = make_pooled(aliases=[proxied], pool_size=cap, max_overflow=0, timeout=5.0)
    proxy.new_connections = mode  # type: ignore[assignment]
    started = time.monotonic()
    crowd = [gevent.spawn(request, pooled.app, "/read/", f"alias={proxied}") for _ in range(100)]
    gevent.joinall(crowd, timeout=5.0, raise_error=True)
    took = time.monotonic() - started
    assert [g.value.status_code for g in crowd] == [503] * 100
    assert all(g.value.header("Retry-After") for g in crowd)
    assert took < 1.0, "503s should come at once, not after the pool's timeout"
    # At most two attempts per slot before the first failure was known (a connection
    # lost during its setup is tried once more), then the prober's, paced by the backoff:
    # at most one per half ceiling once its first short steps are over.
    stats = pooled.stats(proxied)
    half_ceiling = BACKOFF_CEILING["lost" if mode == "drop" else "refused"] / 2
    assert 1 <= proxy.accepts <= 2 * cap + took / half_ceiling + 5
    assert stats["rejects"] == {"backoff": 100 - cap}
    assert stats["open"] - stats["connecting"] == 0
    assert (stats["in_use"], stats["waiting"], stats["timeouts"]) == (0, 0, 0)
    # Django's 500s turned into 503s carry the driver's own error.
    assert {exc.args[0] for exc in request_exceptions if not isinstance(exc, PoolUnavailable)} <= (
        codes
    )

    # More seconds of steady traffic: the attempts follow the backoff, not the traffic.
    attempts_before, served = proxy.accepts, 0
    deadline = time.monotonic() + 2.5

    def client() -> None:
        nonlocal served
        while time.monotonic() < deadline:
            assert request(pooled.app, "/read/", f"alias={proxied}").status_code == 503
            served += 1
            gevent.sleep(0.01)

    gevent.joinall([gevent.spawn(client) for _ in range(10)], raise_error=True)
    attempts = proxy.accepts - attempts_before
    assert served > 10 * attempts
    # Only the prober connects, one at a time, paced by the backoff: at most one
    # attempt per half ceiling (the ceiling grows a little with the outage's age).
    limit = 2.5 / half_ceiling + 5
    assert 1 <= attempts <= limit, attempts

    proxy.new_connections = "pass"
    took, _ = first_success(pooled, proxied, within=BACKOFF_MAX + 1.0)
    crowd = [gevent.spawn(request, pooled.app, "/read/", f"alias={proxied}") for _ in range(50)]
    gevent.joinall(crowd, raise_error=True)
    assert [g.value.status_code for g in crowd] == [200] * 50
    stats = pooled.stats(proxied)
    assert (stats["in_use"], stats["waiting"]) == (0, 0)
    assert server.wait_count(stats["open"]) == stats["open"] <= cap


def test_max_waiting_sheds_load_while_connects_hang(
    make_pooled: Callable[..., Pooled],
    proxy: Proxy,
    proxied: str,
    server: Server,
    request_exceptions: list[BaseException],
) -> None:
    """While connects hang, requests beyond cap + max_waiting get 503 at once; service resumes."""
    pooled = make_pooled(aliases=[proxied], pool_size=3, max_overflow=0, timeout=5.0, max_waiting=5)
    proxy.new_connections = "hang"  # accepted, never greeted: each connect waits connect_timeout
    finished: list[float] = []
    started = time.monotonic()

    def one() -> int:
        status = request(pooled.app, "/read/", f"alias={proxied}").status_code
        finished.append(time.monotonic() - started)
        return status

    crowd = [gevent.spawn(one) for _ in range(50)]
    gevent.joinall(crowd, timeout=CONNECT_TIMEOUT + 2.0, raise_error=True)
    assert [g.value for g in crowd] == [503] * 50
    assert proxy.accepts == 3
    stats = pooled.stats(proxied)
    assert stats["rejects"]["max_waiting"] == 42
    shed = [exc for exc in request_exceptions if isinstance(exc, PoolOverloaded)]
    assert len(shed) == 42
    # The shed requests did not wait for anything.
    assert sorted(finished)[41] < 0.5
    assert (stats["open"] - stats["connecting"], stats["in_use"], stats["waiting"]) == (0, 0, 0)

    proxy.new_connections = "pass"
    first_success(pooled, proxied, within=BACKOFF_MAX + 1.0)
    assert pooled.json("/read/", alias=proxied)["conn_id"] in server.connection_ids()


def test_caller_interrupted_while_connecting_does_not_back_off(
    make_pooled: Callable[..., Pooled], proxy: Proxy, proxied: str, server: Server
) -> None:
    """A request's own deadline hit while connecting says nothing of the server: next connects."""
    pooled = make_pooled(aliases=[proxied], pool_size=2, max_overflow=0, timeout=5.0)
    proxy.latency = 0.05  # a slow network: the handshake takes a few round trips
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.05):
        request(pooled.app, "/read/", f"alias={proxied}")
    stats = pooled.stats(proxied)
    assert (stats["open"], stats["in_use"]) == (0, 0)
    assert request(pooled.app, "/read/", f"alias={proxied}").status_code == 200
    stats = pooled.stats(proxied)
    assert (stats["connect_errors"], stats["rejects"]) == (0, {})


def test_a_burst_of_failed_connects_backs_off_one_step(
    make_pooled: Callable[..., Pooled], proxy: Proxy, proxied: str, server: Server
) -> None:
    """Connects that fail together count as one failure: the next try is one backoff step later."""
    pooled = make_pooled(aliases=[proxied], pool_size=5, max_overflow=0, timeout=5.0)
    proxy.new_connections = "drop"
    burst = [gevent.spawn(request, pooled.app, "/read/", f"alias={proxied}") for _ in range(5)]
    gevent.joinall(burst, raise_error=True)
    assert [g.value.status_code for g in burst] == [503] * 5
    # At most each lost at the door and tried once more, plus the prober's first steps
    # (5 ms, 10 ms): a burst never multiplies the attempts. Fewer when a request comes to
    # the pool after the others' failures already backed it off (connects fail within a
    # millisecond here, since the TLS context is no longer built per connect).
    assert 2 <= proxy.accepts <= 12
    proxy.new_connections = "pass"
    # The first steps are 0.01, 0.02, 0.04 s; well inside this.
    first_success(pooled, proxied, within=0.25)


def test_a_successful_connect_ends_the_backoff(
    make_pooled: Callable[..., Pooled], proxy: Proxy, proxied: str, server: Server
) -> None:
    """Once a connect succeeds, the server is back: the next request may connect at once."""
    pooled = make_pooled(aliases=[proxied], pool_size=4, max_overflow=0, timeout=5.0)
    # A connect that hangs mid-handshake (stalled network) and will succeed later...
    proxy.stall()
    slow = gevent.spawn(request, pooled.app, "/hold/", f"alias={proxied}&seconds=1")
    wait_for(lambda: proxy.accepts == 1, what="the slow connect accepted")
    # ...while the other attempts fail until the pool backs off; soon: the slow connect
    # gives up after connect_timeout (1 s).
    proxy.new_connections = "drop"
    while not pooled.stats(proxied)["backed_off"]:
        assert request(pooled.app, "/read/", f"alias={proxied}").status_code == 503
        gevent.sleep(0.01)
    proxy.new_connections = "pass"
    proxy.resume()
    # The slow connect, or the pool's own probe (due by now), whichever comes first.
    wait_for(lambda: pooled.stats(proxied)["connects"] >= 1, what="a connect done")
    assert not pooled.stats(proxied)["backed_off"]
    # The slow request holds its connection: this one needs a new one, and may have it.
    assert request(pooled.app, "/read/", f"alias={proxied}").status_code == 200
    assert slow.get(timeout=3.0).status_code == 200
