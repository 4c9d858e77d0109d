"""The benchmark still runs: one configuration for a few seconds, then the report.

Run it with the bench's own virtualenv (it has wrk's companions: gunicorn, the peers):

    bash bench/setup.sh && bench/.venv/bin/python -m pytest bench/test_bench_smoke.py -m slow
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BENCH_PYTHON = HERE / ".venv" / "bin" / "python"


def _python() -> str:
    if Path(sys.prefix).resolve() == (HERE / ".venv").resolve():
        return sys.executable
    if BENCH_PYTHON.exists():
        return str(BENCH_PYTHON)
    pytest.fail("bench/.venv is missing: run `bash bench/setup.sh` first")


@pytest.mark.slow
def test_smoke_run_writes_a_report(tmp_path: Path) -> None:
    """A short run of the pooled configuration answers without errors and under its cap."""
    if shutil.which("wrk") is None:
        pytest.fail("wrk is missing: run `bash bench/setup.sh` (it installs it as root)")
    subprocess.run(
        [_python(), str(HERE / "run.py"), "--smoke", "--out", str(tmp_path)],
        check=True,
        timeout=120,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    (run,) = results["runs"]
    assert run["config"] == "ours"
    assert run["ok"] > 0
    assert run["errors_total"] == 0, run["errors"]
    assert run["peak"] is not None
    assert run["peak"] <= results["plan"]["cap"]
    assert run["server_alive"]
    report = (tmp_path / "RESULTS.md").read_text()
    assert "| wsgi_db_pool |" in report


@pytest.mark.slow
def test_fairness_script_runs(tmp_path: Path) -> None:
    """The fairness check runs standalone and serves every greenlet with our pool."""
    out = tmp_path / "fairness.json"
    subprocess.run(
        [
            _python(),
            "-m",
            "gevent.monkey",
            str(HERE / "fairness.py"),
            "--seconds",
            "1",
            "--out",
            str(out),
        ],
        check=True,
        timeout=60,
    )
    result = json.loads(out.read_text())
    assert result["pools"]["wsgi_db_pool Pool"]["per_greenlet"]["min"] >= 1


@pytest.mark.slow
def test_fault_scenario_runs(tmp_path: Path) -> None:
    """A short KILL scenario on a private server runs for ours and stock Django and reports."""
    driver = [_python(), "-m", "gevent.monkey", str(HERE / "faults.py")]
    done = subprocess.run(
        [*driver, "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "faults.json").read_text())
    runs = {run["config"]: run for run in results["runs"]}
    assert set(runs) == {"ours", "stock60"}
    for run in runs.values():
        assert "error" not in run, run["error"]
        assert run["ok"] > 0
        assert run["kills"] >= 1
        assert run["server_alive"]
    # The pool never answers a KILL with a queue of 503s.
    assert runs["ours"]["status_503"] == 0
    assert "| wsgi_db_pool |" in (tmp_path / "FAULTS.md").read_text()
