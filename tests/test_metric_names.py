"""Metric names follow Prometheus' conventions, checked on what a real pool exposes (and by
``promtool check metrics`` where it is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Pooled
from wsgi_db_pool.prometheus import GAUGE_NAMES, GAUGES, MultiprocessPush, PoolCollector

# What a gauge counts, as the last word of its name; backed_off is a 0/1 state.
UNITS = ("connections", "checkouts")
STATES = {"wsgi_db_pool_backed_off"}
OLD_NAMES = {f"wsgi_db_pool_{key}" for key in GAUGES}
# On PATH, or beside the interpreter (make puts Debian's promtool in the virtualenv).
PROMTOOL = shutil.which("promtool") or shutil.which(
    "promtool", path=str(Path(sys.executable).parent)
)


def _expositions(app: Pooled) -> dict[str, bytes]:
    """The text exposition of a pool that served a request, by the collector and the push."""
    app.get("/read/")
    collected = CollectorRegistry()
    collected.register(PoolCollector(app.mw))
    pushed = CollectorRegistry()
    MultiprocessPush(app.mw, registry=pushed).push()
    return {"collector": generate_latest(collected), "push": generate_latest(pushed)}


@pytest.mark.parametrize("source", ["collector", "push"])
def test_metric_names_follow_prometheus_conventions(
    make_pooled: Callable[..., Pooled], source: str
) -> None:
    """snake_case under the namespace; gauges end with what they count, counters with _total,
    the histogram with _seconds; none of the 0.1.0 gauge names is left."""
    text = _expositions(make_pooled(aliases=["default"], pool_size=1, max_overflow=0))[source]
    families = list(text_string_to_metric_families(text.decode()))
    # prometheus_client's own creation times of counters and histograms, outside
    # multiprocess mode: X_created beside X_total or X_bucket.
    families = [f for f in families if not f.name.endswith("_created")]
    names = {family.name: family.type for family in families}
    assert set(names.values()) == {"gauge", "counter", "histogram"}
    for name, kind in names.items():
        assert re.fullmatch(r"wsgi_db_pool(_[a-z]+)+", name), name
        if kind == "gauge":
            assert name.endswith(UNITS) or name in STATES, name
        elif kind == "histogram":
            assert name.endswith("_seconds"), name
    counters = {sample.name for f in families if f.type == "counter" for sample in f.samples}
    assert counters
    assert all(name.endswith("_total") for name in counters), counters
    assert not OLD_NAMES & set(names) - STATES
    assert {f"wsgi_db_pool_{suffix}" for suffix in GAUGE_NAMES.values()} == {
        name for name, kind in names.items() if kind == "gauge"
    }


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_check_metrics_is_clean(make_pooled: Callable[..., Pooled]) -> None:
    """`promtool check metrics` (Prometheus' own linter) reports nothing on either exposition."""
    for source, text in _expositions(make_pooled(aliases=["default"])).items():
        result = subprocess.run(
            [str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, check=False
        )
        assert result.returncode == 0, (source, result.stdout, result.stderr)
        assert result.stdout.strip() == result.stderr.strip() == b"", (source, result)
