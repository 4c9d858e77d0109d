"""MySQL/MariaDB specifics: which errors mean "gone", the free health checks, the reset.

Written against PyMySQL (the driver that yields to gevent); other DB-API drivers get
the safe, slower path: a rollback on every checkin and a ping for every check.
"""

from __future__ import annotations

import re
import select
import sys
from typing import Any

from . import _sync

# The connection is gone: server shutdown (1927, 4031 idle kill), gone away (2006),
# lost during query (2013), out of sync (2014), packet errors after a cut (2045, 2055).
GONE_CODES = frozenset({1927, 2006, 2013, 2014, 2045, 2055, 4031})
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

_IN_TRANS = 0x0001  # SERVER_STATUS_IN_TRANS
_AUTOCOMMIT = 0x0002  # SERVER_STATUS_AUTOCOMMIT


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


_poll: Any = None
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
            cached = (sock, _new_poller(sock.fileno()))
            raw._wsgi_db_pool_poller = cached
        return not cached[1].poll(0)
    except (OSError, ValueError):
        return False


def _new_poller(fd: int) -> Any:
    global _poll
    if _poll is None:
        # gevent replaces select.poll with one that waits on its hub; a zero-timeout
        # check must not give up the CPU, so use the original. Resolved once: either
        # way it is the original.
        monkey = sys.modules.get("gevent.monkey")
        _poll = monkey.get_original("select", "poll") if monkey else select.poll
    poller = _poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return poller


def is_open(raw: Any) -> bool:
    """Whether the driver still has a socket (PyMySQL drops it on any lost read)."""
    return getattr(raw, "_sock", True) is not None


def ping(raw: Any) -> bool:
    """A round trip to the server that never reconnects behind Django's back."""
    try:
        raw.ping(False)
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
_COM_RESET_CONNECTION = 0x1F


_FIRST_WORDS = ("SET", "USE", "LOCK", "PREPARE", "HANDLER", "CALL")


def leaves_session_state(sql: object) -> bool:
    """Whether ``sql`` may leave state on the session that the next request would see.

    It runs on every statement: plain substring tests (C speed) settle the usual
    ORM statement, and the full pattern runs only where comments, several
    statements or an @ make the simple reading unsafe.
    """
    if not isinstance(sql, str):
        return False
    if "@" in sql or ";" in sql or "/*" in sql or "--" in sql or "#" in sql:
        return _SESSION_STATE.search(sql) is not None
    upper = sql.upper()
    return upper.lstrip().startswith(_FIRST_WORDS) or "TEMPORARY" in upper or "GET_LOCK" in upper


def reset_session(raw: Any) -> None:
    """COM_RESET_CONNECTION, then what PyMySQL set up after login, as it was.

    The reset drops user variables, temporary tables, named locks, prepared
    statements and session variables (the character set, sql_mode and autocommit
    included) and keeps the current database. Raises the driver's error when the
    server or driver cannot do it; the caller then discards the connection.
    """
    if not hasattr(raw, "_execute_command"):
        raise NotImplementedError(f"cannot reset a session of {type(raw).__name__}")
    raw._execute_command(_COM_RESET_CONNECTION, b"")
    raw._read_ok_packet()
    raw.set_character_set(raw.charset, getattr(raw, "collation", None))
    with raw.cursor() as cursor:
        if getattr(raw, "sql_mode", None) is not None:
            cursor.execute("SET sql_mode=%s", (raw.sql_mode,))
        if getattr(raw, "init_command", None) is not None:
            cursor.execute(raw.init_command)
