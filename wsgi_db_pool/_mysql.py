"""MySQL/MariaDB specifics: which errors mean "gone", the free health checks, the reset.

Written against PyMySQL (the driver that yields to gevent), whose session reset rides on
the next request's first command; other DB-API drivers (mysqlclient) get the safe, slower
path: COM_CHANGE_USER at checkin and a ping for every check.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from . import _mysql_clean, _sync

# The connection is gone: server shutdown (1927, 4031 idle kill), gone away (2006),
# lost during query (2013), out of sync (2014), packet errors after a cut (2045, 2055).
# Or it must not be used again: a Galera node that is not synced, or cut off from the
# cluster, refuses every table query with 1047 and keeps refusing until it rejoins; a
# new connection (through the load balancer) reaches a node that serves.
GONE_CODES = frozenset({1047, 1927, 2006, 2013, 2014, 2045, 2055, 4031})
# The server cannot be reached or takes no more connections: a 503, not a 500.
UNAVAILABLE_CODES = frozenset({1040, 1053, 1203, 1226, 2002, 2003, 2005, 2006, 2013, 1927, 4031})
# What a failed connect says of the server (pool.Connector.classify). Nothing answers:
# refused, unreachable, unknown host (2002, 2003, 2005; PyMySQL's connect_timeout is a
# 2003 too), the server shutting down (1053). A server that answers and turns the
# connection away: too many connections (1040), max_user_connections (1203), a
# resource limit (1226), a host blocked after connect errors (1129).
_UNREACHABLE_CODES = frozenset({1053, 2002, 2003, 2005})
_REFUSED_CODES = frozenset({1040, 1129, 1203, 1226})
_DEFAULT_PORT = 3306

# Reset after every request: no statement's text shows what a stored function or a
# trigger left on the session, and the server's own report misses some (see plan_reset).
RESETS_EVERY_CHECKIN = True

_IN_TRANS = 0x0001  # SERVER_STATUS_IN_TRANS
_AUTOCOMMIT = 0x0002  # SERVER_STATUS_AUTOCOMMIT
_NO_BACKSLASH_ESCAPES = 0x0200  # SERVER_STATUS_NO_BACKSLASH_ESCAPES: PyMySQL escapes by it


def error_code(exc: BaseException | None) -> int | None:
    """The MySQL error number carried by ``exc`` or the error it wraps, if any."""
    seen = 0
    while exc is not None and seen < 5:
        args = getattr(exc, "args", ())
        if args and isinstance(args[0], int):
            return args[0]
        exc = exc.__cause__
        seen += 1
    return None


def is_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection itself is finished."""
    return error_code(exc) in GONE_CODES


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the server cannot be reached or refuses new connections."""
    return error_code(exc) in UNAVAILABLE_CODES


def classify_connect_error(exc: BaseException) -> str:
    """ "unreachable", "refused", "lost" (during the handshake or setup: a KILL?) or "error"."""
    code = error_code(exc)
    if code in _UNREACHABLE_CODES or _timed_out(exc):
        # A greeting that never came (connect_timeout on a stalled network) is a 2013
        # in PyMySQL, but says the same as a refused connect.
        return "unreachable"
    if code in _REFUSED_CODES:
        return "refused"
    if code in GONE_CODES:
        return "lost"
    return "error"


def _timed_out(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 6:
        if isinstance(exc, TimeoutError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def reachable(settings: dict[str, Any]) -> bool | None:
    """Whether something accepts TCP connections at the alias's address; None: cannot tell.

    The prober asks this before a full connect, which costs PyMySQL a TLS context
    (about 25 ms of CPU) even when the server is not there. The address is the
    driver's: Django lets OPTIONS override HOST and PORT.
    """
    options = settings.get("OPTIONS") or {}
    if "unix_socket" in options or "read_default_file" in options:
        return None
    host = options.get("host") or settings.get("HOST") or ""
    if host.startswith("/"):
        return None
    if host in ("", "localhost") and getattr(sys.modules.get("MySQLdb"), "__name__", "") != (
        "pymysql"
    ):
        return None  # mysqlclient goes through the socket file there
    port = int(options.get("port") or settings.get("PORT") or _DEFAULT_PORT)
    timeout = min(float(options.get("connect_timeout") or 10), 2.0)
    return _sync.tcp_reachable(host or "localhost", port, timeout)


_NO_SOCKET: Any = object()


def is_quiet(raw: Any) -> bool:
    """Whether an idle connection's socket is open and has nothing to read.

    A server-side KILL, ``wait_timeout``, shutdown or FIN makes the socket readable:
    this sees it with one syscall and no round trip. Unknown drivers count as quiet.
    """
    sock = getattr(raw, "_sock", _NO_SOCKET)
    if sock is None:
        return False
    if sock is _NO_SOCKET:
        return True
    # One poller per socket, kept on the connection: registering costs more than polling.
    cached = raw.__dict__.get("_wsgi_db_pool_poller")
    try:
        if cached is None or cached[0] is not sock:
            cached = (sock, _sync.new_poller(sock.fileno()))
            raw._wsgi_db_pool_poller = cached
        return not cached[1].poll(0)
    except (OSError, ValueError):
        return False


def is_open(raw: Any) -> bool:
    """Whether the driver still has a socket (PyMySQL drops it on any lost read)."""
    return getattr(raw, "_sock", True) is not None


def ping(raw: Any) -> bool:
    """A round trip to the server that never reconnects behind Django's back, and that a
    Galera node which must not be used fails.

    ``DO 1``, not COM_PING: a node out of sync or cut off from the cluster answers
    COM_PING and ``SELECT 1`` but refuses ``DO`` with 1047, as it refuses the request's
    own queries. Elsewhere it costs what COM_PING costs: one round trip, one OK packet.
    """
    try:
        # The class's query, not the instance's: the statement watch (_mysql_clean)
        # wraps the instance's and would take the ping for the request's own statement.
        type(raw).query(raw, "DO 1")
    except Exception:
        return False
    return True


def needs_rollback(raw: Any) -> bool:
    """Whether the server may hold an open transaction for ``raw``.

    PyMySQL keeps the status flags of the last OK packet: free to read, but stale
    after a result set, so "in transaction, or autocommit off" is the safe test.
    Drivers without the flags always roll back.
    """
    status = getattr(raw, "server_status", None)
    if not isinstance(status, int):
        return True
    return bool(status & _IN_TRANS) or not status & _AUTOCOMMIT


def abort(raw: Any) -> None:
    """Drop the socket without sending anything (no COM_QUIT, no lock)."""
    force_close = getattr(raw, "_force_close", None)
    try:
        if force_close is not None:
            force_close()
        else:
            raw.close()
    except Exception:  # a finalizer must not raise
        pass


def close(raw: Any) -> None:
    """Send COM_QUIT and close; falls back to dropping the socket."""
    if reset_deferred(raw):
        # Else the reset goes out ahead of COM_QUIT and its replies meet a closed
        # socket: the server counts an aborted client.
        del raw._write_bytes, raw._read_packet
    try:
        raw.close()
    except Exception:  # already broken: drop it
        abort(raw)


# Statements after which the session is no longer as Django set it up: SET (session
# variables, names, next transaction), USE, LOCK TABLES, PREPARE, HANDLER, CALL, user
# variables (a single @), temporary tables, named locks.
_SESSION_STATE = re.compile(
    # A statement's first word, also behind a comment (/* tags */, -- or # lines)
    # or inside a versioned comment (/*!40101 SET ... */, as dumps write them).
    r"(?:^|;|\*/|/\*!\d*|--[^\n]*\n|#[^\n]*\n)\s*(?:SET|USE|LOCK|PREPARE|HANDLER|CALL)\b"
    r"|(?<!@)@(?!@)|TEMPORARY|GET_LOCK",
    re.IGNORECASE,
)
_FIRST_WORDS = ("SET", "USE", "LOCK", "PREPARE", "HANDLER", "CALL")


def leaves_session_state(sql: object) -> bool:
    """Whether ``sql`` itself visibly leaves state on the session (a lock, a temporary
    table, a variable): then the reset is sent at once rather than with the next command.

    Blind to what stored functions and triggers do, so it never decides whether to
    reset, only when. Plain substring tests (C speed) settle the usual ORM statement;
    the full pattern runs only where comments, several statements or an @ need it.
    """
    if not isinstance(sql, str):
        return False
    if "@" in sql or ";" in sql or "/*" in sql or "--" in sql or "#" in sql:
        return _SESSION_STATE.search(sql) is not None
    upper = sql.upper()
    return upper.lstrip().startswith(_FIRST_WORDS) or "TEMPORARY" in upper or "GET_LOCK" in upper


_COM_INIT_DB = 0x02
_COM_QUERY = 0x03
_COM_RESET_CONNECTION = 0x1F
_MAX_PAYLOAD = 0xFFFFFF


class ServerSession(NamedTuple):
    """Where a connection's session lives on the server, read at connect: enough to end
    it from another connection (``end_session``) and to know that one reached the same
    server. Thread ids are per server, so behind a load balancer the node matters."""

    thread_id: int
    # The server's identity as ``node_sql`` reads it: (@@hostname, @@port) on MariaDB
    # (no server UUID there; a Galera node's wsrep_node_name defaults to the host name),
    # @@server_uuid on MySQL.
    node: tuple[Any, ...]
    node_sql: str


_MARIADB_NODE = "@@hostname, @@port"
_MYSQL_NODE = "@@server_uuid"


class ResetPlan(NamedTuple):
    """A connection's session reset, made once at connect."""

    batch: bytes  # COM_RESET_CONNECTION and the setup statements, as written on the wire
    replies: int  # one per command in the batch
    status: int  # the server status bits once they ran
    simple: bool  # every reply is one OK packet (no init_command, which may return rows)
    # COM_INIT_DB back to the database of the connect, or b"": the reset keeps a USE.
    # Only where a request visibly changed it (USE); stored programs cannot.
    restore_db: bytes
    # Where the session lives, read by the same query (no round trip of its own).
    session: ServerSession | None = None


# What the reset needs of PyMySQL's Connection; tests/test_contract.py pins each.
_PYMYSQL_INTERNALS = (
    "_write_bytes",
    "_read_packet",
    "_read_bytes",
    "_read_query_result",
    "_next_seq_id",
    "_read_timeout",
)


def _command(command: int, payload: bytes = b"") -> bytes:
    """One command packet, sequence id 0."""
    body = bytes((command,)) + payload
    if len(body) >= _MAX_PAYLOAD:
        raise ValueError("a session setup statement of 16 MiB or more")
    return len(body).to_bytes(3, "little") + b"\x00" + body


def session_setup(
    raw: Any, statements: list[str], autocommit: bool, *, set_autocommit: bool = True
) -> list[str]:
    """What a session needs after COM_RESET_CONNECTION: PyMySQL's own setup after login
    (the character set, sql_mode, init_command, as it ran them), ``statements``, and
    autocommit as wanted. The reset takes autocommit from the server's global value and
    an init_command may change it, so it is set last unless ``set_autocommit`` is False
    (the caller knows the reset leaves it as wanted)."""
    collation = getattr(raw, "collation", None)
    setup = [f"SET NAMES {raw.charset}" + (f" COLLATE {collation}" if collation else "")]
    if getattr(raw, "sql_mode", None) is not None:
        setup.append("SET sql_mode=" + raw.escape(raw.sql_mode))
    if getattr(raw, "init_command", None) is not None:
        setup.append(raw.init_command)
    setup.extend(statements)
    if set_autocommit:
        setup.append(f"SET autocommit={int(autocommit)}")
    return setup


def plan_reset(raw: Any, statements: Callable[[], list[str]], autocommit: bool) -> ResetPlan | None:
    """COM_RESET_CONNECTION and the session setup after it (``statements()`` gives the
    caller's part), to be written in one go; None when the driver is not PyMySQL,
    which ``reset_session`` then resets, waiting."""
    if not all(hasattr(raw, name) for name in _PYMYSQL_INTERNALS):
        return None
    role, global_autocommit, session = _role_setup(raw)
    # One statement less where the reset leaves autocommit as wanted by itself.
    leaves_it = autocommit and global_autocommit and getattr(raw, "init_command", None) is None
    setup = session_setup(raw, statements(), autocommit, set_autocommit=not leaves_it)
    if _names_kept(raw, setup):
        # Every statement the reset's reply must wait for costs the next request a
        # turn of the server: skip the one that would change nothing.
        del setup[0]
    if role is not None:
        setup.append(role)
    encoding = raw.encoding
    batch = _command(_COM_RESET_CONNECTION) + b"".join(
        _command(_COM_QUERY, statement.encode(encoding)) for statement in setup
    )
    # One OK packet a statement: no init_command (it may return rows), no statement that
    # is several (a ';' in Django's setup where the server has sql_auto_is_null on).
    simple = getattr(raw, "init_command", None) is None and not any(";" in s for s in setup)
    database = raw.db.encode(encoding) if isinstance(raw.db, str) else raw.db
    restore_db = _command(_COM_INIT_DB, database) if database else b""
    # The bits the setup leaves, as the connect's own setup left them: the escaping
    # PyMySQL does depends on NO_BACKSLASH_ESCAPES (an sql_mode), and an OK packet's
    # bits are all it ever learns of it.
    status = (raw.server_status & _NO_BACKSLASH_ESCAPES) | (_AUTOCOMMIT if autocommit else 0)
    return ResetPlan(batch, 1 + len(setup), status, simple, restore_db, session)


# Per server and character set settings: whether COM_RESET_CONNECTION leaves the
# character set as PyMySQL's SET NAMES made it. It goes back to the handshake's,
# which on MariaDB 10.x is the same and on MySQL 8 has another default collation.
_NAMES_KEPT: dict[tuple[Any, ...], bool] = {}
_NAMES_SQL = (
    "SELECT @@character_set_client, @@character_set_connection, "
    "@@character_set_results, @@collation_connection"
)


def _role_setup(raw: Any) -> tuple[str | None, bool, ServerSession]:
    """The SET ROLE that puts back the role the session began with, where the user has any
    role to take (COM_RESET_CONNECTION leaves a role a request set, MariaDB 10.11),
    whether the server's global autocommit is on (the reset takes it from there), and
    where the session lives (``ServerSession``).

    Asked per connection: a user granted no role cannot change it, but a grant made
    while the pool runs reaches the connections opened after it. MySQL's roles differ
    (a list, no APPLICABLE_ROLES before 8.0.19): not restored there.
    """
    mariadb = "mariadb" in str(getattr(raw, "server_version", "")).lower()
    with raw.cursor() as cursor:
        if not mariadb:
            cursor.execute(f"SELECT @@GLOBAL.autocommit, CONNECTION_ID(), {_MYSQL_NODE}")
            global_autocommit, thread_id, *node = cursor.fetchone()
            return None, bool(global_autocommit), ServerSession(thread_id, tuple(node), _MYSQL_NODE)
        # FROM a derived table: a Galera node that must not be used (out of sync, cut
        # off) accepts the login and Django's setup, and refuses a query naming any
        # table but information_schema's with 1047, which fails this connect as a lost
        # one: the pool tries again, or waits for its connections to nodes that serve,
        # instead of handing out a connection that fails at its first query.
        cursor.execute(
            "SELECT CURRENT_ROLE(), EXISTS(SELECT 1 FROM information_schema.APPLICABLE_ROLES),"
            f" @@GLOBAL.autocommit, CONNECTION_ID(), {_MARIADB_NODE} FROM (SELECT 1) AS serving"
        )
        current, applicable, global_autocommit, thread_id, *node = cursor.fetchone()
    session = ServerSession(thread_id, tuple(node), _MARIADB_NODE)
    if not applicable:
        return None, bool(global_autocommit), session
    if current is None:
        return "SET ROLE NONE", bool(global_autocommit), session
    role = "SET ROLE `" + str(current).replace("`", "``") + "`"
    return role, bool(global_autocommit), session


def _names_kept(raw: Any, setup: list[str]) -> bool:
    key = (raw.host, raw.port, raw.server_version, raw.charset, getattr(raw, "collation", None))
    kept = _NAMES_KEPT.get(key)
    if kept is None:
        kept = _NAMES_KEPT[key] = _probe_names(raw, setup)
    return kept


def _probe_names(raw: Any, setup: list[str]) -> bool:
    """Reset the fresh connection once and compare; then set it up again, as it was."""
    with raw.cursor() as cursor:
        cursor.execute(_NAMES_SQL)
        before = cursor.fetchone()
        raw._execute_command(_COM_RESET_CONNECTION, b"")
        raw._read_ok_packet()
        cursor.execute(_NAMES_SQL)
        after = cursor.fetchone()
        for statement in setup:
            cursor.execute(statement)
    return bool(before == after)


def send_reset(raw: Any, plan: ResetPlan) -> int:
    """Write the reset, the session setup and the database of the connect now, without
    waiting for the replies.

    For a request that visibly left a lock, a temporary table or another database: the
    server drops them at once. ``finish_reset`` reads the replies; returns how many.
    """
    raw._write_bytes(plan.batch + plan.restore_db)
    raw.server_status = plan.status
    return plan.replies + bool(plan.restore_db)


def finish_reset(raw: Any, plan: ResetPlan, replies: int) -> None:
    """Read the ``replies`` the reset left on the socket; raises the driver's error if the
    reset or a setup statement failed, after which the connection must be discarded."""
    if plan.simple:
        _finish_simple(raw, replies)
        return
    for _ in range(replies):
        # Each command's reply numbers its packets from 1; PyMySQL expects the number of
        # the one command it thinks it sent.
        raw._next_seq_id = 1
        raw._read_query_result()
        while raw._result.has_next:
            raw.next_result()


def _finish_simple(raw: Any, replies: int) -> None:
    """Replies that are each one OK packet, read as bytes: 2 us for the reset and one SET,
    where PyMySQL's result objects take 9-10 us (measured here, replies buffered)."""
    # PyMySQL 1.2 sets the read timeout in _read_packet only (1.1 in every _read_bytes).
    if getattr(raw, "_current_timeout", raw._read_timeout) != raw._read_timeout:
        raw._sock.settimeout(raw._read_timeout)
        raw._current_timeout = raw._read_timeout
    read = raw._read_bytes  # drops the socket on any error, as for any reply
    for _ in range(replies):
        head = read(4)
        body = read(int.from_bytes(head[:3], "little"))
        if head[3] != 1 or body[:1] != b"\x00":
            _unexpected(raw, body)


def _unexpected(raw: Any, body: bytes) -> None:
    """An error packet raises as PyMySQL would (its own classes, which Django wraps);
    anything else leaves the connection out of step for good."""
    packet_type = sys.modules[type(raw).__module__].MysqlPacket
    try:
        packet_type(body, raw.encoding).raise_for_error()
        raise RuntimeError(f"unexpected reply to the session reset: {body[:16]!r}")
    finally:
        abort(raw)


def defer_reset(raw: Any, plan: ResetPlan) -> None:
    """Make the connection's next command carry the reset and setup ahead of it.

    No write now and no read at checkout: the batch goes out in the same write as the
    next request's first command, and its replies are read, from the same socket
    buffer, before that command's own. Until then PyMySQL is told the server status
    the reset will leave (autocommit as set up, no transaction), so that Django's
    first ``set_autocommit`` is sent when it must be. Both hooks are instance
    attributes that remove themselves: the command after pays nothing.
    """
    write = raw._write_bytes
    read = raw._read_packet

    def write_after_reset(data: bytes) -> None:
        del raw._write_bytes
        write(plan.batch + data)

    def read_after_reset(*args: Any, **kwargs: Any) -> Any:
        del raw._read_packet
        # The command's reply numbers its packets after the command's own (more than
        # one for a command of 16 MiB or more).
        seq_id = raw._next_seq_id
        try:
            finish_reset(raw, plan, plan.replies)
        except Exception as exc:
            # The server went on to run the command all the same (it was pipelined), and
            # its reply is still on its way: the connection is out of step for good, and
            # whether the command ran is unknown, as after a lost connection.
            abort(raw)
            errors = sys.modules[type(raw).__module__.rsplit(".", 1)[0] + ".err"]
            raise errors.OperationalError(
                2013, f"Lost connection: the session reset before this command failed ({exc})"
            ) from exc
        except BaseException:
            abort(raw)
            raise
        raw._next_seq_id = seq_id
        return read(*args, **kwargs)

    raw._write_bytes = write_after_reset
    raw._read_packet = read_after_reset
    raw.server_status = plan.status


def watch_statements(raw: Any) -> _mysql_clean.StatementWatch | None:
    """Watch what ``raw`` sends, so that "auto" skips the reset after clean requests;
    None where the driver is not PyMySQL (its statements are not seen)."""
    if not all(hasattr(raw, name) for name in _PYMYSQL_INTERNALS):
        return None
    return _mysql_clean.watch(raw)


def reset_deferred(raw: Any) -> bool:
    """Whether a deferred reset still waits for the connection's next command."""
    return "_read_packet" in vars(raw)


def reset_session(raw: Any, params: dict[str, Any]) -> None:
    """Drivers other than PyMySQL (mysqlclient): COM_CHANGE_USER to the same account, which
    clears the session as a new login would, then what the driver ran after its login.

    ``params``: the keyword arguments Django connects with. Raises when the driver or the
    account cannot do it (credentials from an option file); the caller then discards.
    """
    change_user = getattr(raw, "change_user", None)
    if change_user is None or not params.get("user"):
        raise NotImplementedError(f"cannot reset a session of {type(raw).__name__}")
    change_user(params["user"], params.get("password", ""), params.get("database"))
    with raw.cursor() as cursor:
        if params.get("sql_mode"):
            cursor.execute("SET SESSION sql_mode = %s", (params["sql_mode"],))
        if params.get("init_command"):
            cursor.execute(params["init_command"])


# -- ending a session the pool let go while its statement may still run ---------------

# KILL refused: not the account's own thread and no CONNECTION ADMIN / SUPER (1095), or
# no such privilege at all (1227).
_KILL_DENIED = frozenset({1095, 1227})
_UNKNOWN_THREAD = 1094
# Between two looks whether a killed session has left the server.
_END_POLL = 0.02


def statement_may_run(exc: BaseException) -> bool:
    """Whether the server may still be running the statement that raised ``exc``: the
    driver stopped waiting for its reply (``read_timeout``), the server did not end it."""
    return is_gone(exc) and _timed_out(exc)


def server_session(plan: ResetPlan | None) -> ServerSession | None:
    """Where the connection's session lives, as read at connect; None for drivers other
    than PyMySQL (no plan: nothing read, nothing ended)."""
    return None if plan is None else plan.session


def node_of(other: Any, session: ServerSession) -> tuple[Any, ...]:
    """The identity of the server ``other`` reached, comparable with ``session.node``."""
    with other.cursor() as cursor:
        cursor.execute(f"SELECT {session.node_sql}")
        return tuple(cursor.fetchone())


def end_session(other: Any, session: ServerSession, until: float) -> str:
    """End ``session`` through ``other``, a connection of the same account to the same
    server (``node_of``), and wait until the server no longer lists it (or ``until``, a
    monotonic time).

    The outcome: "killed", "gone" (the server lists no session of that id that the
    account may see: ended already, or another account's), "denied" (another account's
    session, seen with the PROCESS privilege, or KILL refused: nothing killed) or
    "unconfirmed" (still listed at ``until``: a statement that ignores KILL until it
    returns, such as a Galera commit waiting for the cluster). Raises the driver's
    error when ``other`` fails; the caller then drops it.
    """
    with other.cursor() as cursor:
        # The account's own thread only: after a restart the id may be anyone's.
        cursor.execute(
            "SELECT USER FROM information_schema.PROCESSLIST WHERE ID = %s", (session.thread_id,)
        )
        row = cursor.fetchone()
        if row is None:
            return "gone"
        mine = other.user.decode() if isinstance(other.user, bytes) else other.user
        if row[0] != mine:
            return "denied"
        try:
            cursor.execute(f"KILL CONNECTION {int(session.thread_id)}")
        except Exception as exc:
            code = error_code(exc)
            if code == _UNKNOWN_THREAD:
                return "gone"
            if code in _KILL_DENIED:
                return "denied"
            raise
        while True:
            cursor.execute(
                "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", (session.thread_id,)
            )
            if cursor.fetchone() is None:
                return "killed"
            if time.monotonic() + _END_POLL >= until:
                return "unconfirmed"
            time.sleep(_END_POLL)  # looked up now: gevent's once it has patched time
