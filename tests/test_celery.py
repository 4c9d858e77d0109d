"""Celery's gevent pool with the standard Django layout (tests/celery_proj): proj/__init__.py
imports proj.celery, and both the web process and the worker import the package.

The worker (``celery worker -P gevent -c 100``, Redis as the broker) runs ``@pooled`` tasks
within its pool's cap, and a web process finds exactly its own middleware: no ``RuntimeError:
found 2``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from tests.conftest import PeakSampler, Server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "tests" / "celery_proj"
BROKER = "redis://127.0.0.1:6379/0"
QUEUE = f"{os.environ.get('WSGI_DB_POOL_TEST_NS', 'wsgi_db_pool')}-celery"
WORKER_CAP = 8  # pool_size=4, max_overflow=4 in proj/celery.py
TASKS = 300


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{PROJECT}{os.pathsep}{ROOT}",
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "TEST_BROKER_URL": BROKER,
        "TEST_CELERY_QUEUE": QUEUE,
    }


@pytest.fixture
def client() -> Iterator[Any]:
    """A Celery client of the same broker, sending by task name (proj is not imported here)."""
    from celery import Celery

    app = Celery("client", broker=BROKER, backend=BROKER)
    app.conf.task_default_queue = QUEUE
    app.conf.broker_connection_retry_on_startup = True
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(QUEUE)  # a failed run's leftovers
    yield app
    app.close()


@pytest.fixture
def worker(server: Server, client: Any, tmp_path: Path) -> Iterator[Path]:
    """``celery -A proj worker -P gevent -c 100``; its log's path. Stopped with SIGTERM."""
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "proj", "worker",
                "-P", "gevent", "-c", "100", "-Q", QUEUE, "-l", "warning",
                "--without-heartbeat", "--without-gossip", "--without-mingle",
            ],
            cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # The first task answers once the worker consumes.
        result = client.send_task("proj.tasks.hold", args=[0])
        deadline = time.monotonic() + 60
        while not result.ready():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            gevent.sleep(0.1)
        assert result.successful(), log_path.read_text()
        yield log_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_gevent_worker_runs_pooled_tasks_within_the_cap(
    worker: Path, client: Any, server: Server
) -> None:
    """300 tasks on 100 greenlets: all succeed on at most the cap of connections, reused."""
    with PeakSampler(server.count) as sampled:
        results = [client.send_task("proj.tasks.hold", args=[0.02]) for _ in range(TASKS)]
        answers = [r.get(timeout=120) for r in results]
    peak = sampled.peak
    assert len(answers) == TASKS
    assert len({a["pid"] for a in answers}) == 1
    conn_ids = {a["conn_id"] for a in answers}
    assert len(conn_ids) <= WORKER_CAP
    assert 2 <= peak <= WORKER_CAP
    log = worker.read_text()
    assert "RuntimeError" not in log, log
    assert "Traceback" not in log, log


def test_web_process_of_the_same_project_finds_its_own_middleware(server: Server) -> None:
    """Importing proj.wsgi (so proj.celery too) builds one middleware, and @pooled code
    there checks out from it: no second middleware, no RuntimeError."""
    result = subprocess.run(
        [sys.executable, str(PROJECT / "web_check.py")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    found = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert found["middlewares"] == 1
    assert found["checkouts"] == 10
    assert len(found["conn_ids"]) <= 2  # proj/wsgi.py: pool_size=2, max_overflow=0
