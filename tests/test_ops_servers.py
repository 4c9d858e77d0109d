"""Operating the pool: the example gunicorn.conf.py under real workers, warm-up (min_size),
max_age jitter, and long-hold warnings (warn_hold, capture_stack)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import pytest

from tests.conftest import PeakSampler, Pooled, Server, events
from tests.test_servers import _free_port, _get
from wsgi_db_pool.pool import PooledConnection

ROOT = Path(__file__).resolve().parent.parent
CAP = 3  # TEST_POOL_SIZE 2 + TEST_MAX_OVERFLOW 1 in tests/servers_wsgi.py, per worker

# The pool's events (stdlib logger "wsgi_db_pool") and gunicorn's own, both to stderr.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(name)s %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "plain",
        }
    },
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        "wsgi_db_pool": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
    },
}


class Gunicorn:
    """One gunicorn started with ``-c gunicorn.conf.py``; its stderr goes to a file."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
        self.port = _free_port()
        self.log_path = tmp_path / f"gunicorn-{self.port}.log"
        log_config = tmp_path / "logging.json"
        log_config.write_text(json.dumps(LOGGING))
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--log-config-json",
                str(log_config),
                *args,
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "TEST_POOL_SIZE": "2",
                "TEST_MAX_OVERFLOW": "1",
                **env,
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gunicorn exited: {self.log()}"
            try:
                if _get(self.port, "/no-db/", timeout=2)[0] == 200:
                    return
            except OSError:
                gevent.sleep(0.1)
        raise AssertionError(f"gunicorn did not answer within 30 s: {self.log()}")

    def get(self, path: str) -> tuple[int, bytes]:
        return _get(self.port, path)

    def stop(self) -> str:
        """SIGTERM, as a deploy would: workers finish, run worker_exit, and exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self._log.close()
        return self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def gunicorn(server: Server, tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def start(*args: str, **env: str) -> Gunicorn:
        started.append(Gunicorn(tmp_path, list(args), env))
        return started[-1]

    yield start
    for instance in started:
        instance.stop()


def _burst(
    g: Gunicorn, server: Server, path: str, n: int, concurrency: int
) -> tuple[list[int], int]:
    """n requests, concurrency at a time: the statuses and the peak server connection count."""
    group = gevent.pool.Pool(concurrency)
    with PeakSampler(server.count) as sampled:
        statuses = [status for status, _ in group.imap_unordered(lambda _: g.get(path), range(n))]
    return statuses, sampled.peak


def _metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise KeyError(name)


# -- the example gunicorn.conf.py -------------------------------------------------------------


@pytest.mark.slow
def test_config_with_gevent_workers_and_multiprocess_metrics(
    gunicorn: Callable[..., Gunicorn], server: Server, tmp_path: Path
) -> None:
    """Two gevent workers from gunicorn.conf.py: within 2 x cap, metrics summed over both
    workers, and on SIGTERM every pool closed politely (COM_QUIT, reason=shutdown)."""
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"")  # a past run's leftover
    g = gunicorn(
        "--workers", "2", "tests.servers_wsgi:pooled",
        PROMETHEUS_MULTIPROC_DIR=str(folder), WSGI_DB_POOL_METRICS_INTERVAL="0.1",
    )  # fmt: skip
    assert not (folder / "counter_999999.db").exists()  # on_starting emptied the folder
    statuses, peak = _burst(g, server, "/hold/?seconds=0.02", n=80, concurrency=30)
    assert statuses == [200] * 80
    assert 1 <= peak <= 2 * CAP
    gevent.sleep(0.5)  # a few push intervals
    text = g.get("/metrics/")[1].decode()
    assert _metric(text, "wsgi_db_pool_checkouts_total", alias="default") == 80
    assert _metric(text, "wsgi_db_pool_in_use_connections", alias="default") == 0
    assert 1 <= _metric(text, "wsgi_db_pool_open_connections", alias="default") <= 2 * CAP
    assert _metric(text, "wsgi_db_pool_pool_size_connections", alias="default") == 2 * 2  # livesum
    assert _metric(text, "wsgi_db_pool_checkout_wait_seconds_count", alias="default") == 80
    log = g.stop()
    assert log.count("wsgi_db_pool: closed 1 pooling middleware(s) in worker") == 2, log
    assert "reason='shutdown'" in log
    assert "db_pool.leak" not in log, log
    assert "Traceback" not in log, log
    assert server.wait_count(0) == 0
    # child_exit dropped the dead workers' live gauges; their counters remain.
    names = sorted(path.name.split("_")[0] for path in folder.iterdir())
    assert "gauge" not in names
    assert "counter" in names


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["-k", "gthread", "--threads", "8"], id="gthread"),
        pytest.param(["-k", "gevent", "--preload"], id="gevent-preload"),
    ],
)
def test_config_with_one_worker(
    gunicorn: Callable[..., Gunicorn], server: Server, args: list[str]
) -> None:
    """gthread and gevent --preload under the config (app behind a plain function): within the
    cap, and the worker_exit hook still finds the middleware and closes it."""
    g = gunicorn("--workers", "1", *args, "tests.servers_wsgi:application")
    statuses, peak = _burst(g, server, "/hold/?seconds=0.02", n=60, concurrency=20)
    assert statuses == [200] * 60
    assert 1 <= peak <= CAP
    log = g.stop()
    assert "wsgi_db_pool: closed 1 pooling middleware(s) in worker" in log, log
    assert "reason='shutdown'" in log
    if "--preload" in args:
        # Django was imported in the arbiter, before the worker's gevent patching.
        assert "db_pool.storage_rebound" in log
    assert server.wait_count(0) == 0


# -- warm-up ------------------------------------------------------------------------------------


def _wait_idle(app: Pooled, n: int, timeout: float = 3.0) -> None:
    """Until the pool holds n idle connections (the server sees one a moment before)."""
    deadline = time.monotonic() + timeout
    while app.stats()["idle"] < n and time.monotonic() < deadline:
        gevent.sleep(0.01)


def test_min_size_warms_up_in_the_background_one_at_a_time(
    make_pooled: Callable[..., Pooled], server: Server, logs: list[dict[str, Any]]
) -> None:
    """The first request starts the warm-up and does not wait for it; min_size connections
    open one at a time, and later requests reuse them without connecting."""
    app = make_pooled(aliases=["default"], pool_size=4, max_overflow=0, min_size=3)
    assert app.stats()["open"] == 0  # nothing at construction
    app.get("/no-db/")
    # Served before the warm-up greenlet ran at all.
    assert app.stats()["connects"] == 0
    _wait_idle(app, 3)
    stats = app.stats()
    assert (stats["open"], stats["idle"], stats["connects"], stats["checkouts"]) == (3, 3, 3, 0)
    assert server.wait_count(3) == 3
    # One at a time: each connect event saw one more open connection than the last.
    assert [e["open"] for e in events(logs, "db_pool.connect")] == [1, 2, 3]
    ids = {app.json("/read/")["conn_id"] for _ in range(3)}
    assert ids <= server.connection_ids()
    assert app.stats()["connects"] == 3


def test_max_idle_never_shrinks_below_min_size(
    make_pooled: Callable[..., Pooled], server: Server
) -> None:
    """After a burst, max_idle closes spare connections down to min_size and no further."""
    app = make_pooled(aliases=["default"], pool_size=4, max_overflow=0, min_size=2, max_idle=0.2)
    greenlets = [gevent.spawn(app.request, "/hold/", "seconds=0.05") for _ in range(4)]
    gevent.joinall(greenlets, raise_error=True)
    assert app.stats()["open"] == 4
    gevent.sleep(0.8)  # several reaper ticks (every max_idle / 2)
    stats = app.stats()
    assert (stats["open"], stats["idle"]) == (2, 2)
    assert stats["discards"] == {"max_idle": 2}
    assert server.wait_count(2) == 2


# -- max_age jitter -------------------------------------------------------------------------------


def test_max_age_jitter_spreads_expiry() -> None:
    """Connections opened at the same moment expire up to 10% early, spread over that range."""
    now = 1000.0
    expiries = [PooledConnection(object(), now, 100.0, 0).expires_at - now for _ in range(200)]
    assert all(90.0 <= age <= 100.0 for age in expiries)
    assert max(expiries) - min(expiries) > 5.0  # spread, not one instant
    assert PooledConnection(object(), now, None, 0).expires_at == float("inf")


def test_connections_opened_together_expire_apart(
    make_pooled: Callable[..., Pooled], server: Server
) -> None:
    """In a real pool, five connections opened in one burst get five different expiry times."""
    app = make_pooled(aliases=["default"], pool_size=5, max_overflow=0, max_age=60.0)
    greenlets = [gevent.spawn(app.request, "/hold/", "seconds=0.05") for _ in range(5)]
    gevent.joinall(greenlets, raise_error=True)
    entries = list(app.mw.pools["default"]._idle)
    assert len(entries) == 5
    ages = [entry.expires_at - entry.created_at for entry in entries]
    assert all(54.0 <= age <= 60.0 for age in ages)
    assert len(set(ages)) == 5


# -- long holds ---------------------------------------------------------------------------------


def test_long_hold_is_reported_at_checkin(
    make_pooled: Callable[..., Pooled], server: Server, logs: list[dict[str, Any]]
) -> None:
    """A request that held its connection past warn_hold logs db_pool.long_hold when it gives
    back (held, still_held=False, where = its path); a short one logs nothing."""
    app = make_pooled(aliases=["default"], pool_size=1, max_overflow=0, warn_hold=0.1)
    app.json("/hold/", seconds=0.01)
    assert not events(logs, "db_pool.long_hold")
    # Blocking (no greenlet switch) until the checkin, so that only the checkin can tell.
    app.json("/block/", seconds=0.2)
    [hold] = events(logs, "db_pool.long_hold")
    assert hold["still_held"] is False
    assert 0.2 <= hold["held"] < 2.0
    assert hold["where"] == "/block/"
    assert hold["log_level"] == "warning"


def test_long_hold_is_reported_while_still_held_with_its_stack(
    make_pooled: Callable[..., Pooled], server: Server, logs: list[dict[str, Any]]
) -> None:
    """With capture_stack the event carries the checkout's stack; the reaper reports a hold
    while it lasts (still_held=True), and the checkin does not report it again."""
    app = make_pooled(
        aliases=["default"],
        pool_size=1,
        max_overflow=0,
        warn_hold=0.1,
        capture_stack=True,
        max_idle=0.1,  # the reaper ticks every max_idle / 2
    )
    app.json("/hold/", seconds=0.4)
    [hold] = events(logs, "db_pool.long_hold")
    assert hold["still_held"] is True
    assert 0.1 <= hold["held"] < 0.4
    where = hold["where"]
    assert where.startswith("/hold/\n")
    for part in ("tests/app/views.py", "in hold", "in _one"):
        assert part in where


def test_still_held_is_reported_within_warn_hold_with_default_lifetimes(
    make_pooled: Callable[..., Pooled], server: Server, logs: list[dict[str, Any]]
) -> None:
    """With default max_idle/max_age, a hold past warn_hold is reported while it lasts."""
    app = make_pooled(aliases=["default"], pool_size=1, max_overflow=0, warn_hold=0.1)
    app.json("/hold/", seconds=0.5)
    assert [e["still_held"] for e in events(logs, "db_pool.long_hold")] == [True]


def test_warm_up_logs_no_checkout(
    make_pooled: Callable[..., Pooled], server: Server, logs: list[dict[str, Any]]
) -> None:
    """Warm-up connections are connects, not checkouts: no db_pool.checkout event for them."""
    app = make_pooled(aliases=["default"], pool_size=2, max_overflow=0, min_size=2)
    app.get("/no-db/")
    _wait_idle(app, 2)
    assert app.stats()["checkouts"] == 0
    assert events(logs, "db_pool.checkout") == []
