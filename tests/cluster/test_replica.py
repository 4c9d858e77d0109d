"""A GTID primary/replica pair: the fixture replicates, the replica refuses the app's writes."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlencode

import pytest

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
