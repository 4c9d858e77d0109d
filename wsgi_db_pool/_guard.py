"""The guard on a pooled wrapper: what ends its connection, what its session keeps.

Django's ``DatabaseWrapper`` would, left to itself, reconnect behind the pool's back,
close on ``CONN_MAX_AGE`` and leave an interrupted command's reply on the socket; the
guard and the replacements below keep every one of those decisions with the pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from . import _sync
from ._dialect import Dialect

__all__ = ["Guard", "leave_to_pool", "leave_to_pool_settings", "no_silent_reconnect"]


class Guard:
    """Watches every command a pooled wrapper sends and notes what ends the connection.

    It sits at the bottom of the wrapper's ``execute_wrappers`` (every statement) and
    around its ``_commit``, ``_rollback`` and ``_set_autocommit`` (which bypass them).
    An interrupted command (``gevent.Timeout``, ``GreenletExit``) may leave its reply
    on the socket, where a later COMMIT could read it as its own while the server
    commits a partial transaction; so the socket is dropped on the spot, whatever the
    driver's version does, and every later command on it fails instead.

    It also notes whether a statement visibly left session state (``dirty``), which
    makes the reset go out at checkin, and keeps how to reset the connection (``plan``,
    made at connect) and how many of the reset's replies are still on the socket
    (``pending``).

    And it notes whether the server may still be running the statement when the
    connection is lost (``running``: a read timeout or an interrupt, not the server's
    own end of it): the pool then ends that session on the server (``session``, where
    it lives) before its slot is free again.
    """

    __slots__ = (
        "dialect",
        "dirty",
        "fault",
        "lost_conn",
        "pending",
        "plan",
        "restoring",
        "running",
        "session",
        "watch",
        "wrapper",
    )

    def __init__(self, wrapper: Any, dialect: Dialect, plan: Any = None) -> None:
        self.wrapper = wrapper
        self.dialect = dialect
        self.fault: str | None = None
        # The DB-API connection that was lost, kept for Django to find (see lost()).
        self.lost_conn: Any = None
        # Django is turning autocommit back on (see _no_silent_reconnect).
        self.restoring = False
        # The statements since the last reset visibly left session state behind.
        self.dirty = False
        self.plan = plan
        self.pending = 0
        # The statement lost may still run on the server, in ``session``.
        self.running = False
        self.session: Any = dialect.server_session(plan)
        # The dialect's watch on what the connection sends (see Dialect.watch_statements).
        self.watch: Any = None

    def __call__(
        self, execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any
    ) -> Any:
        if not self.dirty and self.dialect.leaves_session_state(sql):
            self.dirty = True
        return self.run(execute, sql, params, many, context)

    def run(self, command: Callable[..., Any], *args: Any) -> Any:
        """Run one command on the connection, noting what ends it."""
        try:
            return command(*args)
        except Exception as exc:
            raw = self.wrapper.connection
            if self.fault is None and (
                self.dialect.is_gone(exc) or (raw is not None and not self.dialect.is_open(raw))
            ):
                self.lost("broken")  # also an error that left the socket dropped
                # The driver gave up waiting for the reply; the server did not.
                self.running = self.dialect.statement_may_run(exc)
            raise
        except BaseException:
            self.interrupted()
            raise

    def interrupted(self) -> None:
        self.lost("interrupted")
        self.running = True  # cut while the server may still be at it

    def lost(self, fault: str) -> None:
        """The connection is finished: drop its socket; every later command fails at once."""
        self.fault = fault
        raw = self.lost_conn = self.wrapper.connection
        if raw is not None:
            self.dialect.abort(raw)

    def around_restore(self, method: Callable[..., Any]) -> Callable[..., Any]:
        # Marks Django's set_autocommit(), which calls connect() when it has no
        # connection: after a loss, that connect must not happen.
        def marked(*args: Any, **kwargs: Any) -> Any:
            self.restoring = True
            try:
                return method(*args, **kwargs)
            finally:
                self.restoring = False

        return marked

    def around_set_autocommit(self, method: Callable[..., Any]) -> Callable[..., Any]:
        # Once the connection is lost, Django's exits (atomic(), a failed COMMIT) still
        # turn autocommit back on; on a dead connection that would only raise over the
        # error that matters (or over the caller's gevent.Timeout). The connection is
        # discarded at checkin anyway.
        def guarded(*args: Any) -> Any:
            if self.fault is not None:
                return None
            return self.run(method, *args)

        return guarded

    def around(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any) -> Any:
            return self.run(method, *args)

        return guarded

    def around_create_cursor(self, create_cursor: Callable[..., Any]) -> Callable[..., Any]:
        # Django's callproc() bypasses execute_wrappers; a procedure (and PyMySQL's
        # own SET @_proc_N) may leave any session state behind.
        def callproc(cursor: Any) -> Callable[..., Any]:
            method = cursor.callproc

            def guarded(*args: Any) -> Any:
                self.dirty = True
                return self.run(method, *args)

            return guarded

        def create(*args: Any) -> Any:
            cursor = create_cursor(*args)
            # A cursor class with __slots__ keeps its own (only MySQL's needs this).
            with contextlib.suppress(AttributeError):
                cursor.callproc = callproc(cursor)
            return cursor

        return create


def leave_to_pool() -> None:
    """Replaces ``close_if_unusable_or_obsolete`` on pooled wrappers: the pool decides."""


def no_silent_reconnect(wrapper: Any, guard: Guard, timeout: float) -> Callable[[], None]:
    """Replaces ``connect`` on a pooled wrapper, which Django calls when it has none.

    After a connection lost mid-request, the exit of ``atomic()`` (or of a failed
    COMMIT) turns autocommit back on, and Django would open a new connection to do
    it: behind the pool's back, and behind every deadline (a stalled network then
    holds the request for one more connect timeout). There the lost connection is
    put back instead, and the error the caller sees is the one that lost it. Code
    that closes the connection itself and queries again (a task's retry loop) gets
    a new one, in the same slot, within ``timeout``.
    """
    connect = wrapper.connect

    def reconnect() -> None:
        if guard.fault is not None and guard.restoring:
            # Every command on it fails at once: the driver knows it is closed.
            wrapper.connection = guard.lost_conn
            return
        with _sync.deadline(timeout) as timer:
            try:
                connect()
            except BaseException as exc:
                if timer is not None and exc is timer:
                    raise wrapper.Database.OperationalError(
                        f"reconnecting pooled alias {wrapper.alias!r} took longer than the "
                        f"pool's timeout ({timeout} s)"
                    ) from None
                raise
        guard.fault = guard.lost_conn = None
        guard.dirty = False
        guard.pending = 0  # a new session: no reset's replies on its socket
        guard.watch = None  # nor is its driver connection watched: reset it every time
        # Nor is it known where the new session lives: it is never ended on the server.
        guard.running = False
        guard.session = None
        leave_to_pool_settings(wrapper)

    return reconnect


def leave_to_pool_settings(wrapper: Any) -> None:
    # Django's CONN_MAX_AGE and CONN_HEALTH_CHECKS must not close or ping a pooled
    # connection behind the pool's back (request_finished runs close_old_connections
    # on every bound wrapper); connect() sets them anew.
    wrapper.close_at = None
    wrapper.health_check_enabled = False
