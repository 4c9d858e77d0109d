"""``python -m wsgi_db_pool check``: does this pool configuration fit the database server?

It loads the Django settings (``DJANGO_SETTINGS_MODULE``, or ``--settings``), connects
once to each pooled MySQL/MariaDB and PostgreSQL alias the way Django would, reads the
server's limits and says, in plain words:

- whether ``hosts x workers x (pool_size + max_overflow)``, summed over the aliases
  that reach the same server, fits under its ``max_connections`` (less a reserve for
  everything else) and under the account's limit; when several aliases reach one server,
  what their combined cap is and why a router makes it count. A sync worker opens at most
  one connection per alias, a gthread worker one per thread: the sum counts that;
- for a Galera cluster (reached through a balancer, say): each node's share against its own
  ``max_connections`` with every node up, and when one node is down (the other N-1 carry
  all), each node reached at the client address it announces (``wsrep_incoming_addresses``);
- for a replica: whether it replicates, its lag (``--max-lag``) and ``read_only``;
- whether connections are retired (``max_age``, ``max_idle``) before the server drops
  idle ones (``wait_timeout``, ``idle_session_timeout``);
- what the alias's driver does under the worker class, and whether its connects and
  queries are bounded in time; the per-database details are in ``_doctor_mysql`` and
  ``_doctor_postgresql``.

A pooled SQLite alias has no server to check and is only named.

Exit status: 0 when it fits (warnings included, unless ``--strict``), 1 when it does
not, 2 when it could not check (settings or import errors, an alias it could not
connect to).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ._doctor_plan import ERROR, FAIL, NOTE, OK, WARN, WORKER_CLASSES, Plan
from .config import PoolConfig

__all__ = ["main"]

_LABEL = {OK: "OK  ", NOTE: "NOTE", WARN: "WARN", FAIL: "FAIL", ERROR: "ERR "}
# The pool settings the check takes, as PoolConfig names them.
_POOL_OPTIONS = ("pool_size", "max_overflow", "max_age", "max_idle", "min_size", "timeout")


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


def _seconds(text: str) -> float | None:
    if text.strip().lower() in ("none", "off", "never"):
        return None
    return float(text)


def _default(name: str) -> str:
    """PoolConfig's default for ``name``, as the help shows it: the defaults live there."""

    [found] = [f for f in dataclasses.fields(PoolConfig) if f.name == name]
    value = found.default
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


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
            "Connect to each pooled MySQL/MariaDB and PostgreSQL alias of the Django settings "
            "and say whether the pool configuration fits the server. Exit status 0: it fits; "
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
        help="an alias to check (repeatable; default: every MySQL/MariaDB and PostgreSQL alias)",
    )
    for name in _POOL_OPTIONS:
        if name in ("max_age", "max_idle"):
            kind: Any = _seconds
            unit = " in seconds, or 'none'"
        elif name == "timeout":
            kind, unit = float, " in seconds"
        else:
            kind, unit = int, ""
        check.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            help=f"{name}{unit} (default {_default(name)})",
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
        choices=WORKER_CLASSES,
        default="gevent",
        help="the server's worker class (default gevent)",
    )
    check.add_argument(
        "--threads", type=int, default=1, help="threads per worker, with --worker-class gthread"
    )
    check.add_argument(
        "--max-lag",
        type=float,
        default=10.0,
        help="seconds a replica may lag behind its primary before it is flagged (default 10)",
    )
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.add_argument(
        "--strict", action="store_true", help="exit 1 on warnings too, not only on failures"
    )
    return parser


def _plan(args: argparse.Namespace, from_app: Any) -> Plan:

    base = from_app.config if from_app is not None else PoolConfig()
    chosen = {
        name: getattr(base, name) if getattr(args, name) is None else getattr(args, name)
        for name in _POOL_OPTIONS
    }
    # The middleware's own validation, so the messages are the same.
    PoolConfig(**chosen)
    for name in ("workers", "hosts", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, not {getattr(args, name)}")
    if args.max_lag < 0:
        raise ValueError(f"--max-lag must be >= 0, not {args.max_lag}")
    if args.reserve < 0:
        raise ValueError(f"--reserve must be >= 0, not {args.reserve}")
    if args.worker_class == "sync" and args.threads > 1:
        # gunicorn itself runs "sync" with --threads above 1 as gthread.
        raise ValueError(
            "--threads above 1 makes gunicorn run the gthread worker, not sync: pass "
            "--worker-class gthread"
        )
    aliases = args.aliases
    if aliases is None and from_app is not None:
        aliases = list(from_app.aliases)
    return Plan(
        **chosen,
        workers=args.workers,
        hosts=args.hosts,
        reserve=args.reserve,
        worker_class=args.worker_class,
        threads=args.threads,
        aliases=aliases,
        max_lag=args.max_lag,
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


def _vendor(alias: str) -> str:
    from django.db import connections
    from django.db.utils import load_backend

    vendor: str = load_backend(connections.settings[alias]["ENGINE"]).DatabaseWrapper.vendor
    return vendor


def _dialect(vendor: str) -> Any:
    """The module that reads a server of ``vendor`` and checks its driver options."""
    if vendor == "postgresql":
        from . import _doctor_postgresql

        return _doctor_postgresql
    from . import _doctor_mysql

    return _doctor_mysql


def _server_facts(alias: str, dialect: Any) -> dict[str, Any]:
    from django.db import connections

    wrapper = connections.create_connection(alias)
    try:
        try:
            wrapper.ensure_connection()
        except Exception as exc:
            raise CannotCheck(f"alias {alias!r}: cannot connect: {exc}") from exc
        facts: dict[str, Any] = dialect.facts(wrapper, connections.settings[alias])
    finally:
        wrapper.close()
    galera = facts.get("galera")
    if galera:
        # One node answered (through a balancer, perhaps): each node's own limits.
        facts["server"] = f"Galera cluster {galera['cluster_name']}"
        facts["nodes"] = [_node_facts(alias, address, dialect) for address in galera["addresses"]]
    return facts


def _node_facts(alias: str, address: str, dialect: Any) -> dict[str, Any]:
    """One cluster node, reached straight at its client ``address`` with the alias's
    credentials and options; ``error`` when it could not be reached."""
    from django.db import connections

    host, _, port = address.rpartition(":")
    wrapper = connections.create_connection(alias)
    params = wrapper.get_connection_params()
    params.pop("unix_socket", None)
    params.update(host=host, port=int(port))
    try:
        conn = wrapper.get_new_connection(params)
    except Exception as exc:
        return {"address": address, "error": f"{type(exc).__name__}: {exc}"}
    try:
        facts: dict[str, Any] = {"address": address, **dialect.node_facts(conn)}
        return facts
    finally:
        conn.close()


# -- the checks -----------------------------------------------------------------------------


def _lifetime(
    plan: Plan, wait_timeout: float | None, name: str = "wait_timeout"
) -> tuple[str, str]:
    """Whether the pool retires connections before the server drops idle ones (MySQL's
    wait_timeout, PostgreSQL's idle_session_timeout; None: the server never does)."""
    limits = [x for x in (plan.max_age, plan.max_idle) if x is not None]
    age = "None" if plan.max_age is None else f"{plan.max_age:g} s"
    if wait_timeout is None:
        retired = (
            f"max_age {age} and max_idle retire them"
            if limits
            else "with max_age and max_idle None, they stay open as long as the process"
        )
        return OK, f"lifetime: {name} is off: the server does not drop idle connections; {retired}."
    if not limits:
        return WARN, (
            f"lifetime: max_age and max_idle are both None, so an idle connection stays "
            f"open until the server's {name} ({wait_timeout:g} s) drops it; the pool "
            f"then finds it closed at checkout and opens another (the server logs an "
            f"aborted connection). Set max_age below {wait_timeout:g} s."
        )
    # The reaper closes idle connections at most this late.
    interval = PoolConfig(max_age=plan.max_age, max_idle=plan.max_idle).reap_interval
    longest = min(limits) + interval
    if plan.max_age is not None and plan.max_age < wait_timeout and longest < wait_timeout:
        return OK, (
            f"lifetime: max_age {age} < {name} {wait_timeout:g} s: the pool retires "
            f"connections before the server would drop them."
        )
    return WARN, (
        f"lifetime: max_age {age} is not below the server's {name} ({wait_timeout:g} s) "
        f"(an idle connection may sit up to {longest:g} s): the server can drop idle "
        f"connections first; the pool then finds them closed at checkout and opens "
        f"others (the server logs aborted connections). Set max_age below {wait_timeout:g} s."
    )


def _capacity(
    plan: Plan, facts: dict[str, Any], aliases: list[str], pooled: int, report: Report
) -> None:
    server = facts["server"]
    per_alias = plan.per_alias(pooled)
    needed = plan.processes * per_alias * len(aliases)
    limit = facts["max_connections"]
    kept = facts["reserved_connections"]
    room = limit - kept - plan.reserve
    names = ", ".join(repr(a) for a in aliases)
    formula = (
        f"{plan.hosts} host{'s' if plan.hosts != 1 else ''} x {plan.workers} "
        f"worker{'s' if plan.workers != 1 else ''} x {plan.per_alias_text(pooled)}"
        f"{'' if len(aliases) == 1 else f' x {len(aliases)} aliases'} = {needed}"
    )
    # PostgreSQL keeps superuser_reserved_connections out of everyone else's reach.
    superusers = f"{kept} kept for superusers and " if kept else ""
    if needed <= room:
        report.add(
            OK,
            "capacity",
            f"capacity: {formula} connections at most, within max_connections {limit} less "
            f"{superusers}the reserve of {plan.reserve} ({room}) (aliases {names}).",
            server=server,
        )
        return
    report.add(
        FAIL,
        "capacity",
        f"capacity: {formula} connections at most, but max_connections is {limit} and "
        f"{superusers}{plan.reserve} are kept in reserve, leaving {room}: it does not fit "
        f"(aliases {names}). {_fewer(plan, room, aliases, pooled)} raise max_connections, or "
        f"put a proxy (ProxySQL, MaxScale, PgBouncer) in front; see docs/operations.md.",
        server=server,
    )


def _cluster_capacity(
    plan: Plan, facts: dict[str, Any], aliases: list[str], pooled: int, report: Report
) -> None:
    """A Galera cluster behind a balancer: each node carries its share, and when one is
    down the other N-1 carry all (HAProxy's leastconn spreads connections evenly)."""
    server = facts["server"]
    needed = plan.processes * plan.per_alias(pooled) * len(aliases)
    formula = (
        f"{plan.hosts} host{'s' if plan.hosts != 1 else ''} x {plan.workers} "
        f"worker{'s' if plan.workers != 1 else ''} x {plan.per_alias_text(pooled)}"
        f"{'' if len(aliases) == 1 else f' x {len(aliases)} aliases'} = {needed}"
    )
    nodes = facts["nodes"]
    for node in nodes:
        if "error" in node:
            report.add(
                WARN,
                "node",
                f"node at {node['address']}: not reachable with the alias's account "
                f"({node['error']}); its max_connections is not checked.",
                server=server,
            )
    reached = [node for node in nodes if "error" not in node]
    count = max(facts["galera"]["cluster_size"], len(nodes))
    if len(nodes) < count:
        # Nodes that announce no client address: counted like the node that answered.
        reached.append(
            {
                "node": facts["galera"]["node"],
                "max_connections": facts["max_connections"],
            }
        )
        report.add(
            NOTE,
            "nodes",
            f"nodes: {count} in the cluster, {len(nodes)} announcing a client address "
            f"(wsrep_incoming_addresses); the others are counted as having the "
            f"max_connections of {facts['galera']['node']}, which answered "
            f"({facts['max_connections']}). Set wsrep_node_incoming_address on every node "
            f"to have each checked.",
            server=server,
        )
    if not reached:
        return
    names = ", ".join(repr(a) for a in aliases)

    def short(share: int) -> list[str]:
        return [
            f"{node['node']} (max_connections {node['max_connections']} less the reserve "
            f"of {plan.reserve}: {node['max_connections'] - plan.reserve})"
            for node in reached
            if node["max_connections"] - plan.reserve < share
        ]

    all_up = -(-needed // count)
    tight = short(all_up)
    if tight:
        report.add(
            FAIL,
            "capacity",
            f"capacity: {formula} connections at most, {all_up} a node with all {count} "
            f"nodes up, more than {', '.join(tight)} can take (aliases {names}): connects "
            f"there fail with 1040. Raise max_connections on it, or run fewer workers.",
            server=server,
        )
    else:
        report.add(
            OK,
            "capacity",
            f"capacity: {formula} connections at most, {all_up} a node with all {count} "
            f"nodes up, within each node's max_connections less the reserve of "
            f"{plan.reserve} (aliases {names}).",
            server=server,
        )
    if count < 2:
        report.add(
            NOTE,
            "n_minus_one",
            "one node down: the cluster has a single node now (wsrep_cluster_size 1), so "
            "nothing carries the load while it is down.",
            server=server,
        )
        return
    one_down = -(-needed // (count - 1))
    tight = short(one_down)
    if tight:
        report.add(
            FAIL,
            "n_minus_one",
            f"one node down: the other {count - 1} carry all {needed} connections, "
            f"{one_down} a node, more than {', '.join(tight)} can take: while a node is "
            f"down, connects beyond that fail with 1040 (fast 503s and a connect backoff). "
            f"Raise max_connections to at least {one_down + plan.reserve} on every node, "
            f"or run fewer workers.",
            server=server,
        )
        return
    least = min(reached, key=lambda node: node["max_connections"])
    report.add(
        OK,
        "n_minus_one",
        f"one node down: the other {count - 1} carry all {needed} connections, "
        f"{one_down} a node, within every node's max_connections less the reserve "
        f"(the least is {least['node']}'s {least['max_connections']}).",
        server=server,
    )


# What a view change adds to the suspect timeout before the survivors commit again
# (measured on the suite's cluster: 6 s from kill -9 to commits, with the 5 s default).
_VIEW_CHANGE_S = 1.0


def _cluster_stall(plan: Plan, facts: dict[str, Any], report: Report) -> None:
    """A node lost stalls every write commit on the others until they drop it: the
    pool's ``timeout`` must outlast that, or requests queued behind the stalled writes
    are answered 503 where stock Django would serve them (docs/scale-out.md)."""
    suspect = facts["galera"].get("suspect_timeout")
    if suspect is None:
        return
    stall = suspect + _VIEW_CHANGE_S
    if plan.timeout > stall + 1.0:
        report.add(
            OK,
            "stall",
            f"stall: a node lost stalls write commits for about {stall:g} s "
            f"(evs.suspect_timeout {suspect:g} s and the view change); timeout={plan.timeout:g} "
            f"s outlasts it.",
            server=facts["server"],
        )
        return
    report.add(
        WARN,
        "stall",
        f"stall: a node lost stalls write commits for about {stall:g} s (evs.suspect_timeout "
        f"{suspect:g} s and the view change), and timeout={plan.timeout:g} s does not "
        f"outlast it: while stalled writes hold the connections, requests waiting for one "
        f"are answered 503. Raise timeout above {stall + 1.0:g} s, and set write_slots so "
        f"that stalled writes hold only their share of the cap (docs/scale-out.md).",
        server=facts["server"],
    )


def _fewer(plan: Plan, room: int, aliases: list[str], pooled: int) -> str:
    """What to shrink so that the pools fit into ``room``, for the worker class."""
    room = max(room, 0)
    each = room // (plan.processes * len(aliases))  # connections per alias and process
    workers = room // (plan.hosts * len(aliases) * plan.per_alias(pooled))
    fewer = f"run fewer workers (at most {workers} per host at this size)"
    if plan.concurrency == 1:
        return f"A sync worker needs one connection per alias, so {fewer},"
    if plan.concurrency is not None and plan.concurrency < plan.bound(pooled):
        return f"Lower --threads to at most {each}, {fewer},"
    most = max(each - (pooled - 1), 0)
    return f"Lower pool_size + max_overflow to at most {most} per alias, {fewer},"


def _connected(facts: dict[str, Any], report: Report) -> None:
    limit = facts["max_connections"]
    usable = limit - facts["reserved_connections"]  # what a non-superuser may reach
    others = facts["connected"] - 1  # this check's own connection
    report.add(
        NOTE,
        "connected",
        f"connected now: {others} other connection{'s' if others != 1 else ''} "
        f"({facts['connected_name']}, without this check's own); if they are not this app's, "
        f"{usable - others} of {usable} are free for it.",
        server=facts["server"],
    )


def _settings_address(alias: str) -> str:
    from django.db import connections

    settings = connections.settings[alias]
    default_port = 5432 if _vendor(alias) == "postgresql" else 3306
    return f"{settings.get('HOST') or 'localhost'}:{settings.get('PORT') or default_port}"


def _shared_server(
    plan: Plan, facts: dict[str, Any], aliases: list[str], pooled: int, report: Report
) -> None:
    """Aliases on one server: their pools are separate, so their caps add up there."""
    if len(aliases) < 2:
        return
    per_process = plan.per_alias(pooled) * len(aliases)
    where = ", ".join(f"{alias!r} ({_settings_address(alias)})" for alias in aliases)
    report.add(
        NOTE,
        "shared_server",
        f"shared server: aliases {where} reach the same server, each with a pool of its "
        f"own, so their caps add up: {len(aliases)} x {plan.per_alias_text(pooled)} = "
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


def _limit(
    plan: Plan,
    facts: dict[str, Any],
    aliases: list[str],
    pooled: int,
    report: Report,
    kind: str,
    who: str,
) -> None:
    """An account's (``kind`` "user") or a database's own connection limit."""
    limit = facts.get(f"{kind}_limit")
    if limit is None:
        return
    name = facts[f"{kind}_limit_name"]
    who = f"database {who}" if kind == "database" else who
    needed = plan.processes * plan.per_alias(pooled) * len(aliases)
    names = ", ".join(repr(a) for a in aliases)
    if needed <= limit:
        report.add(
            OK,
            name,
            f"{name}: {who} may open {limit}; the pool needs at most {needed} (aliases {names}).",
            server=facts["server"],
        )
        return
    code = " with error 1203" if facts["vendor"] == "mysql" else ""
    report.add(
        FAIL,
        name,
        f"{name}: {who} may open only {limit}, but the pool may open {needed} (aliases "
        f"{names}): it does not fit; connects past {limit} fail{code} and their requests "
        f"get 503.",
        server=facts["server"],
    )


def _sizing(plan: Plan, report: Report) -> None:
    """What pool fits the worker class: it bounds what a process ever opens per alias."""
    if plan.worker_class == "sync":
        if plan.cap == 1:
            report.add(
                OK,
                "sizing",
                "sizing: pool_size=1, max_overflow=0 per alias fits a sync worker (one request "
                "at a time per process).",
            )
            return
        report.add(
            NOTE,
            "sizing",
            f"sizing: a sync worker serves one request at a time, and a request holds at most "
            f"one connection per alias, so a process never opens more than one per alias "
            f"(min_size aside): pool_size=1, max_overflow=0 per alias is the pool that fits "
            f"it, and the capacity below counts one. The other {plan.cap - 1} of pool_size + "
            f"max_overflow ({plan.cap}) are never used. What the pool still gives a sync "
            f"worker: one connection kept open across requests, checked and reset, instead "
            f"of a connect per request. A view that hands queries to threads of its own "
            f"(pooled()) needs one more per such thread: size for those.",
        )
    elif plan.worker_class == "gthread" and plan.threads > plan.cap:
        report.add(
            NOTE,
            "sizing",
            f"threads: {plan.threads} threads per worker share {plan.cap} connections; "
            f"the rest wait up to the pool's timeout when all query at once. "
            f"pool_size + max_overflow = {plan.threads} lets none wait.",
        )
    elif plan.worker_class == "gthread" and plan.threads < plan.cap:
        report.add(
            NOTE,
            "sizing",
            f"threads: a gthread worker serves {plan.threads} request(s) at once, each "
            f"holding at most one connection per alias, so only {plan.threads} of "
            f"pool_size + max_overflow ({plan.cap}) are ever opened per alias (min_size "
            f"aside), and the capacity below counts {plan.threads}. pool_size + max_overflow "
            f"= {plan.threads} says so (more only for views that hand queries to threads of "
            f"their own with pooled()).",
        )


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
        raise CannotCheck("no MySQL/MariaDB or PostgreSQL alias to check in settings.DATABASES")
    _sizing(plan, report)
    pooled = len(aliases)
    by_server: dict[str, tuple[dict[str, Any], list[str]]] = {}
    limits: dict[tuple[str, str, str], tuple[dict[str, Any], list[str]]] = {}
    for alias in aliases:
        vendor = _vendor(alias)
        if vendor not in ("mysql", "postgresql"):
            report.add(
                NOTE,
                "no_server",
                f"{vendor}: no server to check; its pool holds at most "
                f"{plan.per_alias(pooled)} connection(s) per process.",
                alias=alias,
            )
            continue
        dialect = _dialect(vendor)
        try:
            facts = _server_facts(alias, dialect)
        except CannotCheck as exc:
            report.add(ERROR, "connect", f"{exc}; not checked.", alias=alias)
            continue
        by_server.setdefault(facts["server"], (facts, []))[1].append(alias)
        server = facts["server"]
        limits.setdefault((server, "user", facts["user"]), (facts, []))[1].append(alias)
        if "database" in facts:
            limits.setdefault((server, "database", facts["database"]), (facts, []))[1].append(alias)
        settings = connections.settings[alias]
        lifetime = _lifetime(plan, facts["idle_timeout"], facts["idle_timeout_name"])
        for name, level, message in [
            ("lifetime", *lifetime),
            *dialect.checks(plan, settings, facts, pooled),
        ]:
            report.add(level, name, message, alias=alias)
    for facts, server_aliases in by_server.values():
        report.servers.append({**facts, "aliases": server_aliases})
        if facts.get("galera"):
            _cluster_capacity(plan, facts, server_aliases, pooled, report)
            _cluster_stall(plan, facts, report)
        else:
            _capacity(plan, facts, server_aliases, pooled, report)
            _connected(facts, report)
        _shared_server(plan, facts, server_aliases, pooled, report)
    for (_, kind, who), (facts, limit_aliases) in limits.items():
        _limit(plan, facts, limit_aliases, pooled, report, kind, who)
    return report


# -- output -----------------------------------------------------------------------------------


def _render(report: Report, plan: Plan) -> str:
    lines = [
        f"wsgi_db_pool check ({report.settings}): {plan.hosts} host(s) x {plan.workers} "
        f"worker(s), pool_size={plan.pool_size} + max_overflow={plan.max_overflow} per alias, "
        f"{plan.worker_class} workers",
    ]
    for server in report.servers:
        idle = "off" if server["idle_timeout"] is None else f"{server['idle_timeout']:g} s"
        kept = server["reserved_connections"]
        kept = f" ({kept} kept for superusers)" if kept else ""
        if server.get("galera"):
            galera = server["galera"]
            lines.append(
                f"server {server['server']} ({server['version']}): {galera['cluster_size']} "
                f"node(s) in a {galera['cluster_status']} component, answered by "
                f"{galera['node']}; aliases {', '.join(server['aliases'])}"
            )
        else:
            lines.append(
                f"server {server['server']} ({server['version']}): max_connections "
                f"{server['max_connections']}{kept}, {server['idle_timeout_name']} {idle}, "
                f"{server['connected_name']} {server['connected']}; aliases "
                f"{', '.join(server['aliases'])}"
            )
        for node in server.get("nodes", ()):
            if "error" in node:
                lines.append(f"  node at {node['address']}: not reachable")
                continue
            lines.append(
                f"  node {node['node']} at {node['address']}: max_connections "
                f"{node['max_connections']}, Threads_connected {node['connected']}, "
                f"{node['state']}"
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
