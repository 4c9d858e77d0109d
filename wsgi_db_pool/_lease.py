"""Lease: what one request (or ``pooled()`` block) checked out, bound and gives back.

Django's handler calls its own ``create_connection`` when the greenlet-local slot of
an alias is empty; that is the one seam we take. Inside a lease, the miss becomes a
checkout from the alias's pool, and the wrapper is bound to the greenlet as Django
would bind its own. ``release()`` unbinds each one and checks it in; the pool resets
it and recycles or discards it.
"""

from __future__ import annotations

import _thread
import contextvars
import traceback
from typing import Any

from django.db import connections
from django.db.utils import ConnectionHandler

from . import _storage
from ._aliases import dialect
from ._reasons import Reason
from .errors import PoolError
from .pool import Pool, PooledConnection

__all__ = ["Lease", "current_lease", "install"]

_STACK_LIMIT = 30

# The request (or other unit of work) that owns the current greenlet's checkouts.
# Greenlets and threads start with an empty context, so a greenlet spawned inside a
# view does not inherit it.
current_lease: contextvars.ContextVar[Lease | None] = contextvars.ContextVar(
    "wsgi_db_pool_lease", default=None
)


# -- the seam: a miss in Django's handler becomes the lease's checkout -----------------

_django_create_connection = ConnectionHandler.create_connection


def _create_connection(alias: str) -> Any:
    lease = current_lease.get()
    if lease is not None and lease.wants(alias):
        return lease.checkout(alias)
    return _django_create_connection(connections, alias)


def install() -> None:
    """Route ``connections[alias]`` misses through the current lease; idempotent."""
    if connections.__dict__.get("create_connection") is not _create_connection:
        connections.create_connection = _create_connection  # type: ignore[method-assign]


# -- a unit of work's checkouts ------------------------------------------------------


class Lease:
    """What one request (or other unit of work) checked out, bound and must give back."""

    __slots__ = (
        "active",
        "aside",
        "capture_stack",
        "held",
        "keepalive",
        "owner",
        "pools",
        "token",
        "unavailable",
        "where",
    )

    def __init__(
        self, pools: dict[str, Pool], where: str | None, capture_stack: bool = False
    ) -> None:
        self.pools = pools
        self.where = where
        self.capture_stack = capture_stack
        # The greenlet's ident under gevent (it patches _thread.get_ident, looked up
        # at each call here); direct, not through _sync: a frame less per call.
        self.owner = _thread.get_ident()
        self.held: list[tuple[str, PooledConnection]] | None = None  # made on first checkout
        self.active = True
        # The error that made a checkout fail because the database was out of reach.
        self.unavailable: BaseException | None = None
        # Whatever must live as long as the lease (a weakref watching its owner).
        self.keepalive: Any = None
        # Wrappers this thread had bound for pooled aliases before the lease began.
        self.aside: dict[str, Any] | None = None
        # current_lease as it was before begin(), put back by finish().
        self.token: contextvars.Token[Lease | None] | None = None

    def begin(self) -> None:
        """Become the current greenlet's lease: its misses check out from now on."""
        self.set_aside()
        self.token = current_lease.set(self)

    def set_aside(self) -> None:
        """Unbind wrappers already bound here for pooled aliases, until ``finish()``.

        A thread that served no request before may hold one (``django.setup()``
        binds an unconnected wrapper while it loads models; so does code run at
        import by gunicorn ``--preload``), and Django would use it instead of
        asking for a pooled one.
        """
        bound = _storage.bound()
        if not bound:
            return
        for alias in self.pools:
            wrapper = bound.pop(alias, None)
            if wrapper is not None:
                if self.aside is None:
                    self.aside = {}
                self.aside[alias] = wrapper

    def wants_any(self) -> bool:
        """Whether this lease serves the current greenlet or thread."""
        return self.active and self.owner == _thread.get_ident()

    def wants(self, alias: str) -> bool:
        return self.active and alias in self.pools and self.owner == _thread.get_ident()

    def checkout(self, alias: str) -> Any:
        # What this request already holds of other aliases: the pool serves it first
        # and lets it past the cap, so pools never wait on each other forever.
        holding = len(self.held) if self.held else 0
        try:
            entry = self.pools[alias].checkout(holding=holding)
        except PoolError as exc:
            self.unavailable = exc
            raise
        except Exception as exc:
            if dialect(alias).is_unavailable(exc):
                self.unavailable = exc
            raise
        wrapper: Any = entry.conn
        # Django refuses a wrapper used from a thread (greenlet) other than its maker's.
        wrapper._thread_ident = self.owner
        if self.capture_stack:
            stack = "".join(traceback.format_stack(limit=_STACK_LIMIT)[:-2])
            entry.where = f"{self.where}\n{stack}"
        else:
            entry.where = self.where
        if self.held is None:
            self.held = []
        self.held.append((alias, entry))
        return wrapper

    def release(self) -> None:
        """Unbind and check in everything held (the pool resets, recycles or discards).

        Every connection is given back even when one reset is interrupted; the first
        BaseException is raised again at the end.
        """
        self.active = False
        held, self.held = self.held, None
        if not held:
            return
        mine = self.owner == _thread.get_ident()
        error: BaseException | None = None
        for alias, entry in held:
            pool = self.pools[alias]
            try:
                if mine:
                    _storage.unbind(alias, entry.conn)
            except BaseException as exc:
                error = error or exc
                pool.checkin(entry, Reason.INTERRUPTED)
                continue
            try:
                # The pool resets it, then recycles or discards it.
                pool.checkin(entry)
            except BaseException as exc:  # the slot is freed; the others still go back
                error = error or exc
        if error is not None:
            raise error

    def finish(self) -> None:
        """End the unit of work: give everything back, then leave the context as it was."""
        try:
            self.release()
        finally:
            if self.aside is not None and self.owner == _thread.get_ident():
                _storage.bound().update(self.aside)
                self.aside = None
            token, self.token = self.token, None
            # contextlib.suppress would cost an object on every request.
            try:
                if token is not None:
                    current_lease.reset(token)
            except ValueError:
                pass  # finished from another context: this lease is inactive anyway

    def reclaim(self) -> None:
        """Take back what was never released (a response nobody closed): no I/O, no lock."""
        self.active = False
        held, self.held = self.held, None
        # Collected in the greenlet that held them (it dropped the response and
        # goes on): unbind them there too, or its next request would find them
        # bound. Only those very wrappers: a later request of the same greenlet
        # may be running, with its own bound. Wrappers set aside stay aside.
        mine = self.owner == _thread.get_ident()
        for alias, entry in held or ():
            try:
                if mine:
                    _storage.unbind(alias, entry.conn)
            finally:
                self.pools[alias].reclaim(entry)
