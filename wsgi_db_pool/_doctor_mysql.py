"""The doctor's MySQL/MariaDB side: what the server says, and what the alias's driver does.

The driver is PyMySQL or mysqlclient, whichever Django loaded as ``MySQLdb``. Both take the
alias's ``OPTIONS`` as connect arguments, and both can read a MySQL option file
(``read_default_file``), but not the same parts of it: see ``_option_file``.
"""

from __future__ import annotations

import configparser
import os
import re
import ssl
import sys
from typing import Any

from ._doctor_plan import FAIL, NOTE, OK, WARN, Plan, driver_finding

TIMEOUTS = ("connect_timeout", "read_timeout", "write_timeout")
# PyMySQL options that make it build a TLS context from a dict on every connect.
_SSL_KEYS = ("ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_cert", "ssl_verify_identity")


def facts(wrapper: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """The server's limits, through ``wrapper`` (connected)."""
    with wrapper.cursor() as cursor:
        cursor.execute(
            "SELECT @@max_connections, @@session.wait_timeout, "
            "@@session.max_user_connections, @@hostname, @@port, VERSION(), CURRENT_USER()"
        )
        max_conn, wait_timeout, max_user, hostname, port, version, user = cursor.fetchone()
        cursor.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        connected = int(cursor.fetchone()[1])
        galera = _galera(cursor)
        read_only = _read_only(cursor)
        replication = _replication(cursor)
    return {
        "vendor": "mysql",
        "server": f"{hostname}:{port}",
        "version": version,
        "user": user,
        "max_connections": int(max_conn),
        # MySQL keeps one connection beyond max_connections for SUPER, not out of it.
        "reserved_connections": 0,
        "idle_timeout": int(wait_timeout),
        "idle_timeout_name": "wait_timeout",
        "user_limit": int(max_user) or None,  # 0: no limit
        "user_limit_name": "max_user_connections",
        "connected": connected,
        "connected_name": "Threads_connected",
        # A Galera cluster (its size, its nodes' client addresses), or None.
        "galera": galera,
        "read_only": read_only,
        # The replica's connections to its primaries (one per source), [] when it is
        # none, None when the account may not read them.
        "replication": replication,
    }


def _status(cursor: Any, names: tuple[str, ...]) -> dict[str, str]:
    """Global status variables by lower-case name; those the server lacks are left out."""
    cursor.execute(
        "SELECT LOWER(VARIABLE_NAME), VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
        f"WHERE LOWER(VARIABLE_NAME) IN ({', '.join(['%s'] * len(names))})",
        names,
    )
    return {str(name): str(value) for name, value in cursor.fetchall()}


def _galera(cursor: Any) -> dict[str, Any] | None:
    """The cluster this node is part of; None for a server that is no Galera node.

    MariaDB built with wsrep reports ``wsrep_cluster_size`` 0 when it runs without a
    provider; MySQL lacks it (and information_schema.GLOBAL_STATUS: performance_schema).
    """
    try:
        status = _status(
            cursor,
            (
                "wsrep_cluster_size",
                "wsrep_incoming_addresses",
                "wsrep_cluster_status",
                "wsrep_local_state_comment",
            ),
        )
    except Exception:
        return None
    size = int(status.get("wsrep_cluster_size") or 0)
    if size < 1:
        return None
    cursor.execute("SELECT @@wsrep_cluster_name, @@wsrep_node_name, @@wsrep_provider_options")
    name, node, provider_options = cursor.fetchone()
    # A node whose address is not known to the others announces "AUTO" (loopback binds,
    # say): left out, and counted like the node that answered.
    addresses = [
        address
        for address in status.get("wsrep_incoming_addresses", "").split(",")
        if address.rpartition(":")[2].isdigit()
    ]
    return {
        "cluster_name": str(name),
        "cluster_size": size,
        "cluster_status": status.get("wsrep_cluster_status", ""),
        "node": str(node),
        # Each node's client address (host:port), as the nodes announce them.
        "addresses": addresses,
        # How long the survivors wait before they drop a node that stopped answering.
        "suspect_timeout": suspect_timeout(str(provider_options or "")),
    }


def suspect_timeout(provider_options: str) -> float | None:
    """``evs.suspect_timeout`` in seconds, from ``wsrep_provider_options``; None if absent.

    The provider writes durations in ISO 8601 (``PT5S``, ``PT1M30S``, ``PT0.5S``).
    """
    for option in provider_options.split(";"):
        key, _, value = option.partition("=")
        if key.strip() != "evs.suspect_timeout":
            continue
        match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", value.strip())
        if match is None or not any(match.groups()):
            return None
        hours, minutes, seconds = (float(part or 0) for part in match.groups())
        return hours * 3600 + minutes * 60 + seconds
    return None


def node_facts(conn: Any) -> dict[str, Any]:
    """One Galera node's own limits and state, through ``conn`` (a direct DB-API connection)."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT @@wsrep_node_name, @@max_connections, @@hostname, @@port")
        name, max_conn, hostname, port = cursor.fetchone()
        status = _status(cursor, ("threads_connected", "wsrep_local_state_comment"))
    return {
        "node": str(name),
        "server": f"{hostname}:{port}",
        "max_connections": int(max_conn),
        "connected": int(status.get("threads_connected", 0)),
        "state": status.get("wsrep_local_state_comment", ""),
    }


def _read_only(cursor: Any) -> bool:
    cursor.execute("SELECT @@read_only")
    return bool(int(cursor.fetchone()[0]))


def _replication(cursor: Any) -> list[dict[str, Any]] | None:
    """The rows of SHOW ALL SLAVES STATUS (MariaDB: one per source), else SHOW REPLICA
    STATUS (MySQL 8.0.22+) or SHOW SLAVE STATUS; None when the account may not read
    them (MariaDB wants SLAVE MONITOR, MySQL REPLICATION CLIENT)."""
    denied = False
    for statement in ("SHOW ALL SLAVES STATUS", "SHOW REPLICA STATUS", "SHOW SLAVE STATUS"):
        try:
            cursor.execute(statement)
        except Exception as exc:
            # 1227: access denied; a syntax error: another server's statement.
            denied = denied or "1227" in str(exc) or "denied" in str(exc).lower()
            continue
        names = [column[0] for column in cursor.description or ()]
        return [_source(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]
    return None if denied else []


def _source(row: dict[str, Any]) -> dict[str, Any]:
    """One replication connection, under one set of names (MariaDB's and MySQL's differ)."""

    def pick(*names: str) -> Any:
        return next((row[name] for name in names if row.get(name) not in (None, "")), None)

    lag = pick("Seconds_Behind_Master", "Seconds_Behind_Source")
    delay = pick("SQL_Delay")
    return {
        "connection": str(pick("Connection_name", "Channel_Name") or ""),
        "source": f"{pick('Master_Host', 'Source_Host')}:{pick('Master_Port', 'Source_Port')}",
        "io_running": str(pick("Slave_IO_Running", "Replica_IO_Running")),
        "sql_running": str(pick("Slave_SQL_Running", "Replica_SQL_Running")),
        # NULL while the SQL thread is stopped (the lag is then unknown, and growing).
        "lag": None if lag is None else int(lag),
        "delay": int(delay or 0),  # MASTER_DELAY: a lag kept on purpose
        "last_error": str(pick("Last_Error", "Last_IO_Error", "Last_SQL_Error") or ""),
    }


def driver() -> tuple[str, str]:
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


def checks(
    plan: Plan, settings: dict[str, Any], facts: dict[str, Any], pooled: int
) -> list[tuple[str, str, str]]:
    """The alias's own findings: (check, level, message)."""
    name, version = driver()
    options = dict(settings.get("OPTIONS") or {})
    return [
        ("driver", *_driver(plan, name)),
        ("tls", *tls(options, name, version)),
        ("timeouts", *timeouts(options, name)),
        *replica(plan, facts),
    ]


def replica(plan: Plan, facts: dict[str, Any]) -> list[tuple[str, str, str]]:
    """A replica's findings: each replication connection's state and lag, and read_only."""
    sources = facts.get("replication")
    read_only = facts.get("read_only")
    if sources is None:
        if not read_only:
            return []
        return [
            (
                "replication",
                NOTE,
                "replication: the server is read_only (a replica?), but this account may "
                "not read its replication state: grant it SLAVE MONITOR (MariaDB) or "
                "REPLICATION CLIENT (MySQL) to see the replica's lag here.",
            )
        ]
    if not sources:
        return []
    found = [("replication", *_source_finding(plan, source)) for source in sources]
    if read_only:
        found.append(
            (
                "read_only",
                OK,
                "read_only: ON: the application's account (without SUPER or READ ONLY "
                "ADMIN) gets 1290 for a write sent here by mistake.",
            )
        )
    else:
        found.append(
            (
                "read_only",
                WARN,
                "read_only: OFF on a replica: a write routed here by mistake succeeds on "
                "the replica alone, which the primary never sees, and replication may stop "
                "at the next conflicting row. Set read_only=ON.",
            )
        )
    return found


def _source_finding(plan: Plan, source: dict[str, Any]) -> tuple[str, str]:
    name = f"replica of {source['source']}"
    if source["connection"]:
        name += f" (connection {source['connection']!r})"
    delay = f", MASTER_DELAY {source['delay']} s on purpose" if source["delay"] else ""
    if source["io_running"] != "Yes" or source["sql_running"] != "Yes":
        error = f"; last error: {source['last_error']}" if source["last_error"] else ""
        lag = "unknown" if source["lag"] is None else f"{source['lag']} s"
        return WARN, (
            f"replication: {name} is stopped (IO thread {source['io_running']}, SQL thread "
            f"{source['sql_running']}{error}); lag {lag}{delay}. Reads routed here see the "
            f"data as it was when it stopped, and fall further behind: start the replica "
            f"again, or route reads to the primary meanwhile."
        )
    lag = source["lag"]
    if lag is not None and lag > plan.max_lag:
        return WARN, (
            f"replication: {name} lags {lag} s behind its primary{delay}, above --max-lag "
            f"{plan.max_lag:g} s: reads routed here miss the last {lag} s of writes (a user "
            f"may not see what they just saved)."
        )
    return OK, f"replication: {name}, running, lag {lag} s{delay} (--max-lag {plan.max_lag:g} s)."


def _driver(plan: Plan, driver: str) -> tuple[str, str]:
    if driver == "mysqlclient" and plan.worker_class == "gevent":
        return FAIL, (
            "driver: mysqlclient under a gevent worker. Its I/O runs in C and never yields, so "
            "every query blocks every greenlet of the worker, and the pool cannot bound a "
            "connect or a ping. Use PyMySQL (pymysql.install_as_MySQLdb() before Django "
            "loads its backend; if your wsgi.py does that, pass --app), or a gthread worker."
        )
    return driver_finding(plan, driver, "its socket I/O yields to other greenlets.")


def tls(options: dict[str, Any], driver: str, version: str) -> tuple[str, str]:
    """PyMySQL's rule (connections.py, Connection.__init__), as of 1.2.4.

    ssl_disabled wins. Any of ssl_ca, ssl_cert, ssl_key, ssl_verify_cert,
    ssl_verify_identity makes a dict that replaces ``ssl`` (even an SSLContext), and a
    dict is turned into a new SSLContext on every connect. An ``ssl`` SSLContext with
    none of those is used as it is. Nothing at all: PyMySQL >= 1.2 tries TLS
    ("preferred") with a new default context on every connect; earlier ones do not.
    """
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
        return NOTE, (
            f"TLS: PyMySQL {version} tries TLS by default and builds a new ssl.SSLContext on "
            f"every connect (24-35 ms of CPU measured, stalling every greenlet of a gevent "
            f"worker), even when the server has TLS off. The pool's connects share one per "
            f"process; connects outside it (management commands, unpooled aliases) still "
            f"build their own. Set OPTIONS['ssl_disabled'] = True for a server on loopback "
            f"or a trusted network to skip TLS altogether."
        )
    return OK, f"TLS: PyMySQL {version} does not try TLS unless asked to."


# -- timeouts, from OPTIONS and option files -----------------------------------------------

# What each driver takes from an option file, measured here (PyMySQL 1.2.4; mysqlclient
# 2.2 on MariaDB Connector/C 3.3): PyMySQL reads one group and no timeout at all (only
# user, password, host, database, socket, port, bind-address, default-character-set,
# ssl-*); Connector/C reads [client], [client-server], [client-mariadb] and the named
# group, and of the timeouts only connect-timeout (read-timeout=1 let a 3 s query run).
_READ_FROM_FILE = {"PyMySQL": (), "mysqlclient": ("connect_timeout",)}


class _OptionFile(configparser.RawConfigParser):
    """A MySQL option file: "key = value" or a bare "key", '_' and '-' alike, # comments."""

    def __init__(self) -> None:
        super().__init__(allow_no_value=True, strict=False, inline_comment_prefixes=("#",))

    def optionxform(self, optionstr: str) -> str:
        return optionstr.lower().replace("-", "_")


def _option_file(options: dict[str, Any], driver: str) -> tuple[str | None, dict[str, str]]:
    """The option file the driver reads for this alias, and the timeouts set in the groups
    it reads, by OPTIONS name (``connect-timeout`` in the file is ``connect_timeout``)."""
    path = options.get("read_default_file")
    group = options.get("read_default_group")
    if not path and group and driver == "PyMySQL":
        path = "/etc/my.cnf"  # PyMySQL's own fallback for a group without a file
    if not path:
        return None, {}
    if driver == "PyMySQL":
        groups = [group or "client"]
    else:
        groups = ["client", "client-server", "client-mariadb", *([group] if group else [])]
    parser = _OptionFile()
    try:
        parser.read(os.path.expanduser(str(path)))
    except configparser.Error:
        return str(path), {}
    found: dict[str, str] = {}
    for section in groups:
        if parser.has_section(section):
            for name in TIMEOUTS:
                value = parser.get(section, name, fallback=None)
                if value is not None:
                    found[name] = value.strip().strip("'\"")  # the later group wins
    return str(path), found


def timeouts(options: dict[str, Any], driver: str) -> tuple[str, str]:
    """Whether connects and queries of this alias are bounded in time."""
    path, in_file = _option_file(options, driver)
    counted = _READ_FROM_FILE.get(driver, ())
    values = {name: options.get(name) for name in TIMEOUTS if options.get(name) not in (None, 0)}
    for name, value in in_file.items():
        if name in counted and name not in values and value not in ("", "0"):
            values[name] = f"{value} (from {path})"
    missing = [name for name in TIMEOUTS if name not in values]
    if not missing:
        set_ = ", ".join(f"{name}={values[name]}" for name in TIMEOUTS)
        return OK, f"timeouts: {set_}."
    default = " (PyMySQL's connect_timeout defaults to 10 s)" if driver == "PyMySQL" else ""
    ignored = [name for name in missing if name in in_file]
    unread = ""
    if ignored:
        unread = (
            f" {path} sets {', '.join(ignored)}, but {driver} does not read "
            f"{'them' if len(ignored) > 1 else 'it'} from an option file: set "
            f"{'them' if len(ignored) > 1 else 'it'} in OPTIONS."
        )
    named = ", ".join(missing)
    where = (
        f"{driver} gets no {named} from OPTIONS or {path}" if path else f"OPTIONS set no {named}"
    )
    return WARN, (
        f"timeouts: {where}{default}.{unread} The pool's timeout bounds only the checkout; "
        f"without read_timeout and write_timeout a query to a server that stopped answering "
        f"(a network cut, a frozen host) holds the request and its connection until TCP "
        f"gives up, many minutes later."
    )
