"""PostgreSQL specifics (psycopg 3, or psycopg2): errors that mean "gone", the checks, the reset.

It implements ``_dialect.Dialect``, as ``_mysql`` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

from . import _sync

# The session-ending part of the Dialect protocol: nothing to end for this vendor.
from ._no_ends import end_session as end_session
from ._no_ends import node_of as node_of
from ._no_ends import server_session as server_session
from ._no_ends import statement_may_run as statement_may_run

# DISCARD ALL after every request: no statement text shows what a function did.
RESETS_EVERY_CHECKIN = True

# SQLSTATE classes and codes: connection exception (08...), the server shutting down or
# killing the backend (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now).
_GONE_STATES = frozenset({"57P01", "57P02", "57P03"})
# The server cannot take the connection: too_many_connections, cannot_connect_now.
_UNAVAILABLE_STATES = frozenset({"53300", "57P03"})


def _sqlstate(exc: BaseException | None) -> str | None:
    seen = 0
    while exc is not None and seen < 5:
        state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        if isinstance(state, str):
            return state
        exc = exc.__cause__
        seen += 1
    return None


def _operational(exc: BaseException) -> bool:
    # Django wraps the driver's error in its own class of the same name.
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if type(seen).__name__ == "OperationalError":
            return True
        seen = seen.__cause__
    return False


def is_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection itself is finished."""
    state = _sqlstate(exc)
    if state is None:
        # psycopg raises OperationalError without a SQLSTATE when the socket is lost.
        return _operational(exc)
    return state.startswith("08") or state in _GONE_STATES


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the server cannot be reached or refuses new connections."""
    state = _sqlstate(exc)
    if state is None:
        return _operational(exc)  # a refused or timed-out connect
    return state.startswith("08") or state in _UNAVAILABLE_STATES


def classify_connect_error(exc: BaseException) -> str:
    """ "unreachable", "refused", "lost" (a backend terminated during setup) or "error"."""
    state = _sqlstate(exc)
    if state is None:
        # libpq's own failures (refused, timed out, unknown host) carry no SQLSTATE.
        return "unreachable" if _operational(exc) else "error"
    if state == "53300":  # too_many_connections
        return "refused"
    if state.startswith("08") or state == "57P03":  # connection failure, starting up
        return "unreachable"
    if state in _GONE_STATES:
        return "lost"
    return "error"


def reachable(settings: dict[str, Any]) -> bool | None:
    """Whether something accepts TCP connections at the alias's address; None: cannot tell."""
    host = settings.get("HOST") or ""
    if not host or host.startswith("/") or "," in host:
        return None  # a socket directory, or libpq's multi-host string
    port = int(settings.get("PORT") or 5432)
    timeout = (settings.get("OPTIONS") or {}).get("connect_timeout") or 10
    return _sync.tcp_reachable(host, port, min(float(timeout), 2.0))


def _readable(fd: int) -> bool:
    return bool(_sync.new_poller(fd).poll(0))


def _broken(raw: Any) -> bool:
    return bool(getattr(raw, "closed", False)) or bool(getattr(raw, "broken", False))


def is_quiet(raw: Any) -> bool:
    """Whether an idle connection is open and its socket has nothing to read.

    A terminated backend (pg_terminate_backend, a restart) sends an error and closes
    the socket, which makes it readable; so does a NOTICE or a NOTIFY on a healthy
    one, which is why a readable socket costs a round trip here instead of a discard.
    """
    if _broken(raw):
        return False
    fileno = getattr(raw, "fileno", None)
    if fileno is None:
        return True
    try:
        readable = _readable(fileno())
    except (OSError, ValueError):
        return False
    return not readable or ping(raw)


def is_open(raw: Any) -> bool:
    """Whether the driver still holds a usable connection."""
    return not _broken(raw)


def ping(raw: Any) -> bool:
    """One round trip (``SELECT 1``); a driver error means the connection is unusable."""
    try:
        with raw.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return False
    return True


def needs_rollback(raw: Any) -> bool:
    """Whether a transaction may be open, read from the driver at no cost."""
    info = getattr(raw, "info", None)  # psycopg 3
    if info is not None:
        return int(info.transaction_status) != 0  # TransactionStatus.IDLE
    status = getattr(raw, "get_transaction_status", None)  # psycopg2
    if status is not None:
        return int(status()) != 0  # TRANSACTION_STATUS_IDLE
    return True


def abort(raw: Any) -> None:
    """Close without waiting for the server; takes no Python lock (psycopg's close() does
    not), so a finalizer may call it."""
    # contextlib may be gone at interpreter exit, when finalizers still run.
    try:  # noqa: SIM105
        raw.close()
    except Exception:  # a finalizer must not raise
        pass


def close(raw: Any) -> None:
    """Close politely (libpq sends Terminate)."""
    abort(raw)


_SESSION_STATE = re.compile(
    r"(?:^|;)\s*(?:SET(?!\s+LOCAL\b)|RESET|LISTEN|PREPARE|DECLARE|LOAD)\b"
    r"|\bTEMP(?:ORARY)?\b|pg_advisory_lock|set_config",
    re.IGNORECASE,
)


_FIRST_WORDS = ("SET", "RESET", "LISTEN", "PREPARE", "DECLARE", "LOAD")


def leaves_session_state(sql: object) -> bool:
    """Whether ``sql`` itself visibly leaves state on the session; blind to functions,
    so it never decides whether to reset (always, here), only tells the guard.

    Substring tests settle the usual statement; the full pattern (which knows
    ``SET LOCAL`` ends with the transaction) runs only where they cannot.
    """
    if not isinstance(sql, str):
        return False
    if ";" in sql or "/*" in sql or "--" in sql:
        return _SESSION_STATE.search(sql) is not None
    upper = sql.upper()
    if upper.lstrip().startswith(_FIRST_WORDS):
        return _SESSION_STATE.search(sql) is not None
    if "TEMP" in upper or "PG_ADVISORY_LOCK" in upper or "SET_CONFIG" in upper:
        return _SESSION_STATE.search(sql) is not None  # not for a column "attempts"
    return False


# DISCARD ALL, spelled out as its documentation does: DISCARD ALL itself refuses to run
# in a multi-statement string, which the session's setup can then join.
_DISCARD_ALL = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"
)


class ResetPlan(NamedTuple):
    """A session's reset and setup as one simple query: one round trip at checkin."""

    sql: str
    autocommit: bool


def _parameter(raw: Any, name: str) -> str | None:
    info = getattr(raw, "info", None)  # psycopg 3
    value = info.parameter_status(name) if info is not None else raw.get_parameter_status(name)
    return value.decode() if isinstance(value, bytes) else value


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def plan_reset(raw: Any, statements: Callable[[], list[str]], autocommit: bool) -> ResetPlan | None:
    """DISCARD ALL's parts, then what Django set up at connect (its time zone, the role it
    assumed), in one string; None if the driver is neither psycopg 3 nor psycopg2."""
    if not hasattr(raw, "info") and not hasattr(raw, "get_parameter_status"):
        return None
    setup = [_DISCARD_ALL]
    time_zone = _parameter(raw, "TimeZone")
    if time_zone:
        # RESET ALL puts back the server's zone; Django's differs from it ("UTC" against
        # "Etc/UTC" is enough) and would cost a round trip of its own to set again.
        setup.append(f"SET TIME ZONE {_literal(time_zone)}")
    with raw.cursor() as cursor:
        cursor.execute("SELECT current_user, session_user")
        current, session = cursor.fetchone()
    if current != session:  # Django's assume_role
        setup.append(f"SET ROLE {_literal(current)}")
    return ResetPlan("; ".join(setup), autocommit)


def send_reset(raw: Any, plan: ResetPlan) -> int:
    """Reset the session now (one round trip); no replies are left for later."""
    reset_session(raw, {}, plan.sql)
    if not plan.autocommit:
        _set_autocommit(raw, False)
    return 0


def defer_reset(raw: Any, plan: ResetPlan) -> None:
    """Nothing is sent ahead on PostgreSQL: the reset runs now."""
    send_reset(raw, plan)


def reset_deferred(raw: Any) -> bool:
    return False


def finish_reset(raw: Any, plan: ResetPlan, replies: int) -> None:
    """No replies are ever left for later here."""


def _set_autocommit(raw: Any, on: bool) -> None:
    if hasattr(raw, "info"):
        raw.autocommit = on  # psycopg 3
    else:
        raw.set_session(autocommit=on)  # psycopg2


def reset_session(raw: Any, params: dict[str, Any], sql: str = "DISCARD ALL") -> None:
    """Roll back, then ``sql`` (DISCARD ALL by default: session variables, temporary tables,
    prepared statements, advisory locks, LISTEN) in autocommit. psycopg 3 forgets its own
    prepared statements when it sees DISCARD ALL or DEALLOCATE ALL."""
    raw.rollback()
    _set_autocommit(raw, True)  # DISCARD ALL cannot run in a transaction
    with raw.cursor() as cursor:
        cursor.execute(sql)


def watch_statements(raw: Any) -> None:
    """No statement is proved clean here: "auto" resets after every request."""
    return None
