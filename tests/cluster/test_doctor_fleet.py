"""``python -m wsgi_db_pool check`` against the cluster through HAProxy, and the replica."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from tests.cluster.conftest import CLUSTER_OPTIONS, ClusterView
from tests.cluster.galera import GaleraCluster
from tests.cluster.replica import ReplicaPair
from tests.conftest import DB_NAME, USER

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path, ports: dict[str, int]) -> str:
    """A settings module with one alias per port, copies of `default` but for HOST/PORT
    (`default` itself, which Django requires, is not checked)."""
    aliases = {
        name: {"HOST": "127.0.0.1", "PORT": port, "OPTIONS": CLUSTER_OPTIONS}
        for name, port in ports.items()
    }
    (tmp_path / "fleet_settings.py").write_text(
        textwrap.dedent(
            f"""
            import copy
            from tests.settings import *  # noqa: F403
            DATABASES = {{
                "default": DATABASES["default"],  # noqa: F405
                **{{
                    name: {{**copy.deepcopy(DATABASES["default"]), **entry}}  # noqa: F405
                    for name, entry in {aliases!r}.items()
                }},
            }}
            """
        )
    )
    return "fleet_settings"


def _check(tmp_path: Path, ports: dict[str, int], *args: str) -> tuple[int, dict[str, Any]]:
    result = _run(tmp_path, ports, "--json", *args)
    return result.returncode, json.loads(result.stdout)


def _run(tmp_path: Path, ports: dict[str, int], *args: str) -> Any:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": _settings(tmp_path, ports),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsgi_db_pool",
            "check",
            *(f"--alias={alias}" for alias in ports),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result


def _finding(document: dict[str, Any], check: str, where: str | None = None) -> dict[str, Any]:
    [found] = [
        f
        for f in document["findings"]
        if f["check"] == check and (where is None or where in (f["alias"], f["server"]))
    ]
    return found


@pytest.fixture
def node3_max_connections(galera: GaleraCluster) -> Iterator[Any]:
    """Set node3's max_connections (a private node: SET GLOBAL is ours); 200 again after."""
    conn = galera.nodes[2].connect()

    def set_to(value: int) -> None:
        with conn.cursor() as cursor:
            cursor.execute(f"SET GLOBAL max_connections = {int(value)}")

    try:
        yield set_to
    finally:
        set_to(200)
        conn.close()


def test_cluster_capacity_counts_each_node_and_one_node_down(
    cluster: ClusterView, node3_max_connections: Any, tmp_path: Path
) -> None:
    """Through HAProxy: every node read at its own address; 2 hosts x 4 workers x 10 = 80
    is 27 a node with three up, 40 with one down, which node3 at 45 less 10 cannot take."""
    node3_max_connections(45)
    args = ["--hosts", "2", "--workers", "4", "--pool-size", "5", "--max-overflow", "5"]
    code, document = _check(tmp_path, {"cluster": cluster.haproxy_port}, *args)
    assert code == 1
    [server] = document["servers"]
    assert server["galera"]["cluster_size"] == 3
    nodes = {node["node"]: node for node in server["nodes"]}
    assert set(nodes) == {"node1", "node2", "node3"}
    assert {name: node["max_connections"] for name, node in nodes.items()} == {
        "node1": 200,
        "node2": 200,
        "node3": 45,
    }
    assert {node["address"] for node in nodes.values()} == {
        f"127.0.0.1:{node.port}" for node in cluster.cluster.nodes
    }
    capacity = _finding(document, "capacity")
    assert capacity["level"] == "ok"
    assert "= 80 connections at most, 27 a node with all 3 nodes up" in capacity["message"]
    # The suite's nodes keep Galera's default evs.suspect_timeout of 5 s: a node lost
    # stalls commits about 6 s, which the default timeout of 30 s outlasts.
    assert server["galera"]["suspect_timeout"] == 5.0
    stall = _finding(document, "stall")
    assert stall["level"] == "ok"
    assert "about 6 s" in stall["message"]
    down = _finding(document, "n_minus_one")
    assert down["level"] == "fail"
    assert "the other 2 carry all 80 connections, 40 a node" in down["message"]
    assert "node3 (max_connections 45 less the reserve of 10: 35)" in down["message"]
    assert "node1" not in down["message"]
    assert "at least 50 on every node" in down["message"]
    text = _run(tmp_path, {"cluster": cluster.haproxy_port}, *args).stdout
    print(f"\n{text}")
    node3 = cluster.node("node3")
    assert f"  node node3 at 127.0.0.1:{node3.port}: max_connections 45," in text
    assert "3 node(s) in a Primary component" in text
    assert "FAIL  [Galera cluster " in text
    # With room for 40 on every node the same fleet fits.
    node3_max_connections(50)
    code, document = _check(tmp_path, {"cluster": cluster.haproxy_port}, *args)
    assert code == 0
    assert _finding(document, "n_minus_one")["level"] == "ok"


def _sql(server: Any, *statements: str) -> None:
    """Run ``statements`` on ``server`` (a primary or a replica) as root."""
    conn = server.connect()
    try:
        with conn.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)
    finally:
        conn.close()


def _write(pair: ReplicaPair, name: str) -> None:
    conn = pair.primary.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"INSERT INTO {DB_NAME}.app_item (name) VALUES (%s)", (name,))
        conn.commit()
    finally:
        conn.close()


def test_replica_lag_and_read_only_are_reported(replicated: ReplicaPair, tmp_path: Path) -> None:
    """Running: OK with lag 0 and read_only ON; SQL thread stopped: a warning; held back by
    MASTER_DELAY: the lag in seconds above --max-lag; the primary has no replication finding."""
    ports = {"primary": replicated.primary.port, "replica": replicated.replica.port}
    # Without SLAVE MONITOR the account cannot read SHOW SLAVE STATUS: said so.
    code, document = _check(tmp_path, ports)
    assert "SLAVE MONITOR" in _finding(document, "replication", "replica")["message"]
    # Granted on the primary, replicated to the replica like any account change.
    _sql(replicated.primary, f"GRANT SLAVE MONITOR ON *.* TO '{USER}'@'127.0.0.1'")
    replicated.wait_caught_up()

    code, document = _check(tmp_path, ports)
    assert code == 0
    running = _finding(document, "replication", "replica")
    assert running["level"] == "ok"
    assert f"replica of 127.0.0.1:{replicated.primary.port}, running, lag 0 s" in running["message"]
    assert _finding(document, "read_only", "replica")["level"] == "ok"
    # The primary replicates from nowhere: nothing to say about replication there.
    checks = {f["check"] for f in document["findings"] if f["alias"] == "primary"}
    assert not checks & {"replication", "read_only"}

    _sql(replicated.replica, "STOP SLAVE SQL_THREAD")
    try:
        _write(replicated, "behind")
        code, document = _check(tmp_path, ports)
        stopped = _finding(document, "replication", "replica")
        assert stopped["level"] == "warn"
        assert "is stopped (IO thread Yes, SQL thread No); lag unknown" in stopped["message"]
    finally:
        _sql(replicated.replica, "START SLAVE SQL_THREAD")
    replicated.wait_caught_up()

    _sql(replicated.replica, "STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 60", "START SLAVE")
    try:
        _write(replicated, "delayed")
        deadline = time.monotonic() + 10.0
        while (replicated.status().get("Seconds_Behind_Master") or 0) < 2:
            assert time.monotonic() < deadline, replicated.status()
            gevent.sleep(0.2)
        code, document = _check(tmp_path, ports, "--max-lag", "1")
        lagging = _finding(document, "replication", "replica")
        assert lagging["level"] == "warn"
        assert "MASTER_DELAY 60 s on purpose, above --max-lag 1 s" in lagging["message"]
        [seconds] = [int(word) for word in lagging["message"].split(" lags ")[1].split()[:1]]
        assert seconds >= 2
    finally:
        _sql(replicated.replica, "STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 0", "START SLAVE")
    replicated.wait_caught_up()
