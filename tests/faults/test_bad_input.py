"""Bad input: any combination of PoolingMiddleware's arguments is refused at construction, or works.

tests/test_config.py lists the bad values one by one; here hypothesis mixes valid and
invalid values of every argument at once, against a specification written
independently of the package: an invalid combination raises TypeError or ValueError
naming one of the invalid arguments; a valid one serves a request.
"""

from __future__ import annotations

import math
from typing import Any

import gevent
import pytest
import structlog
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import Pooled, Server
from tests.faults.conftest import wait_for
from wsgi_db_pool import PoolingMiddleware

pytestmark = pytest.mark.fault


def _app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("204 No Content", [])
    return []


class _NotALogger:
    def info(self, event: str, **kw: Any) -> None: ...


finite_positive = st.floats(min_value=1e-3, max_value=1e6)
# Valid, and larger than any lock can wait (threading.TIMEOUT_MAX is about 9.2e9 s): for
# `timeout`, whose waiting checkout must still work (test_huge_timeout_still_waits).
huge = st.sampled_from([1e9, 1e300, 2**62])
huge_but_waitable = st.sampled_from([1e6, 1e9, 9e9])
not_numbers = st.sampled_from(["5", None, [], b"1"])
not_finite = st.sampled_from([math.nan, math.inf, -math.inf])

# Per argument: (valid values, invalid values tagged with the error they must raise).
TYPE, VALUE = TypeError, ValueError


def _tagged(strategy: st.SearchStrategy[Any], error: type) -> st.SearchStrategy[Any]:
    return strategy.map(lambda value: (value, error))


def _seconds(*, allow_zero: bool, allow_none: bool, waitable: bool = False) -> tuple[Any, Any]:
    valid = [finite_positive, huge_but_waitable if waitable else huge]
    valid += [st.just(0)] if allow_zero else []
    valid += [st.just(None)] if allow_none else []
    value_errors = [not_finite, st.floats(max_value=-1e-9, min_value=-1e6)]
    value_errors += [] if allow_zero else [st.sampled_from([0, 0.0])]
    type_errors = [st.booleans(), not_numbers.filter(lambda v: v is not None or not allow_none)]
    return st.one_of(*valid), st.one_of(
        _tagged(st.one_of(*value_errors), VALUE), _tagged(st.one_of(*type_errors), TYPE)
    )


def _count(*, allow_none: bool = False, high: int = 4) -> tuple[Any, Any]:
    valid = st.integers(min_value=0, max_value=high)
    if allow_none:
        valid = st.one_of(valid, st.just(None))
    type_errors = st.one_of(st.booleans(), st.sampled_from([1.5, 2.0, "3", b"1", math.nan]))
    if not allow_none:
        type_errors = st.one_of(type_errors, st.just(None))
    return valid, st.one_of(
        _tagged(st.integers(max_value=-1, min_value=-100), VALUE), _tagged(type_errors, TYPE)
    )


ARGUMENTS: dict[str, tuple[Any, Any]] = {
    "app": (st.just("django"), _tagged(st.sampled_from([None, "tests.wsgi:app", 3]), TYPE)),
    "pool_size": _count(),
    "max_overflow": _count(),
    "min_size": _count(),
    "max_waiting": _count(allow_none=True),
    "retry_after": _count(high=10**9),
    "timeout": _seconds(allow_zero=False, allow_none=False, waitable=True),
    "max_age": _seconds(allow_zero=False, allow_none=True),
    "max_idle": _seconds(allow_zero=False, allow_none=True),
    "overflow_max_idle": _seconds(allow_zero=False, allow_none=True),
    "warn_hold": _seconds(allow_zero=False, allow_none=True),
    "pre_ping": (
        st.one_of(st.booleans(), st.just(0), finite_positive, huge),
        st.one_of(_tagged(st.one_of(not_finite, st.just(-1)), VALUE), _tagged(not_numbers, TYPE)),
    ),
    "reset_session": (
        st.sampled_from(["auto", "always", "never"]),
        _tagged(st.sampled_from(["AUTO", "", "off", "sometimes"]), VALUE),
    ),
    "capture_stack": (st.booleans(), _tagged(st.sampled_from([0, 1, "yes", None]), TYPE)),
    "aliases": (
        st.sampled_from([None, ["default"], ("default",), ["default", "default"]]),
        st.one_of(
            _tagged(st.sampled_from([[], ["lite"], ["nope"], ["default", "lite"]]), VALUE),
            _tagged(st.sampled_from(["default", [1], 3]), TYPE),
        ),
    ),
    "logger": (
        st.sampled_from([None, "structlog"]),
        _tagged(st.sampled_from([object(), "a logger", _NotALogger()]), TYPE),
    ),
}


def _combination_errors(
    kwargs: dict[str, Any], invalid: dict[str, type[Exception]]
) -> dict[str, type[Exception]]:
    """Arguments valid one by one but not together (judged only when each one is valid)."""
    errors: dict[str, type[Exception]] = {}
    together = not {"pool_size", "max_overflow"} & set(invalid)
    if together and kwargs["pool_size"] + kwargs["max_overflow"] == 0:
        errors["pool_size"] = errors["max_overflow"] = ValueError
    if not {"pool_size", "min_size"} & set(invalid) and kwargs["min_size"] > kwargs["pool_size"]:
        errors["min_size"] = ValueError
    return errors


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_arguments_are_refused_by_name_or_serve(
    data: st.DataObject, django_app: Any, server: Server
) -> None:
    """Invalid arguments raise TypeError/ValueError naming one; valid ones serve a request."""
    bad = data.draw(
        st.one_of(st.just(()), st.lists(st.sampled_from(sorted(ARGUMENTS)), max_size=3)),
        label="invalid arguments",
    )
    kwargs: dict[str, Any] = {}
    invalid: dict[str, type[Exception]] = {}
    for name, (valid, wrong) in ARGUMENTS.items():
        if name in bad:
            kwargs[name], invalid[name] = data.draw(wrong, label=name)
        else:
            kwargs[name] = data.draw(valid, label=name)
    app = kwargs.pop("app")
    if app == "django":
        app = django_app
    if kwargs["logger"] == "structlog":
        kwargs["logger"] = structlog.get_logger()
    invalid.update(_combination_errors(kwargs, invalid))
    event("invalid" if invalid else "valid")

    if invalid:
        with pytest.raises((TypeError, ValueError)) as info:
            PoolingMiddleware(app, **kwargs)
        message = str(info.value)
        named = [name for name in invalid if name in message]
        assert named, f"{message!r} names none of the invalid arguments {sorted(invalid)}"
        if len(set(invalid.values())) == 1:
            assert isinstance(info.value, next(iter(invalid.values()))), info.value
        return

    pooled = Pooled(PoolingMiddleware(app, **kwargs))
    try:
        status = pooled.request("/read/").status_code
        # A valid configuration may be a useless one, but it answers: the request
        # succeeds, or the pool says 503 for a reason the settings give: a timeout of
        # milliseconds, or max_waiting=0 while the min_size warm-up holds the last slot.
        assert status in (200, 503)
        if status == 503:
            assert kwargs["timeout"] < 0.05 or (
                kwargs["max_waiting"] == 0 and kwargs["min_size"] > 0
            ), (kwargs, pooled.mw.stats()["default"])
        # With min_size, the warm-up may still be connecting in the background.
        wait_for(lambda: pooled.mw.stats()["default"]["in_use"] == 0, timeout=3.0)
        assert pooled.mw.stats()["default"]["waiting"] == 0
    finally:
        pooled.mw.close()


def test_huge_timeout_still_waits(make_pooled: Any, server: Server) -> None:
    """timeout=1e10 is valid (finite, > 0): a checkout that must wait waits, it does not crash."""
    pooled = make_pooled(pool_size=1, max_overflow=0, timeout=1e10)
    holder = pooled.start("/stream/")
    holder.next_chunk()
    waiter = gevent.spawn(pooled.request, "/read/")
    wait_for(lambda: pooled.stats()["waiting"] == 1 or waiter.dead, what="a waiter")
    holder.read_rest()
    holder.close()
    assert waiter.get(timeout=2.0).status_code == 200


def test_close_with_waiters_then_serving(make_pooled: Any, server: Server) -> None:
    """close() answers queued waiters 503 at once, later requests too; the one in flight ends."""
    pooled = make_pooled(pool_size=1, max_overflow=0, timeout=5.0, retry_after=2)
    holder = pooled.start("/stream/")
    held = int(holder.next_chunk())
    waiters = [gevent.spawn(pooled.request, "/read/") for _ in range(3)]
    wait_for(lambda: pooled.stats()["waiting"] == 3, what="three waiters")
    pooled.mw.close()
    gevent.joinall(waiters, timeout=1.0, raise_error=True)  # at once, not after 5 s
    assert [w.value.status_code for w in waiters] == [503] * 3
    assert pooled.request("/read/").status_code == 503
    assert pooled.request("/no-db/").status_code == 200
    # The request in flight keeps its connection to the end; then it is closed.
    assert server.connection_ids() == {held}
    holder.read_rest()
    holder.close()
    stats = pooled.stats()
    assert (stats["open"], stats["in_use"], stats["waiting"]) == (0, 0, 0)
    assert server.wait_count(0) == 0
