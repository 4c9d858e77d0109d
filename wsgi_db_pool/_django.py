"""The only module that talks to ``django.db``: make, bind, reset and unbind wrappers.

The pool holds whole ``DatabaseWrapper`` objects with their DB-API connection open,
so Django's per-connection setup (server variables, isolation level) runs once per
connection, not once per request. A request gets a wrapper the first time it asks
``connections[alias]`` for a pooled alias: Django's handler calls its own
``create_connection`` when the greenlet-local slot is empty, and that is the one
seam we take (installed once on the handler instance, falling back to Django's
own method outside a request).
"""

from __future__ import annotations

import contextlib
import contextvars
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import ConnectionHandler, load_backend

from . import _mysql, _postgresql, _sqlite, _storage, _sync
from .errors import PoolError
from .pool import Pool, PooledConnection

__all__ = [
    "AliasConnector",
    "Lease",
    "Unpooled",
    "current_lease",
    "fix_storage",
    "install",
    "install_storage",
    "joined_aliases",
    "poolable_aliases",
    "resolve_aliases",
]

# Each vendor's specifics (errors, free checks, session reset), one module each.
_DIALECTS: dict[str, Any] = {"mysql": _mysql, "postgresql": _postgresql, "sqlite": _sqlite}
POOLABLE_VENDORS = frozenset(_DIALECTS)
# aliases=None pools the databases behind a server; SQLite only when named.
DEFAULT_VENDORS = frozenset({"mysql", "postgresql"})
_SUPPORTED = "MySQL/MariaDB, PostgreSQL, SQLite"
_STACK_LIMIT = 30

# The request (or other unit of work) that owns the current greenlet's checkouts.
# Greenlets and threads start with an empty context, so a greenlet spawned inside a
# view does not inherit it.
current_lease: contextvars.ContextVar[Lease | None] = contextvars.ContextVar(
    "wsgi_db_pool_lease", default=None
)


# -- aliases --------------------------------------------------------------------


def _vendor(alias: str) -> str:
    vendor: str = load_backend(connections.settings[alias]["ENGINE"]).DatabaseWrapper.vendor
    return vendor


def poolable_aliases() -> list[str]:
    """The configured aliases whose backend the pool can serve."""
    return [alias for alias in connections.settings if _vendor(alias) in DEFAULT_VENDORS]


def resolve_aliases(aliases: Iterable[str] | None) -> tuple[str, ...]:
    """Validate the ``aliases`` argument against ``settings.DATABASES``."""
    known = list(connections.settings)
    if aliases is None:
        found = poolable_aliases()
        if not found:
            raise ValueError(
                f"aliases: none of the configured aliases {known!r} uses a backend "
                f"wsgi_db_pool pools by default (MySQL/MariaDB, PostgreSQL; SQLite when named)"
            )
        return tuple(found)
    if isinstance(aliases, (str, bytes)):
        raise TypeError(
            f"aliases must be a list of alias names, not the string {aliases!r} "
            f"(did you mean [{aliases!r}]?)"
        )
    try:
        names = list(aliases)
    except TypeError:
        raise TypeError(f"aliases must be a list of alias names, not {aliases!r}") from None
    if not names:
        raise ValueError("aliases must name at least one alias, not an empty list")
    result: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"aliases must contain alias names (str), not {name!r}")
        if name not in connections.settings:
            raise ValueError(f"aliases: unknown alias {name!r}; settings.DATABASES has {known!r}")
        vendor = _vendor(name)
        if vendor not in POOLABLE_VENDORS:
            raise ValueError(
                f"aliases: alias {name!r} uses {vendor!r}, which wsgi_db_pool cannot pool "
                f"(supported: {_SUPPORTED})"
            )
        if vendor == "sqlite" and _in_memory(name):
            raise ValueError(
                f"aliases: alias {name!r} is an in-memory SQLite database: every connection "
                f"is a database of its own, so pooled requests would see different data; "
                f"give it a file NAME, or leave it out of aliases"
            )
        if name not in result:
            result.append(name)
    return tuple(result)


def _in_memory(alias: str) -> bool:
    from django.db.backends.sqlite3.creation import DatabaseCreation

    return bool(DatabaseCreation.is_in_memory_db(connections.settings[alias]["NAME"]))


def dialect(alias: str) -> Any:
    """The module with the alias's vendor specifics (``_mysql``, ``_postgresql``, ``_sqlite``)."""
    return _DIALECTS[_vendor(alias)]


# -- the seam ---------------------------------------------------------------------

_django_create_connection = ConnectionHandler.create_connection
# The handler's private storage (an asgiref Local, or ours), reached only here; tests pin it.
_handler: Any = connections


def _create_connection(alias: str) -> Any:
    lease = current_lease.get()
    if lease is not None and lease.wants(alias):
        return lease.checkout(alias)
    return _django_create_connection(connections, alias)


def install() -> None:
    """Route ``connections[alias]`` misses through the current lease; idempotent."""
    if connections.__dict__.get("create_connection") is not _create_connection:
        connections.create_connection = _create_connection  # type: ignore[method-assign]


def _storage_kind() -> str | None:
    """What keeps Django's wrappers: "ours", "greenlet" or "shared" local, or None (unknown)."""
    import gevent.local

    current = _handler._connections
    if type(current) is _storage.storage_type():
        return "ours"
    old = getattr(current, "_storage", None)
    if old is None:
        return None
    return "greenlet" if isinstance(old, gevent.local.local) else "shared"


def install_storage() -> None:
    """Under gevent, give Django's handler our storage (see ``_storage``); idempotent.

    Done when the middleware is made, normally while the WSGI module is imported and
    nothing but the current greenlet has bound a connection: its bindings are carried
    over. Bindings other greenlets made before would stay behind in Django's old
    storage, so it is never done later, while requests run.
    """
    if not _sync.gevent_patched() or _storage_kind() != "greenlet":
        return  # a shared storage is fix_storage's case; an unknown one is left to Django
    fresh = _storage.storage_type()()
    aliases = _handler.settings
    for alias, wrapper in _bound().items():
        if alias in aliases:  # not asgiref's own entries
            setattr(fresh, alias, wrapper)
    _handler._connections = fresh


def fix_storage() -> bool:
    """Make Django's connection storage greenlet-local if gevent patched after Django.

    When ``django.db`` is imported before gevent's ``patch_all()`` (gunicorn
    ``--preload`` with the gevent worker), ``connections`` keeps one real
    thread-local that every greenlet shares. Replacing it (with ours) at the first
    request gives each greenlet its own, as if the patch had come first; what was
    bound in it is dropped. Returns True when it replaced it.
    """
    if not _sync.gevent_patched() or _storage_kind() != "shared":
        return False
    _handler._connections = _storage.storage_type()()
    return True


# -- one alias's connections ------------------------------------------------------


class _Guard:
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
    """

    __slots__ = (
        "dialect",
        "dirty",
        "fault",
        "lost_conn",
        "pending",
        "plan",
        "restoring",
        "wrapper",
    )

    def __init__(self, wrapper: Any, dialect: Any, plan: Any = None) -> None:
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
            raise
        except BaseException:
            self.interrupted()
            raise

    def interrupted(self) -> None:
        self.lost("interrupted")

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


def _leave_to_pool() -> None:
    """Replaces ``close_if_unusable_or_obsolete`` on pooled wrappers: the pool decides."""


def _no_silent_reconnect(wrapper: Any, guard: _Guard, timeout: float) -> Callable[[], None]:
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
        _leave_to_pool_settings(wrapper)

    return reconnect


def _leave_to_pool_settings(wrapper: Any) -> None:
    # Django's CONN_MAX_AGE and CONN_HEALTH_CHECKS must not close or ping a pooled
    # connection behind the pool's back (request_finished runs close_old_connections
    # on every bound wrapper); connect() sets them anew.
    wrapper.close_at = None
    wrapper.health_check_enabled = False


class AliasConnector:
    """Makes, checks, resets and closes the pooled wrappers of one alias."""

    def __init__(self, alias: str, reset_session: str = "auto", timeout: float = 30.0) -> None:
        self.alias = alias
        self.reset_session = reset_session
        self.timeout = timeout
        self.dialect = dialect(alias)

    def classify(self, exc: Exception) -> str:
        kind: str = self.dialect.classify_connect_error(exc)
        return kind

    def reachable(self) -> bool | None:
        known: bool | None = self.dialect.reachable(connections.settings[self.alias])
        return known

    def connect(self) -> Any:
        wrapper: Any = _django_create_connection(connections, self.alias)
        try:
            wrapper.ensure_connection()
            # How to reset this session later; it may ask the server (the role, the
            # time zone the session began with), so it fails the connect as the connect would.
            plan = self.dialect.plan_reset(
                wrapper.connection,
                lambda: _session_setup(wrapper),
                wrapper.settings_dict["AUTOCOMMIT"],
            )
        except BaseException:
            if wrapper.connection is not None:
                self.dialect.abort(wrapper.connection)
                wrapper.connection = None
            raise
        _leave_to_pool_settings(wrapper)
        wrapper.close_if_unusable_or_obsolete = _leave_to_pool
        guard = _Guard(wrapper, self.dialect, plan)
        wrapper.connect = _no_silent_reconnect(wrapper, guard, self.timeout)
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
        guard: _Guard = wrapper._wsgi_db_pool_guard
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

    def _finish_reset(self, guard: _Guard, raw: Any) -> str | None:
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
        guard: _Guard = wrapper._wsgi_db_pool_guard
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
            reason = self._reset_planned(guard, raw, now, wait=mode == "always")
            if reason is not None:
                return reason
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

    def _reset_planned(self, guard: _Guard, raw: Any, now: bool, wait: bool) -> str | None:
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
        except Exception:
            return "reset_failed"
        except BaseException:
            guard.interrupted()
            raise
        guard.dirty = False
        if wait:
            return self._finish_reset(guard, raw)
        return None

    def _reset_session(self, guard: _Guard, wrapper: Any, raw: Any, autocommit: bool) -> str | None:
        """A reset that waits for the server, for drivers without a plan (mysqlclient);
        SQLite's raises, and the connection is discarded instead."""
        try:
            # The server rolls back first, then drops the session's state.
            self.dialect.reset_session(raw, wrapper.get_connection_params())
            # The backend's own way (a method on MySQLdb, an attribute on psycopg).
            wrapper._set_autocommit(autocommit)
            wrapper.init_connection_state()
        except Exception:
            return "reset_failed"
        except BaseException:
            guard.interrupted()
            raise
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
        "unavailable",
        "where",
    )

    def __init__(
        self, pools: dict[str, Pool], where: str | None, capture_stack: bool = False
    ) -> None:
        self.pools = pools
        self.where = where
        self.capture_stack = capture_stack
        self.owner = _sync.get_ident()
        self.held: list[tuple[str, PooledConnection]] | None = None  # made on first checkout
        self.active = True
        # The error that made a checkout fail because the database was out of reach.
        self.unavailable: BaseException | None = None
        # Whatever must live as long as the lease (a weakref watching its owner).
        self.keepalive: Any = None
        # Wrappers this thread had bound for pooled aliases before the lease began.
        self.aside: dict[str, Any] | None = None

    def set_aside(self) -> None:
        """Unbind wrappers already bound here for pooled aliases, until ``finish()``.

        A thread that served no request before may hold one (``django.setup()``
        binds an unconnected wrapper while it loads models; so does code run at
        import by gunicorn ``--preload``), and Django would use it instead of
        asking for a pooled one.
        """
        bound = _bound()
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
        return self.active and self.owner == _sync.get_ident()

    def wants(self, alias: str) -> bool:
        return self.active and alias in self.pools and self.owner == _sync.get_ident()

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
        """Unbind and give back everything held: reset and recycled, or discarded.

        Every connection is given back even when one reset is interrupted; the first
        BaseException is raised again at the end.
        """
        self.active = False
        held, self.held = self.held, None
        if not held:
            return
        mine = self.owner == _sync.get_ident()
        error: BaseException | None = None
        for alias, entry in held:
            pool = self.pools[alias]
            wrapper = entry.conn
            try:
                if mine:
                    _unbind(alias, wrapper)
                reason = pool.connector.reset(wrapper)
            except BaseException as exc:
                error = error or exc
                reason = "interrupted"
            try:
                pool.checkin(entry, reason)
            except BaseException as exc:  # the slot is freed; the others still go back
                error = error or exc
        if error is not None:
            raise error

    def finish(self, token: contextvars.Token[Lease | None]) -> None:
        """End the unit of work: give everything back, then leave the context as it was."""
        try:
            self.release()
        finally:
            if self.aside is not None and self.owner == _sync.get_ident():
                _bound().update(self.aside)
                self.aside = None
            # contextlib.suppress would cost an object on every request.
            try:  # noqa: SIM105
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
        mine = self.owner == _sync.get_ident()
        for alias, entry in held or ():
            try:
                if mine:
                    _unbind(alias, entry.conn)
            finally:
                self.pools[alias].reclaim(entry)


# -- what this thread already holds ---------------------------------------------------


def joined_aliases(aliases: Iterable[str]) -> frozenset[str]:
    """Of ``aliases``, those whose wrapper bound here is connected or inside ``atomic()``.

    ``pooled()`` runs on these instead of checking out: a transaction the caller began
    (its own ``atomic()``, a ``TestCase``'s) must see what the block writes and undo it
    on rollback. A bound wrapper that never connected (``django.setup()`` binds one
    while it loads models) holds nothing to join.
    """
    bound = _bound()
    if not bound:
        return frozenset()
    return frozenset(alias for alias in aliases if _in_use(bound.get(alias)))


def _in_use(wrapper: Any) -> bool:
    if wrapper is None or hasattr(wrapper, "_wsgi_db_pool_guard"):
        # A pooled wrapper bound outside any lease was left by one reclaimed from
        # another greenlet (its socket dropped): never the caller's own to join.
        return False
    return _busy(wrapper)


def _busy(wrapper: Any) -> bool:
    return wrapper.connection is not None or bool(wrapper.in_atomic_block)


class Unpooled:
    """A ``pooled()`` block run on Django's own connections, with no pool in the process.

    Made when the block begins; ``end()`` closes what the block connected and unbinds
    what it bound, so a spawned greenlet strands no connection (nothing else would
    close it: Django does that only at the end of a request). Connections the thread
    held before the block are left as they were: the block joined them.
    """

    __slots__ = ("bound", "in_use", "owner")

    def __init__(self) -> None:
        bound = _bound()
        self.owner = _sync.get_ident()
        self.bound = dict(bound)
        # Whatever had a connection stays as it was, even a leftover pooled wrapper.
        self.in_use = {alias for alias, wrapper in bound.items() if _busy(wrapper)}

    def end(self) -> None:
        """Close what the block connected, unbind what it bound; the first error comes last."""
        if self.owner != _sync.get_ident():
            return  # ended from elsewhere: this thread's storage is out of reach
        bound = _bound()
        error: BaseException | None = None
        for alias in [alias for alias in bound if alias in connections.settings]:
            if alias in self.in_use:
                continue
            try:
                bound[alias].close()
            except BaseException as exc:  # Django dropped it all the same; close the others
                error = error or exc
            before = self.bound.get(alias)
            if before is None:
                del bound[alias]
            else:
                bound[alias] = before
        if error is not None:
            raise error


def _bound() -> dict[str, Any]:
    # The current thread's (greenlet's) wrappers: asgiref's thread-critical Local
    # keeps them in a threading.local, whose __dict__ is this thread's own; ours is
    # that threading.local itself. Its _storage property returns itself, but reading
    # a property through gevent's local costs 0.4 us more than __dict__ (measured).
    store = _handler._connections
    ours = type(store) is _storage._storage_type
    bound: dict[str, Any] = store.__dict__ if ours else store._storage.__dict__
    return bound


def _unbind(alias: str, wrapper: BaseDatabaseWrapper) -> None:
    bound = _bound()
    if bound.get(alias) is wrapper:
        del bound[alias]
