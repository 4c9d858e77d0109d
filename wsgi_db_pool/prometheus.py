"""Prometheus metrics for the pools, read from ``PoolingMiddleware.stats()``.

Needs the extra: ``pip install 'wsgi_db_pool[prometheus]'`` (prometheus_client).
Nothing here counts anything on a checkout: the pool keeps its own totals, and these
read them.

One process (a single worker, or threads): register a collector once, and every
scrape reads the pools' numbers at that moment::

    from wsgi_db_pool.prometheus import register_collector
    register_collector(application)  # prometheus_client's default REGISTRY

Several worker processes behind one port (gunicorn ``--workers N`` with
prometheus_client's multiprocess mode): a scrape reaches one worker at random, and
prometheus_client's multiprocess collector reads only the files the workers write,
so a scrape-time collector cannot work. Each worker instead copies its numbers into
those files every ``interval`` seconds from a background thread (a greenlet under
gevent)::

    from wsgi_db_pool.prometheus import MultiprocessPush
    push = MultiprocessPush(application, interval=5.0).start()   # in post_worker_init
    push.stop()                                                   # in worker_exit

The metrics, each with the label ``alias`` (``reason`` too where named):

- gauges ``wsgi_db_pool_open_connections``, ``_idle_connections``,
  ``_in_use_connections``, ``_waiting_checkouts``, ``_opening_connections``,
  ``_leaked_pending_connections``, ``_pool_size_connections``,
  ``_max_overflow_connections`` and ``_backed_off`` (0 or 1);
- counters ``wsgi_db_pool_connects_total``, ``_connect_errors_total``,
  ``_checkouts_total``, ``_recycles_total``, ``_timeouts_total``,
  ``_discards_total{reason}``, ``_rejects_total{reason}``;
- the histogram ``wsgi_db_pool_checkout_wait_seconds`` from ``stats()["wait_seconds"]``:
  how long checkouts queued for a connection or a slot (a connection found idle
  counts as no wait; the time spent connecting or pinging is not in it).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._reasons import Reason, Reject

__all__ = [
    "GAUGES",
    "GAUGE_NAMES",
    "TOTALS",
    "MultiprocessPush",
    "PoolCollector",
    "register_collector",
]


class _HasStats(Protocol):
    def stats(self) -> Mapping[str, Mapping[str, Any]]: ...


#: stats() keys exposed as gauges, with their help text.
GAUGES: dict[str, str] = {
    "open": "Connections open now, counting those being opened or closed",
    "idle": "Open connections waiting in the pool",
    "in_use": "Connections held by requests or pooled() blocks",
    "waiting": "Checkouts waiting for a connection",
    "connecting": "Connections being opened, for requests or by the pool's prober",
    "backed_off": "1 while the pool backs off: the server is out of reach as far as it knows",
    "leaked_pending": "Reclaimed connections whose slot is not yet freed",
    "pool_size": "The pool_size setting",
    "max_overflow": "The max_overflow setting",
}

#: The metric name (after the namespace) of each gauge: Prometheus' conventions end a
#: name with its unit, here what is counted. Before 0.2 they were the stats() keys
#: (``wsgi_db_pool_open``, ``_idle``, ``_in_use``, ``_waiting``, ``_connecting``,
#: ``_leaked_pending``, ``_pool_size``, ``_max_overflow``). ``backed_off`` is 0 or 1.
GAUGE_NAMES: dict[str, str] = {
    "open": "open_connections",
    "idle": "idle_connections",
    "in_use": "in_use_connections",
    "waiting": "waiting_checkouts",
    "connecting": "opening_connections",
    "backed_off": "backed_off",
    "leaked_pending": "leaked_pending_connections",
    "pool_size": "pool_size_connections",
    "max_overflow": "max_overflow_connections",
}

#: stats() keys exposed as counters (with ``_total``), with their help text.
TOTALS: dict[str, str] = {
    "connects": "Connections opened",
    "connect_errors": "Connection attempts that failed",
    "checkouts": "Connections handed out",
    "recycles": "Connections given back and kept for reuse",
    "timeouts": "Checkouts that gave up after the pool's timeout",
    "reserved": "Checkouts past the cap by requests holding other aliases",
}

# Counters by reason; the reasons the pool knows today are always exposed (at 0 until
# they happen), so that rate() and alerts see a series from the start.
_BY_REASON: dict[str, tuple[str, tuple[str, ...]]] = {
    "discards": ("Connections closed, by reason", tuple(reason.value for reason in Reason)),
    "rejects": ("Checkouts refused at once, by reason", tuple(reason.value for reason in Reject)),
}

_WAIT_HELP = "Seconds checkouts queued for a connection or a slot (not connecting or pinging)"


def _by_reason(stats: Mapping[str, Any], key: str) -> dict[str, float]:
    counts = dict.fromkeys(_BY_REASON[key][1], 0.0)
    for reason, value in (stats.get(key) or {}).items():
        counts[str(reason)] = float(value)
    return counts


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it in the ``le`` label."""
    bound = float(bound)
    return "+Inf" if bound == math.inf else repr(bound)


def _wait_histogram(stats: Mapping[str, Any]) -> tuple[list[tuple[str, float]], float] | None:
    """stats()["wait_seconds"] as Prometheus buckets (``le`` strings, cumulative) and sum."""
    histogram = stats.get("wait_seconds")
    if not histogram:
        return None
    buckets = [(_le(bound), float(count)) for bound, count in histogram["buckets"]]
    if not buckets or buckets[-1][0] != "+Inf":
        raise ValueError(f"stats()['wait_seconds'] must end with an infinite bound: {buckets!r}")
    return buckets, float(histogram["sum"])


class PoolCollector(Collector):
    """A prometheus_client collector that reads ``application.stats()`` at each scrape.

    It holds the application weakly: once the application is gone it reports nothing.
    """

    def __init__(self, application: _HasStats, *, namespace: str = "wsgi_db_pool") -> None:
        if not callable(getattr(application, "stats", None)):
            raise TypeError(
                f"application must be a PoolingMiddleware (with stats()), not {application!r}"
            )
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"namespace must be a non-empty string, not {namespace!r}")
        self.namespace = namespace
        self._ref: Callable[[], _HasStats | None] = weakref.ref(application)

    def describe(self) -> Iterable[Metric]:
        """The metric names, without reading any stats (registration calls this)."""
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        """The metrics as they are now."""
        application = self._ref()
        if application is None:
            return []
        return self._families(application.stats())

    def _families(self, by_alias: Mapping[str, Mapping[str, Any]]) -> list[Metric]:
        ns = self.namespace
        families: list[Metric] = []
        for key, help_text in GAUGES.items():
            gauge = GaugeMetricFamily(f"{ns}_{GAUGE_NAMES[key]}", help_text, labels=["alias"])
            for alias, stats in by_alias.items():
                if key in stats:
                    gauge.add_metric([alias], float(stats[key]))
            families.append(gauge)
        for key, help_text in TOTALS.items():
            counter = CounterMetricFamily(f"{ns}_{key}", help_text, labels=["alias"])
            for alias, stats in by_alias.items():
                if key in stats:
                    counter.add_metric([alias], float(stats[key]))
            families.append(counter)
        for key, (help_text, _known) in _BY_REASON.items():
            counter = CounterMetricFamily(f"{ns}_{key}", help_text, labels=["alias", "reason"])
            for alias, stats in by_alias.items():
                for reason, value in _by_reason(stats, key).items():
                    counter.add_metric([alias, reason], value)
            families.append(counter)
        histogram = HistogramMetricFamily(
            f"{ns}_checkout_wait_seconds", _WAIT_HELP, labels=["alias"]
        )
        for alias, stats in by_alias.items():
            waits = _wait_histogram(stats)
            if waits is not None:
                histogram.add_metric([alias], *waits)
        if histogram.samples or not by_alias:
            families.append(histogram)
        return families


def register_collector(
    application: _HasStats,
    *,
    registry: CollectorRegistry = REGISTRY,
    namespace: str = "wsgi_db_pool",
) -> PoolCollector:
    """Expose ``application``'s pools to Prometheus through ``registry``; returns the collector.

    Call it once per application (a second registration of the same names raises
    prometheus_client's ``ValueError``); ``registry.unregister(collector)`` undoes it.
    Not for prometheus_client's multiprocess mode: see ``MultiprocessPush``.
    """
    collector = PoolCollector(application, namespace=namespace)
    registry.register(collector)
    return collector


def _multiprocess_mode() -> bool:
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


class MultiprocessPush:
    """Copy ``application.stats()`` into prometheus_client metrics every ``interval`` seconds.

    Made for prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set
    before prometheus_client is imported), where each worker writes its values to
    files that any worker's ``MultiProcessCollector`` sums up at scrape time. A
    checkout writes nothing: the background thread writes every ``interval``
    seconds, and ``push()`` writes once, now. Gauges use ``gauge_mode`` (a
    prometheus_client ``multiprocess_mode``; ``livesum`` adds up the live workers,
    ``liveall`` keeps one series per worker ``pid``); counters and the histogram
    add up every worker that ever ran.

    With ``registry`` given, the metrics are registered there instead and the
    process needs no multiprocess mode (a push-based alternative to
    ``register_collector``).
    """

    def __init__(
        self,
        application: _HasStats,
        *,
        interval: float = 5.0,
        namespace: str = "wsgi_db_pool",
        gauge_mode: str = "livesum",
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not callable(getattr(application, "stats", None)):
            raise TypeError(
                f"application must be a PoolingMiddleware (with stats()), not {application!r}"
            )
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise ValueError(f"interval must be a number of seconds > 0, not {interval!r}")
        if gauge_mode not in Gauge._MULTIPROC_MODES:
            raise ValueError(
                f"gauge_mode must be one of {sorted(Gauge._MULTIPROC_MODES)}, not {gauge_mode!r}"
            )
        if registry is None and not _multiprocess_mode():
            raise ValueError(
                "MultiprocessPush needs prometheus_client's multiprocess mode: set "
                "PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported (or pass "
                "registry=, or use register_collector() in a single process)"
            )
        self.application = application
        self.interval = float(interval)
        self.namespace = namespace
        ns = namespace
        self._gauges = {
            key: Gauge(
                f"{ns}_{GAUGE_NAMES[key]}",
                help_text,
                ["alias"],
                registry=registry,
                multiprocess_mode=gauge_mode,  # type: ignore[arg-type]
            )
            for key, help_text in GAUGES.items()
        }
        self._counters = {
            key: Counter(f"{ns}_{key}", help_text, ["alias"], registry=registry)
            for key, help_text in TOTALS.items()
        }
        self._reasons = {
            key: Counter(f"{ns}_{key}", help_text, ["alias", "reason"], registry=registry)
            for key, (help_text, _known) in _BY_REASON.items()
        }
        self._registry = registry
        self._histogram: Histogram | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # What this process pushed so far, to push only the increase next time.
        self._pushed: dict[tuple[str, ...], float] = {}
        self._stop: threading.Event | None = None

    # -- writing ----------------------------------------------------------------------

    def push(self) -> None:
        """Write the numbers as they are now (also called by the background thread)."""
        with self._lock:
            if self._pid != os.getpid():
                # A forked child starts from nothing: its pools were reset, and
                # prometheus_client gives it files of its own.
                self._pid = os.getpid()
                self._pushed.clear()
            for alias, stats in self.application.stats().items():
                self._push_alias(alias, stats)

    def _add(self, child: Any, key: tuple[str, ...], total: float) -> None:
        last = self._pushed.get(key, 0.0)
        # A total below the last one means the pool started over: count it afresh.
        delta = total - last if total >= last else total
        if delta:
            child.inc(delta)
        self._pushed[key] = total

    def _push_alias(self, alias: str, stats: Mapping[str, Any]) -> None:
        for key, gauge in self._gauges.items():
            if key in stats:
                gauge.labels(alias).set(float(stats[key]))
        for key, counter in self._counters.items():
            if key in stats:
                self._add(counter.labels(alias), (key, alias), float(stats[key]))
        for key, counter in self._reasons.items():
            for reason, value in _by_reason(stats, key).items():
                self._add(counter.labels(alias, reason), (key, alias, reason), value)
        waits = _wait_histogram(stats)
        if waits is not None:
            self._push_histogram(alias, *waits)

    def _push_histogram(self, alias: str, buckets: list[tuple[str, float]], total: float) -> None:
        if self._histogram is None:
            self._histogram = Histogram(
                f"{self.namespace}_checkout_wait_seconds",
                _WAIT_HELP,
                ["alias"],
                registry=self._registry,
                buckets=[float(le) for le, _count in buckets],
            )
        child = self._histogram.labels(alias)
        # Histogram has no public way to add counts in bulk; its per-bucket values
        # (non-cumulative, as in the multiprocess files) are the one way in.
        values = child._buckets
        if len(values) != len(buckets):
            raise ValueError(
                f"alias {alias!r}: {len(buckets)} wait buckets, but the histogram has "
                f"{len(values)}; the buckets must not change while the process runs"
            )
        below = 0.0
        for i, (le, cumulative) in enumerate(buckets):
            self._add(values[i], ("wait_bucket", alias, le), cumulative - below)
            below = cumulative
        self._add(child._sum, ("wait_sum", alias), total)

    # -- the background thread -----------------------------------------------------------

    def start(self) -> MultiprocessPush:
        """Push now and then every ``interval`` seconds until ``stop()``; returns self.

        Start it in each worker after the fork (gunicorn's ``post_worker_init``): a
        thread started before a fork does not run in the child.
        """
        with self._lock:
            if self._stop is not None and self._pid == os.getpid():
                return self  # already running in this process
            stop = threading.Event()
            self._stop = stop
        self.push()
        # threading as it is now: a greenlet once gevent has patched it.
        thread = threading.Thread(
            target=_push_loop,
            args=(weakref.ref(self), stop, self.interval),
            name="wsgi_db_pool-prometheus",
            daemon=True,
        )
        thread.start()
        return self

    def stop(self) -> None:
        """Stop the background thread and push one last time (call it as the worker exits)."""
        stop, self._stop = self._stop, None
        if stop is not None:
            stop.set()
        self.push()


def _push_loop(
    ref: Callable[[], MultiprocessPush | None], stop: threading.Event, every: float
) -> None:
    while not stop.wait(every):
        push = ref()
        if push is None:
            return
        try:
            push.push()
        except Exception:
            # Keep going: metrics a few seconds stale beat a thread that died.
            logging.getLogger("wsgi_db_pool").warning("prometheus push failed", exc_info=True)
        del push
