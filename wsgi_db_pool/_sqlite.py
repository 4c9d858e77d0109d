"""SQLite specifics: a file on this machine, so nothing is ever "gone" or unreachable.

It implements ``_dialect.Dialect``. An in-memory database is refused by
``_aliases.resolve_aliases``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# The session-ending part of the Dialect protocol: nothing to end for this vendor.
from ._no_ends import end_session as end_session
from ._no_ends import node_of as node_of
from ._no_ends import server_session as server_session
from ._no_ends import statement_may_run as statement_may_run


def is_gone(exc: BaseException) -> bool:
    """No server, no lost connection."""
    return False


def is_unavailable(exc: BaseException) -> bool:
    """No server to be unreachable ("database is locked" is an ordinary error)."""
    return False


def classify_connect_error(exc: BaseException) -> str:
    """A file that cannot be opened says nothing of a server."""
    return "error"


def reachable(settings: dict[str, Any]) -> bool | None:
    return None


def is_quiet(raw: Any) -> bool:
    return True


def is_open(raw: Any) -> bool:
    return True


def ping(raw: Any) -> bool:
    return True


def needs_rollback(raw: Any) -> bool:
    """sqlite3 knows whether a transaction is open."""
    return bool(getattr(raw, "in_transaction", True))


def abort(raw: Any) -> None:
    """Close the file handle (no network, no lock)."""
    # contextlib may be gone at interpreter exit, when finalizers still run.
    try:  # noqa: SIM105
        raw.close()
    except Exception:  # a finalizer must not raise
        pass


def close(raw: Any) -> None:
    abort(raw)


# A "reset" closes the connection: only after statements that may leave state behind.
RESETS_EVERY_CHECKIN = False

_SESSION_STATE = re.compile(r"\bPRAGMA\b|\bTEMP(?:ORARY)?\b|\bATTACH\b", re.IGNORECASE)


def leaves_session_state(sql: object) -> bool:
    """Whether ``sql`` may leave state on the connection that the next request would see."""
    return isinstance(sql, str) and _SESSION_STATE.search(sql) is not None


def reset_session(raw: Any, params: dict[str, Any]) -> None:
    """SQLite has no session reset: the caller discards the connection (cheap to reopen)."""
    raise NotImplementedError("SQLite connections are discarded, not reset")


def plan_reset(raw: Any, statements: Callable[[], list[str]], autocommit: bool) -> None:
    """Nothing to send ahead: a connection that needs a reset is discarded."""
    return None


def _no_plan(*args: Any) -> Any:
    # plan_reset never makes one, so the connector never sends, defers or reads a reset.
    raise NotImplementedError("SQLite has no planned reset")


send_reset = defer_reset = finish_reset = _no_plan


def reset_deferred(raw: Any) -> bool:
    return False


def watch_statements(raw: Any) -> None:
    """No statement is proved clean here: "auto" resets after every request."""
    return None
