"""A GTID primary/replica pair: the fixture replicates, the replica refuses the app's writes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from django.db import router

import wsgi_db_pool
from tests.cluster.replica import ReplicaPair
from tests.conftest import DB_NAME, Pooled
from tests.faults.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_writes_reach_the_replica_which_refuses_the_apps_own(
    replicated: ReplicaPair, make_pooled: Callable[..., Pooled]
) -> None:
    """A write on `primary` is read on `replica`; a write there is 1290, the connection kept."""
    pooled = make_pooled(aliases=["primary", "replica"], pool_size=1, max_overflow=0)
    assert pooled.request("/fault-write/", "alias=primary&name=r1").status_code == 200
    replicated.wait_caught_up()
    conn = replicated.replica.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT name FROM {DB_NAME}.app_item")
            assert cursor.fetchall() == (("r1",),)
    finally:
        conn.close()
    # read_only: the app's account (no SUPER) is refused, replication goes on.
    refused = pooled.request("/fault-write/", "alias=replica&name=r2")
    assert refused.status_code == 500
    read = urlencode({"alias": "replica", "sql": "SELECT COUNT(*) FROM app_item"})
    assert pooled.request("/run-sql/", read).status_code == 200
    status = replicated.status()
    assert (status["Slave_IO_Running"], status["Slave_SQL_Running"]) == ("Yes", "Yes")
    assert status["Seconds_Behind_Master"] == 0
    stats = pooled.stats("replica")
    # 1290 says nothing against the connection: recycled, not discarded.
    assert (stats["connects"], stats["discards"], stats["open"]) == (1, {}, 1)


def test_replica_down_reads_fail_fast_writes_go_on(
    replicated: ReplicaPair, make_pooled: Callable[..., Pooled]
) -> None:
    """The replica stopped: its alias answers 503 at once, the primary's writes succeed,
    and after its restart it catches up and serves again."""
    pooled = make_pooled(aliases=["primary", "replica"], pool_size=2, max_overflow=0)
    read = urlencode({"alias": "replica", "sql": "SELECT COUNT(*) FROM app_item"})
    assert pooled.request("/run-sql/", read).status_code == 200
    replicated.replica.stop()
    for i in range(5):
        started = time.monotonic()
        assert pooled.request("/run-sql/", read).status_code == 503
        assert time.monotonic() - started < 2.0  # connect_timeout is 2 s; refused is at once
        assert pooled.request("/fault-write/", f"alias=primary&name=w{i}").status_code == 200
    replicated.replica.start()
    replicated.wait_caught_up()
    wait_for(
        lambda: pooled.request("/run-sql/", read).status_code == 200,
        what="reads served by the replica again",
    )
    conn = replicated.replica.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {DB_NAME}.app_item")
            assert cursor.fetchone()[0] == 5
    finally:
        conn.close()
    assert pooled.stats("primary")["discards"] == {}


class FallbackRouter:
    """Reads to `replica` while its pool serves, else to `primary`; writes to `primary`."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return "replica" if wsgi_db_pool.is_available("replica") else "primary"

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "primary"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True


def test_a_router_falls_back_to_the_primary_while_the_replica_is_down(
    replicated: ReplicaPair, make_pooled: Callable[..., Pooled], monkeypatch: pytest.MonkeyPatch
) -> None:
    """is_available() in db_for_read: the replica down, reads are served by the primary
    (after the one read that found it down) and writes go on; back, reads return to it."""
    monkeypatch.setattr(router, "routers", [FallbackRouter()])
    pooled = make_pooled(aliases=["primary", "replica"], pool_size=2, max_overflow=0)

    def read() -> tuple[int, Any]:
        response = pooled.request("/routed-read/")
        body = json.loads(response.body) if response.status_code == 200 else None
        return response.status_code, body

    assert read() == (200, {"alias": "replica", "server_id": 2, "count": 0})
    assert wsgi_db_pool.is_available("replica")
    replicated.replica.stop()
    seen = []
    for i in range(5):
        seen.append(read())
        assert pooled.request("/orm-write/", f"name=w{i}").status_code == 200
    print(f"\nreplica down: {seen}")
    # The pool learns that the server is down from a failed connect: that read fails.
    assert seen[0][0] == 503
    assert seen[1:] == [
        (200, {"alias": "primary", "server_id": 1, "count": i}) for i in range(1, 5)
    ]
    assert not wsgi_db_pool.is_available("replica")
    assert wsgi_db_pool.is_available("primary")
    replicated.replica.start()
    back = time.monotonic()
    # The pool's own probe finds it back; no request has to fail for that.
    wait_for(lambda: wsgi_db_pool.is_available("replica"), 5.0, "the replica's pool serving")
    print(f"replica's pool serving {time.monotonic() - back:.3f} s after the restart")
    replicated.wait_caught_up()
    assert read() == (200, {"alias": "replica", "server_id": 2, "count": 5})
    assert pooled.stats("primary")["discards"] == {}


def test_is_available_without_a_pool_for_the_alias_is_true(
    replicated: ReplicaPair, make_pooled: Callable[..., Pooled]
) -> None:
    """An alias no open PoolingMiddleware pools: True (Django connects as usual)."""
    pooled = make_pooled(aliases=["primary"], pool_size=1, max_overflow=0)
    replicated.replica.stop()
    assert wsgi_db_pool.is_available("replica")
    pooled.mw.close()
    assert wsgi_db_pool.is_available("primary")
