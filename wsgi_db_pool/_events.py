"""Where the pool's structlog events go.

A library never configures structlog. When the application did, events go through
its configuration; when it did not (structlog's own default prints every event at
every level), they go to the standard library logger ``wsgi_db_pool`` so that
Django's ``LOGGING`` decides, and debug events cost nothing unless enabled there.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

LOGGER_NAME = "wsgi_db_pool"
_METHODS = ("debug", "info", "warning", "error")


def check_logger(logger: object) -> None:
    """Reject a ``logger`` argument that cannot take the pool's events."""
    if logger is None:
        return
    missing = [name for name in _METHODS if not callable(getattr(logger, name, None))]
    if missing:
        raise TypeError(
            f"logger must be a structlog logger (with {', '.join(_METHODS)} methods), "
            f"not {logger!r}"
        )


def resolve(logger: Any) -> Any:
    """The logger the pools emit to, for the configuration in force now."""
    if logger is not None:
        return logger
    if structlog.is_configured():
        return structlog.get_logger(LOGGER_NAME)
    stdlib = logging.getLogger(LOGGER_NAME)
    return structlog.wrap_logger(
        stdlib,
        wrapper_class=structlog.make_filtering_bound_logger(stdlib.getEffectiveLevel()),
        processors=[structlog.processors.KeyValueRenderer(key_order=["event"])],
    )
