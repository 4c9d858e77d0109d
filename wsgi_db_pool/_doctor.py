"""``python -m wsgi_db_pool check``: does this pool configuration fit the database server?

It loads the Django settings (``DJANGO_SETTINGS_MODULE``, or ``--settings``), connects
once to each MySQL/MariaDB alias the way Django would, reads the server's limits and
says, in plain words:

- whether ``hosts x workers x (pool_size + max_overflow)``, summed over the aliases
  that reach the same server, fits under its ``max_connections`` (less a reserve for
  everything else) and under the account's ``max_user_connections``; when several
  aliases reach one server, what their combined cap is and why a router makes it count;
- whether connections are retired (``max_age``, ``max_idle``) before the server's
  ``wait_timeout`` drops them;
- whether PyMySQL builds a TLS context on every connect (CPU that stalls every
  greenlet of a gevent worker);
- whether the alias sets connect, read and write timeouts;
- whether the driver is mysqlclient under gevent (its C I/O blocks every greenlet).

Exit status: 0 when it fits (warnings included, unless ``--strict``), 1 when it does
not, 2 when it could not check (settings or import errors, an alias it could not
connect to).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["main"]

OK, NOTE, WARN, FAIL, ERROR = "ok", "note", "warn", "fail", "error"
_LABEL = {OK: "OK  ", NOTE: "NOTE", WARN: "WARN", FAIL: "FAIL", ERROR: "ERR "}
_TIMEOUTS = ("connect_timeout", "read_timeout", "write_timeout")
# PyMySQL options that make it build a TLS context from a dict on every connect.
_SSL_KEYS = ("ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_cert", "ssl_verify_identity")


class CannotCheck(Exception):
    """The check could not run (bad settings, import error, server unreachable)."""


@dataclass
class Finding:
    """One verdict, for one alias or one server."""

    level: str
    check: str
    message: str
    alias: str | None = None
    server: str | None = None


@dataclass
class Report:
    """Everything ``check`` found."""

    settings: str
    findings: list[Finding] = field(default_factory=list)
    servers: list[dict[str, Any]] = field(default_factory=list)

    def add(self, level: str, check: str, message: str, **where: Any) -> None:
        self.findings.append(Finding(level, check, message, **where))

    def worst(self) -> str:
        levels = {finding.level for finding in self.findings}
        for level in (FAIL, ERROR, WARN):
            if level in levels:
                return level
        return OK


# -- the pool settings --------------------------------------------------------------------


@dataclass
class Plan:
    """The deployment being checked: the pool settings and how many copies of it run."""

    pool_size: int
    max_overflow: int
    max_age: float | None
    max_idle: float | None
    workers: int
    hosts: int
    reserve: int
    worker_class: str
    threads: int
    aliases: list[str] | None

    @property
    def cap(self) -> int:
        return self.pool_size + self.max_overflow

    @property
    def processes(self) -> int:
        return self.workers * self.hosts


def _seconds(text: str) -> float | None:
    if text.strip().lower() in ("none", "off", "never"):
        return None
    return float(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wsgi_db_pool",
        description="Tools for wsgi_db_pool deployments.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="does this pool configuration fit the database server?",
        description=(
            "Connect to each pooled MySQL/MariaDB alias of the Django settings and say "
            "whether the pool configuration fits the server. Exit status 0: it fits; "
            "1: it does not; 2: it could not be checked."
        ),
    )
    check.add_argument(
        "--settings", help="Django settings module (default: $DJANGO_SETTINGS_MODULE)"
    )
    check.add_argument(
        "--app",
        metavar="MODULE:NAME",
        help="import this WSGI module (as the server would) and take the pool settings "
        "and aliases from its PoolingMiddleware; options given here still win",
    )
    check.add_argument(
        "--alias",
        dest="aliases",
        action="append",
        help="an alias to check (repeatable; default: every MySQL/MariaDB alias)",
    )
    check.add_argument("--pool-size", type=int, help="pool_size (default 10)")
    check.add_argument("--max-overflow", type=int, help="max_overflow (default 10)")
    check.add_argument(
        "--max-age", type=_seconds, help="max_age in seconds, or 'none' (default 3600)"
    )
    check.add_argument(
        "--max-idle", type=_seconds, help="max_idle in seconds, or 'none' (default 600)"
    )
    check.add_argument(
        "--workers", type=int, default=1, help="worker processes per host (default 1)"
    )
    check.add_argument(
        "--hosts", type=int, default=1, help="hosts running the app against the same server"
    )
    check.add_argument(
        "--reserve",
        type=int,
        default=10,
        help="connections to leave free for everything else: admin, migrations, cron, "
        "monitoring, replication (default 10)",
    )
    check.add_argument(
        "--worker-class",
        choices=("gevent", "gthread", "sync"),
        default="gevent",
        help="the server's worker class (default gevent)",
    )
    check.add_argument(
        "--threads", type=int, default=1, help="threads per worker, with --worker-class gthread"
    )
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.add_argument(
        "--strict", action="store_true", help="exit 1 on warnings too, not only on failures"
    )
    return parser


def _plan(args: argparse.Namespace, from_app: Any) -> Plan:
    from .config import PoolConfig

    base = from_app.config if from_app is not None else PoolConfig()
    chosen = {
        "pool_size": base.pool_size if args.pool_size is None else args.pool_size,
        "max_overflow": base.max_overflow if args.max_overflow is None else args.max_overflow,
        "max_age": base.max_age if args.max_age is None else args.max_age,
        "max_idle": base.max_idle if args.max_idle is None else args.max_idle,
    }
    # The middleware's own validation, so the messages are the same.
    PoolConfig(**chosen)  # type: ignore[arg-type]
    for name in ("workers", "hosts", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, not {getattr(args, name)}")
    if args.reserve < 0:
        raise ValueError(f"--reserve must be >= 0, not {args.reserve}")
    aliases = args.aliases
    if aliases is None and from_app is not None:
        aliases = list(from_app.aliases)
    return Plan(
        **chosen,  # type: ignore[arg-type]
        workers=args.workers,
        hosts=args.hosts,
        reserve=args.reserve,
        worker_class=args.worker_class,
        threads=args.threads,
        aliases=aliases,
    )


def _load_app(spec: str) -> Any:
    """The PoolingMiddleware behind ``MODULE:NAME``."""
    from ._registry import open_middlewares
    from .middleware import PoolingMiddleware

    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise CannotCheck(f"--app {spec}: cannot import {module_name!r}: {exc}") from exc
    obj = getattr(module, name or "application", None)
    seen = 0
    while obj is not None and not isinstance(obj, PoolingMiddleware) and seen < 10:
        obj = getattr(obj, "app", None)  # a middleware around ours
        seen += 1
    if isinstance(obj, PoolingMiddleware):
        return obj
    found = open_middlewares()
    if len(found) == 1:
        return found[0]
    raise CannotCheck(
        f"--app {spec}: no PoolingMiddleware found there ({len(found)} in the process)"
    )


# -- what the server says -------------------------------------------------------------------


def _driver() -> tuple[str, str]:
    """The MySQL driver Django uses here: ("PyMySQL", version) or ("mysqlclient", version)."""
    mysqldb = sys.modules.get("MySQLdb")
    if mysqldb is None:
        return "unknown", "?"
    if getattr(mysqldb, "__name__", "") == "pymysql" or hasattr(mysqldb, "install_as_MySQLdb"):
        import pymysql

        return "PyMySQL", getattr(pymysql, "VERSION_STRING", "?")
    version = getattr(mysqldb, "__version__", None) or ".".join(
        str(part) for part in getattr(mysqldb, "version_info", ())[:3]
    )
    return "mysqlclient", version or "?"


def _server_facts(alias: str) -> dict[str, Any]:
    from django.db import connections

    wrapper = connections.create_connection(alias)
    try:
        try:
            wrapper.ensure_connection()
        except Exception as exc:
            raise CannotCheck(f"alias {alias!r}: cannot connect: {exc}") from exc
        with wrapper.cursor() as cursor:
            cursor.execute(
                "SELECT @@max_connections, @@session.wait_timeout, "
                "@@session.max_user_connections, @@hostname, @@port, VERSION(), "
                "CURRENT_USER()"
            )
            max_conn, wait_timeout, max_user, hostname, port, version, user = cursor.fetchone()
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            threads_connected = int(cursor.fetchone()[1])
    finally:
        wrapper.close()
    return {
        "server": f"{hostname}:{port}",
        "version": version,
        "user": user,
        "max_connections": int(max_conn),
        "wait_timeout": int(wait_timeout),
        "max_user_connections": int(max_user),
        "threads_connected": threads_connected,
    }


# -- the checks -----------------------------------------------------------------------------


def _tls(options: dict[str, Any], driver: str, version: str) -> tuple[str, str]:
    """PyMySQL's rule (connections.py, Connection.__init__), as of 1.2.4.

    ssl_disabled wins. Any of ssl_ca, ssl_cert, ssl_key, ssl_verify_cert,
    ssl_verify_identity makes a dict that replaces ``ssl`` (even an SSLContext), and a
    dict is turned into a new SSLContext on every connect. An ``ssl`` SSLContext with
    none of those is used as it is. Nothing at all: PyMySQL >= 1.2 tries TLS
    ("preferred") with a new default context on every connect; earlier ones do not.
    """
    import ssl

    if driver != "PyMySQL":
        return NOTE, f"TLS: not checked for {driver}."
    if options.get("ssl_disabled"):
        return OK, "TLS: ssl_disabled=True, so PyMySQL builds no TLS context per connect."
    named = [key for key in _SSL_KEYS if options.get(key)]
    given = options.get("ssl")
    if named:
        replaced = "; they also replace the SSLContext given as ssl" if given else ""
        return WARN, (
            f"TLS: OPTIONS set {', '.join(named)}, so PyMySQL {version} builds a new "
            f"ssl.SSLContext on every connect (tens of ms of CPU that stall every greenlet "
            f"of a gevent worker{replaced}). Build one context yourself and pass it alone "
            f"as OPTIONS['ssl']."
        )
    if isinstance(given, ssl.SSLContext):
        return OK, "TLS: one shared ssl.SSLContext in OPTIONS['ssl'], used as it is."
    if given:
        return WARN, (
            f"TLS: OPTIONS['ssl'] is a {type(given).__name__}, which PyMySQL turns into a new "
            f"ssl.SSLContext on every connect (tens of ms of CPU that stall every greenlet "
            f"of a gevent worker). Pass one ssl.SSLContext as OPTIONS['ssl'] instead."
        )
    parts = tuple(int(p) if p.isdigit() else 0 for p in version.split(".")[:2])
    if parts >= (1, 2):
        return WARN, (
            f"TLS: PyMySQL {version} tries TLS by default and builds a new ssl.SSLContext on "
            f"every connect (24-35 ms of CPU measured, stalling every greenlet of a gevent "
            f"worker), even when the server has TLS off. Set OPTIONS['ssl_disabled'] = True "
            f"for a server on loopback or a trusted network, or pass one shared "
            f"ssl.SSLContext as OPTIONS['ssl']."
        )
    return OK, f"TLS: PyMySQL {version} does not try TLS unless asked to."


def _timeouts(options: dict[str, Any], driver: str) -> tuple[str, str]:
    missing = [name for name in _TIMEOUTS if options.get(name) in (None, 0)]
    if not missing:
        set_ = ", ".join(f"{name}={options[name]}" for name in _TIMEOUTS)
        return OK, f"timeouts: {set_}."
    default = " (PyMySQL's connect_timeout defaults to 10 s)" if driver == "PyMySQL" else ""
    return WARN, (
        f"timeouts: OPTIONS set no {', '.join(missing)}{default}. The pool's timeout bounds "
        f"only the checkout; without read_timeout and write_timeout a query to a server "
        f"that stopped answering (a network cut, a frozen host) holds the request and its "
        f"connection until TCP gives up, many minutes later."
    )


def _lifetime(plan: Plan, wait_timeout: int) -> tuple[str, str]:
    limits = [x for x in (plan.max_age, plan.max_idle) if x is not None]
    age = "None" if plan.max_age is None else f"{plan.max_age:g} s"
    if not limits:
        return WARN, (
            f"lifetime: max_age and max_idle are both None, so an idle connection stays "
            f"open until the server's wait_timeout ({wait_timeout} s) drops it; the pool "
            f"then finds it closed at checkout and opens another (the server logs an "
            f"aborted connection). Set max_age below {wait_timeout} s."
        )
    # The reaper closes idle connections at most this late (see PoolingMiddleware).
    interval = max(min([30.0, *(x / 2 for x in limits)]), 0.05)
    longest = min(limits) + interval
    if plan.max_age is not None and plan.max_age < wait_timeout and longest < wait_timeout:
        return OK, (
            f"lifetime: max_age {age} < wait_timeout {wait_timeout} s: the pool retires "
            f"connections before the server would drop them."
        )
    return WARN, (
        f"lifetime: max_age {age} is not below the server's wait_timeout ({wait_timeout} s) "
        f"(an idle connection may sit up to {longest:g} s): the server can drop idle "
        f"connections first; the pool then finds them closed at checkout and opens "
        f"others (the server logs aborted connections). Set max_age below {wait_timeout} s."
    )


def _bound(plan: Plan, pooled: int) -> int:
    """The most one alias's pool opens in a process: the cap, plus one per other pooled
    alias for requests that hold those while they wait for this one (see pool.py)."""
    return plan.cap + max(pooled - 1, 0)


def _bound_text(plan: Plan, pooled: int) -> str:
    extra = f" + {pooled - 1}" if pooled > 1 else ""
    return f"({plan.pool_size} + {plan.max_overflow}{extra})"


def _capacity(
    plan: Plan, facts: dict[str, Any], aliases: list[str], pooled: int, report: Report
) -> None:
    server = facts["server"]
    per_process = _bound(plan, pooled) * len(aliases)
    needed = plan.processes * per_process
    limit = facts["max_connections"]
    room = limit - plan.reserve
    names = ", ".join(repr(a) for a in aliases)
    formula = (
        f"{plan.hosts} host{'s' if plan.hosts != 1 else ''} x {plan.workers} "
        f"worker{'s' if plan.workers != 1 else ''} x {_bound_text(plan, pooled)}"
        f"{'' if len(aliases) == 1 else f' x {len(aliases)} aliases'} = {needed}"
    )
    if needed <= room:
        report.add(
            OK,
            "capacity",
            f"capacity: {formula} connections at most, within max_connections {limit} less "
            f"the reserve of {plan.reserve} ({room}) (aliases {names}).",
            server=server,
        )
    else:
        most = room // (plan.processes * len(aliases)) - (pooled - 1) if room > 0 else 0
        most = max(most, 0)
        report.add(
            FAIL,
            "capacity",
            f"capacity: {formula} connections at most, but max_connections is {limit} and "
            f"{plan.reserve} are kept in reserve, leaving {room}: it does not fit (aliases "
            f"{names}). Lower pool_size + max_overflow to at most {most} per alias, run "
            f"fewer workers, raise max_connections, or put a proxy (ProxySQL, MaxScale) in "
            f"front; see docs/operations.md.",
            server=server,
        )
    others = facts["threads_connected"] - 1  # this check's own connection
    report.add(
        NOTE,
        "connected",
        f"connected now: {others} other connection{'s' if others != 1 else ''} "
        f"(Threads_connected, without this check's own); if they are not this app's, "
        f"{limit - others} of {limit} are free for it.",
        server=server,
    )


def _settings_address(alias: str) -> str:
    from django.db import connections

    settings = connections.settings[alias]
    return f"{settings.get('HOST') or 'localhost'}:{settings.get('PORT') or 3306}"


def _shared_server(
    plan: Plan, facts: dict[str, Any], aliases: list[str], pooled: int, report: Report
) -> None:
    """Aliases on one server: their pools are separate, so their caps add up there."""
    if len(aliases) < 2:
        return
    per_process = _bound(plan, pooled) * len(aliases)
    where = ", ".join(f"{alias!r} ({_settings_address(alias)})" for alias in aliases)
    report.add(
        NOTE,
        "shared_server",
        f"shared server: aliases {where} reach the same server, each with a pool of its "
        f"own, so their caps add up: {len(aliases)} x {_bound_text(plan, pooled)} = "
        f"{per_process} connections per process, "
        f"{plan.processes * per_process} in all against max_connections "
        f"{facts['max_connections']}. Under a database router one request can hold a "
        f"connection of one alias while it waits for another (it read from one, then "
        f"writes to the other), so at a peak every alias is at its cap at once: size the "
        f"server for the sum, not for one alias. Such a request is served first and may "
        f"open one connection past the cap per other alias it holds (the + {pooled - 1}): "
        f"that is what keeps two pools from waiting on each other forever.",
        server=facts["server"],
    )


def _per_user(
    plan: Plan, facts: dict[str, Any], aliases: list[str], pooled: int, report: Report
) -> None:
    limit = facts["max_user_connections"]
    if limit <= 0:
        return
    needed = plan.processes * _bound(plan, pooled) * len(aliases)
    names = ", ".join(repr(a) for a in aliases)
    if needed <= limit:
        report.add(
            OK,
            "max_user_connections",
            f"max_user_connections: {facts['user']} may open {limit}; the pool needs at most "
            f"{needed} (aliases {names}).",
            server=facts["server"],
        )
    else:
        report.add(
            FAIL,
            "max_user_connections",
            f"max_user_connections: {facts['user']} may open only {limit}, but the pool may "
            f"open {needed} (aliases {names}): it does not fit; connects past {limit} fail "
            f"with error 1203 and their requests get 503.",
            server=facts["server"],
        )


def _gevent_driver(plan: Plan, driver: str, alias: str, report: Report) -> None:
    if driver == "mysqlclient" and plan.worker_class == "gevent":
        report.add(
            FAIL,
            "driver",
            "driver: mysqlclient under a gevent worker. Its I/O runs in C and never yields, so "
            "every query blocks every greenlet of the worker, and the pool cannot bound a "
            "connect or a ping. Use PyMySQL (pymysql.install_as_MySQLdb() before Django "
            "loads its backend; if your wsgi.py does that, pass --app), or a gthread worker.",
            alias=alias,
        )
    elif driver == "mysqlclient":
        report.add(OK, "driver", f"driver: mysqlclient under {plan.worker_class}.", alias=alias)
    elif driver == "PyMySQL":
        report.add(OK, "driver", "driver: PyMySQL, which yields to gevent.", alias=alias)


def check(plan: Plan, settings_module: str) -> Report:
    """Run every check for ``plan`` against the configured servers."""
    from django.db import connections

    from . import _aliases

    report = Report(settings_module)
    try:
        aliases = (
            list(_aliases.resolve_aliases(plan.aliases))
            if plan.aliases is not None
            else _aliases.poolable_aliases()
        )
    except (TypeError, ValueError) as exc:
        raise CannotCheck(str(exc)) from exc
    for alias in connections.settings:
        if alias not in aliases:
            report.add(NOTE, "not_pooled", f"alias {alias!r}: not pooled, left to Django.")
    if not aliases:
        raise CannotCheck("no MySQL/MariaDB alias to check in settings.DATABASES")
    by_server: dict[str, tuple[dict[str, Any], list[str]]] = {}
    by_user: dict[tuple[str, str], tuple[dict[str, Any], list[str]]] = {}
    for alias in aliases:
        try:
            facts = _server_facts(alias)
        except CannotCheck as exc:
            report.add(ERROR, "connect", f"{exc}; not checked.", alias=alias)
            continue
        driver, version = _driver()
        options = dict(connections.settings[alias].get("OPTIONS") or {})
        by_server.setdefault(facts["server"], (facts, []))[1].append(alias)
        by_user.setdefault((facts["server"], facts["user"]), (facts, []))[1].append(alias)
        _gevent_driver(plan, driver, alias, report)
        for name, (level, message) in (
            ("lifetime", _lifetime(plan, facts["wait_timeout"])),
            ("tls", _tls(options, driver, version)),
            ("timeouts", _timeouts(options, driver)),
        ):
            report.add(level, name, message, alias=alias)
        if plan.worker_class == "gthread" and plan.threads > plan.cap:
            report.add(
                NOTE,
                "threads",
                f"threads: {plan.threads} threads per worker share {plan.cap} connections; "
                f"the rest wait up to the pool's timeout when all query at once.",
                alias=alias,
            )
    for facts, server_aliases in by_server.values():
        report.servers.append({**facts, "aliases": server_aliases})
        _capacity(plan, facts, server_aliases, len(aliases), report)
        _shared_server(plan, facts, server_aliases, len(aliases), report)
    for facts, user_aliases in by_user.values():
        _per_user(plan, facts, user_aliases, len(aliases), report)
    return report


# -- output -----------------------------------------------------------------------------------


def _render(report: Report, plan: Plan) -> str:
    lines = [
        f"wsgi_db_pool check ({report.settings}): {plan.hosts} host(s) x {plan.workers} "
        f"worker(s), pool_size={plan.pool_size} + max_overflow={plan.max_overflow} per alias, "
        f"{plan.worker_class} workers",
    ]
    for server in report.servers:
        lines.append(
            f"server {server['server']} ({server['version']}): max_connections "
            f"{server['max_connections']}, wait_timeout {server['wait_timeout']} s, "
            f"Threads_connected {server['threads_connected']}; aliases "
            f"{', '.join(server['aliases'])}"
        )
    for finding in report.findings:
        where = finding.alias or finding.server
        prefix = f"[{where}] " if where else ""
        lines.append(f"  {_LABEL[finding.level]}  {prefix}{finding.message}")
    fails = sum(f.level == FAIL for f in report.findings)
    warns = sum(f.level == WARN for f in report.findings)
    errors = sum(f.level == ERROR for f in report.findings)
    if fails:
        verdict = "it does not fit"
    elif errors:
        verdict = "not every alias could be checked"
    else:
        verdict = "it fits"
    lines.append(
        f"Result: {verdict} ({fails} failure(s), {warns} warning(s), {errors} alias(es) "
        f"not reachable)."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m wsgi_db_pool`` command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    settings_module = args.settings or os.environ.get("DJANGO_SETTINGS_MODULE")
    if settings_module:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    try:
        import django
        from django.conf import settings

        # The app first: a one-file app (example_wsgi.py) calls settings.configure().
        from_app = _load_app(args.app) if args.app else None
        if not settings_module and not settings.configured:
            print(
                "wsgi_db_pool check: set DJANGO_SETTINGS_MODULE, pass --settings, or pass "
                "--app of a module that configures Django's settings itself",
                file=sys.stderr,
            )
            return 2
        settings_module = settings_module or "settings.configure()"
        django.setup()
        try:
            plan = _plan(args, from_app)
        except (TypeError, ValueError) as exc:
            parser.error(str(exc))
        report = check(plan, settings_module)
    except CannotCheck as exc:
        print(f"wsgi_db_pool check: could not check: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"wsgi_db_pool check: could not check: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    worst = report.worst()
    if args.json:
        document = {
            "fits": worst != FAIL,
            "result": worst,
            "plan": asdict(plan),
            "servers": report.servers,
            "findings": [asdict(finding) for finding in report.findings],
        }
        print(json.dumps(document, indent=2))
    else:
        print(_render(report, plan))
    if worst == FAIL or (args.strict and worst == WARN):
        return 1
    if worst == ERROR:
        return 2
    return 0
