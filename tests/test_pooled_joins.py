"""``pooled()`` next to what the caller already holds: atomic(), a TestCase, no pool at all."""

from __future__ import annotations

import contextlib
import unittest
from collections.abc import Callable
from typing import Any

import django.test
import gevent
import pytest
from django.db import connections, transaction

import wsgi_db_pool
from tests.app.models import Item
from tests.conftest import OTHER_USER, Pooled, Server, events
from wsgi_db_pool import _lease


class Rollback(Exception):
    """Raised inside atomic() to roll the block back."""


def _conn_id() -> int:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        return int(cursor.fetchone()[0])


@wsgi_db_pool.pooled
def read_then_write(name: str) -> tuple[list[str], int]:
    """A helper as an application writes one: read the rows, add one; and where it ran."""
    names = list(Item.objects.order_by("id").values_list("name", flat=True))
    Item.objects.create(name=name)
    return names, _conn_id()


@wsgi_db_pool.pooled
def pooled_conn_id() -> int:
    return _conn_id()


@pytest.fixture(params=["pool", "no-pool"])
def pool(request: pytest.FixtureRequest, make_pooled: Callable[..., Pooled]) -> Pooled | None:
    """One open PoolingMiddleware in the process, or none (tests, eager Celery, pooling off)."""
    if request.param == "no-pool":
        return None
    return make_pooled(pool_size=1, max_overflow=0, timeout=2.0)


@pytest.mark.smoke
def test_helper_inside_atomic_sees_the_block_and_rolls_back_with_it(
    pool: Pooled | None, server: Server
) -> None:
    """A @pooled helper inside atomic() sees the block's row, and the rollback undoes both rows."""
    seen: dict[str, Any] = {}

    def command() -> None:
        with transaction.atomic():
            Item.objects.create(name="block")
            seen["outer"] = _conn_id()
            seen["rows"], seen["inner"] = read_then_write("helper")
            seen["committed"] = server.committed_names()
            raise Rollback

    with pytest.raises(Rollback):
        command()
    assert seen["rows"] == ["block"]
    assert seen["inner"] == seen["outer"]
    assert seen["committed"] == []  # the helper's row did not commit on its own either
    assert server.committed_names() == []
    if pool is not None:
        assert pool.stats()["checkouts"] == 0
    assert server.connection_ids() == {seen["outer"]}


@pytest.mark.parametrize(
    ("state", "joins"),
    [
        pytest.param("unbound", False, id="nothing-bound"),
        pytest.param("bound", False, id="bound-unconnected"),  # as django.setup() leaves it
        pytest.param("connected", True, id="connected"),  # a command that has queried
        pytest.param("atomic", True, id="in-atomic"),
    ],
)
def test_pooled_joins_only_a_connection_in_use(
    pooled: Pooled, server: Server, state: str, joins: bool
) -> None:
    """With a pool, pooled() joins the thread's wrapper if connected or in atomic(), else
    checks out."""
    own: int | None = None
    with contextlib.ExitStack() as stack:
        if state != "unbound":
            wrapper = connections["default"]
        if state == "atomic":
            stack.enter_context(transaction.atomic())
        if joins:
            own = _conn_id()
        inside = pooled_conn_id()
        if state != "unbound":
            assert connections["default"] is wrapper  # set aside, then bound again
    stats = pooled.stats()
    if joins:
        assert inside == own
        assert (stats["checkouts"], stats["open"]) == (0, 0)
    else:
        assert (stats["checkouts"], stats["idle"]) == (1, 1)
        assert server.connection_ids() == {inside}  # the pool's; the thread opened none


def test_only_the_aliases_not_in_use_are_checked_out(pooled: Pooled, server: Server) -> None:
    """Inside atomic() on default, a @pooled helper joins default and checks out other."""

    @wsgi_db_pool.pooled
    def both() -> tuple[int, str]:
        with connections["other"].cursor() as cursor:
            cursor.execute("SELECT CURRENT_USER()")
            other_user = str(cursor.fetchone()[0])
        return _conn_id(), other_user

    with transaction.atomic():
        outer = _conn_id()
        inner, other_user = both()
        assert pooled.stats("other")["in_use"] == 0  # given back when the helper returned
    assert inner == outer
    assert other_user.startswith(f"{OTHER_USER}@")
    assert (pooled.stats()["checkouts"], pooled.stats("other")["checkouts"]) == (0, 1)
    assert "other" not in {wrapper.alias for wrapper in connections.all(initialized_only=True)}


def test_a_greenlet_spawned_inside_atomic_checks_out_its_own(
    pooled: Pooled, server: Server
) -> None:
    """A @pooled greenlet spawned inside atomic() starts with nothing bound: it checks out,
    and cannot see the block's uncommitted row."""
    with transaction.atomic():
        Item.objects.create(name="block")
        outer = _conn_id()
        seen, inner = gevent.spawn(read_then_write, "greenlet").get()
    assert (seen, inner != outer) == ([], True)
    assert pooled.stats()["checkouts"] == 1
    assert server.committed_names() == ["block", "greenlet"]


def test_a_pooled_wrapper_left_bound_is_not_joined(pooled: Pooled, server: Server) -> None:
    """A pooled wrapper still bound after its lease was reclaimed from another greenlet (a
    response never closed, collected elsewhere) is set aside, not joined: its socket is gone."""

    def serve_then_call_helper() -> tuple[int, int]:
        exchange = pooled.start("/read/")  # served here; the server never closes it
        served = int(exchange.read_rest().decode().split(":")[1].strip(" }"))
        lease = _lease.current_lease.get()
        assert lease is not None
        gevent.spawn(lease.reclaim).join()
        assert connections["default"].connection is not None  # still bound here
        return served, pooled_conn_id()

    served, inside = gevent.spawn(serve_then_call_helper).get()
    assert inside != served
    gevent.sleep(0.01)  # the leaked slot is freed from the loop
    assert pooled.stats()["discards"] == {"leak": 1}


def test_without_a_pool_a_greenlet_closes_what_it_opened(
    server: Server, logs: list[dict[str, Any]]
) -> None:
    """No middleware: a @pooled greenlet runs on Django's own connection, closed at its end."""
    conn_id = gevent.spawn(pooled_conn_id).get()
    # Closed by the block itself, not by the garbage collector after the greenlet.
    assert server.wait_count(0) == 0
    assert conn_id not in server.connection_ids()
    [unpooled] = events(logs, "db_pool.unpooled", alias=None)
    assert unpooled["log_level"] == "debug"
    assert unpooled["where"] == f"{__name__}.pooled_conn_id"


@pytest.mark.parametrize(
    ("state", "kept"),
    [
        pytest.param("bound", False, id="bound-unconnected"),
        pytest.param("connected", True, id="connected"),
    ],
)
def test_without_a_pool_the_block_keeps_what_the_thread_had(
    server: Server, state: str, kept: bool
) -> None:
    """No middleware: a connection the thread had stays open; one the block opened is closed."""
    wrapper = connections["default"]
    own = _conn_id() if state == "connected" else None
    inside = pooled_conn_id()
    assert connections["default"] is wrapper
    assert (inside == own) is kept
    assert (wrapper.connection is not None) is kept
    assert server.wait_count(1 if kept else 0) == (1 if kept else 0)


class HelperInTestCase(django.test.TestCase):
    """An application's tests: data set up by the test, code that calls @pooled helpers."""

    __test__ = False  # run by test_django_testcase_calling_pooled_code_passes

    @classmethod
    def setUpTestData(cls) -> None:
        Item.objects.create(name="fixture")

    def test_helper_sees_the_test_data(self) -> None:
        Item.objects.create(name="test")
        seen, conn_id = read_then_write("helper")
        assert seen == ["fixture", "test"]
        assert conn_id == _conn_id()

    def test_helper_writes_are_rolled_back_between_tests(self) -> None:
        seen, _ = read_then_write("helper")
        assert seen == ["fixture"]

    def test_view_fanning_out_to_pooled_greenlets(self) -> None:
        response = self.client.get("/spawn/", {"n": 3, "pooled": 1})
        assert response.status_code == 200
        assert len(response.json()["conn_ids"]) == 3


@pytest.mark.smoke
def test_django_testcase_calling_pooled_code_passes(pool: Pooled | None, server: Server) -> None:
    """A django.test.TestCase whose code calls @pooled helpers passes, pool or not."""
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(HelperInTestCase).run(result)
    assert result.testsRun == 3
    assert result.wasSuccessful(), result.failures + result.errors
    assert server.committed_names() == []
    if pool is not None:
        # Only the view's greenlets checked out: the helpers joined the test's transaction.
        assert pool.stats()["checkouts"] == 3


def test_view_fanning_out_through_the_test_client(pool: Pooled | None, server: Server) -> None:
    """A view spawning @pooled greenlets answers 200 through django.test.Client, pool or not."""
    response = django.test.Client().get("/spawn/", {"n": 3, "pooled": 1})
    assert response.status_code == 200
    ids = response.json()["conn_ids"]
    assert len(ids) == 3
    if pool is None:
        assert server.wait_count(0) == 0  # each greenlet closed the connection it opened
    else:
        stats = pool.stats()
        assert (stats["checkouts"], stats["in_use"]) == (3, 0)
        assert server.connection_ids() <= set(ids)
