"""Real gunicorn workers serving the pooled test app: gevent, gevent after --preload, gthread."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest

from tests.conftest import PeakSampler, Server

ROOT = Path(__file__).resolve().parent.parent
CAP = 3  # TEST_POOL_SIZE 2 + TEST_MAX_OVERFLOW 1, as set below


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def gunicorn(server: Server) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        *args: str, app: str = "tests.servers_wsgi:application", env: dict[str, str] | None = None
    ) -> int:
        port = _free_port()
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "TEST_POOL_SIZE": "2",
            "TEST_MAX_OVERFLOW": "1",
            **(env or {}),
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "1",
                "--bind",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                *args,
                app,
            ],
            cwd=ROOT,
            env=env,
        )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"gunicorn exited with {proc.returncode}"
            try:
                if _get(port, "/no-db/", timeout=2)[0] == 200:
                    return port
            except OSError:
                gevent.sleep(0.1)
        raise AssertionError("gunicorn did not answer within 30 s")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def _burst(port: int, server: Server, path: str, n: int, concurrency: int) -> tuple[list[int], int]:
    """Fire n requests, concurrency at a time; return statuses and the peak server count."""
    pool = gevent.pool.Pool(concurrency)
    with PeakSampler(server.count, every=0.02) as sampled:
        statuses = [s for s, _ in pool.imap_unordered(lambda _: _get(port, path), range(n))]
    return statuses, sampled.peak


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["-k", "gevent", "--worker-connections", "200"], id="gevent"),
        pytest.param(
            ["-k", "gevent", "--worker-connections", "200", "--preload"], id="gevent-preload"
        ),
        pytest.param(["-k", "gthread", "--threads", "8"], id="gthread"),
    ],
)
def test_gunicorn_worker_serves_within_the_cap(gunicorn, server: Server, args: list[str]) -> None:
    """Under each worker class, 150 concurrent requests all succeed on at most CAP connections."""
    import gevent.pool  # noqa: F401 - the submodule used by _burst

    port = gunicorn(*args)
    statuses, peak = _burst(port, server, "/sleep-query/?seconds=0.02", n=150, concurrency=50)
    assert statuses == [200] * 150
    assert 1 <= peak <= CAP
    # Idle connections stay open for reuse, no more than the cap.
    assert server.count() <= CAP
    status, body = _get(port, "/read/")
    assert status == 200
    assert json.loads(body)["conn_id"] in server.connection_ids()


@pytest.mark.slow
def test_preloaded_worker_never_uses_the_arbiters_connection(gunicorn, server: Server) -> None:
    """After --preload forks, the worker opens its own connections, never the parent's."""
    os.environ["TEST_WARM_PARENT"] = "1"
    try:
        port = gunicorn("-k", "gevent", "--preload")
    finally:
        del os.environ["TEST_WARM_PARENT"]
    parent_id = json.loads(_get(port, "/parent-conn-id")[1])["conn_id"]
    assert parent_id in server.connection_ids()  # still open, held by the arbiter's pool
    served = {json.loads(_get(port, "/read/")[1])["conn_id"] for _ in range(20)}
    assert parent_id not in served
    # The worker reuses its own connection rather than opening one per request.
    assert len(served) == 1
