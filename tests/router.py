"""A primary/replica router, as real sites write them: reads to ``other``, writes to ``default``.

Used by ``tests.router_settings`` only; both aliases reach the same server as different
users, so the server's PROCESSLIST tells their connections apart.
"""

from __future__ import annotations

from typing import Any


class PrimaryReplicaRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str:
        return "other"

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == "default"
