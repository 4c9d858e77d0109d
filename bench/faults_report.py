"""Render bench/FAULTS.md from the raw results faults.py saved.

bench/.venv/bin/python bench/faults_report.py [bench/out/faults.json] [--dir bench]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import LABELS  # noqa: E402

Column = tuple[str, Callable[[Any], Any]]

HOW_TO_READ = """\
How to read: each run is a fresh gunicorn worker (`-k gevent -w 1`) against a private
mariadbd of this run, every pool capped at 20 connections with a 30 s wait. Clients send
`GET /pk/<random id>` every 50 ms each over keep-alive HTTP, whatever the answers, so a
side that fails fast gets no extra requests to fail; a late answer delays only that
client's next request, so "requests" below the number offered means the side served
slower (50 clients about saturate the 2 cores, 100 exceed them). A request fails on any
status but 200, or with no answer (connection error, or nothing within 10 s). Cells give
each round's value in order ("round 1 / round 2"); single runs of a fault vary, so trust a
difference only when every round shows it. The cores are shared with the load generator,
MariaDB and other engineers' work (load average per row): compare rows with each other.

- *failed per KILL*: failed requests / KILLs that hit a connection; 1.00 means every KILL
  cost a request.
- *first success after back*: the first 200 that ended after the server accepted logins
  again (polled every 10 ms), from that moment; *last failure started, after back*: when
  the last failed request started, from the same moment (negative: all failed before).
- *connects in its first second*: the server's `Connections` 1 s after it came back, less
  the driver's own. While the server is down every side fails what it gets, and how
  many that is depends on how fast it answers (a 503 at once lets the beat send sooner than
  a 500 page after a refused connect): compare restarts on what happens after the return.
- *connects*: the server's `Connections` over the swing; after the first 10 s a pool that
  keeps its connections should open none."""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if value < 10 else f"{value:.0f}"
    return str(value)


def _app_errors(run: dict[str, Any], top: int = 2) -> str:
    errors = sorted((run.get("app_errors") or {}).items(), key=lambda item: -item[1])
    shown = [f"{name.rsplit('.', 1)[-1]} x{count}" for name, count in errors[:top]]
    return ", ".join(shown) or "-"


def _notes(run: dict[str, Any]) -> str:
    notes = []
    if run.get("error"):
        notes.append(f"could not run: {run['error']}")
    if run.get("worker_restarted"):
        notes.append("the worker died and gunicorn restarted it")
    if run.get("server_alive") is False:
        notes.append("gunicorn had exited")
    if run["scenario"] == "restart" and "requests" in run and run.get("first_success_ms") is None:
        notes.append("no request succeeded after the server was back")
    if run.get("leftovers_killed"):
        notes.append(f"{run['leftovers_killed']} connections of the previous run killed first")
    return "; ".join(notes)


def _by_config(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rounds of each configuration, configurations in the order they ran."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["config"], []).append(run)
    return grouped


def _row(label: str, rounds: list[dict[str, Any]], columns: list[Column]) -> str:
    """One configuration: each cell the rounds' values in order, "a / b"."""
    cells = [" / ".join(_value(run, get) for run in rounds) for _, get in columns]
    load = " / ".join(_cell(run["loadavg_1m"]) for run in rounds)
    notes = "; ".join(
        f"round {run.get('round', 1)}: {_notes(run)}" for run in rounds if _notes(run)
    )
    return "| " + " | ".join([label, *cells, load, notes]) + " |"


def _value(run: dict[str, Any], get: Callable[[Any], Any]) -> str:
    if run.get("error") and "requests" not in run:
        return "-"  # it never ran: the notes say why
    return _cell(get(run))


def _table(runs: list[dict[str, Any]], columns: list[Column]) -> str:
    header = ["configuration", *(title for title, _ in columns), "load 1m", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for config, rounds in _by_config(runs).items():
        lines.append(_row(LABELS.get(config, config), rounds, columns))
    return "\n".join(lines)


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.0f} ms"


KILLS = [
    ("KILLs", lambda r: r.get("kills")),
    ("requests", lambda r: r.get("requests")),
    ("failed", lambda r: r.get("failed")),
    ("failed per KILL", lambda r: r.get("failed_per_kill")),
    ("503s", lambda r: r.get("status_503")),
    ("no answer", lambda r: r.get("no_answer")),
    ("errors in the app", _app_errors),
]
RESTART = [
    ("requests", lambda r: r.get("requests")),
    ("failed", lambda r: r.get("failed")),
    ("503s", lambda r: r.get("status_503")),
    ("no answer", lambda r: r.get("no_answer")),
    ("first success after back", lambda r: _ms(r.get("first_success_ms"))),
    ("last failure started, after back", lambda r: _ms(r.get("last_failure_after_back_ms"))),
    ("failed, started > 0.25 s after back", lambda r: r.get("failed_after_back")),
    ("connects in its first second", lambda r: r.get("connects_first_second")),
    ("peak server connections, last 2 s", lambda r: r.get("peak_connections_last_2s")),
    ("errors in the app", _app_errors),
]
SWING = [
    ("requests", lambda r: r.get("requests")),
    ("failed", lambda r: r.get("failed")),
    ("connects in 60 s", lambda r: r.get("connects")),
    ("connects after the first 10 s", lambda r: r.get("connects_after_first_cycle")),
    ("peak server connections", lambda r: r.get("peak_connections")),
    ("errors in the app", _app_errors),
]
SECTIONS = {
    "kills": (
        "KILL one connection a second",
        "{kill_clients} clients for {kill_seconds} s ({kill_offered} requests offered); from"
        " the first second on, once a second, `KILL` of one random connection of the app's"
        " user (from PROCESSLIST), idle or busy.",
        KILLS,
    ),
    "restart": (
        "Server restart",
        "{restart_clients} clients; after {restart_lead_s:.0f} s of load the server gets SIGTERM,"
        " is started again {restart_down_s:.0f} s after that, and the load goes on"
        " {restart_after_s:.0f} s more ({restart_offered} requests offered).",
        RESTART,
    ),
    "swing": (
        "Swinging load",
        "{swing_seconds:.0f} s alternating {swing_high} clients for {swing_phase_s:.0f} s and"
        " {swing_low} clients for {swing_phase_s:.0f} s (the clients that leave close their HTTP"
        " connections); connects are the server's `Connections` counter, PROCESSLIST is sampled"
        " every 100 ms ({swing_offered} requests offered).",
        SWING,
    ),
}


def _offered(plan: dict[str, Any]) -> dict[str, str]:
    """Requests the beat offers in each scenario, had every answer come at once."""
    rate = 1 / plan.get("every_s", 0.05)
    restart_s = plan["restart_lead_s"] + plan["restart_down_s"] + plan["restart_after_s"]
    swing_mean = (plan["swing_high"] + plan["swing_low"]) / 2
    counts = {
        "kill_offered": plan["kill_clients"] * plan["kill_seconds"] * rate,
        "restart_offered": plan["restart_clients"] * restart_s * rate,
        "swing_offered": swing_mean * plan["swing_seconds"] * rate,
    }
    return {key: f"{round(value):,}" for key, value in counts.items()}


def render(results: dict[str, Any]) -> str:
    env = results.get("environment", {})
    plan = results["plan"]
    packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
    lines = [
        "# Faults: stock Django, the peer pools and wsgi_db_pool side by side",
        "",
        "Measured by `make bench-faults` (bench/faults.py) on commit"
        f" {env.get('commit', '?')}, {env.get('date', '?')}: {env.get('nproc', '?')} cores,"
        f" load average {env.get('loadavg_start', '?')} at the start and"
        f" {results.get('loadavg_end', '?')} at the end, {results.get('elapsed_s', 0):.0f} s"
        f" in all. MariaDB {env.get('mariadb', '?')} (private, max_connections"
        f" {results.get('private_max_connections', '?')}), Python {env.get('python', '?')},"
        f" {packages}.",
        "",
        HOW_TO_READ,
    ]
    for note in plan.get("notes", []):
        lines += ["", f"Note: {note}."]
    for scenario in plan["scenarios"]:
        title, text, columns = SECTIONS[scenario]
        runs = [run for run in results["runs"] if run["scenario"] == scenario]
        text = text.format(**plan, **_offered(plan))
        lines += ["", f"## {title}", "", text, "", _table(runs, columns)]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], directory: Path) -> Path:
    path = directory / "FAULTS.md"
    path.write_text(render(results))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="?", type=Path, default=HERE / "out" / "faults.json")
    parser.add_argument("--dir", type=Path, default=HERE)
    args = parser.parse_args()
    print(write(json.loads(args.results.read_text()), args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
