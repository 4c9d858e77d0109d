"""The doctor's PostgreSQL side: what the server says, and what the alias's driver does.

PostgreSQL's counterparts of what the MySQL side reads: ``max_connections`` less the slots
kept for superusers (``superuser_reserved_connections``, and ``reserved_connections`` from
16 on), the client backends in ``pg_stat_activity`` (Threads_connected), the role's and the
database's connection limits (max_user_connections; superusers are exempt from both), and
``idle_session_timeout`` (14+; wait_timeout). ``idle_in_transaction_session_timeout`` has no
MySQL counterpart the pool meets. PyMySQL's TLS context has none here: libpq is not
PyMySQL, and nothing was measured.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ._doctor_plan import NOTE, OK, WARN, Plan, driver_finding

_SETTINGS = (
    "max_connections",
    "superuser_reserved_connections",
    "reserved_connections",
    "idle_session_timeout",
    "idle_in_transaction_session_timeout",
)
# libpq's parameters that bound a query to a server that stopped answering.
_NETWORK = ("keepalives_idle", "tcp_user_timeout")


def facts(wrapper: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """The server's limits, through ``wrapper`` (connected)."""
    with wrapper.cursor() as cursor:
        # pg_settings: a name the server does not have (reserved_connections before 16,
        # idle_session_timeout before 14) is simply absent; timeouts are in ms.
        cursor.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN (%s, %s, %s, %s, %s)",
            _SETTINGS,
        )
        values = {name: int(setting) for name, setting in cursor.fetchall()}
        cursor.execute(
            "SELECT host(inet_server_addr()), inet_server_port(), "
            "current_setting('server_version'), current_user, current_database(), "
            "r.rolsuper, r.rolconnlimit, d.datconnlimit, "
            "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') "
            "FROM pg_roles r, pg_database d "
            "WHERE r.rolname = current_user AND d.datname = current_database()"
        )
        addr, port, version, user, database, superuser, role_limit, db_limit, connected = (
            cursor.fetchone()
        )
    # A Unix socket has no address: name the server as the settings do.
    host = addr or settings.get("HOST") or "localhost"
    port = port or settings.get("PORT") or 5432
    idle = values.get("idle_session_timeout", 0)
    in_transaction = values.get("idle_in_transaction_session_timeout", 0)
    return {
        "vendor": "postgresql",
        "server": f"{host}:{port}",
        "version": f"PostgreSQL {version}",
        "user": user,
        "database": database,
        "superuser": bool(superuser),
        "max_connections": values["max_connections"],
        "reserved_connections": values.get("superuser_reserved_connections", 0)
        + values.get("reserved_connections", 0),
        "idle_timeout": idle / 1000 if idle > 0 else None,
        "idle_timeout_name": "idle_session_timeout",
        "idle_in_transaction_session_timeout": in_transaction / 1000 if in_transaction else None,
        # -1 is no limit; superusers are not held to either.
        "user_limit": None if superuser or role_limit < 0 else int(role_limit),
        "user_limit_name": "rolconnlimit",  # the role's CONNECTION LIMIT
        "database_limit": None if superuser or db_limit < 0 else int(db_limit),
        "database_limit_name": "datconnlimit",
        "connected": int(connected),
        "connected_name": "client backends",
    }


def checks(
    plan: Plan, settings: dict[str, Any], facts: dict[str, Any], pooled: int
) -> list[tuple[str, str, str]]:
    """The alias's own findings: (check, level, message)."""
    options = dict(settings.get("OPTIONS") or {})
    found = [("driver", *_driver(plan)), ("timeouts", *_timeouts(options))]
    idle = facts.get("idle_in_transaction_session_timeout")
    if idle:
        found.append(("idle_in_transaction", *_idle_in_transaction(plan, idle, pooled)))
    return found


def _driver(plan: Plan) -> tuple[str, str]:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if is_psycopg3:
        import psycopg

        version = psycopg.__version__
        parts = tuple(int(p) if p.isdigit() else 0 for p in version.split(".")[:3])
        if plan.worker_class == "gevent" and parts < (3, 1, 14):
            return WARN, (
                f"driver: psycopg {version} under a gevent worker: releases before 3.1.14 "
                f"wait for the server in C without yielding, which blocks every greenlet of "
                f"the worker. Upgrade psycopg to 3.1.14 or later."
            )
        name = f"psycopg {version}"
    else:
        # No stubs for psycopg2: through import_module, typed Any.
        psycopg2 = importlib.import_module("psycopg2")
        importlib.import_module("psycopg2.extensions")
        name = f"psycopg2 {psycopg2.__version__.split()[0]}"
        patched = psycopg2.extensions.get_wait_callback() is not None
        if plan.worker_class == "gevent" and not patched:
            return WARN, (
                f"driver: {name} under a gevent worker, and no wait callback installed in "
                f"this process: without psycogreen's patch_psycopg() every query blocks "
                f"every greenlet of the worker. Ignore this if your gunicorn.conf.py or "
                f"wsgi.py installs it (pass --app to let the check see it), or use psycopg 3."
            )
    return driver_finding(plan, name, "it waits on its socket yielding to greenlets.")


def _timeouts(options: dict[str, Any]) -> tuple[str, str]:
    # libpq reads PGCONNECT_TIMEOUT when the parameter is not given.
    connect = options.get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT")
    network = [name for name in _NETWORK if options.get(name)]
    if connect and network:
        set_ = ", ".join(f"{name}={options[name]}" for name in network)
        return OK, f"timeouts: connect_timeout={connect}, {set_}."
    missing = []
    if not connect:
        missing.append(
            "no connect_timeout (nor PGCONNECT_TIMEOUT): a connect to a host that does not "
            "answer waits for TCP to give up, about 130 s on Linux"
        )
    if not network:
        missing.append(
            "no keepalives_idle or tcp_user_timeout: libpq has no read timeout, so a query to "
            "a server that stopped answering (a network cut, a frozen host) holds the request "
            "and its connection until TCP gives up, over two hours with Linux's keepalive "
            "defaults. Set keepalives_idle (with keepalives_interval and keepalives_count) "
            "and tcp_user_timeout (ms) in OPTIONS"
        )
    return WARN, (f"timeouts: {'; '.join(missing)}. The pool's timeout bounds only the checkout.")


def _idle_in_transaction(plan: Plan, idle: float, pooled: int) -> tuple[str, str]:
    # A request waits for a checkout while it holds another alias only when requests can
    # outnumber a pool's connections: not under sync, nor gthread with threads <= the cap.
    can_wait = pooled > 1 and (plan.concurrency is None or plan.concurrency > plan.cap)
    waits = (
        f", or for another alias's checkout (up to the pool's timeout, {plan.timeout:g} s)"
        if can_wait
        else ""
    )
    return WARN if can_wait and idle < plan.timeout else NOTE, (
        f"idle_in_transaction_session_timeout {idle:g} s: the server ends a session that "
        f"sits that long in an open transaction. A request that waits inside "
        f"transaction.atomic() for an outside service{waits} loses its connection and its "
        f"transaction; the pool discards the connection."
    )
