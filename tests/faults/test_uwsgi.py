"""uWSGI's gevent loop, 2 processes, in each configuration docs/servers.md gives, its ini included.

Against the private MariaDB: its ``Aborted_clients`` counts only this run's clients, so
"every pool closed with a COM_QUIT" is a delta of 0 there. Each configuration serves 200
concurrent clients, never shares a connection between processes (connection ids per
worker pid, and PROCESSLIST), and closes every pool on a reload (SIGHUP) and on a
graceful stop (SIGTERM, made graceful by the docs' hook), the master's included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.pool
import pytest

from tests.conftest import USER, Server
from tests.faults.conftest import PrivateServer
from tests.faults.mariadb import PrivateMariaDB
from tests.test_servers import _free_port, _get

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent
UWSGI = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or "uwsgi"
CAP = 4  # TEST_POOL_SIZE 2 + TEST_MAX_OVERFLOW 2 in tests/uwsgi_wsgi.py, per worker
CLIENTS = 200


def docs_ini() -> str:
    """The uWSGI ini of docs/servers.md, as written there."""
    text = (ROOT / "docs" / "servers.md").read_text()
    found = re.search(r"```ini\n(\[uwsgi\]\n.*?)```", text, re.S)
    assert found, "docs/servers.md has no uWSGI ini block"
    return found.group(1)


def _set(ini: str, key: str, value: str | None) -> str:
    """The ini with ``key`` set to ``value`` (None: the line removed); the key must be there."""
    pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.M)
    assert pattern.search(ini), f"docs' ini has no {key!r}"
    return pattern.sub("" if value is None else f"{key} = {value}", ini)


# Each documented configuration: what it changes in the docs' ini, and the environment.
CONFIGS = {
    # As documented: early patching, the app loaded in each worker.
    "lazy-apps": ({}, {}),
    # uWSGI's default mode: the app (and its import-time query) in the master, forked in C
    # without Python's at-fork hooks.
    "default-mode": ({"lazy-apps": None}, {}),
    # The same, by a user who left out the docs' wsgi.py lines: the pid check alone keeps
    # the master's connection out of the workers (the master keeps it open).
    "default-mode-no-snippet": ({"lazy-apps": None}, {"TEST_UWSGI_SNIPPET": "0"}),
    # The fork hooks, with the late patching they need (early + hooks crashes uWSGI).
    "fork-hooks": (
        {"lazy-apps": None, "gevent-early-monkey-patch": None},
        {"+": "gevent-monkey-patch = true\npy-call-uwsgi-fork-hooks = true\n"},
    ),
}


class UWSGI_:
    """One uWSGI master started from an ini; its log goes to a file."""

    def __init__(self, tmp_path: Path, ini: str, env: dict[str, str], db_port: int) -> None:
        self.port = _free_port()
        self.warm_file = tmp_path / "warm.jsonl"
        self.log_path = tmp_path / "uwsgi.log"
        ini_path = tmp_path / "uwsgi.ini"
        ini_path.write_text(ini)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                UWSGI,
                "--ini",
                str(ini_path),
                "--http-socket",
                f"127.0.0.1:{self.port}",
                "--disable-logging",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "tests.uwsgi_settings",
                "TEST_DB_PORT": str(db_port),
                "TEST_WARM_PARENT": "1",
                "TEST_WARM_FILE": str(self.warm_file),
                **env,
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.wait_up()
        except BaseException:
            self.stop()  # no caller holds it yet to stop it
            raise

    def wait_up(self, not_pids: frozenset[int] = frozenset()) -> set[int]:
        """Until both workers answer (other than ``not_pids``); their pids."""
        deadline = time.monotonic() + 30
        pids: set[int] = set()
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"uWSGI exited: {self.log()}"
            try:
                status, body = _get(self.port, "/whoami/", timeout=2)
            except OSError:
                gevent.sleep(0.1)
                continue
            if status == 200 and json.loads(body)["pid"] not in not_pids:
                pids.add(json.loads(body)["pid"])
                if len(pids) == 2:
                    return pids
        raise AssertionError(f"uWSGI's two workers did not answer within 30 s: {self.log()}")

    def warm(self) -> list[dict[str, int]]:
        """The import-time query of each load of the app: pid and connection id."""
        return [json.loads(line) for line in self.warm_file.read_text().splitlines()]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def observer(private_mariadb: PrivateMariaDB, server: Server) -> Iterator[PrivateServer]:
    """The private server's own view; none of our connections left at either end."""
    if private_mariadb.process is None:
        private_mariadb.start()  # a failed test left it stopped
    observer = PrivateServer(private_mariadb)
    assert observer.wait_count(0) == 0
    yield observer
    observer.kill_all()
    observer.conn.close()


def _burst(u: UWSGI_, observer: Server, n: int) -> tuple[list[tuple[int, dict[str, int]]], int]:
    """n requests from CLIENTS concurrent clients: (status, answer) each, and the peak count."""
    peak = 0
    done = False

    def sample() -> None:
        nonlocal peak
        while not done:
            peak = max(peak, observer.count())
            gevent.sleep(0.01)

    def one(_: int) -> tuple[int, dict[str, int]]:
        status, body = _get(u.port, "/whoami/?seconds=0.01")
        return status, (json.loads(body) if status == 200 else {})

    sampler = gevent.spawn(sample)
    try:
        results = list(gevent.pool.Pool(CLIENTS).imap_unordered(one, range(n)))
    finally:
        done = True
        sampler.join()
    return results, peak


def _owners(results: list[tuple[int, dict[str, int]]]) -> dict[int, set[int]]:
    """Connection id -> the pids that were served on it."""
    owners: dict[int, set[int]] = {}
    for _status, answer in results:
        owners.setdefault(answer["conn_id"], set()).add(answer["pid"])
    return owners


@pytest.mark.parametrize("name", list(CONFIGS))
def test_uwsgi_serves_200_clients_without_sharing_and_closes_every_pool(
    name: str, observer: PrivateServer, tmp_path: Path
) -> None:
    """Each configuration: 0 errors, each connection used by one worker only, within 2 x cap
    (+1 for a master that kept its import-time connection), and after SIGHUP and SIGTERM no
    connection left and, with the docs' wsgi.py lines, none aborted."""
    changes, env = CONFIGS[name]
    ini = docs_ini().replace("mysite.wsgi:application", "tests.uwsgi_wsgi:application")
    ini = _set(ini, "processes", "2")
    for key, value in changes.items():
        ini = _set(ini, key, value)
    env = dict(env)
    ini += env.pop("+", "")
    master_keeps = env.get("TEST_UWSGI_SNIPPET") == "0"
    aborted = observer.global_status("Aborted_clients")
    u = UWSGI_(tmp_path, ini, env, observer.mariadb.port)
    try:
        workers = u.wait_up()
        lazy = "lazy-apps" not in changes
        warms = u.warm()
        if lazy:
            assert {w["pid"] for w in warms} == workers  # each worker imported the app
        else:
            # The import (and its query) ran once, in the master, before it forked.
            (warm,) = warms
            assert warm["pid"] not in workers
        results, peak = _burst(u, observer, n=2 * CLIENTS)
        assert [status for status, _ in results] == [200] * len(results), u.log()
        owners = _owners(results)
        shared = {conn: pids for conn, pids in owners.items() if len(pids) > 1}
        assert not shared, f"connections used by several processes: {shared}"
        assert {pid for pids in owners.values() for pid in pids} == workers
        open_ids = observer.connection_ids(USER)
        assert set(owners) <= open_ids
        if not lazy:
            assert warm["conn_id"] not in owners, "a worker used the master's connection"
            # The server sees the workers' connections and, without the snippet, the master's.
            assert open_ids - set(owners) == ({warm["conn_id"]} if master_keeps else set())
        assert 2 <= peak <= 2 * CAP + master_keeps

        # A graceful reload: every worker closes its pools; the master reloads itself.
        u.proc.send_signal(signal.SIGHUP)
        new_workers = u.wait_up(not_pids=frozenset(workers))
        results, _peak = _burst(u, observer, n=CLIENTS)
        assert [status for status, _ in results] == [200] * len(results), u.log()
        owners_after = _owners(results)
        assert all(len(pids) == 1 for pids in owners_after.values())
        assert {pid for pids in owners_after.values() for pid in pids} == new_workers
        assert not set(owners) & observer.connection_ids(USER), "a worker's pool stayed open"

        # A stop with requests in flight: they finish, then the pools close.
        in_flight = [gevent.spawn(_get, u.port, "/whoami/?seconds=1") for _ in range(4)]
        gevent.sleep(0.3)
        log = u.stop()
        assert [g.get()[0] for g in in_flight] == [200] * 4, log
        assert observer.wait_count(0, USER) == 0
        aborted = observer.global_status("Aborted_clients") - aborted
        if master_keeps:
            # Without the snippet nothing closes: uWSGI runs no Python exit hook in the
            # master (its reload is an exec) nor, under gevent, in the workers.
            assert aborted > 0
        else:
            assert aborted == 0, log
    finally:
        u.stop()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("doc", "start", "end", "code"),
    [
        pytest.param(
            "servers.md",
            "import uwsgi",
            "uwsgi.atexit = _close_pools",
            "tests/uwsgi_wsgi.py",
            id="uwsgi",
        ),
        pytest.param(
            "django.md",
            "db = None",
            "db.close()",
            "tests/celery_proj/proj/celery.py",
            id="celery",
        ),
    ],
)
def test_the_docs_snippets_are_the_tested_code(doc: str, start: str, end: str, code: str) -> None:
    """The wsgi.py lines of docs/servers.md and the worker_init recipe of docs/django.md are,
    line for line, what the uWSGI and Celery tests run."""
    text = (ROOT / "docs" / doc).read_text()
    snippet = text[text.index(start) : text.index(end) + len(end)]
    tested = (ROOT / code).read_text()
    tested = tested[tested.index(start) : tested.index(end) + len(end)]
    assert _lines(snippet) == _lines(tested)
