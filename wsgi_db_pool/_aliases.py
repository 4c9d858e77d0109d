"""Which ``DATABASES`` aliases the middleware pools, checked once, and each one's dialect."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connections
from django.db.utils import load_backend

from ._dialect import DIALECTS, Dialect

__all__ = ["dialect", "poolable_aliases", "resolve_aliases"]

POOLABLE_VENDORS = frozenset(DIALECTS)
# aliases=None pools the databases behind a server; SQLite only when named.
DEFAULT_VENDORS = frozenset({"mysql", "postgresql"})
_SUPPORTED = "MySQL/MariaDB, PostgreSQL, SQLite"


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


def dialect(alias: str) -> Dialect:
    """The alias's vendor specifics (``_mysql``, ``_postgresql`` or ``_sqlite``)."""
    return DIALECTS[_vendor(alias)]
