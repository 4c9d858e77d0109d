"""A GTID primary/replica pair: the fixture replicates, the replica refuses the app's writes."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

import pytest

from tests.cluster.replica import ReplicaPair
from tests.conftest import DB_NAME, Pooled

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
