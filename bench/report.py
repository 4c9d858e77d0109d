"""Render bench/RESULTS.md and bench/results.png from the raw results run.py saved.

    bench/.venv/bin/python bench/report.py [bench/out/results.json] [--dir bench]

run.py calls ``write()`` at the end; run this alone to re-render without measuring.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import CONFIGS, LABELS, PEERS, POOLED  # noqa: E402

VIEW_TITLES = {
    "pk": "primary-key read (`Item.objects.get(pk=...)`)",
    "nodb": "no database use",
    "slow": "slow query (`SELECT SLEEP(0.05)`)",
    "write": "write inside `transaction.atomic` (UPDATE)",
}


# -- aggregation ----------------------------------------------------------------------------


def group(runs: list[dict[str, Any]], phase: str) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Per (config, view, clients): medians over rounds, worst cases, error sums."""
    buckets: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run["phase"] == phase:
            buckets[(run["config"], run["view"], run["clients"])].append(run)
    out = {}
    for key, items in buckets.items():
        kinds: Counter[str] = Counter()
        server: Counter[str] = Counter()
        for run in items:
            kinds.update({k: v for k, v in run["errors"].items() if v})
            server.update(run.get("server_errors") or {})
        peaks = [run["peak"] for run in items if run["peak"] is not None]
        out[key] = {
            "n": len(items),
            "rps": statistics.median(run["rps"] for run in items),
            "rps_all": [run["rps"] for run in items],
            "p50": statistics.median(run["latency_ms"]["p50"] for run in items),
            "p99": statistics.median(run["latency_ms"]["p99"] for run in items),
            "p999": statistics.median(run["latency_ms"]["p999"] for run in items),
            "max": max(run["latency_ms"]["max"] for run in items),
            "errors": sum(run["errors_total"] for run in items),
            "requests": sum(run["requests"] for run in items),
            "kinds": dict(kinds),
            "server_errors": dict(server),
            "peak": max(peaks) if peaks else None,
            "left_open": max(run["left_open"] for run in items),
            "tail_s": items[0]["tail_s"],
            "other": max((run.get("other_connections") or 0) for run in items),
            # The worker's CPU and the collector's share per request (runs since 2026-12-01).
            "cpu_us": _median_of(items, "cpu_us_per_request"),
            "gc_us": _median_of(items, "gc_us_per_request"),
        }
    return out


def _median_of(items: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in items if run.get(key) is not None]
    return statistics.median(values) if values else None


# -- formatting -----------------------------------------------------------------------------


def ms(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def short_error(name: str) -> str:
    # "django.db.utils.OperationalError(1226)" -> "OperationalError(1226)"
    head, _, tail = name.partition("(")
    return head.rsplit(".", 1)[-1] + (f"({tail}" if tail else "")


def error_text(cell: dict[str, Any]) -> str:
    if not cell["errors"]:
        return "0"
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(cell["kinds"].items()))
    text = f"**{cell['errors']}** ({kinds})"
    if cell["server_errors"]:
        why = ", ".join(
            f"{short_error(k)}: {v}"
            for k, v in sorted(cell["server_errors"].items(), key=lambda kv: -kv[1])[:2]
        )
        text += f"; {why}"
    return text


def pass_fail(ok: bool | None) -> str:
    if ok is None:
        return "not measured"
    return "**pass**" if ok else "**FAIL**"


# -- the report -----------------------------------------------------------------------------


def scenario_table(
    cells: dict[tuple[str, str, int], dict[str, Any]], view: str, clients: int, configs: list[str]
) -> list[str]:
    ours = cells.get(("ours", view, clients))
    rows = []
    for config in configs:
        cell = cells.get((config, view, clients))
        if cell is None:
            continue
        ratio = "" if ours is None or not cell["rps"] else f"{ours['rps'] / cell['rps']:.2f}x"
        if config == "ours":
            ratio = "1"
        rows.append(
            [
                LABELS[config],
                f"{cell['rps']:.0f}" + (f" (n={cell['n']})" if cell["n"] > 1 else ""),
                ms(cell["p50"]),
                ms(cell["p99"]),
                ms(cell["p999"]),
                ms(cell["max"]),
                error_text(cell),
                str(cell["peak"]),
                str(cell["left_open"]),
                ratio,
            ]
        )
    header = [
        "configuration",
        "req/s (2xx)",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "peak conns",
        "open after",
        "ours ÷ this",
    ]
    return table(header, rows)


# The tail targets: p99 at most this many times the mean latency, no request over this.
TAIL_TIMES_MEAN = 3.0
MAX_LATENCY_MS = 1000.0
TAIL_CLIENTS = (200, 500, 1000)
NODB_SERVED_SLACK = 0.01
BOOKKEEPING_US = 1.5


def mean_ms(cell: dict[str, Any], clients: int) -> float:
    """The mean latency by Little's law: clients over throughput (every client always waits)."""
    return 1000.0 * clients / cell["rps"] if cell["rps"] else float("inf")


def tail_ok(cell: dict[str, Any], clients: int) -> bool:
    return (
        cell["p99"] <= TAIL_TIMES_MEAN * mean_ms(cell, clients)
        and cell["max"] <= MAX_LATENCY_MS
        and cell["errors"] == 0
    )


def targets(
    results: dict[str, Any],
    main: dict[tuple[str, str, int], dict[str, Any]],
    limit: dict[tuple[str, str, int], dict[str, Any]],
) -> tuple[list[str], list[tuple[str, bool | None]]]:
    cap = results["plan"]["cap"]
    verdicts: list[tuple[str, bool | None]] = []
    rows: list[list[str]] = []

    # 1. The cap holds.
    peaks = [c["peak"] for k, c in {**main, **limit}.items() if k[0] == "ours" and c["peak"]]
    if peaks:
        ok = max(peaks) <= cap
        rows.append(
            [
                f"peak server connections never above the cap ({cap})",
                f"highest of {len(peaks)} scenarios: {max(peaks)}",
                pass_fail(ok),
            ]
        )
        verdicts.append(("cap", ok))

    # 2. Throughput at 200, 500 and 1000 clients, medians.
    for clients in TAIL_CLIENTS:
        ours = main.get(("ours", "pk", clients))
        if not ours:
            continue
        peers = {p: main[(p, "pk", clients)]["rps"] for p in PEERS if (p, "pk", clients) in main}
        stock60 = main.get(("stock60", "pk", clients))
        parts = [f"ours {ours['rps']:.0f} req/s (n={ours['n']})"]
        ok = True
        if peers:
            best = max(peers, key=lambda p: peers[p])
            parts.append(f"best peer {LABELS[best]} {peers[best]:.0f}")
            ok = ok and ours["rps"] >= peers[best]
        if stock60:
            parts.append(f"stock CONN_MAX_AGE=60 {stock60['rps']:.0f}")
            ok = ok and ours["rps"] >= stock60["rps"]
        rows.append(
            [
                f"pk read at {clients}: req/s ≥ best peer's and ≥ stock CONN_MAX_AGE=60 (medians)",
                "; ".join(parts),
                pass_fail(ok if (peers or stock60) else None),
            ]
        )
        verdicts.append((f"throughput_{clients}", ok if (peers or stock60) else None))

    # The no-DB request served by gunicorn: what the middleware costs a request that
    # never queries, in the unit users see.
    ours_nodb = main.get(("ours", "nodb", 200))
    stock_nodb = main.get(("stock60", "nodb", 200))
    if ours_nodb and stock_nodb and stock_nodb["rps"]:
        ratio = ours_nodb["rps"] / stock_nodb["rps"]
        ok = ratio >= 1 - NODB_SERVED_SLACK
        rows.append(
            [
                f"no-DB request served by gunicorn at 200: req/s within "
                f"{100 * NODB_SERVED_SLACK:g}% of stock CONN_MAX_AGE=60's (medians)",
                f"ours {ours_nodb['rps']:.0f} (n={ours_nodb['n']}), stock "
                f"{stock_nodb['rps']:.0f} (n={stock_nodb['n']}): {ratio:.3f}x",
                pass_fail(ok),
            ]
        )
        verdicts.append(("nodb_served", ok))

    # 3. Tails at 200, 500 and 1000. By Little's law the mean latency is clients / req/s
    # whatever the order of service, so the tail is judged against it: a fair pool makes
    # everyone wait about the mean, an unfair one serves most at once and starves a few.
    tails = [
        main[("ours", "pk", c)] | {"clients": c} for c in TAIL_CLIENTS if ("ours", "pk", c) in main
    ]
    if tails:
        ok = all(tail_ok(t, t["clients"]) for t in tails)
        text = "; ".join(
            f"{t['clients']}: mean {ms(mean_ms(t, t['clients']))}, p99 {ms(t['p99'])} "
            f"({t['p99'] / mean_ms(t, t['clients']):.1f}x), max {ms(t['max'])} ms, "
            f"{t['errors']} errors"
            for t in tails
        )
        rows.append(
            [
                f"pk read at {', '.join(str(t['clients']) for t in tails)}: p99 ≤ "
                f"{TAIL_TIMES_MEAN:g}x the mean latency (clients ÷ req/s), no request over "
                f"{MAX_LATENCY_MS / 1000:g} s, no error",
                text,
                pass_fail(ok),
            ]
        )
        verdicts.append(("tails", ok))

    # 4. No errors under max_connections=60.
    ours_limit = {k[2]: c for k, c in limit.items() if k[0] == "ours"}
    if ours_limit:
        ok = all(c["errors"] == 0 for c in ours_limit.values())
        text = ", ".join(f"{n}: {c['errors']} errors" for n, c in sorted(ours_limit.items()))
        rows.append(
            [
                f"no errors at max_connections={results['plan']['limit_max_connections']} "
                f"(cap {cap} below it), every concurrency",
                text,
                pass_fail(ok),
            ]
        )
        verdicts.append(("limit", ok))

    # 5. and 6. The microbenchmark.
    micro = results.get("micro")
    if micro:
        req = micro["requests"]
        filtered = req["modes"]["filtered"]
        overhead = filtered["overhead_us"]["touch"]
        alone = filtered.get("checkout_giveback_us", {}).get("touch")
        nodb_added = filtered["overhead_us"]["nodb"]
        nodb_inproc = req["stock"]["nodb"]["min_us"]
        served = main.get(("stock60", "nodb", 200)) or main.get(("ours", "nodb", 200))
        served_us = 1e6 / served["rps"] if served and served["rps"] else None
        # What the middleware adds to a request that never queries, against that request.
        ok = nodb_added < 0.02 * nodb_inproc
        rows.append(
            [
                "middleware overhead on a no-DB request, events filtered: < 2% of it",
                f"{nodb_added:+.1f} µs on Django's {nodb_inproc:.0f} µs in-process no-DB request "
                f"({100 * nodb_added / nodb_inproc:+.1f}%)",
                pass_fail(ok),
            ]
        )
        verdicts.append(("overhead_nodb", ok))
        ok = overhead < 20 and (alone is None or alone < 20)
        text = f"{overhead:.1f} µs against stock Django"
        if alone is not None:
            text += f" ({alone:.1f} µs against stock Django with the middleware's storage)"
        rows.append(
            [
                "checkout + giveback per request that queries, events filtered: < 20 µs",
                text,
                pass_fail(ok),
            ]
        )
        verdicts.append(("overhead", ok))
        if served_us is not None:
            ok = overhead < 0.02 * served_us
            rows.append(
                [
                    "the same, read strictly: < 2% of a served no-DB request",
                    f"{100 * overhead / served_us:.1f}% of {served_us:.0f} µs (1 / the no-DB "
                    "view's req/s at 200 clients)",
                    pass_fail(ok),
                ]
            )
            verdicts.append(("overhead_strict", ok))
        pools = micro["pools"]
        book = pools.get("wsgi_db_pool Pool (no-op connector)", {}).get("min_us")
        with_mysql = pools.get("wsgi_db_pool Pool", {}).get("min_us")
        if book is not None:
            ok = book < BOOKKEEPING_US
            rows.append(
                [
                    f"pool bookkeeping (checkout+checkin, no-op connector) < {BOOKKEEPING_US:g} µs",
                    f"{book:.2f} µs"
                    + (
                        f" ({with_mysql:.2f} µs with the MySQL connector: the socket poll, the "
                        "reset's check)"
                        if with_mysql is not None
                        else ""
                    ),
                    pass_fail(ok),
                ]
            )
            verdicts.append(("bookkeeping", ok))
    lines = table(["target", "measured", "result"], rows, "llc")
    return lines, verdicts


def write(results: dict[str, Any], directory: Path) -> list[Path]:
    """Write RESULTS.md and results.png into ``directory``; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    plan = results["plan"]
    env = results["environment"]
    runs = results.get("runs", [])
    main = group(runs, "main")
    limit = group(runs, "limit")
    configs = [c for c in CONFIGS if c in plan["configs"]]
    png = directory / "results.png"
    plotted = plot(main, configs, plan["cap"], env.get("max_user_connections"), png)

    lines: list[str] = ["# wsgi_db_pool benchmark results", ""]
    minutes, seconds = divmod(int(results.get("elapsed_s", 0)), 60)
    command = {"full": "bench/run.sh", "quick": "bench/run.sh --quick"}.get(
        plan["name"], f"bench/run.py --{plan['name']}"
    )
    lines += [
        f"Measured {env['date']} by `{command}` ({plan['name']} mode, {minutes} min {seconds} s "
        "in all). Generated by bench/report.py from bench/out/results.json; do not edit by hand.",
        "",
    ]
    for note in plan.get("notes", []):
        lines.append(f"*Note: {note}.*")
        lines.append("")
    pk = env["packages"]
    lines += [
        "## Machine and versions",
        "",
        f"- {env['nproc']} cores ({env['cpu']}), {env['memory_gib']} GiB, Linux {env['kernel']}; "
        f"load average at start {env.get('loadavg_start', '?')}, at end "
        f"{results.get('loadavg_end', '?')} (other sessions' test suites share the machine "
        "and the MariaDB server: figures are comparable within this run, not across machines).",
        f"- Python {env['python']}, Django {pk['Django']}, PyMySQL {pk['PyMySQL']}, gevent "
        f"{pk['gevent']} (greenlet {pk['greenlet']}), gunicorn {pk['gunicorn']}, structlog "
        f"{pk['structlog']}, MariaDB {env['mariadb']}, {env['wrk']}.",
        f"- wsgi_db_pool {pk['wsgi_db_pool']} as in the working tree (commit "
        f"{env.get('commit', '?')}; sha256 of wsgi_db_pool/*.py "
        f"{env.get('source_sha256', '?')}); peers: django-db-pooling "
        f"{pk['django-db-pooling']}, django-db-connection-pool {pk['django-db-connection-pool']} "
        f"(SQLAlchemy {pk['SQLAlchemy']}), django-mysql-geventpool "
        f"{pk['django-mysql-geventpool']}; psycopg_pool {pk['psycopg-pool']} for the "
        "microbenchmark.",
        "",
        "## How it was measured",
        "",
        "- Server: gunicorn `-k gevent`, one worker, `--worker-connections "
        f"{plan['worker_connections']}`, on 127.0.0.1, serving bench/app.py; a fresh server "
        f"for every run, warmed up for {plan['warmup_s']:g} s at ≤ 8 clients, then "
        f"{plan['duration_s']:g} s of load (max_connections phase: "
        f"{plan['limit_duration_s']:g} s).",
        f"- Load: wrk in its own process (`-t 1`, `--timeout {plan['wrk_timeout_s']}s`, longer "
        "than every pool's 5 s wait), a random key out of 1000 per request, latency "
        "percentiles from wrk's histogram (bench/report.lua).",
        "- Connections: the app logs in as `wsgi_db_pool_bench`; `information_schema."
        "PROCESSLIST` rows of that user, sampled every 100 ms during the load (peak), and "
        f"counted {plan['tail_s']:g} s after it (open after).",
        f"- Every pool is capped at {plan['cap']} connections: wsgi_db_pool `pool_size=10, "
        "max_overflow=10`; django-db-pooling `set_pool_size(10, max_outstanding=20, "
        "timeout=5)` with CONN_MAX_AGE=60 (its README); django-db-connection-pool "
        "`POOL_OPTIONS` POOL_SIZE 10, MAX_OVERFLOW 10, TIMEOUT 5 (PRE_PING and RECYCLE at its "
        "defaults); django-mysql-geventpool `MAX_CONNS=20` (no wait timeout exists). All on "
        "PyMySQL installed as MySQLdb, `ssl_disabled=True`, connect 5 s, read/write 30 s.",
        f"- The bench user may hold at most {env.get('max_user_connections')} server "
        "connections (`MAX_USER_CONNECTIONS`, set by bench/setup.sh) so that stock Django "
        "cannot take the whole server from the other sessions; stock Django's errors at high "
        "concurrency are that limit (1226), where a dedicated server would fail at "
        f"max_connections ({env['max_connections']}) instead.",
        "- req/s counts 2xx answers only; errors = non-2xx + socket errors + client timeouts, "
        "summed over rounds; latencies and req/s are medians over rounds (n shown when > 1), "
        "max and peak the worst round. The server-side reason (exception and MySQL error "
        "code, counted in the worker, warm-up included) follows the error counts.",
        "- wrk records only requests that completed: a request still waiting when the run "
        "ends is in no figure, so a latency can never exceed the run's length and a pool "
        "that starves some clients looks better at p99.9/max than it is (compare the "
        "fairness section).",
        "",
        "## Targets",
        "",
    ]
    target_lines, _verdicts = targets(results, main, limit)
    # Why the missed targets are missed (written by hand, kept apart from the numbers).
    analysis = Path(__file__).with_name("ANALYSIS.md")
    lines += [*target_lines, ""]
    if analysis.exists():
        lines += [analysis.read_text().rstrip(), ""]

    if plotted:
        lines += [
            "## Primary-key read against concurrency",
            "",
            f"![req/s and peak server connections against concurrency]({png.name})",
            "",
        ]
    seen = sorted(
        {(v, c) for (_cfg, v, c) in main}, key=lambda vc: (list(VIEW_TITLES).index(vc[0]), vc[1])
    )
    if seen:
        lines += ["## Load results", ""]
        for view, clients in seen:
            lines += [f"### {VIEW_TITLES[view]}, {clients} clients", ""]
            lines += [*scenario_table(main, view, clients, configs), ""]

    if limit:
        lines += limit_section(results, limit, configs)
    micro = results.get("micro")
    if micro:
        lines += micro_section(micro, main)
    prof = results.get("profile")
    if prof:
        lines += profile_section(prof, micro)
    fair = results.get("fairness")
    if fair:
        lines += fairness_section(fair)
    order = order_section(results)
    if order:
        lines += order
    path = directory / "RESULTS.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return [path] + ([png] if plotted else [])


def limit_section(
    results: dict[str, Any], limit: dict[tuple[str, str, int], dict[str, Any]], configs: list[str]
) -> list[str]:
    plan = results["plan"]
    info = results.get("limit", {})
    clients = sorted({k[2] for k in limit})
    lines = [
        f"## With `SET GLOBAL max_connections={plan['limit_max_connections']}`",
        "",
        f"Primary-key read, {plan['limit_duration_s']:g} s runs; the global limit was restored "
        f"to {info.get('restored_to', '?')} afterwards (in a `finally`). Other users held "
        f"{info.get('other_connections_at_start', '?')} connections when the phase began "
        "(they count against the same limit). Each cell: errors, then peak server "
        "connections, then req/s.",
        "",
    ]
    rows = []
    for config in configs:
        row = [LABELS[config]]
        failed = False
        for n in clients:
            cell = limit.get((config, "pk", n))
            if cell is None:
                row.append("")
                continue
            failed = failed or cell["errors"] > 0
            mark = "ok" if not cell["errors"] else f"**FAIL {cell['errors']}**"
            row.append(f"{mark}, peak {cell['peak']}, {cell['rps']:.0f}/s")
        row.append("**fails**" if failed else "holds")
        rows.append(row)
    lines += table(["configuration"] + [f"{n} clients" for n in clients] + ["verdict"], rows)
    reasons = []
    for config in configs:
        merged: Counter[str] = Counter()
        for (cfg, _v, _n), cell in limit.items():
            if cfg == config:
                merged.update(cell["server_errors"])
        if merged:
            reasons.append(
                f"- {LABELS[config]}: "
                + ", ".join(f"{short_error(k)}: {v}" for k, v in merged.most_common(3))
            )
    if reasons:
        lines += ["", "Server-side reasons:", "", *reasons]
    return [*lines, ""]


def micro_section(
    micro: dict[str, Any], main: dict[tuple[str, str, int], dict[str, Any]]
) -> list[str]:
    req = micro["requests"]
    stock = req["stock"]
    lines = [
        "## Microbenchmark (one process, no HTTP)",
        "",
        "bench/micro.py under gevent's patching: Django's WSGI handler called directly, the "
        "stock one on a connection already open in the same greenlet against the same "
        "handler inside PoolingMiddleware (checkout on first use, reset and checkin on "
        f"close), alternating blocks, fastest of {micro['repeats']} blocks each. `/touch` "
        "opens the connection if needed and makes no round trip, so its difference is the "
        "middleware's own cost; `/pk/<id>` adds one SELECT (its difference is within the "
        "round trip's noise); `/nodb` never asks for a connection.",
        "",
    ]
    rows = [
        [
            "stock Django (connection open)",
            *(f"{stock[v]['min_us']:.1f}" for v in ("nodb", "touch", "pk")),
            "",
            "",
            "",
        ]
    ]
    same = req.get("stock_same_storage")
    if same:
        rows.append(
            [
                "stock Django, with the middleware's connection storage",
                *(f"{same[v]['min_us']:.1f}" for v in ("nodb", "touch", "pk")),
                "",
                "",
                "",
            ]
        )
    for mode, label in (
        ("unconfigured", "PoolingMiddleware, structlog unconfigured"),
        ("filtered", "PoolingMiddleware, debug events filtered"),
        ("enabled", "PoolingMiddleware, debug events enabled"),
    ):
        result = req["modes"].get(mode)
        if not result:
            continue
        pooled = result["pooled"]
        rows.append(
            [
                label,
                *(f"{pooled[v]['min_us']:.1f}" for v in ("nodb", "touch", "pk")),
                f"**{result['overhead_us']['touch']:+.1f}**",
                f"{result['checkout_giveback_us']['touch']:+.1f}"
                if "checkout_giveback_us" in result
                else "",
                str(result["bytes_printed"]),
            ]
        )
    lines += table(
        [
            "µs per request",
            "/nodb",
            "/touch",
            "/pk",
            "overhead (/touch)",
            "checkout + giveback alone (/touch)",
            "bytes printed",
        ],
        rows,
    )
    lines += [
        "",
        "The overhead is against stock Django as it runs without the middleware. The "
        "middleware also gives Django's connection handler a faster storage of its own "
        "(wsgi_db_pool/_storage.py: a lookup without asgiref's exceptions), which speeds up "
        "every `connections[alias]` in the process; against stock requests run with that "
        "storage too, the difference is the checkout and giveback alone.",
        "",
        '"bytes printed" is everything written to stdout and stderr while the pooled '
        "requests ran: with structlog unconfigured the events go to the standard library "
        "logger `wsgi_db_pool` (WARNING and up), not to structlog's default printer.",
        "",
        "Pieces of one pooled request, each timed alone (µs):",
        "",
    ]
    lines += table(
        ["piece", "µs"], [[name, f"{t['min_us']:.2f}"] for name, t in micro["pieces"].items()]
    )
    lines += ["", "Pool bookkeeping: checkout + checkin of one idle connection (µs):", ""]
    pools = micro["pools"]
    ours = pools.get("wsgi_db_pool Pool", {}).get("min_us")
    rows = []
    for name, t in pools.items():
        if "error" in t:
            rows.append([name, "not measured: " + t["error"], ""])
            continue
        ratio = f"{t['min_us'] / ours:.2f}x" if ours else ""
        rows.append([name, f"{t['min_us']:.2f}", ratio])
    lines += table(["pool", "µs", "÷ wsgi_db_pool"], rows)
    lines += [
        "",
        "wsgi_db_pool's checkout includes a zero-timeout `poll()` of the idle socket (the "
        "free health check, timed above); psycopg_pool and QueuePool (pre_ping off) check "
        "nothing on checkout.",
        "",
    ]
    return lines


def profile_section(prof: dict[str, Any], micro: dict[str, Any] | None) -> list[str]:
    ablate = prof["ablations"]
    stock = ablate["stock /touch"]
    pooled = ablate["pooled /touch"]
    book = ablate["pooled /touch | bookkeeping"]
    lines = [
        "## Where the middleware's time goes",
        "",
        "bench/profile_overhead.py. **Ablations** (real time, no profiler, fastest of 27 "
        "blocks): the pooled `/touch` request and the bare checkout+checkin, each with one "
        "part replaced by a stub that does nothing.",
        "",
    ]
    rows = [["stock Django, connection open", f"{stock:.2f}", "", "", ""]]
    for name, value in ablate.items():
        if name == "stock /touch" or name.endswith("| bookkeeping"):
            continue
        bk = ablate.get(name + " | bookkeeping")
        saved = "" if name == "pooled /touch" else f"{pooled - value:+.2f}"
        saved_bk = "" if name == "pooled /touch" or bk is None else f"{book - bk:+.2f}"
        rows.append([name, f"{value:.2f}", saved, f"{bk:.2f}" if bk is not None else "", saved_bk])
    lines += table(["variant", "/touch µs", "saved µs", "checkout+checkin µs", "saved µs"], rows)
    inproc = prof["in_process"]
    lines += [
        "",
        f"**py-spy in process** (`--nonblocking`, 1000 Hz, pooled `/touch` loop): samples "
        "charged to wsgi_db_pool -- its own frames and what they call (the socket poll, "
        "Django's connection storage), not the view it wraps -- scaled to the request's "
        f"real cost ({inproc['real_us']['pooled']:.1f} µs): "
        f"{inproc['charged_us_total']:.1f} µs in all, against a measured overhead of "
        f"{inproc['overhead_us']:.1f} µs. By deepest wsgi_db_pool frame:",
        "",
    ]
    lines += table(
        ["frame", "µs per request"],
        [[f"`{row['frame']}`", f"{row['us']:.2f}"] for row in inproc["charged_us"][:12]],
    )
    load = prof["under_load"]
    lines += [
        "",
        f"**py-spy on the gunicorn worker** (wsgi_db_pool, pk read, {load['clients']} "
        f"clients, {load['rps']:.0f} req/s while sampled, worker at "
        f"{100 * load['worker_cpu_share']:.0f}% of a core, {load['cpu_per_request_us']:.0f} "
        f"µs of CPU per request, {load['samples']} samples). Where the samples end (leaf "
        "frame), by package:",
        "",
    ]
    lines += table(
        ["package", "% of samples"], [[k, f"{v:.1f}"] for k, v in load["leaf_percent"].items()]
    )
    lines += ["", "Charged to wsgi_db_pool, by deepest frame:", ""]
    lines += table(
        ["frame", "% of worker samples", "µs per request"],
        [
            [f"`{row['frame']}`", f"{row['percent']:.2f}", f"{row['us_per_request']:.1f}"]
            for row in load["ours_percent"]
        ],
    )
    return [*lines, ""]


def order_label(phase: str, config: str) -> str:
    """How a run of the order experiment is named in the table."""
    if config != "ours":
        return LABELS[config]
    handoff = phase.removeprefix("order-")
    what = {
        "fifo": "the oldest waiter first (FIFO)",
        "lifo": "the newest waiter first (LIFO)",
    }.get(handoff, f"`BENCH_HANDOFF={handoff}`")
    return f"wsgi_db_pool, {what}"


def order_section(results: dict[str, Any]) -> list[str]:
    """The orders of service of wsgi_db_pool, the unfair peer and stock: same run, same load."""
    runs = [run for run in results.get("runs", []) if run["phase"].startswith("order")]
    if not runs:
        return []
    phases = list(dict.fromkeys(run["phase"] for run in runs))
    when = results.get("order_run", {}).get("measured")
    lines = [
        "## The order of service",
        "",
        "The primary-key read again, interleaved round by round: wsgi_db_pool with each "
        "order of service of wsgi_db_pool/_order.py (bench/app.py `BENCH_HANDOFF`), "
        "django-db-pooling, whose queue lets a running greenlet take a freed connection "
        "ahead of the waiters, and stock Django `CONN_MAX_AGE=60`. The mean latency is "
        "clients ÷ req/s (Little's law); the targets: p99 at most "
        f"{TAIL_TIMES_MEAN:g}x the mean, no request over {MAX_LATENCY_MS / 1000:g} s, no error."
        + (f" Measured {when}, on the same machine." if when else ""),
        "",
    ]
    rows = []
    for clients in sorted({run["clients"] for run in runs}):
        cells = []
        for phase in phases:
            for (config, _view, n), cell in group(runs, phase).items():
                if n == clients:
                    cells.append((order_label(phase, config), cell))
        fifo = next((c for label, c in cells if "FIFO" in label), None)
        for label, cell in cells:
            mean = mean_ms(cell, clients)
            rows.append(
                [
                    str(clients),
                    label,
                    f"{cell['rps']:.0f}" + (f" (n={cell['n']})" if cell["n"] > 1 else ""),
                    f"{cell['rps'] / fifo['rps']:.2f}" if fifo else "",
                    ms(cell["p50"]),
                    ms(cell["p99"]),
                    f"{cell['p99'] / mean:.1f}x",
                    ms(cell["max"]),
                    str(cell["errors"]),
                    pass_fail(tail_ok(cell, clients)),
                    "" if cell["cpu_us"] is None else f"{cell['cpu_us']:.0f}",
                    "" if cell["gc_us"] is None else f"{cell['gc_us']:.1f}",
                ]
            )
    lines += table(
        [
            "clients",
            "pk read",
            "req/s",
            "÷ FIFO",
            "p50 ms",
            "p99 ms",
            "p99 ÷ mean",
            "max ms",
            "errors",
            "tail target",
            "worker CPU µs/req",
            "collector µs/req",
        ],
        rows,
        "rl" + "r" * 10,
    )
    return [*lines, ""]


def fairness_section(fair: dict[str, Any]) -> list[str]:
    lines = [
        "## Fairness",
        "",
        f"bench/fairness.py: {fair['greenlets']} greenlets share {fair['connections']} "
        f"connections for {fair['seconds']:g} s; each checks out, holds for "
        f"{fair['hold_ms']:g} ms, checks in and asks again at once."
        + (f" Measured {fair['measured']}, after the run above." if fair.get("measured") else ""),
        "",
    ]
    rows = []
    for name, r in fair["pools"].items():
        per, wait = r["per_greenlet"], r["wait_ms"]
        rows.append(
            [
                name,
                str(r["checkouts"]),
                f"{per['min']} / {per['median']:g} / {per['max']}",
                str(per["at_most_once"]),
                f"{wait['median']:g}",
                f"{wait['p99']:g}",
                f"{wait['max']:g}",
                f"{r['cpu_us_per_checkout']:.2f}" if "cpu_us_per_checkout" in r else "",
            ]
        )
    lines += table(
        [
            "pool",
            "checkouts",
            "per greenlet min / median / max",
            "greenlets served ≤ 1x",
            "wait median ms",
            "wait p99 ms",
            "longest wait ms",
            "CPU µs per contended checkout",
        ],
        rows,
    )
    lines += [
        "",
        "CPU per contended checkout: the same 200 greenlets on 20 connections, each holding "
        "a connection for one yield instead of 2 ms, so that the process does nothing but "
        "hand connections over: process CPU time over 2 s divided by the checkouts "
        "(checkout, one switch, checkin). In a fair pool every such checkout waits its turn "
        "(a greenlet switch out and back); in the queue pool the greenlet that gave a "
        "connection back mostly takes it again without waiting.",
    ]
    return [*lines, ""]


def plot(
    main: dict[tuple[str, str, int], dict[str, Any]],
    configs: list[str],
    cap: int,
    user_limit: int | None,
    path: Path,
) -> bool:
    clients = sorted({k[2] for k in main if k[1] == "pk"})
    if len(clients) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.4))
    styles = {
        "stock0": ("tab:gray", "--", "s"),
        "stock60": ("black", "--", "D"),
        "dbpooling": ("tab:orange", "-", "^"),
        "dbcp": ("tab:green", "-", "v"),
        "geventpool": ("tab:purple", "-", "x"),
        "ours": ("tab:blue", "-", "o"),
    }
    for config in configs:
        xs = [n for n in clients if (config, "pk", n) in main]
        if not xs:
            continue
        color, line, marker = styles[config]
        width = 2.5 if config == "ours" else 1.3
        rps = [main[(config, "pk", n)]["rps"] for n in xs]
        peak = [main[(config, "pk", n)]["peak"] or 0 for n in xs]
        left.plot(xs, rps, line, color=color, marker=marker, lw=width, label=LABELS[config])
        right.plot(xs, peak, line, color=color, marker=marker, lw=width, label=LABELS[config])
    right.axhline(cap, color="tab:red", lw=1, ls=":", label=f"pool cap ({cap})")
    pooled_peaks = {
        main[(c, "pk", n)]["peak"]
        for c in configs
        if c in POOLED
        for n in clients
        if (c, "pk", n) in main
    }
    if len(pooled_peaks) == 1:
        right.annotate(
            f"every pool: {pooled_peaks.pop()} (lines overlap)",
            xy=(clients[0], cap),
            xytext=(0, 8),
            textcoords="offset points",
            fontsize=8,
        )
    if user_limit:
        right.axhline(
            user_limit, color="tab:brown", lw=1, ls="-.", label=f"bench user's limit ({user_limit})"
        )
    for ax, title, ylabel in (
        (left, "Primary-key read: requests/s (2xx, median)", "requests/s"),
        (right, "Peak server connections (sampled every 100 ms)", "connections"),
    ):
        ax.set_xscale("log")
        ax.set_xticks(clients)
        ax.set_xticklabels([str(n) for n in clients])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("concurrent clients (wrk connections)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    handles, labels = right.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("gunicorn -k gevent, 1 worker, Django 5.2 + MariaDB, 2 cores", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description="render RESULTS.md and results.png")
    parser.add_argument("results", nargs="?", type=Path, default=HERE / "out" / "results.json")
    parser.add_argument("--dir", type=Path, default=HERE)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    for path in write(results, args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
