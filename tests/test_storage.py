"""The connection storage the middleware gives Django's handler (wsgi_db_pool/_storage.py).

It must keep Django's semantics exactly where Django relies on them: one binding per
greenlet, misses as AttributeError, and per-context bindings inside an event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import gevent
import gevent.monkey
import pytest
from asgiref.local import Local
from django.db import connections
from django.db.utils import ConnectionHandler

from wsgi_db_pool import _storage

from .test_contract import _Counting


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch) -> ConnectionHandler:
    """A handler of Django's own, as the middleware leaves `connections`."""
    handler = ConnectionHandler()
    monkeypatch.setattr(_storage, "_handler", handler)
    _storage.install_storage()
    assert type(handler._connections) is _storage.storage_type()
    assert _storage.fix_storage() is False  # nothing to fix: greenlet-local already
    return handler


def test_the_middleware_gives_connections_the_storage(pooled: Any) -> None:
    """Once a middleware is made, `connections` uses the storage."""
    assert type(connections._connections) is _storage.storage_type()
    pooled.get("/read/")
    assert type(connections._connections) is _storage.storage_type()


def test_django_semantics_hold(handler: ConnectionHandler) -> None:
    """A miss creates and binds, a hit does not, del unbinds, unknown aliases raise."""
    create = _Counting()
    handler.create_connection = create  # type: ignore[method-assign]
    assert handler.all(initialized_only=True) == []
    first = handler["default"]
    assert handler["default"] is first
    assert create.calls == ["default"]
    assert handler.all(initialized_only=True) == [first]
    del handler["default"]
    assert not hasattr(handler._connections, "default")
    with pytest.raises(AttributeError):
        handler._connections.default  # noqa: B018
    assert handler["default"] is not first
    with pytest.raises(Exception, match="doesn't exist"):
        handler["nope"]
    assert create.calls == ["default", "default"]


def test_each_greenlet_has_its_own_bindings(handler: ConnectionHandler) -> None:
    handler.create_connection = _Counting()  # type: ignore[method-assign]
    mine = handler["default"]
    theirs = gevent.spawn(lambda: (hasattr(handler._connections, "default"), handler["default"]))
    seen_before, bound_there = theirs.get()
    assert seen_before is False
    assert bound_there is not mine
    assert handler["default"] is mine
    assert handler._connections._storage.__dict__ == {"default": mine}


def test_inside_an_event_loop_bindings_are_per_context(handler: ConnectionHandler) -> None:
    """As asgiref's Local: what async code binds stays in its context, not in the thread's."""
    storage = handler._connections

    async def bind_in_two_tasks() -> tuple[bool, bool]:
        async def bind() -> bool:
            storage.other = "task"
            return hasattr(storage, "other")

        async def look() -> bool:
            return hasattr(storage, "other")

        bound = await asyncio.create_task(bind())
        return bound, await asyncio.create_task(look())

    bound, seen_by_another_task = asyncio.run(bind_in_two_tasks())
    assert bound is True
    assert seen_by_another_task is False
    assert not hasattr(storage, "other"), "a binding made in the loop leaked into the thread"


def test_carries_over_this_greenlets_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Made where the middleware is made: what this greenlet bound stays bound, once."""
    handler = ConnectionHandler()
    monkeypatch.setattr(_storage, "_handler", handler)
    wrapper = object()
    handler["default"] = wrapper
    _storage.install_storage()
    storage = handler._connections
    assert type(storage) is _storage.storage_type()
    assert handler["default"] is wrapper
    _storage.install_storage()  # idempotent
    assert handler._connections is storage
    assert handler["default"] is wrapper


def test_a_request_never_replaces_a_greenlet_local_storage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first request leaves Django's greenlet-local storage alone: others' bindings stay."""
    handler = ConnectionHandler()
    monkeypatch.setattr(_storage, "_handler", handler)
    storage = handler._connections
    handler["default"] = mine = object()
    assert gevent.spawn(_storage.fix_storage).get() is False
    assert handler._connections is storage
    assert handler["default"] is mine


def test_a_storage_shared_by_every_greenlet_is_replaced_and_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """django.db imported before gevent patched: one real thread-local for all greenlets."""
    handler = ConnectionHandler()
    shared = Local(thread_critical=True)
    object.__setattr__(shared, "_storage", gevent.monkey.get_original("threading", "local")())
    handler._connections = shared
    monkeypatch.setattr(_storage, "_handler", handler)
    handler["default"] = stale = object()
    assert _storage.fix_storage() is True
    assert type(handler._connections) is _storage.storage_type()
    assert not hasattr(handler._connections, "default"), stale
