"""Greenlet-local storage for Django's connections that does not raise on every lookup.

Django keeps each thread's wrappers in an asgiref ``Local(thread_critical=True)``:
outside an event loop it is a plain ``threading.local``, but every lookup first asks
``asyncio.get_running_loop()``, which raises and catches ``RuntimeError``, and every
miss raises ``AttributeError`` twice. A request pays that on each
``connections[alias]`` and in each signal handler that scans ``connections.all()``
(about 0.75 µs a hit, 1.3 µs a miss here). Under gevent no event loop runs in a
request's greenlet, so ours is gevent's ``local`` itself: a hit is a C lookup, and
only a miss or a store runs Python. Where an event loop does run in the thread, stores
and misses go to an asgiref Local as Django's would (bindings made outside the loop
stay visible to it; Django refuses database use from async code anyway). Under gevent a
loop one greenlet runs is seen by every greenlet of the thread, here as in asgiref.
"""

from __future__ import annotations

import threading
from asyncio import _get_running_loop
from typing import Any

_storage_type: type | None = None


def storage_type() -> type:
    """The class, made once gevent has patched ``threading`` (its ``local`` is the base)."""
    global _storage_type
    if _storage_type is None:
        _storage_type = _make_type(threading.local)
    return _storage_type


def _make_type(base: Any) -> type:
    from asgiref.local import Local

    in_loop = Local(thread_critical=True)

    class ConnectionStorage(base):  # type: ignore[misc]
        # As asgiref's Local has it: this thread's (greenlet's) bindings are
        # ``_storage.__dict__``.
        @property
        def _storage(self) -> Any:
            return self

        def __getattr__(self, key: str) -> Any:
            # Only misses come here.
            if _get_running_loop() is None:
                raise AttributeError(key)
            return getattr(in_loop, key)

        def __setattr__(self, key: str, value: Any) -> None:
            if _get_running_loop() is None:
                base.__setattr__(self, key, value)
            else:
                setattr(in_loop, key, value)

        def __delattr__(self, key: str) -> None:
            if _get_running_loop() is None:
                base.__delattr__(self, key)
            else:
                delattr(in_loop, key)

    return ConnectionStorage
