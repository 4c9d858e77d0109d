"""The session-ending part of the Dialect protocol for vendors that end no session.

The pool ends on the server a MySQL session whose statement may still run after its
connection was dropped (``_mysql.end_session``). For PostgreSQL and SQLite it never
does: no statement is said to run on, so there is no session to look for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["end_session", "node_of", "server_session", "statement_may_run"]


def statement_may_run(exc: BaseException) -> bool:
    """Never said here: the pool ends no session on the server for this vendor."""
    return False


def server_session(plan: Any) -> None:
    """No session to end from another connection."""
    return None


def node_of(other: Any, session: Any) -> Any:
    """Never called: ``server_session`` gives none."""
    raise NotImplementedError


def end_session(other: Any, session: Any, until: float) -> str:
    """Never called: ``server_session`` gives none."""
    raise NotImplementedError
