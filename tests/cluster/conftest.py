"""Fixtures for the cluster tests: a private Galera cluster behind HAProxy, aliases to it.

The cluster starts once per run (about 11 s, about 130 MiB a node) and is torn down at
the end, also when a test fails. Each test starts with every node synced and up in
HAProxy (a node a test killed or isolated is brought back first), none of the app's
sessions on any node, and no rows.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from tests.cluster.galera import GaleraCluster, GaleraNode
from tests.cluster.replica import ReplicaPair
from tests.conftest import DB_NAME, USER, USERS, Server
from tests.faults.conftest import FAST_OPTIONS, create_schema
from tests.faults.conftest import request_exceptions as request_exceptions  # shared fixture

#: Driver timeouts of the cluster aliases: a write outlives the cluster's stall when a
#: node dies (about 6 s: evs.suspect_timeout and the view change), a connect does not
#: wait long for a node that is gone.
CLUSTER_OPTIONS = {**FAST_OPTIONS, "connect_timeout": 2, "read_timeout": 10, "write_timeout": 10}


class ClusterView:
    """What the nodes themselves see, through a root connection to each live node."""

    def __init__(self, cluster: GaleraCluster) -> None:
        self.cluster = cluster
        self._conns: dict[str, pymysql.connections.Connection] = {}

    @property
    def haproxy_port(self) -> int:
        return self.cluster.haproxy.port

    def node(self, name: str) -> GaleraNode:
        return next(node for node in self.cluster.nodes if node.name == name)

    def rows(self, node: GaleraNode, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        conn = self._conns.get(node.name)
        if conn is None:
            conn = self._conns[node.name] = node.connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        except pymysql.OperationalError:
            self._conns.pop(node.name, None)
            raise

    def spread(self, user: str = USER) -> dict[str, int]:
        """``user``'s sessions on each live node (a node that does not answer is left out)."""
        counts = {}
        for node in self.cluster.live():
            with contextlib.suppress(pymysql.MySQLError):
                counts[node.name] = int(
                    self.rows(
                        node,
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
                        (user,),
                    )[0][0]
                )
        return counts

    def sessions(self, user: str = USER) -> int:
        """``user``'s sessions over all live nodes: the cap as the servers count it."""
        return sum(self.spread(user).values())

    def kill_all(self) -> None:
        for node in self.cluster.live():
            for user in USERS:
                ids = self.rows(
                    node, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (user,)
                )
                for (conn_id,) in ids:
                    with contextlib.suppress(pymysql.MySQLError):
                        self.rows(node, f"KILL {int(conn_id)}")

    def committed_names(self) -> set[str]:
        node = self.cluster.live()[0]
        return {row[0] for row in self.rows(node, f"SELECT name FROM {DB_NAME}.app_item")}

    def close(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(pymysql.MySQLError):
                conn.close()
        self._conns.clear()


@pytest.fixture(scope="session")
def galera(_server_session: Server) -> Iterator[GaleraCluster]:
    """The running cluster, with the test database, users and table of the shared server."""
    cluster = GaleraCluster()
    try:
        cluster.start()
        create_table = _server_session.rows(f"SHOW CREATE TABLE {DB_NAME}.app_item")[0][1]
        conn = cluster.nodes[0].connect()
        try:
            # DDL and account changes replicate to every node (total order isolation).
            create_schema(conn, create_table)
        finally:
            conn.close()
        yield cluster
    finally:
        cluster.destroy()


def _add_alias(monkeypatch: pytest.MonkeyPatch, name: str, port: int) -> None:
    """A copy of `default` at ``port``; Django caches DATABASES once, as this very dict."""
    from django.db import connections

    entry = copy.deepcopy(connections.settings["default"])
    entry.update(HOST="127.0.0.1", PORT=port, OPTIONS=dict(CLUSTER_OPTIONS))
    monkeypatch.setitem(connections.settings, name, entry)


def _unbind(*names: str) -> None:
    """Close what stock Django left bound to the main greenlet for ``names``."""
    from django.db import connections

    for name in names:
        wrapper = getattr(connections._connections, name, None)
        if wrapper is not None:
            wrapper.close()
            delattr(connections._connections, name)


@pytest.fixture
def cluster(
    galera: GaleraCluster, server: Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ClusterView]:
    """The alias `cluster` (through HAProxy) and the nodes' own view, healed and emptied."""
    galera.heal()
    view = ClusterView(galera)
    assert view.sessions() == 0, "a session of the previous test survived on the cluster"
    _add_alias(monkeypatch, "cluster", galera.haproxy.port)
    yield view
    _unbind("cluster")
    view.close()
    view = ClusterView(galera)
    view.kill_all()
    live = galera.live()
    if live:
        view.rows(live[0], f"DELETE FROM {DB_NAME}.app_item")
    view.close()


@pytest.fixture(scope="session")
def replica_pair(_server_session: Server) -> Iterator[ReplicaPair]:
    """A running GTID primary/replica pair with the test database, users and table."""
    pair = ReplicaPair()
    try:
        pair.start()
        conn = pair.primary.connect()
        try:
            # Replicated like any write: the replica gets them from the binary log.
            create_schema(conn, _server_session.rows(f"SHOW CREATE TABLE {DB_NAME}.app_item")[0][1])
        finally:
            conn.close()
        pair.wait_caught_up()
        yield pair
    finally:
        pair.destroy()


@pytest.fixture
def replicated(
    replica_pair: ReplicaPair, server: Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ReplicaPair]:
    """The aliases `primary` and `replica`; no rows and no app sessions left after."""
    _add_alias(monkeypatch, "primary", replica_pair.primary.port)
    _add_alias(monkeypatch, "replica", replica_pair.replica.port)
    yield replica_pair
    _unbind("primary", "replica")
    for server in (replica_pair.primary, replica_pair.replica):
        if server.process is None:
            server.start()  # a failed test left it stopped
    conn = replica_pair.primary.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"DELETE FROM {DB_NAME}.app_item")
    finally:
        conn.close()
    replica_pair.wait_caught_up()
