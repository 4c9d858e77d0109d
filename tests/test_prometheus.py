"""Prometheus metrics: the scrape-time collector, and the periodic push for multiprocess mode."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Pooled, Server
from wsgi_db_pool.prometheus import (
    GAUGE_NAMES,
    MultiprocessPush,
    PoolCollector,
    register_collector,
)

ROOT = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str | bytes) -> Samples:
    """Every sample of an exposition, keyed by name and labels."""
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


class FakeApp:
    """Anything with stats(): the collector's own logic, without a pool."""

    def __init__(self, **stats: Any) -> None:
        self.by_alias: dict[str, dict[str, Any]] = {"default": {**BASE, **stats}}

    def stats(self) -> dict[str, dict[str, Any]]:
        return self.by_alias


BASE: dict[str, Any] = {
    "open": 3,
    "idle": 1,
    "in_use": 2,
    "waiting": 4,
    "pool_size": 2,
    "max_overflow": 1,
    "connects": 5,
    "connect_errors": 1,
    "checkouts": 40,
    "recycles": 37,
    "discards": {"overflow": 2},
    "timeouts": 1,
    "rejects": {},
    "leaked_pending": 0,
}
# The shape of the pool's stats()["wait_seconds"]: cumulative counts by upper bound.
INF = float("inf")
WAIT = {
    "wait_seconds": {
        "buckets": [(0.001, 30), (0.01, 35), (0.1, 38), (1.0, 40), (INF, 40)],
        "sum": 1.25,
        "count": 40,
    }
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_scrape_reads_stats_at_scrape_time(
    make_pooled: Callable[..., Pooled], server: Server, registry: CollectorRegistry
) -> None:
    """Gauges and counters per alias equal stats() at the moment of each scrape."""
    app = make_pooled(aliases=["default", "other"], pool_size=1, max_overflow=1)
    register_collector(app.mw, registry=registry)
    before = scrape(generate_latest(registry))
    assert value(before, "wsgi_db_pool_checkouts_total", alias="default") == 0
    assert value(before, "wsgi_db_pool_open_connections", alias="other") == 0
    for _ in range(3):
        app.json("/both/")
    samples = scrape(generate_latest(registry))
    for alias in ("default", "other"):
        stats = app.stats(alias)
        for key in ("open", "idle", "in_use", "waiting", "pool_size", "max_overflow"):
            assert value(samples, f"wsgi_db_pool_{GAUGE_NAMES[key]}", alias=alias) == stats[key], (
                key
            )
        for key in ("connects", "connect_errors", "checkouts", "recycles", "timeouts"):
            assert value(samples, f"wsgi_db_pool_{key}_total", alias=alias) == stats[key], key
    assert value(samples, "wsgi_db_pool_checkouts_total", alias="default") == 3
    assert value(samples, "wsgi_db_pool_idle_connections", alias="other") == 1


def test_discards_and_rejects_by_reason(
    make_pooled: Callable[..., Pooled], server: Server, registry: CollectorRegistry
) -> None:
    """Every known reason is exposed from the start (at 0); the pool's counts fill them in."""
    app = make_pooled(aliases=["default"], pool_size=1, max_overflow=0)
    register_collector(app.mw, registry=registry)
    app.json("/close/")  # the view closes its connection: discarded as "closed"
    samples = scrape(generate_latest(registry))
    assert value(samples, "wsgi_db_pool_discards_total", alias="default", reason="closed") == 1
    for reason in ("overflow", "max_age", "max_idle", "broken", "interrupted", "leak"):
        assert value(samples, "wsgi_db_pool_discards_total", alias="default", reason=reason) == 0
    for reason in ("max_waiting", "backoff"):
        assert value(samples, "wsgi_db_pool_rejects_total", alias="default", reason=reason) == 0


def test_http_scrape(pooled: Pooled, server: Server, registry: CollectorRegistry) -> None:
    """prometheus_client's own WSGI exposition serves the pool's metrics."""
    import webtest

    register_collector(pooled.mw, registry=registry)
    pooled.json("/read/")
    response = webtest.TestApp(make_wsgi_app(registry)).get("/metrics")
    assert response.content_type == "text/plain"
    samples = scrape(response.body)
    assert value(samples, "wsgi_db_pool_checkouts_total", alias="default") == 1
    assert value(samples, "wsgi_db_pool_open_connections", alias="default") == 1


def test_register_twice_is_refused_and_unregister_works(registry: CollectorRegistry) -> None:
    """A second collector with the same names is refused; unregister frees them."""
    app = FakeApp()
    collector = register_collector(app, registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register_collector(app, registry=registry)
    registry.unregister(collector)
    register_collector(app, registry=registry, namespace="other_pool")
    assert "other_pool_open_connections" in generate_latest(registry).decode()


def test_collector_holds_the_application_weakly(registry: CollectorRegistry) -> None:
    """Once the application is gone the collector reports nothing and keeps nothing alive."""
    app = FakeApp()
    register_collector(app, registry=registry)
    assert scrape(generate_latest(registry))
    del app
    gc.collect()
    assert scrape(generate_latest(registry)) == {}


def test_histogram_from_wait_buckets(registry: CollectorRegistry) -> None:
    """stats()['wait_seconds'] becomes a histogram of checkout waits."""
    app = FakeApp(**WAIT)  # the collector holds it weakly
    register_collector(app, registry=registry)
    samples = scrape(generate_latest(registry))
    name = "wsgi_db_pool_checkout_wait_seconds"
    assert value(samples, f"{name}_bucket", alias="default", le="0.001") == 30
    assert value(samples, f"{name}_bucket", alias="default", le="+Inf") == 40
    assert value(samples, f"{name}_count", alias="default") == 40
    assert value(samples, f"{name}_sum", alias="default") == 1.25


def test_no_histogram_without_wait_seconds(registry: CollectorRegistry) -> None:
    """Stats without wait_seconds (an older pool) expose everything else, no empty histogram."""
    app = FakeApp()
    register_collector(app, registry=registry)
    text = generate_latest(registry).decode()
    assert "checkout_wait_seconds" not in text
    assert "wsgi_db_pool_open_connections" in text


def test_histogram_from_the_real_pool(
    make_pooled: Callable[..., Pooled], server: Server, registry: CollectorRegistry
) -> None:
    """Each checkout is counted in the wait histogram: no wait for an idle connection or a
    free slot, the queue time for a waiter."""
    import gevent

    app = make_pooled(aliases=["default"], pool_size=1, max_overflow=0, timeout=5.0)
    register_collector(app.mw, registry=registry)
    for _ in range(3):
        app.json("/read/")
    # Two at once on one connection: the second queues for about 0.2 s.
    both = [gevent.spawn(app.request, "/hold/", "seconds=0.2") for _ in range(2)]
    gevent.joinall(both, raise_error=True)
    samples = scrape(generate_latest(registry))
    name = "wsgi_db_pool_checkout_wait_seconds"
    assert value(samples, f"{name}_count", alias="default") == 5
    assert value(samples, f"{name}_bucket", alias="default", le="0.001") == 4
    assert value(samples, f"{name}_bucket", alias="default", le="0.1") == 4
    assert value(samples, f"{name}_bucket", alias="default", le="0.5") == 5
    assert 0.15 < value(samples, f"{name}_sum", alias="default") < 0.5


def test_bad_arguments_are_named() -> None:
    """Wrong objects and values are refused with the argument's name."""
    with pytest.raises(TypeError, match="application must be a PoolingMiddleware"):
        PoolCollector(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval must be"):
        MultiprocessPush(FakeApp(), interval=0, registry=CollectorRegistry())
    with pytest.raises(ValueError, match="gauge_mode must be one of"):
        MultiprocessPush(FakeApp(), gauge_mode="average", registry=CollectorRegistry())
    # This process is not in prometheus_client's multiprocess mode.
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR"):
        MultiprocessPush(FakeApp())


def test_push_copies_increases_only(registry: CollectorRegistry) -> None:
    """Each push adds what the totals grew by since the last, so repeated pushes never double."""
    app = FakeApp(**WAIT)
    push = MultiprocessPush(app, registry=registry)
    push.push()
    push.push()
    samples = scrape(generate_latest(registry))
    assert value(samples, "wsgi_db_pool_checkouts_total", alias="default") == 40
    assert value(samples, "wsgi_db_pool_in_use_connections", alias="default") == 2
    assert value(samples, "wsgi_db_pool_discards_total", alias="default", reason="overflow") == 2
    stats = app.by_alias["default"]
    stats.update(checkouts=45, in_use=0, discards={"overflow": 3, "leak": 1})
    buckets = [(0.001, 33), (0.01, 38), (0.1, 41), (1.0, 45), (INF, 45)]
    stats["wait_seconds"] = {"buckets": buckets, "sum": 2.0, "count": 45}
    push.push()
    samples = scrape(generate_latest(registry))
    assert value(samples, "wsgi_db_pool_checkouts_total", alias="default") == 45
    assert value(samples, "wsgi_db_pool_in_use_connections", alias="default") == 0
    assert value(samples, "wsgi_db_pool_discards_total", alias="default", reason="leak") == 1
    name = "wsgi_db_pool_checkout_wait_seconds"
    assert value(samples, f"{name}_bucket", alias="default", le="0.001") == 33
    assert value(samples, f"{name}_bucket", alias="default", le="0.1") == 41
    assert value(samples, f"{name}_count", alias="default") == 45
    assert value(samples, f"{name}_sum", alias="default") == 2.0


def test_push_thread_runs_every_interval(pooled: Pooled, server: Server) -> None:
    """start() pushes at once and then every interval; stop() pushes a last time."""
    import gevent

    registry = CollectorRegistry()
    push = MultiprocessPush(pooled.mw, interval=0.05, registry=registry).start()
    try:
        assert push.start() is push  # a second start in the same process changes nothing
        pooled.json("/read/")
        gevent.sleep(0.2)
        samples = scrape(generate_latest(registry))
        assert value(samples, "wsgi_db_pool_checkouts_total", alias="default") == 1
        pooled.json("/read/")
    finally:
        push.stop()
    samples = scrape(generate_latest(registry))
    assert value(samples, "wsgi_db_pool_checkouts_total", alias="default") == 2


MULTIPROCESS_SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from tests.test_prometheus import BASE, WAIT, FakeApp
from wsgi_db_pool.prometheus import MultiprocessPush

app = FakeApp(**WAIT)
push = MultiprocessPush(app)
push.push()
pid = os.fork()
if pid == 0:
    # A worker forked after the first push starts from its own (reset) numbers.
    app.by_alias["default"] = dict(BASE, checkouts=7, **WAIT)
    push.push()
    push.push()
    os._exit(0)
os.waitpid(pid, 0)
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
sys.stdout.write(generate_latest(registry).decode())
"""


def test_multiprocess_files_add_up_across_workers(tmp_path: Path) -> None:
    """In multiprocess mode two processes' pushes add up in what any scrape reads."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    script = tmp_path / "push.py"
    script.write_text(textwrap.dedent(MULTIPROCESS_SCRIPT.format(root=str(ROOT))))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    samples = scrape(result.stdout)
    assert value(samples, "wsgi_db_pool_checkouts_total", alias="default") == 40 + 7
    # Gauges: livesum adds the live processes' values.
    assert value(samples, "wsgi_db_pool_in_use_connections", alias="default") == 2 + 2
    name = "wsgi_db_pool_checkout_wait_seconds"
    assert value(samples, f"{name}_count", alias="default") == 80
    assert value(samples, f"{name}_bucket", alias="default", le="0.01") == 70
    assert value(samples, f"{name}_sum", alias="default") == 2.5
    # Files only: one per kind and process, written at push time, never per checkout.
    kinds = sorted({path.name.rsplit("_", 1)[0] for path in folder.iterdir()})
    assert kinds == ["counter", "gauge_livesum", "histogram"]
