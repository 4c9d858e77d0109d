"""Two nodes writing the same row: the loser gets 1213, and its connection is kept."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

import gevent
import pytest

from tests.cluster.conftest import ClusterView, _add_alias
from tests.conftest import DB_NAME, USER, Pooled
from tests.faults.conftest import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_a_certification_conflict_keeps_the_connection(
    cluster: ClusterView,
    make_pooled: Callable[..., Pooled],
    monkeypatch: pytest.MonkeyPatch,
    request_exceptions: list[BaseException],
) -> None:
    """node2 commits the row node1's open transaction changed: node1's request fails with
    1213 and its connection is recycled (it is healthy), not discarded."""
    for name in ("node1", "node2"):
        _add_alias(monkeypatch, name, cluster.node(name).port)
    node1 = cluster.node("node1")
    cluster.rows(node1, f"INSERT INTO {DB_NAME}.app_item (id, name) VALUES (1, 'before')")
    pooled = make_pooled(aliases=["node1", "node2"], pool_size=1, max_overflow=0)
    first = pooled.json("/read/", alias="node1")["conn_id"]
    loser = gevent.spawn(
        pooled.request,
        "/run-sql/",
        urlencode(
            {
                "alias": "node1",
                "sql": [
                    "BEGIN",
                    "UPDATE app_item SET name = 'node1' WHERE id = 1",
                    "SELECT SLEEP(2)",
                    "COMMIT",
                ],
            },
            doseq=True,
        ),
    )
    wait_for(
        lambda: cluster.rows(
            node1,
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND INFO LIKE %s",
            (USER, "SELECT SLEEP%"),
        ),
        what="node1's transaction holding the row",
    )
    winner = urlencode({"alias": "node2", "sql": "UPDATE app_item SET name = 'node2' WHERE id = 1"})
    assert pooled.request("/run-sql/", winner).status_code == 200
    assert loser.get(timeout=10.0).status_code == 500
    assert [getattr(exc, "args", (None,))[0] for exc in request_exceptions] == [1213]
    assert cluster.rows(node1, f"SELECT name FROM {DB_NAME}.app_item WHERE id = 1") == [("node2",)]
    # The same connection serves node1's next request.
    assert pooled.json("/read/", alias="node1")["conn_id"] == first
    stats = pooled.stats("node1")
    assert (stats["connects"], stats["discards"]) == (1, {})
