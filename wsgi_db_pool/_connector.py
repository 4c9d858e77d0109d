"""AliasConnector: makes, checks, resets and closes the pooled wrappers of one alias.

It is what the pool calls through its ``Connector`` protocol; the vendor's part of
each step is the alias's dialect's.
"""

from __future__ import annotations

import os
import threading
from time import monotonic
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import ConnectionHandler

from . import _sync, _tls
from ._aliases import dialect
from ._guard import Guard, leave_to_pool, leave_to_pool_settings, no_silent_reconnect

__all__ = ["AliasConnector"]

_django_create_connection = ConnectionHandler.create_connection

# Connections an end of a session may open looking for the session's server behind a
# load balancer; what the servers may count beyond the cap while sessions are ended.
_END_TRIES = 3
# The share of ``timeout`` an end may hold its slot: a request that waits for that slot
# keeps the rest of its own ``timeout`` to be served (past it the slot is freed, the
# end unconfirmed), where holding it the whole ``timeout`` answered that request 503.
_END_SHARE = 0.5


def _session_setup(wrapper: Any) -> list[str]:
    """The statements Django's own session setup sends, recorded without sending them."""
    recorded: list[str] = []

    def record(execute: Any, sql: Any, params: Any, many: bool, context: Any) -> None:
        if params or not isinstance(sql, str):
            raise ValueError(f"a session setup statement with parameters: {sql!r}")
        recorded.append(sql)

    # What connect() ran once, with every feature it asked the server already cached.
    with wrapper.execute_wrapper(record):
        wrapper.init_connection_state()
    return recorded


class AliasConnector:
    """Makes, checks, resets and closes the pooled wrappers of one alias."""

    def __init__(self, alias: str, reset_session: str = "auto", timeout: float = 30.0) -> None:
        self.alias = alias
        self.reset_session = reset_session
        self.timeout = timeout
        self.dialect = dialect(alias)
        # PyMySQL builds a TLS context per connect (24-35 ms of CPU): one will do.
        self._share_tls = connections.settings[alias]["ENGINE"] == "django.db.backends.mysql"
        # Ending sessions left on the server (end()): one connection of the alias's own
        # at a time, kept while more ends wait for it.
        self._end_lock: Any = None
        self._ending = 0
        self._others: dict[Any, Any] = {}  # server identity -> a connection to it
        self._pid = os.getpid()  # the process the three above belong to

    def classify(self, exc: Exception) -> str:
        kind: str = self.dialect.classify_connect_error(exc)
        return kind

    def reachable(self) -> bool | None:
        known: bool | None = self.dialect.reachable(connections.settings[self.alias])
        return known

    def connect(self) -> Any:
        wrapper: Any = _django_create_connection(connections, self.alias)
        if self._share_tls:
            # Once PyMySQL is imported (Django's backend imports it), then never again.
            self._share_tls = not _tls.share_opportunistic_context()
        try:
            wrapper.ensure_connection()
            # How to reset this session later; it may ask the server (the role, the
            # time zone the session began with), so it fails the connect as the connect would.
            plan = self.dialect.plan_reset(
                wrapper.connection,
                lambda: _session_setup(wrapper),
                wrapper.settings_dict["AUTOCOMMIT"],
            )
            # Watched from here on: Django's own setup above is what a reset restores.
            watch = (
                self.dialect.watch_statements(wrapper.connection)
                if plan is not None and self.reset_session == "auto"
                else None
            )
        except BaseException:
            if wrapper.connection is not None:
                self.dialect.abort(wrapper.connection)
                wrapper.connection = None
            raise
        leave_to_pool_settings(wrapper)
        wrapper.close_if_unusable_or_obsolete = leave_to_pool
        guard = Guard(wrapper, self.dialect, plan)
        guard.watch = watch
        wrapper.connect = no_silent_reconnect(wrapper, guard, self.timeout)
        for name in ("_commit", "_rollback"):
            setattr(wrapper, name, guard.around(getattr(wrapper, name)))
        wrapper._set_autocommit = guard.around_set_autocommit(wrapper._set_autocommit)
        wrapper.set_autocommit = guard.around_restore(wrapper.set_autocommit)
        wrapper.create_cursor = guard.around_create_cursor(wrapper.create_cursor)
        wrapper._wsgi_db_pool_guard = guard
        wrapper._wsgi_db_pool_wrappers = [guard]
        wrapper.execute_wrappers = wrapper._wsgi_db_pool_wrappers
        return wrapper

    def check(self, wrapper: Any, ping: bool) -> str | None:
        raw = wrapper.connection
        if raw is None:
            return "closed"
        guard: Guard = wrapper._wsgi_db_pool_guard
        if guard.pending:
            reason = self._finish_reset(guard, raw)
            if reason is not None:
                return reason
            ping = False  # the reset's replies were the round trip
        if not self.dialect.is_quiet(raw):
            return "broken"
        if ping and not self.dialect.ping(raw):
            return "broken"
        return None

    def _finish_reset(self, guard: Guard, raw: Any) -> str | None:
        # Usually read from the socket buffer: the server answered while the previous
        # request ended and this one began. Bounded all the same: a stalled network
        # must not hold a checkout past the pool's timeout.
        try:
            with _sync.deadline(self.timeout) as timer:
                try:
                    self.dialect.finish_reset(raw, guard.plan, guard.pending)
                except BaseException as exc:
                    if timer is not None and exc is timer:
                        guard.interrupted()
                        return "broken"
                    raise
        except Exception as exc:
            return "broken" if self.dialect.is_gone(exc) else "reset_failed"
        except BaseException:
            guard.interrupted()
            raise
        finally:
            guard.pending = 0
        return None

    def reset(self, wrapper: Any) -> str | None:
        """Undo what a request did to ``wrapper``; a discard reason when it cannot."""
        guard: Guard = wrapper._wsgi_db_pool_guard
        if guard.fault is not None:
            return guard.fault
        raw = wrapper.connection
        if raw is None:
            return "closed"
        if not self.dialect.is_open(raw):
            return "broken"
        autocommit = wrapper.settings_dict["AUTOCOMMIT"]
        mode = self.reset_session
        if mode != "never" and guard.plan is not None:
            # Sent now, not with the next command, when the request visibly left a lock,
            # a temporary table or maybe a transaction (and its row locks) behind.
            now = (
                guard.dirty
                or wrapper.in_atomic_block
                or wrapper.autocommit != autocommit
                or self.dialect.needs_rollback(raw)
            )
            watch = guard.watch
            if watch is not None and watch.clean and not now:
                pass  # every statement provably left the session as the reset would
            else:
                reason = self._reset_planned(guard, raw, now, wait=mode == "always")
                if reason is not None:
                    return reason
                if watch is not None:
                    watch.clean = True
        elif mode == "always" or (
            mode == "auto" and (guard.dirty or self.dialect.RESETS_EVERY_CHECKIN)
        ):
            reason = self._reset_session(guard, wrapper, raw, autocommit)
            if reason is not None:
                return reason
        elif (
            wrapper.in_atomic_block
            or wrapper.autocommit != autocommit
            or self.dialect.needs_rollback(raw)
        ):
            try:
                # Roll back before autocommit goes back on: on MySQL, switching
                # autocommit on commits the open transaction.
                raw.rollback()
                wrapper._set_autocommit(autocommit)
            except Exception:
                return "reset_failed"
            except BaseException:
                guard.interrupted()
                raise
        # Django's Python-side state, as a fresh connect() would leave it.
        wrapper.autocommit = autocommit
        wrapper.in_atomic_block = False
        wrapper.needs_rollback = False
        wrapper.rollback_exc = None
        wrapper.commit_on_exit = True
        wrapper.savepoint_state = 0
        wrapper.closed_in_transaction = False
        wrapper.errors_occurred = False
        wrapper.run_commit_hooks_on_set_autocommit_on = False
        wrapper.force_debug_cursor = False
        if wrapper.savepoint_ids:
            wrapper.savepoint_ids = []
        if wrapper.atomic_blocks:
            wrapper.atomic_blocks = []
        if wrapper.run_on_commit:
            wrapper.run_on_commit = []
        if wrapper.queries_log:
            wrapper.queries_log.clear()
        base = wrapper._wsgi_db_pool_wrappers
        if wrapper.execute_wrappers is not base or len(base) != 1:
            del base[1:]
            wrapper.execute_wrappers = base
        return None

    def _reset_planned(self, guard: Guard, raw: Any, now: bool, wait: bool) -> str | None:
        """The reset planned at connect, whatever the request's statements were (no
        statement's text shows what a stored function or trigger left behind): with
        PyMySQL, COM_RESET_CONNECTION and the session's setup in one write; with
        psycopg, DISCARD ALL's parts and Django's setup in one query, at once."""
        if guard.pending:
            # Never checked out since its last reset (check() reads the replies).
            reason = self._finish_reset(guard, raw)
            if reason is not None:
                return reason
        try:
            if self.dialect.reset_deferred(raw):
                pass  # the request sent nothing: the reset planned before still holds
            elif now or wait:
                # The server drops what the request left at once; the replies are
                # read at the next checkout, or right away for "always".
                guard.pending = self.dialect.send_reset(raw, guard.plan)
            else:
                # Sent with the next request's first command: no round trip of its own.
                self.dialect.defer_reset(raw, guard.plan)
        except BaseException as exc:
            return _reset_failed(guard, exc)
        guard.dirty = False
        if wait:
            return self._finish_reset(guard, raw)
        return None

    def _reset_session(self, guard: Guard, wrapper: Any, raw: Any, autocommit: bool) -> str | None:
        """A reset that waits for the server, for drivers without a plan (mysqlclient);
        SQLite's raises, and the connection is discarded instead."""
        try:
            # The server rolls back first, then drops the session's state.
            self.dialect.reset_session(raw, wrapper.get_connection_params())
            # The backend's own way (a method on MySQLdb, an attribute on psycopg).
            wrapper._set_autocommit(autocommit)
            wrapper.init_connection_state()
        except BaseException as exc:
            return _reset_failed(guard, exc)
        guard.dirty = False
        return None

    def close(self, wrapper: BaseDatabaseWrapper) -> None:
        raw, wrapper.connection = wrapper.connection, None
        if raw is not None:
            self.dialect.close(raw)

    def abort(self, wrapper: BaseDatabaseWrapper) -> None:
        raw = wrapper.connection
        if raw is not None:
            self.dialect.abort(raw)

    def lingers(self, wrapper: Any) -> bool:
        """Whether ``wrapper``'s session may still be running a statement on the server
        (cut at ``read_timeout``, or interrupted) and where it lives is known."""
        guard: Guard | None = getattr(wrapper, "_wsgi_db_pool_guard", None)
        return guard is not None and guard.running and guard.session is not None

    def end(self, wrapper: Any) -> str:
        """Close ``wrapper`` and end its session on the server with KILL, through another
        connection of the alias's account to the same server; wait until the server no
        longer lists it, up to half of ``timeout`` (waiting for earlier ends included).
        Returns the outcome (see
        ``_mysql.end_session``; "other_server": no connection reached the session's
        server; "failed": none could be had). Never raises an Exception; the pool calls
        it off every request's path.

        One end at a time per alias; its connections (one per server reached, at most
        ``_END_TRIES``) are kept while more ends wait, then closed.
        """
        session = self._abandon(wrapper)
        until = monotonic() + self.timeout * _END_SHARE
        if self._end_lock is None or self._pid != os.getpid():
            # Looked up now: gevent's once patched. After a fork the parent's lock may be
            # held by a greenlet that does not exist here, and its connections are not ours.
            self._end_lock = threading.Lock()
            self._ending, self._others, self._pid = 0, {}, os.getpid()
        self._ending += 1
        try:
            with self._end_lock, _sync.deadline(until - monotonic()) as timer:
                try:
                    return self._end_through_other(wrapper, session, until)
                except BaseException as exc:
                    if timer is not None and exc is timer:
                        self._drop_others()  # one may be cut mid-reply
                        return "unconfirmed"
                    if isinstance(exc, Exception):
                        return "failed"
                    self._drop_others()
                    raise
        finally:
            self._ending -= 1
            if not self._ending:
                self._drop_others()  # nobody else waits: the servers count them too

    def _abandon(self, wrapper: Any) -> Any:
        guard: Guard = wrapper._wsgi_db_pool_guard
        session = guard.session
        guard.running = False
        guard.session = None
        raw, wrapper.connection = wrapper.connection, None
        if raw is not None:
            self.dialect.abort(raw)  # its reply, if any, is never read
        return session

    def _end_through_other(self, wrapper: Any, session: Any, until: float) -> str:
        other = self._others.get(session.node)
        tries = 0
        # Behind a load balancer a new connection may reach another server, where the
        # thread id names someone else's session: it is kept open while the next try
        # runs (a least-connections balancer then sends that one elsewhere).
        while other is None:
            if tries == _END_TRIES:
                return "other_server"
            tries += 1
            raw = wrapper.get_new_connection(wrapper.get_connection_params())
            try:
                node = self.dialect.node_of(raw, session)
            except BaseException:
                self.dialect.abort(raw)
                raise
            if node in self._others:
                self.dialect.close(raw)  # a server already reached: tries stay bounded
            else:
                self._others[node] = raw
            other = self._others.get(session.node)
        try:
            outcome: str = self.dialect.end_session(other, session, until)
        except Exception:
            self._others.pop(session.node, None)
            self.dialect.abort(other)
            raise
        return outcome

    def _drop_others(self) -> None:
        others, self._others = self._others, {}
        for other in others.values():
            self.dialect.close(other)


def _reset_failed(guard: Guard, exc: BaseException) -> str:
    """An error from a reset discards the connection; an interrupt (gevent.Timeout,
    GreenletExit) also drops its socket, whose replies may still come, and goes on."""
    if isinstance(exc, Exception):
        return "reset_failed"
    guard.interrupted()
    raise exc
