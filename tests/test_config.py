"""PoolingMiddleware's keyword arguments: every bad value is refused at construction, by name."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import Server
from wsgi_db_pool import PoolingMiddleware


def _app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("204 No Content", [])
    return []


class _NoDebugLogger:
    def info(self, event: str, **kw: Any) -> None: ...


SETTINGS = {
    "pool_size",
    "max_overflow",
    "timeout",
    "max_age",
    "max_idle",
    "overflow_max_idle",
    "pre_ping",
    "retry_after",
}
NAN = math.nan
INF = math.inf

BAD = [
    # (keyword arguments, exception, the argument the message must name)
    pytest.param({"pool_size": "10"}, TypeError, "pool_size", id="pool_size-str"),
    pytest.param({"pool_size": 1.5}, TypeError, "pool_size", id="pool_size-float"),
    pytest.param({"pool_size": True}, TypeError, "pool_size", id="pool_size-bool"),
    pytest.param({"pool_size": None}, TypeError, "pool_size", id="pool_size-none"),
    pytest.param({"pool_size": -1}, ValueError, "pool_size", id="pool_size-negative"),
    pytest.param({"max_overflow": -1}, ValueError, "max_overflow", id="max_overflow-negative"),
    pytest.param({"max_overflow": False}, TypeError, "max_overflow", id="max_overflow-bool"),
    pytest.param({"max_overflow": 2.0}, TypeError, "max_overflow", id="max_overflow-float"),
    pytest.param(
        {"pool_size": 0, "max_overflow": 0},
        ValueError,
        "pool_size",
        id="pool_size+max_overflow-zero",
    ),
    pytest.param({"timeout": -1}, ValueError, "timeout", id="timeout-negative"),
    pytest.param({"timeout": NAN}, ValueError, "timeout", id="timeout-nan"),
    pytest.param({"timeout": INF}, ValueError, "timeout", id="timeout-inf"),
    pytest.param({"timeout": True}, TypeError, "timeout", id="timeout-bool"),
    pytest.param({"timeout": "5"}, TypeError, "timeout", id="timeout-str"),
    pytest.param({"timeout": None}, TypeError, "timeout", id="timeout-none"),
    pytest.param({"max_age": 0}, ValueError, "max_age", id="max_age-zero"),
    pytest.param({"max_age": -60.0}, ValueError, "max_age", id="max_age-negative"),
    pytest.param({"max_age": NAN}, ValueError, "max_age", id="max_age-nan"),
    pytest.param({"max_age": INF}, ValueError, "max_age", id="max_age-inf"),
    pytest.param({"max_age": True}, TypeError, "max_age", id="max_age-bool"),
    pytest.param({"max_age": "1h"}, TypeError, "max_age", id="max_age-str"),
    pytest.param({"max_idle": 0}, ValueError, "max_idle", id="max_idle-zero"),
    pytest.param({"max_idle": -1}, ValueError, "max_idle", id="max_idle-negative"),
    pytest.param({"max_idle": NAN}, ValueError, "max_idle", id="max_idle-nan"),
    pytest.param({"max_idle": INF}, ValueError, "max_idle", id="max_idle-inf"),
    pytest.param({"max_idle": False}, TypeError, "max_idle", id="max_idle-bool"),
    pytest.param(
        {"overflow_max_idle": 0}, ValueError, "overflow_max_idle", id="overflow_max_idle-zero"
    ),
    pytest.param(
        {"overflow_max_idle": INF}, ValueError, "overflow_max_idle", id="overflow_max_idle-inf"
    ),
    pytest.param(
        {"overflow_max_idle": "30"}, TypeError, "overflow_max_idle", id="overflow_max_idle-str"
    ),
    pytest.param({"pre_ping": -1}, ValueError, "pre_ping", id="pre_ping-negative"),
    pytest.param({"pre_ping": NAN}, ValueError, "pre_ping", id="pre_ping-nan"),
    pytest.param({"pre_ping": INF}, ValueError, "pre_ping", id="pre_ping-inf"),
    pytest.param({"pre_ping": "yes"}, TypeError, "pre_ping", id="pre_ping-str"),
    pytest.param({"pre_ping": None}, TypeError, "pre_ping", id="pre_ping-none"),
    pytest.param({"retry_after": -1}, ValueError, "retry_after", id="retry_after-negative"),
    pytest.param({"retry_after": 1.5}, TypeError, "retry_after", id="retry_after-float"),
    pytest.param({"retry_after": True}, TypeError, "retry_after", id="retry_after-bool"),
    pytest.param({"retry_after": "5"}, TypeError, "retry_after", id="retry_after-str"),
    pytest.param({"retry_after": NAN}, TypeError, "retry_after", id="retry_after-nan"),
    pytest.param({"aliases": "default"}, TypeError, "aliases", id="aliases-bare-str"),
    pytest.param({"aliases": []}, ValueError, "aliases", id="aliases-empty"),
    pytest.param({"aliases": ()}, ValueError, "aliases", id="aliases-empty-tuple"),
    pytest.param({"aliases": [1]}, TypeError, "aliases", id="aliases-not-str"),
    pytest.param({"aliases": 3}, TypeError, "aliases", id="aliases-int"),
    pytest.param({"aliases": ["nope"]}, ValueError, "nope", id="aliases-unknown"),
    pytest.param({"aliases": ["default", "nope"]}, ValueError, "nope", id="aliases-one-unknown"),
    pytest.param({"aliases": ["lite"]}, ValueError, "lite", id="aliases-sqlite"),
    pytest.param({"logger": object()}, TypeError, "logger", id="logger-object"),
    pytest.param({"logger": "db_pool"}, TypeError, "logger", id="logger-str"),
    pytest.param({"logger": _NoDebugLogger()}, TypeError, "logger", id="logger-without-debug"),
    pytest.param({"pool_sizes": 3}, TypeError, "pool_sizes", id="unknown-keyword"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), BAD)
def test_bad_keyword_is_rejected_by_name(kwargs: dict[str, Any], error: type, name: str) -> None:
    """A bad keyword argument raises TypeError/ValueError whose message names it."""
    with pytest.raises(error) as info:
        PoolingMiddleware(_app, **kwargs)
    assert name in str(info.value)
    if len(kwargs) == 1:
        ((key, value),) = kwargs.items()
        if key in SETTINGS:
            # The value is shown as given, so the mistake can be found in the settings.
            assert repr(value) in str(info.value)


def test_pool_size_plus_max_overflow_zero_names_both() -> None:
    """A cap of zero names both arguments that make it up."""
    with pytest.raises(ValueError, match="pool_size") as info:
        PoolingMiddleware(_app, pool_size=0, max_overflow=0)
    assert "max_overflow" in str(info.value)


def test_unknown_alias_lists_the_known_ones() -> None:
    """An unknown alias is refused with the list of aliases settings.DATABASES has."""
    with pytest.raises(ValueError, match="nope") as info:
        PoolingMiddleware(_app, aliases=["nope"])
    for known in ("default", "other", "lite"):
        assert known in str(info.value)


@pytest.mark.parametrize(
    "app",
    [pytest.param(None, id="none"), pytest.param("tests.wsgi:app", id="str")],
)
def test_app_must_be_callable(app: Any) -> None:
    """A non-callable app is refused with a message naming `app`."""
    with pytest.raises(TypeError, match="app"):
        PoolingMiddleware(app)


def test_a_misspelt_keyword_is_named_with_the_known_ones() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'pool_sise'.*pool_size"):
        PoolingMiddleware(_app, pool_sise=3)  # type: ignore[call-arg]


def test_the_readme_states_the_defaults_of_poolconfig() -> None:
    """PoolConfig holds the defaults; the README's settings table must say the same."""
    import dataclasses
    import re
    from pathlib import Path

    from wsgi_db_pool.config import PoolConfig

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    stated = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)`", readme, re.MULTILINE))
    for field in dataclasses.fields(PoolConfig):
        assert stated.get(field.name) == repr(field.default).replace("'", '"'), field.name


def test_settings_are_keyword_only() -> None:
    """Settings cannot be passed by position."""
    with pytest.raises(TypeError, match="positional"):
        PoolingMiddleware(_app, ["default"])  # type: ignore[misc]


GOOD = [
    pytest.param({}, id="defaults"),
    pytest.param({"pool_size": 0, "max_overflow": 1}, id="overflow-only"),
    pytest.param({"pool_size": 1, "max_overflow": 0}, id="no-overflow"),
    pytest.param({"timeout": 0.25}, id="timeout-float"),
    pytest.param({"timeout": 3}, id="timeout-int"),
    pytest.param({"max_age": None, "max_idle": None}, id="ages-none"),
    pytest.param({"max_age": 0.5, "max_idle": 7}, id="ages-numbers"),
    pytest.param({"pre_ping": True}, id="pre_ping-true"),
    pytest.param({"pre_ping": False}, id="pre_ping-false"),
    pytest.param({"pre_ping": 0}, id="pre_ping-zero"),
    pytest.param({"pre_ping": 12.5}, id="pre_ping-seconds"),
    pytest.param({"retry_after": 0}, id="retry_after-zero"),
    pytest.param({"aliases": ("default",)}, id="aliases-tuple"),
    pytest.param({"aliases": iter(["other", "default"])}, id="aliases-iterator"),
]


@pytest.mark.parametrize("kwargs", GOOD)
def test_good_keywords_are_accepted_and_connect_nothing(
    kwargs: dict[str, Any], server: Server
) -> None:
    """Valid settings construct a middleware that opens no connection until a request needs one."""
    mw = PoolingMiddleware(_app, **kwargs)
    try:
        stats = mw.stats()
        for alias_stats in stats.values():
            assert alias_stats["open"] == 0
            assert alias_stats["pool_size"] == kwargs.get("pool_size", 10)
            assert alias_stats["max_overflow"] == kwargs.get("max_overflow", 10)
        assert server.count() == 0
    finally:
        mw.close()


def test_default_aliases_are_the_poolable_ones() -> None:
    """aliases=None pools every MySQL alias and leaves sqlite out."""
    mw = PoolingMiddleware(_app)
    try:
        assert set(mw.stats()) == {"default", "other", "unreachable"}
    finally:
        mw.close()


def test_stats_keys() -> None:
    """stats() has the documented keys for each alias."""
    mw = PoolingMiddleware(_app, aliases=["default"], pool_size=2, max_overflow=3)
    try:
        stats = mw.stats()["default"]
    finally:
        mw.close()
    expected = {
        "open",
        "idle",
        "in_use",
        "waiting",
        "connects",
        "checkouts",
        "recycles",
        "discards",
        "timeouts",
        "pool_size",
        "max_overflow",
    }
    assert expected <= set(stats)
    assert stats["discards"] == {}
    assert (stats["pool_size"], stats["max_overflow"]) == (2, 3)


@settings(max_examples=60, deadline=None)
@given(
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**6), max_value=10**6),
    )
)
def test_max_age_accepts_exactly_the_positive_finite_numbers(value: float) -> None:
    """max_age is accepted if and only if it is a finite number above zero."""
    valid = math.isfinite(value) and value > 0
    if valid:
        PoolingMiddleware(_app, max_age=value).close()
    else:
        with pytest.raises(ValueError, match="max_age"):
            PoolingMiddleware(_app, max_age=value)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"write_slots": 0}, ValueError, id="zero"),
        pytest.param({"write_slots": 20}, ValueError, id="the-whole-cap"),
        pytest.param({"pool_size": 1, "max_overflow": 0, "write_slots": 1}, ValueError, id="cap-1"),
        pytest.param({"write_slots": True}, TypeError, id="bool"),
        pytest.param({"write_slots": 2.0}, TypeError, id="float"),
    ],
)
def test_write_slots_must_leave_the_reads_a_connection(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """write_slots is None or 1 to cap - 1, and the error names it."""
    with pytest.raises(error, match="write_slots"):
        PoolingMiddleware(_app, **kwargs)


@pytest.mark.parametrize(
    ("pool_size", "max_overflow", "write_slots", "reads", "writes"),
    [
        pytest.param(10, 10, 10, (5, 5), (5, 5), id="half"),
        pytest.param(10, 10, 5, (8, 7), (2, 3), id="quarter"),
        pytest.param(0, 4, 1, (0, 3), (0, 1), id="overflow-only"),
        pytest.param(3, 0, 1, (2, 0), (1, 0), id="no-overflow"),
    ],
)
def test_write_slots_split_the_cap_between_two_pools(
    pool_size: int,
    max_overflow: int,
    write_slots: int,
    reads: tuple[int, int],
    writes: tuple[int, int],
) -> None:
    """Each alias gets a pool for safe requests and one for the others; the caps add up."""
    mw = PoolingMiddleware(
        _app,
        aliases=["default"],
        pool_size=pool_size,
        max_overflow=max_overflow,
        write_slots=write_slots,
    )
    try:
        stats = mw.stats()
    finally:
        mw.close()
    assert set(stats) == {"default", "default:writes"}
    got = {name: (s["pool_size"], s["max_overflow"]) for name, s in stats.items()}
    assert got == {"default": reads, "default:writes": writes}
    assert sum(map(sum, got.values())) == pool_size + max_overflow
