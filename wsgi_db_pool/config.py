"""The pool's settings as one frozen object, validated once at construction."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypedDict

__all__ = ["RESET_SESSION", "PoolConfig", "PoolSettings"]

#: auto: reset a session when its statements may have left state; always; never.
RESET_SESSION = ("auto", "always", "never")


def _number(name: str, value: object, *, allow_zero: bool, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    # bool is an int: `timeout=True` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a number of seconds" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {kind}, not {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, not {value!r}")


def _count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value!r}")


@dataclass(frozen=True)
class PoolConfig:
    """Settings shared by every alias's pool; see ``PoolingMiddleware`` for their meaning."""

    pool_size: int = 10
    max_overflow: int = 10
    timeout: float = 30.0
    max_age: float | None = 60 * 60.0
    max_idle: float | None = 10 * 60.0
    rebalance: float | None = 5 * 60.0
    overflow_max_idle: float | None = 30.0
    pre_ping: bool | float = 60.0
    retry_after: int = 5
    max_waiting: int | None = None
    reset_session: str = "auto"
    min_size: int = 0
    warn_hold: float | None = None
    capture_stack: bool = False
    write_slots: int | None = None

    def __post_init__(self) -> None:
        _count("pool_size", self.pool_size)
        _count("max_overflow", self.max_overflow)
        if self.pool_size + self.max_overflow == 0:
            raise ValueError(
                "pool_size + max_overflow must be at least 1 (it is the cap of open "
                "connections per alias), not 0"
            )
        _number("timeout", self.timeout, allow_zero=False)
        _number("max_age", self.max_age, allow_zero=False, allow_none=True)
        _number("max_idle", self.max_idle, allow_zero=False, allow_none=True)
        _number("rebalance", self.rebalance, allow_zero=False, allow_none=True)
        _number("overflow_max_idle", self.overflow_max_idle, allow_zero=False, allow_none=True)
        if not isinstance(self.pre_ping, bool):
            try:
                _number("pre_ping", self.pre_ping, allow_zero=True)
            except TypeError:
                raise TypeError(
                    f"pre_ping must be True, False or a number of idle seconds, "
                    f"not {self.pre_ping!r}"
                ) from None
        _count("retry_after", self.retry_after)
        if self.max_waiting is not None:
            _count("max_waiting", self.max_waiting)
        _count("min_size", self.min_size)
        if self.min_size > self.pool_size:
            raise ValueError(
                f"min_size must be at most pool_size ({self.pool_size}), not {self.min_size}"
            )
        _number("warn_hold", self.warn_hold, allow_zero=False, allow_none=True)
        if not isinstance(self.capture_stack, bool):
            raise TypeError(f"capture_stack must be True or False, not {self.capture_stack!r}")
        if self.write_slots is not None:
            _count("write_slots", self.write_slots)
            if not 1 <= self.write_slots < self.cap:
                raise ValueError(
                    f"write_slots must be None or from 1 to pool_size + max_overflow - 1 "
                    f"({self.cap - 1}), not {self.write_slots}"
                )
        if self.reset_session not in RESET_SESSION:
            raise ValueError(
                f"reset_session must be one of {', '.join(map(repr, RESET_SESSION))}, "
                f"not {self.reset_session!r}"
            )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> PoolConfig:
        """From the middleware's keyword arguments; an unknown one is named with the known."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(
                f"PoolingMiddleware() got an unexpected keyword argument {unknown[0]!r}; "
                f"known: aliases, logger, {', '.join(f.name for f in fields(cls))}"
            )
        return cls(**settings)

    @property
    def cap(self) -> int:
        """The most connections open at once per alias in one process."""
        return self.pool_size + self.max_overflow

    def split(self) -> tuple[PoolConfig, PoolConfig]:
        """With ``write_slots``: the settings of the pool for safe requests and of the pool
        for the others, whose caps add up to ``cap``; ``pool_size`` and ``max_overflow``
        are shared out in proportion, ``min_size`` stays with the first."""
        if self.write_slots is None:
            raise ValueError("split() needs write_slots")
        writes = self.write_slots
        size = self.pool_size * writes // self.cap
        write = replace(
            self, pool_size=size, max_overflow=writes - size, min_size=0, write_slots=None
        )
        read_size = self.pool_size - size
        read = replace(
            self,
            pool_size=read_size,
            max_overflow=self.max_overflow - (writes - size),
            min_size=min(self.min_size, read_size),
            write_slots=None,
        )
        return read, write

    @property
    def ping_after(self) -> float | None:
        """Idle seconds after which a checkout pings first; None never pings."""
        if self.pre_ping is True:
            return 0.0
        if self.pre_ping is False:
            return None
        return float(self.pre_ping)

    @property
    def reap_interval(self) -> float:
        """Seconds between the reaper's passes: idle connections close at most this late.

        Half the shortest of ``max_idle``, ``overflow_max_idle``, ``max_age`` and
        ``warn_hold`` (so a long hold is reported within half of ``warn_hold`` of
        passing it), and at most ``rebalance / cap`` (the mean pace of retirements to
        rebalance, so that idle connections keep it), at most 30 s and at least 0.05 s.
        """
        limits = [
            x / 2
            for x in (self.max_idle, self.overflow_max_idle, self.max_age, self.warn_hold)
            if x is not None
        ]
        if self.rebalance is not None:
            limits.append(self.rebalance / self.cap)
        return max(min([30.0, *limits]), 0.05)


class PoolSettings(TypedDict, total=False):
    """``PoolingMiddleware``'s pool settings, for type checkers; defaults in PoolConfig."""

    pool_size: int
    max_overflow: int
    timeout: float
    max_age: float | None
    max_idle: float | None
    rebalance: float | None
    overflow_max_idle: float | None
    pre_ping: bool | float
    retry_after: int
    max_waiting: int | None
    reset_session: str
    min_size: int
    warn_hold: float | None
    capture_stack: bool
    write_slots: int | None
