"""The private Django, asgiref and PyMySQL details wsgi_db_pool relies on, pinned.

When a new release changes one of these, this file fails first and says which. They
must hold on every supported Django (4.2 and 5.2 are tested).
"""

from __future__ import annotations

import _thread
import collections
import inspect
import threading
import time
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.local
import gevent.monkey
import pymysql
import pytest
from asgiref.local import Local
from django.core.signals import request_finished, request_started
from django.db import DatabaseError, connections
from django.db.utils import ConnectionHandler, load_backend

# Imported from the module itself, see the note in conftest about pymysql.err.
from pymysql.constants import CLIENT, SERVER_STATUS
from pymysql.protocol import EOFPacketWrapper

from tests.conftest import DB_NAME, USER, Server
from wsgi_db_pool import _mysql

pytestmark = pytest.mark.contract

_STATE_CHANGED = 0x4000  # SERVER_SESSION_STATE_CHANGED


# -- ConnectionHandler: the seam -------------------------------------------------------


class _Counting:
    """A create_connection replacement that records its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, alias: str) -> object:
        self.calls.append(alias)
        return object()


def test_getitem_creates_only_when_nothing_is_bound() -> None:
    """`handler[alias]` calls the instance's create_connection on a miss only, and binds it."""
    handler = ConnectionHandler()
    create = _Counting()
    handler.create_connection = create  # type: ignore[method-assign]
    first = handler["default"]
    assert create.calls == ["default"]
    assert handler["default"] is first
    assert create.calls == ["default"]
    assert handler._connections.default is first

    del handler["default"]
    assert handler["default"] is not first
    assert create.calls == ["default", "default"]

    mine = object()
    handler["default"] = mine
    assert handler["default"] is mine
    assert len(create.calls) == 2


def test_connections_is_a_connection_handler_that_takes_an_instance_attribute() -> None:
    """The global `connections` is a ConnectionHandler; create_connection can be set on it."""
    assert type(connections) is ConnectionHandler
    assert ConnectionHandler.thread_critical is True
    assert "__slots__" not in vars(ConnectionHandler)
    assert inspect.signature(ConnectionHandler.create_connection).parameters.keys() == {
        "self",
        "alias",
    }


def test_unknown_alias_is_checked_before_create_connection() -> None:
    """A miss for an alias not in settings raises before create_connection runs."""
    handler = ConnectionHandler()
    create = _Counting()
    handler.create_connection = create  # type: ignore[method-assign]
    with pytest.raises(Exception, match="doesn't exist"):
        handler["nope"]
    assert create.calls == []


# -- the storage: greenlet-local once gevent patched ---------------------------------------


def test_connection_storage_is_a_threading_local() -> None:
    """Django's handler keeps an asgiref Local whose `_storage` is a threading.local."""
    local = ConnectionHandler()._connections
    assert isinstance(local, Local)
    assert isinstance(local._storage, threading.local)
    fresh = Local(thread_critical=True)
    assert isinstance(fresh._storage, threading.local)


def test_storage_is_greenlet_local_under_gevent() -> None:
    """Under gevent, threading.local is gevent's: each greenlet binds its own wrappers."""
    assert gevent.monkey.is_module_patched("threading")
    assert threading.local is gevent.local.local
    assert isinstance(connections._connections._storage, gevent.local.local)

    handler = ConnectionHandler()
    handler.create_connection = _Counting()  # type: ignore[method-assign]
    first, second = (
        gevent.spawn(lambda: handler["default"]),
        gevent.spawn(lambda: handler["default"]),
    )
    gevent.joinall([first, second], raise_error=True)
    assert first.value is not second.value
    assert not hasattr(handler._connections, "default")


def test_get_ident_is_per_greenlet() -> None:
    """`_thread.get_ident()`, which Django stamps on wrappers, differs between greenlets."""
    here = _thread.get_ident()
    there = gevent.spawn(_thread.get_ident).get()
    assert here != there


# -- BaseDatabaseWrapper ---------------------------------------------------------------------


@pytest.fixture
def wrapper(server: Server) -> Iterator[Any]:
    """A connected MySQL wrapper of our own, never bound to `connections`."""
    made = connections.create_connection("default")
    made.ensure_connection()
    yield made
    made.close()


ATTRIBUTES = [
    ("_thread_ident", int),
    ("in_atomic_block", bool),
    ("savepoint_ids", list),
    ("atomic_blocks", list),
    ("needs_rollback", bool),
    ("rollback_exc", type(None)),
    ("commit_on_exit", bool),
    ("savepoint_state", int),
    ("run_on_commit", list),
    ("run_commit_hooks_on_set_autocommit_on", bool),
    ("queries_log", collections.deque),
    ("execute_wrappers", list),
    ("autocommit", bool),
    ("close_at", float),
    ("health_check_enabled", bool),
    ("health_check_done", bool),
    ("errors_occurred", bool),
    ("closed_in_transaction", bool),
    ("force_debug_cursor", bool),
    ("settings_dict", dict),
]


@pytest.mark.parametrize(("name", "kind"), ATTRIBUTES, ids=[name for name, _ in ATTRIBUTES])
def test_wrapper_attribute(wrapper: Any, name: str, kind: type) -> None:
    """A connected wrapper has the attribute the pool resets, with the type it resets it to."""
    assert isinstance(getattr(wrapper, name), kind)


METHODS = [
    "close_if_unusable_or_obsolete",
    "close_if_health_check_failed",
    "validate_thread_sharing",
    "ensure_connection",
    "init_connection_state",
    "execute_wrapper",
    "is_usable",
    "_commit",
    "_rollback",
    "_set_autocommit",
]


@pytest.mark.parametrize("name", METHODS)
def test_wrapper_method(wrapper: Any, name: str) -> None:
    """A wrapper has the method the pool calls or replaces."""
    assert callable(getattr(wrapper, name))


def test_wrapper_state_after_connect(wrapper: Any) -> None:
    """After connect, the wrapper is in autocommit, outside atomic, stamped with this greenlet."""
    assert wrapper.connection is not None
    assert isinstance(wrapper.connection, pymysql.connections.Connection)
    assert wrapper.autocommit is True
    assert wrapper.settings_dict["AUTOCOMMIT"] is True
    assert wrapper.in_atomic_block is False
    assert wrapper._thread_ident == _thread.get_ident()
    assert wrapper.settings_dict is connections.settings["default"]


def test_validate_thread_sharing_follows_thread_ident(server: Server) -> None:
    """A wrapper refuses another greenlet until `_thread_ident` names that greenlet."""
    made = connections.create_connection("default")

    def use() -> None:
        made.validate_thread_sharing()

    with pytest.raises(DatabaseError, match="same thread"):
        gevent.spawn(use).get()

    def adopt_then_use() -> None:
        made._thread_ident = _thread.get_ident()
        made.validate_thread_sharing()

    gevent.spawn(adopt_then_use).get()


def test_close_if_unusable_or_obsolete_closes_at_conn_max_age_zero(server: Server) -> None:
    """With CONN_MAX_AGE = 0, close_if_unusable_or_obsolete closes at once."""
    made = connections.create_connection("default")
    made.ensure_connection()
    try:
        assert made.settings_dict["CONN_MAX_AGE"] == 0
        assert made.close_at is not None
        made.close_if_unusable_or_obsolete()
        assert made.connection is None
    finally:
        made.close()


def test_connect_sets_close_at_and_health_checks_from_settings(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connect() re-reads CONN_MAX_AGE and CONN_HEALTH_CHECKS, undoing the pool's overrides."""
    monkeypatch.setitem(connections.settings["default"], "CONN_HEALTH_CHECKS", True)
    made = connections.create_connection("default")
    made.ensure_connection()
    try:
        made.close_at = None
        made.health_check_enabled = False
        made.close()
        made.ensure_connection()
        assert made.close_at is not None
        assert made.health_check_enabled is True
    finally:
        made.close()


def test_request_signals_call_close_if_unusable_or_obsolete_on_bound_wrappers(
    server: Server,
) -> None:
    """Both request signals call close_if_unusable_or_obsolete as found on the bound instance."""
    calls: list[str] = []

    def in_a_greenlet() -> None:
        made = connections.create_connection("default")
        made.close_if_unusable_or_obsolete = lambda: calls.append("called")
        connections["default"] = made
        try:
            request_started.send(sender=None)
            request_finished.send(sender=None)
        finally:
            del connections["default"]

    gevent.spawn(in_a_greenlet).get()
    assert calls == ["called", "called"]


def test_health_check_pings_through_is_usable(server: Server) -> None:
    """With health checks on, a cursor pings first: is_usable() calls connection.ping() bare."""
    made = connections.create_connection("default")
    made.ensure_connection()
    try:
        pings: list[tuple[Any, ...]] = []
        real_ping = made.connection.ping
        made.connection.ping = lambda *args: pings.append(args) or real_ping(False)
        made.health_check_enabled = True
        made.health_check_done = False
        with made.cursor() as cursor:
            cursor.execute("SELECT 1")
        assert pings == [()]
        assert made.health_check_done is True
    finally:
        made.close()


def test_public_transaction_methods_call_the_instance_private_ones(server: Server) -> None:
    """commit(), rollback(), set_autocommit() call the private methods found on the instance."""
    made = connections.create_connection("default")
    made.ensure_connection()
    calls: list[str] = []
    try:
        for name in ("_commit", "_rollback", "_set_autocommit"):
            original = getattr(made, name)

            def recording(*args: Any, _name: str = name, _original: Any = original) -> Any:
                calls.append(_name)
                return _original(*args)

            setattr(made, name, recording)
        made.set_autocommit(False)
        made.commit()
        made.rollback()
        made.set_autocommit(True)
        assert calls == ["_set_autocommit", "_commit", "_rollback", "_set_autocommit"]
    finally:
        made.close()


def test_execute_wrappers_list_is_read_at_each_execute(server: Server) -> None:
    """A cursor reads `execute_wrappers` at each execute: a replaced list takes effect at once."""
    made = connections.create_connection("default")
    seen: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    try:
        with made.cursor() as cursor:
            made.execute_wrappers = [wrapper]
            cursor.execute("SELECT 1")
            made.execute_wrappers = []
            cursor.execute("SELECT 2")
        assert seen == ["SELECT 1"]
    finally:
        made.close()


def test_init_connection_state_sets_the_isolation_level(server: Server) -> None:
    """init_connection_state() re-applies Django's session setup (the isolation level)."""
    made = connections.create_connection("default")
    made.ensure_connection()
    try:
        raw = made.connection
        with raw.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        made.init_connection_state()
        with raw.cursor() as cursor:
            cursor.execute("SELECT @@session.tx_isolation")
            assert cursor.fetchone()[0] == "READ-COMMITTED"
    finally:
        made.close()


def test_backend_vendors() -> None:
    """load_backend(ENGINE).DatabaseWrapper.vendor tells MySQL from the rest."""
    assert load_backend("django.db.backends.mysql").DatabaseWrapper.vendor == "mysql"
    assert load_backend("django.db.backends.sqlite3").DatabaseWrapper.vendor == "sqlite"


# -- PyMySQL ------------------------------------------------------------------------------------


def _connect() -> pymysql.connections.Connection:
    return pymysql.connect(
        host="127.0.0.1", user=USER, password=USER, database=DB_NAME, ssl_disabled=True
    )


def _one(conn: pymysql.connections.Connection, sql: str) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def test_django_uses_pymysql_as_mysqldb() -> None:
    """MySQLdb is PyMySQL, so the backend's connections are PyMySQL connections."""
    import MySQLdb

    assert MySQLdb is pymysql


def test_pymysql_connection_internals(server: Server) -> None:
    """A PyMySQL connection has `_sock`, `server_status`, `_force_close`, and what a reset needs."""
    conn = _connect()
    try:
        assert conn._sock is not None
        assert hasattr(conn._sock, "fileno")
        assert isinstance(conn.server_status, int)
        for name in ("charset", "collation", "sql_mode", "init_command"):
            assert hasattr(conn, name), name
        for name in (
            "_execute_command",
            "_read_ok_packet",
            "set_character_set",
            "autocommit",
            "rollback",
        ):
            assert callable(getattr(conn, name)), name
        assert "reconnect" in inspect.signature(conn.ping).parameters
        conn._force_close()
        assert conn._sock is None
    finally:
        conn._force_close()


def test_every_pymysql_cursor_sends_through_connection_query(server: Server) -> None:
    """ "auto" skips the reset after clean requests by watching Connection.query (see
    _mysql_clean.watch): every cursor, and callproc, must send through it, and the
    session changes made without it must be the methods the watch wraps."""
    from wsgi_db_pool import _mysql_clean

    conn = _connect()
    try:
        seen = _mysql_clean.watch(conn)
        assert seen.clean
        for cursor_class in (pymysql.cursors.Cursor, pymysql.cursors.SSCursor):
            with conn.cursor(cursor_class) as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchall()
        assert seen.clean
        with conn.cursor() as cursor:
            cursor.execute("SELECT %s", ["@x"])  # a value that looks like a variable
        assert not seen.clean
        seen.clean = True
        with conn.cursor() as cursor:
            cursor.executemany("SELECT %s", [(1,), (2,)])
        assert seen.clean  # plain SELECTs, one query each
        seen.clean = True
        conn.select_db(DB_NAME)
        assert not seen.clean
        seen.clean = True
        conn.set_character_set("utf8mb4")
        assert not seen.clean
        # callproc sends SET @_name_0 and CALL through query().
        assert "self._query" in inspect.getsource(pymysql.cursors.Cursor.callproc)
        assert "conn.query(" in inspect.getsource(pymysql.cursors.Cursor._query)
        assert "conn.query(" in inspect.getsource(pymysql.cursors.SSCursor._query)
    finally:
        conn.close()


def test_server_status_flags(server: Server) -> None:
    """server_status carries the IN_TRANS and AUTOCOMMIT bits of each OK packet."""
    assert SERVER_STATUS.SERVER_STATUS_IN_TRANS == 1
    assert SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT == 2
    conn = _connect()
    try:
        conn.autocommit(True)
        assert conn.server_status & SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
        with conn.cursor() as cursor:
            cursor.execute("START TRANSACTION")
            assert conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS
            cursor.execute("SELECT 1")
            # Stale after a result set, but still "in transaction": the safe side.
            assert conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS
            cursor.execute("COMMIT")
            assert not conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS
            cursor.execute("SET autocommit = 0")
            assert not conn.server_status & SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
    finally:
        conn.close()


def test_pymysql_commands_write_once_then_read_through_read_packet(server: Server) -> None:
    """A command is one `_write_bytes` call of a packet numbered 0, and every reply packet is
    read through the instance's `_read_packet`: what the deferred reset hooks rely on."""
    conn = _connect()
    try:
        for name in _mysql._PYMYSQL_INTERNALS:
            assert hasattr(conn, name), name
        writes: list[bytes] = []
        reads: list[int] = []
        write, read = conn._write_bytes, conn._read_packet

        def spy_write(data: bytes) -> None:
            writes.append(data)
            write(data)

        def spy_read(*args: Any, **kwargs: Any) -> Any:
            reads.append(conn._next_seq_id)
            return read(*args, **kwargs)

        conn._write_bytes = spy_write  # type: ignore[method-assign]
        conn._read_packet = spy_read  # type: ignore[method-assign]
        assert _one(conn, "SELECT 41 + 1") == 42
        conn.ping(False)
        assert [data[3] for data in writes] == [0, 0]  # sequence id 0, one write each
        assert reads[0] == 1  # a reply's packets are numbered from 1
        assert len(reads) >= 2 + 1  # the result set's packets, then the ping's OK
        del conn._write_bytes, conn._read_packet
        assert "_read_packet" not in vars(conn)
    finally:
        conn.close()


def test_pymysql_deferred_reset(server: Server) -> None:
    """The reset written with the next command clears the session and sets it up again; the
    command after it reads its own reply; PyMySQL's autocommit belief matches the server."""
    conn = _connect()
    try:
        plan = _mysql.plan_reset(
            conn, lambda: ["SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"], True
        )
        assert plan is not None
        with conn.cursor() as cursor:
            cursor.execute("SET @leak = 1")
            cursor.execute("SET autocommit = 0")
        _mysql.defer_reset(conn, plan)
        assert _mysql.reset_deferred(conn)
        assert conn.get_autocommit() is True
        assert _one(conn, "SELECT @leak") is None
        assert not _mysql.reset_deferred(conn)
        assert _one(conn, "SELECT @@autocommit") == 1
        assert _one(conn, "SELECT @@tx_isolation") == "READ-COMMITTED"
        assert _one(conn, "SELECT DATABASE()") == DB_NAME
    finally:
        conn.close()


@pytest.mark.parametrize("init_command", [None, "SET @from_init = 1"], ids=["simple", "generic"])
def test_pymysql_reset_reply_error_raises(server: Server, init_command: str | None) -> None:
    """A setup statement the server refuses after the reset raises PyMySQL's own error, from
    either reader of the replies (one OK packet each, or PyMySQL's result reader)."""
    conn = pymysql.connect(
        host="127.0.0.1",
        user=USER,
        password=USER,
        database=DB_NAME,
        ssl_disabled=True,
        init_command=init_command,
    )
    try:
        made = _mysql.plan_reset(conn, list, True)
        assert made is not None
        assert made.simple is (init_command is None)
        refused = _mysql._command(0x03, b"SET SESSION no_such_variable = 1")
        plan = made._replace(batch=made.batch + refused, replies=made.replies + 1)
        replies = _mysql.send_reset(conn, plan)
        with pytest.raises(pymysql.MySQLError) as raised:
            _mysql.finish_reset(conn, plan, replies)
        assert raised.value.args[0] == 1193  # unknown system variable
    finally:
        conn._force_close()


def test_pymysql_reset_written_now_read_later(server: Server) -> None:
    """send_reset writes the batch at once (the server drops a lock before anyone reads);
    finish_reset reads the replies later."""
    conn = _connect()
    try:
        plan = _mysql.plan_reset(conn, list, True)
        assert plan is not None
        lock = f"{DB_NAME}.contract"  # lock names are server-wide
        assert _one(conn, f"SELECT GET_LOCK('{lock}', 0)") == 1
        replies = _mysql.send_reset(conn, plan)
        deadline = time.monotonic() + 3
        while server.value("SELECT IS_USED_LOCK(%s)", (lock,)) is not None:
            assert time.monotonic() < deadline, "the lock outlived the reset"
            gevent.sleep(0.005)
        _mysql.finish_reset(conn, plan, replies)
        assert _one(conn, "SELECT 1") == 1
    finally:
        conn.close()


class _StatusResult(pymysql.connections.MySQLResult):
    """Keeps the status of the EOF packet that ends a result set (PyMySQL drops it)."""

    def _check_packet_is_eof(self, packet: Any) -> bool:
        if not packet.is_eof_packet():
            return False
        eof = EOFPacketWrapper(packet)
        self.warning_count, self.has_next = eof.warning_count, eof.has_next
        self.server_status = eof.server_status & 0xFFFF
        return True


class _StatusConnection(pymysql.connections.Connection):
    """Notes the server status of the last packet of each statement's reply."""

    def _read_query_result(self, unbuffered: bool = False) -> int:
        self._result = result = _StatusResult(self)
        result.read()
        if result.server_status is not None:
            self.server_status = result.server_status
        return int(result.affected_rows or 0)


@pytest.mark.parametrize(
    ("sql", "flagged"),
    [
        pytest.param("SET @a = 1", True, id="set-user-variable"),
        pytest.param("SELECT 1 INTO @b", False, id="select-into-user-variable"),
        pytest.param("SELECT @c := 1", False, id="assign-user-variable"),
        pytest.param("SELECT GET_LOCK('{lock}', 0)", False, id="get-lock"),
        pytest.param("CREATE TEMPORARY TABLE t_flag (x INT)", True, id="temporary-table"),
        pytest.param("SET SESSION time_zone = '+01:00'", True, id="session-variable"),
    ],
)
def test_session_state_changed_flag_misses_some_state(
    server: Server, sql: str, flagged: bool
) -> None:
    """MariaDB's SERVER_SESSION_STATE_CHANGED (session_track_state_change=ON) is not raised
    for user variables set by SELECT ... INTO or :=, nor for GET_LOCK(): why "auto" resets
    after every request rather than only when the server says the session changed."""
    conn = _StatusConnection(
        host="127.0.0.1",
        user=USER,
        password=USER,
        database=DB_NAME,
        ssl_disabled=True,
        client_flag=CLIENT.SESSION_TRACK,
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION session_track_state_change = ON")
            cursor.execute(sql.format(lock=f"{DB_NAME}.flag"))
        assert bool(conn.server_status & _STATE_CHANGED) is flagged
    finally:
        conn.close()


def test_ping_without_reconnect_on_a_killed_connection(server: Server) -> None:
    """ping(reconnect=False) on a connection killed on the server raises and does not reconnect."""
    conn = _connect()
    conn_id = _one(conn, "SELECT CONNECTION_ID()")
    server.kill(conn_id)
    assert server.wait_count(0) == 0
    with pytest.raises(pymysql.MySQLError):
        conn.ping(reconnect=False)
    assert conn._sock is None
    assert server.count() == 0


def test_reset_connection_command(server: Server) -> None:
    """COM_RESET_CONNECTION via `_execute_command` drops session state and turns autocommit on."""
    conn = _connect()
    try:
        conn.autocommit(False)
        with conn.cursor() as cursor:
            cursor.execute("SET @leak = 1")
        conn._execute_command(0x1F, b"")
        conn._read_ok_packet()
        assert _one(conn, "SELECT @leak") is None
        assert _one(conn, "SELECT @@autocommit") == 1
        # PyMySQL does not know: its own idea of autocommit is unchanged.
        assert conn.autocommit_mode is False
        assert _one(conn, "SELECT DATABASE()") == DB_NAME
    finally:
        conn.close()
