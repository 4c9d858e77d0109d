"""A Galera node that answers but must not be used: cut off from the cluster, it accepts
logins, COM_PING and ``SELECT 1``, and refuses every table query with 1047.

The pool holds a connection to each node; HAProxy is told to send node3 no new
connections but to keep the ones it has (drain) and to stop checking it; then node3 is
isolated (``gmcast.isolate=1``): the window between a node leaving sync and HAProxy's
check shutting its sessions, held open.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlencode

import gevent
import pymysql
import pytest

from tests.cluster.conftest import ClusterView
from tests.conftest import DB_NAME, USER, Pooled
from tests.faults.conftest import wait_for
from tests.faults.test_availability import Load

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Plain SELECTs: the pool skips the session reset after them, which would otherwise
# meet the isolated node's 1047 first (COM_RESET_CONNECTION is refused too).
NO_TABLE = "SELECT CONNECTION_ID()"  # the isolated node answers it
TABLE = "SELECT COUNT(*) FROM app_item"  # 1047 there
RESET = "SELECT SLEEP(0)"  # answered there, but the pool resets the session after it


def _isolate(cluster: ClusterView, name: str) -> None:
    node = cluster.node(name)
    cluster.cluster.haproxy.command(f"disable health galera/{name}")
    cluster.rows(node, "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'")
    # The node leaves the primary component once its peers' suspect timeout passes.
    wait_for(lambda: node.status().get("wsrep_ready") == "OFF", 20.0, f"{name} not ready", 0.2)


@pytest.mark.parametrize(
    "warm",
    [
        pytest.param(NO_TABLE, id="no-reset"),
        # Not provably clean: the reset goes out with the next command, and the
        # isolated node refuses COM_RESET_CONNECTION with 1047 too.
        pytest.param(RESET, id="reset-deferred"),
    ],
)
@pytest.mark.parametrize(
    ("pre_ping", "first_round"),
    [
        pytest.param(True, [200, 200, 200], id="checkout-ping-sees-1047"),
        pytest.param(False, [200, 200, 500], id="connection-that-got-1047-discarded"),
    ],
)
def test_a_node_out_of_sync_serves_no_second_request(
    cluster: ClusterView,
    make_pooled: Callable[..., Pooled],
    pre_ping: bool,
    first_round: list[int],
    warm: str,
) -> None:
    """The isolated node's connection: caught by the checkout's ping, else discarded after 1047."""
    pooled = make_pooled(
        aliases=["cluster"], pool_size=3, max_overflow=0, pre_ping=pre_ping, timeout=5.0
    )

    def play(sql: str) -> list[int]:
        # Three requests held open at once: each checks out one of the three connections.
        query = urlencode({"alias": "cluster", "sql": sql})
        held = [pooled.start("/run-sql/", query) for _ in range(3)]
        for exchange in held:
            exchange.read_rest()
            exchange.close()
        return sorted(exchange.status_code for exchange in held)

    assert play(warm) == [200, 200, 200]
    # HAProxy's leastconn put one connection on each node.
    assert cluster.spread() == {"node1": 1, "node2": 1, "node3": 1}
    cluster.cluster.haproxy.command("set server galera/node3 state drain")
    _isolate(cluster, "node3")  # its open connection stays open
    assert play(TABLE) == first_round
    assert play(TABLE) == [200, 200, 200]
    assert cluster.spread()["node3"] == 0
    stats = pooled.stats("cluster")
    assert (stats["discards"], stats["open"], stats["in_use"]) == ({"broken": 1}, 3, 0)


# What a node out of sync answers (None: done), each on a connection opened before.
REFUSES = {
    "SELECT 1": None,
    "SET @a = 1": None,
    "SHOW STATUS LIKE 'wsrep_ready'": None,
    "COM_PING": None,
    "DO 1": 1047,
    "SELECT COUNT(*) FROM app_item": 1047,
    "BEGIN": 1047,
    "COM_RESET_CONNECTION": 1047,
}


def _send(conn: pymysql.connections.Connection, command: str) -> int | None:
    try:
        if command == "COM_PING":
            conn.ping(False)
        elif command == "COM_RESET_CONNECTION":
            conn._execute_command(0x1F, b"")
            conn._read_ok_packet()
        else:
            with conn.cursor() as cursor:
                cursor.execute(command)
    except pymysql.MySQLError as exc:
        return int(exc.args[0])
    return None


def test_what_a_node_out_of_sync_refuses(cluster: ClusterView) -> None:
    """Pins what the pool relies on: a login and COM_PING pass, DO and the reset get 1047."""
    node = cluster.node("node3")
    conns = {
        command: pymysql.connect(
            host="127.0.0.1",
            port=node.port,
            user=USER,
            password=USER,
            database=DB_NAME,
            ssl_disabled=True,
            autocommit=True,
        )
        for command in REFUSES
    }
    try:
        _isolate(cluster, "node3")
        assert {command: _send(conn, command) for command, conn in conns.items()} == REFUSES
    finally:
        for conn in conns.values():
            conn.close()


def _watch_node3(cluster: ClusterView, seen: dict[str, float]) -> None:
    node = cluster.node("node3")
    while "down" not in seen:
        now = time.monotonic()
        if "not_ready" not in seen and node.status().get("wsrep_ready") == "OFF":
            seen["not_ready"] = now
        if cluster.cluster.haproxy.servers().get("node3", "").startswith("DOWN"):
            seen["down"] = now
        gevent.sleep(0.05)


@pytest.mark.parametrize(
    "pre_ping", [pytest.param(60.0, id="default"), pytest.param(True, id="always")]
)
def test_with_the_check_on_failures_end_once_haproxy_marks_the_node_down(
    cluster: ClusterView, make_pooled: Callable[..., Pooled], pre_ping: float
) -> None:
    """A node cut off under load: 1047s only until HAProxy takes it out (shutting its sessions)."""
    pooled = make_pooled(
        aliases=["cluster"], pool_size=10, max_overflow=10, timeout=10.0, pre_ping=pre_ping
    )
    # A table query and 50 ms more: 8 clients hold about 8 connections, spread by leastconn.
    query = urlencode({"alias": "cluster", "sql": [TABLE, "SELECT SLEEP(0.05)"]}, doseq=True)
    load = Load(pooled.app, "/run-sql/", query, 8, 0.05, "cluster")
    load.start()
    seen: dict[str, float] = {}
    try:
        wait_for(lambda: len(load.done) >= 100, 10.0, "warm-up")
        assert cluster.spread().get("node3", 0) > 0, "no connection on the node to cut off"
        on_node3 = cluster.spread().get("node3", 0)
        watcher = gevent.spawn(_watch_node3, cluster, seen)
        isolated_at = time.monotonic()
        cluster.rows(
            cluster.node("node3"), "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'"
        )
        watcher.get(timeout=30.0)
        gevent.sleep(2.0)  # the schedule: load on the two nodes left
    finally:
        load.stop()
    failed = [
        started - isolated_at
        for started, _, status in load.done
        if status != 200 and started >= isolated_at
    ]
    report = {
        "not_ready_after": seen["not_ready"] - isolated_at,
        "down_after": seen["down"] - isolated_at,
        "failed": len(failed),
        "failed_between": (min(failed, default=None), max(failed, default=None)),
        "requests": len(load.done),
        "discards": pooled.stats("cluster")["discards"],
        "on_node3": on_node3,
    }
    print(f"\nnode3 isolated under load: {report}")
    assert [t for t in failed if t > report["down_after"] + 0.5] == []
    # Each connection the node had fails at most one request and is discarded; none
    # opened after it left sync is handed out (the connect's own query got 1047).
    assert len(failed) <= on_node3
    assert cluster.spread().get("node3", 0) == 0
