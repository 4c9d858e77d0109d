"""Sessions the pool lets go while the server still runs their statement (issue #15, item 4).

A statement cut at the driver's ``read_timeout`` goes on running on the server. The pool
discards the connection, and ends that session with KILL through a connection of its
own, in the background, holding the slot until the server no longer lists it: the cap
holds as the server counts it (plus the one connection that sends the KILL).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import gevent
import pymysql
import pytest

from tests.conftest import OTHER_USER, PeakSampler, Pooled, Server, events, request
from tests.faults.conftest import running_queries, wait_for
from tests.settings import DB_PORT
from wsgi_db_pool import _mysql
from wsgi_db_pool._connector import AliasConnector

pytestmark = pytest.mark.fault

CAP = 2
READ_TIMEOUT = 1
SLEEP = 5  # seconds the cut statement would run on without a KILL


def _sql(sql: str, alias: str) -> str:
    return urlencode({"alias": alias, "sql": sql})


def test_a_statement_cut_at_read_timeout_is_killed_on_the_server(
    make_pooled: Callable[..., Pooled],
    add_alias: Callable[..., str],
    server: Server,
    logs: list[dict[str, Any]],
) -> None:
    """SELECT SLEEP(5) cut at read_timeout: its session leaves PROCESSLIST within a second,
    the request is not held for it, and the server never counts more than the cap + 1."""
    alias = add_alias("short_read", port=DB_PORT, read_timeout=READ_TIMEOUT)
    pooled = make_pooled(aliases=[alias], pool_size=CAP, max_overflow=0, timeout=10.0)
    counter = Server()  # a root connection of the sampler's own greenlet
    with PeakSampler(counter.count) as sampled:
        started = time.monotonic()
        cut = [
            gevent.spawn(request, pooled.app, "/run-sql/", _sql(f"SELECT SLEEP({SLEEP})", alias))
            for _ in range(CAP)
        ]
        # Behind them, requests that need a slot the cut sessions still hold.
        behind = [
            gevent.spawn(request, pooled.app, "/run-sql/", _sql("SELECT 1", alias))
            for _ in range(2 * CAP)
        ]
        gevent.joinall(cut, raise_error=True)
        answered = time.monotonic() - started
        assert all(g.value.status_code != 200 for g in cut)
        # Off the request's path: each answered at read_timeout, not after a KILL.
        assert answered < READ_TIMEOUT + 0.5
        # Without the KILL the sleeps would run on for another 4 s.
        wait_for(
            lambda: not running_queries(server, "SELECT SLEEP%"),
            1.0,
            "the cut statements gone from the server",
        )
        gevent.joinall(behind, raise_error=True)
        assert [g.value.status_code for g in behind] == [200] * (2 * CAP)
        # The ends run one at a time, each until the server no longer lists its session.
        wait_for(lambda: len(events(logs, "db_pool.end_session", alias)) == CAP, 2.0, "the ends")
    counter.conn.close()
    # The cap, plus the one connection the pool ends sessions through.
    assert sampled.peak <= CAP + 1
    ended = events(logs, "db_pool.end_session", alias)
    assert [e["outcome"] for e in ended] == ["killed"] * CAP
    discards = events(logs, "db_pool.discard", alias)
    assert [e["reason"] for e in discards] == ["broken"] * CAP
    stats = pooled.stats(alias)
    assert (stats["in_use"], stats["waiting"]) == (0, 0)
    # What the pool holds is what the server counts: the killer connection is closed too.
    assert server.wait_count(stats["open"]) == stats["open"]


def test_an_interrupted_statement_is_killed_on_the_server(
    make_pooled: Callable[..., Pooled],
    server: Server,
    logs: list[dict[str, Any]],
) -> None:
    """A request interrupted mid-statement (gevent.Timeout): its session is ended too."""
    pooled = make_pooled(aliases=["default"], pool_size=1, max_overflow=0, timeout=10.0)
    with gevent.Timeout(0.5, False):
        request(pooled.app, "/run-sql/", _sql(f"SELECT SLEEP({SLEEP})", "default"))
    wait_for(
        lambda: not running_queries(server, "SELECT SLEEP%"),
        1.0,
        "the interrupted statement gone from the server",
    )
    assert [e["outcome"] for e in events(logs, "db_pool.end_session")] == ["killed"]
    assert pooled.json("/run-sql/", alias="default", sql="SELECT 1")
    assert server.wait_count(1) == 1


def _lingering(connector: AliasConnector, thread_id: int, node: tuple[Any, ...]) -> Any:
    """A pooled wrapper of ``connector`` whose session is said to live at ``thread_id``
    on ``node`` and to run a statement still: what the pool would end."""
    wrapper = connector.connect()
    guard = wrapper._wsgi_db_pool_guard
    real = guard.session
    guard.session = _mysql.ServerSession(thread_id, node, real.node_sql)
    guard.running = True
    assert connector.lingers(wrapper)
    return wrapper, real


@pytest.mark.parametrize(
    ("whose", "outcome"),
    [
        pytest.param("another-server", "other_server", id="same-id-on-another-server"),
        # Without the PROCESS privilege an account sees only its own sessions: the
        # other account's is not listed for it, as if gone (with it: "denied").
        pytest.param("another-account", "gone", id="another-accounts-session"),
    ],
)
def test_an_end_never_kills_a_session_that_is_not_the_one_let_go(
    server: Server, whose: str, outcome: str
) -> None:
    """The thread id names another server's session (a load balancer), or another
    account's (a restart reused it): nothing is killed, and the outcome says why."""
    other_account = pymysql.connect(**{**_credentials("other"), "autocommit": True})
    try:
        victim = other_account.thread_id()
        connector = AliasConnector("default", timeout=5.0)
        if whose == "another-server":
            wrapper, real = _lingering(connector, victim, ("elsewhere", 3306))
        else:
            wrapper, real = _lingering(connector, victim, ("",))
            wrapper._wsgi_db_pool_guard.session = real._replace(thread_id=victim)
        assert connector.end(wrapper) == outcome
        assert victim in server.connection_ids(OTHER_USER)
        with other_account.cursor() as cursor:  # alive, and still usable
            cursor.execute("SELECT 1")
    finally:
        other_account.close()
    # The connections the end opened are closed.
    assert server.wait_count(0) == 0


def _credentials(alias: str) -> dict[str, Any]:
    from django.db import connections

    params: dict[str, Any] = connections[alias].get_connection_params()
    return params
