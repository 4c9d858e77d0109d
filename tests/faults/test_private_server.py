"""Faults of the whole server, on a private MariaDB: it refuses connections (1040), it restarts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gevent
import pymysql
import pytest

from tests.conftest import OTHER_USER, Pooled, request
from tests.faults.conftest import PrivateServer, wait_for
from wsgi_db_pool import PoolError
from wsgi_db_pool.pool import BACKOFF_MAX

pytestmark = pytest.mark.fault


@pytest.fixture
def full(private: PrivateServer) -> Iterator[Callable[[], None]]:
    """Fill the private server to max_connections (10, the least MariaDB takes); call to free."""
    fillers: list[pymysql.connections.Connection] = []
    private.rows("SET GLOBAL max_connections = 10")
    for _ in range(12):
        try:
            fillers.append(
                pymysql.connect(
                    **{**private.mariadb.root, "user": OTHER_USER, "password": OTHER_USER},
                    ssl_disabled=True,
                )
            )
        except pymysql.OperationalError as exc:
            refused = exc
            break
    else:
        pytest.fail("max_connections = 10 was not reached")
    assert refused.args[0] == 1040, refused

    def free() -> None:
        while fillers:
            fillers.pop().close()

    yield free
    free()


def test_server_refusing_connections(
    make_pooled: Callable[..., Pooled],
    private: PrivateServer,
    full: Callable[[], None],
    request_exceptions: list[BaseException],
) -> None:
    """A full server (1040): requests wait for the open connection, none fails; no slot lost."""
    private.rows("SET GLOBAL max_connections = 100")
    pooled = make_pooled(aliases=["private"], pool_size=2, max_overflow=0, retry_after=4)
    warm = pooled.json("/read/", alias="private")["conn_id"]
    private.rows("SET GLOBAL max_connections = 10")  # full again, our one connection included

    # Two at once: one gets the open connection, the other needs a new one, is refused,
    # and waits for the first one's connection instead of failing.
    pair = [
        gevent.spawn(request, pooled.app, "/hold/", "alias=private&seconds=0.1") for _ in range(2)
    ]
    gevent.joinall(pair, raise_error=True)
    assert [g.value.status_code for g in pair] == [200, 200]
    assert {g.value.json()["conn_id"] for g in pair} == {warm}
    assert request_exceptions == []
    # While refused, the open connection keeps serving one request after another.
    assert {pooled.json("/read/", alias="private")["conn_id"] for _ in range(5)} == {warm}
    stats = pooled.stats("private")
    assert stats["open"] - stats["connecting"] == 1
    assert (stats["in_use"], stats["idle"], stats["waiting"]) == (0, 1, 0)
    assert stats["connect_errors"] >= 1
    assert stats["backed_off"]
    assert private.global_status("Connection_errors_max_connections") >= 1

    full()
    # The prober, not a request, finds the server taking connections again, and its
    # connection is kept for the next request.
    wait_for(
        lambda: not pooled.stats("private")["backed_off"],
        timeout=BACKOFF_MAX + 1.0,
        what="the prober's connect",
    )
    assert pooled.stats("private")["idle"] == 2
    # Both slots are usable: no slot was lost to the refusal.
    pair = [
        gevent.spawn(request, pooled.app, "/hold/", "alias=private&seconds=0.1") for _ in range(2)
    ]
    gevent.joinall(pair, raise_error=True)
    assert [g.value.status_code for g in pair] == [200, 200]
    assert len({g.value.json()["conn_id"] for g in pair}) == 2
    assert private.wait_count(2) == 2 == pooled.stats("private")["open"]


@pytest.mark.parametrize("hard", [False, True], ids=["shutdown", "crash"])
def test_server_restarted_while_serving(
    make_pooled: Callable[..., Pooled],
    private: PrivateServer,
    request_exceptions: list[BaseException],
    hard: bool,
) -> None:
    """MariaDB restarted under load: requests fail fast while it is down, then all succeed."""
    cap = 6
    pooled = make_pooled(aliases=["private"], pool_size=4, max_overflow=2, timeout=3.0)
    done: list[tuple[float, float, int]] = []  # (started, finished, status)
    running = True

    def client() -> None:
        while running:
            started = time.monotonic()
            status = request(pooled.app, "/hold/", "alias=private&seconds=0.005").status_code
            done.append((started, time.monotonic(), status))
            gevent.sleep(0.002)  # a client's own round trip; a 503 costs no I/O at all

    clients = [gevent.spawn(client) for _ in range(20)]
    try:
        wait_for(lambda: len(done) >= 100, what="100 requests before the restart")
        before_ids = private.connection_ids()
        assert 1 <= len(before_ids) <= cap
        down_at = time.monotonic()
        private.restart(hard=hard)
        up_at = time.monotonic()

        def recovered_at() -> float | None:
            ok = [
                finished for started, finished, status in done if started > up_at and status == 200
            ]
            return min(ok) if ok else None

        recovered = wait_for(
            recovered_at, timeout=BACKOFF_MAX + 2.0, what="a success after restart"
        )
        wait_for(
            lambda: sum(started > recovered + BACKOFF_MAX for started, _, _ in done) >= 200,
            timeout=10.0,
            what="200 requests after recovery",
        )
    finally:
        running = False
        gevent.joinall(clients, timeout=10.0, raise_error=True)
    assert all(c.dead for c in clients), "a client greenlet hangs"

    # A connect that succeeds does not end a backoff another attempt started meanwhile
    # (see test_a_successful_connect_ends_the_backoff): for up to BACKOFF_MAX after the
    # first success the pool may still answer 503, never anything else.
    assert {status for started, _, status in done if started > recovered} <= {200, 503}
    assert {s for started, _, s in done if started > recovered + BACKOFF_MAX} == {200}
    assert {status for _, _, status in done} <= {200, 500, 503}
    # Down or not, no request waited out the pool's timeout.
    assert max(finished - started for started, finished, _ in done) < 3.0
    assert recovered - up_at < BACKOFF_MAX + 1.0
    failures = [exc for exc in request_exceptions if not isinstance(exc, PoolError)]
    # Errors of queries cut by the shutdown, and of connects while it was down.
    assert {exc.args[0] for exc in failures} <= {1053, 1927, 2006, 2013, 2003, 4031}, failures
    statuses = [status for _, _, status in done]
    late_503 = sum(s == 503 for started, _, s in done if started > recovered)
    print(
        f"\nrestart ({'SIGKILL' if hard else 'SIGTERM'}): down {up_at - down_at:.2f} s, "
        f"first success {recovered - up_at:.2f} s after; requests: {len(statuses)}, "
        f"500: {statuses.count(500)}, 503: {statuses.count(503)} ({late_503} after it)"
    )

    stats = pooled.stats("private")
    assert (stats["in_use"], stats["waiting"]) == (0, 0)
    assert stats["open"] == stats["idle"] <= cap
    assert private.wait_count(stats["open"]) == stats["open"]
