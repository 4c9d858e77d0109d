"""What ``python -m wsgi_db_pool check`` checks: the deployment, and the verdict levels.

No Django here: the per-database modules (``_doctor_mysql``, ``_doctor_postgresql``) and the
command (``_doctor``) share it.
"""

from __future__ import annotations

from dataclasses import dataclass

OK, NOTE, WARN, FAIL, ERROR = "ok", "note", "warn", "fail", "error"

#: The gunicorn worker classes the doctor knows how to count.
WORKER_CLASSES = ("gevent", "gthread", "sync")


@dataclass
class Plan:
    """The deployment being checked: the pool settings and how many copies of it run."""

    pool_size: int
    max_overflow: int
    max_age: float | None
    max_idle: float | None
    min_size: int
    timeout: float
    workers: int
    hosts: int
    reserve: int
    worker_class: str
    threads: int
    aliases: list[str] | None
    #: Seconds a replica may lag behind its primary before the doctor warns.
    max_lag: float = 10.0

    @property
    def cap(self) -> int:
        return self.pool_size + self.max_overflow

    @property
    def processes(self) -> int:
        return self.workers * self.hosts

    @property
    def concurrency(self) -> int | None:
        """Requests one worker process serves at once; None: more than any pool's cap.

        A request holds at most one connection per alias, so this also bounds what one
        alias's pool opens in a process: a sync worker serves one request at a time, a
        gthread worker one per thread. A gevent worker serves up to ``worker_connections``
        (gunicorn's default is 1000), which is the pool's cap's job to bound.
        """
        if self.worker_class == "sync":
            return 1
        if self.worker_class == "gthread":
            return self.threads
        return None

    def bound(self, pooled: int) -> int:
        """The cap of one alias's pool in a process: ``pool_size + max_overflow``, plus one
        per other pooled alias for requests that hold those while they wait for this one
        (see pool.py)."""
        return self.cap + max(pooled - 1, 0)

    def per_alias(self, pooled: int) -> int:
        """The most connections one alias's pool opens in one process, for this worker class.

        ``min_size`` connections open at a process's first request whatever it serves.
        """
        most = self.bound(pooled)
        if self.concurrency is not None:
            most = min(most, self.concurrency)
        return max(most, self.min_size)

    def per_alias_text(self, pooled: int) -> str:
        """How ``per_alias`` came about, for the arithmetic the doctor prints."""
        most = self.per_alias(pooled)
        bound = self.bound(pooled)
        if self.concurrency is not None and self.concurrency < bound:
            if most > self.concurrency:
                return f"{most} (min_size)"
            if self.worker_class == "sync":
                return "1 (sync worker: one request at a time)"
            return f"{most} (threads)"
        extra = f" + {pooled - 1}" if pooled > 1 else ""
        return f"({self.pool_size} + {self.max_overflow}{extra})"


def driver_finding(plan: Plan, driver: str, under_gevent: str) -> tuple[str, str]:
    """The "driver" finding once the driver is known to suit gevent, per worker class."""
    if plan.worker_class == "gevent":
        return OK, f"driver: {driver} under gevent: {under_gevent}"
    if plan.worker_class == "gthread":
        return OK, (
            f"driver: {driver} under gthread: real threads, a query blocks only its own "
            f"thread; a worker serves at most {plan.threads} request(s) at once."
        )
    return OK, (
        f"driver: {driver} under sync: one request at a time per process, so a query blocks "
        f"only its own process."
    )
