"""The doctor's MySQL/MariaDB side: what the server says, and what the alias's driver does.

The driver is PyMySQL or mysqlclient, whichever Django loaded as ``MySQLdb``. Both take the
alias's ``OPTIONS`` as connect arguments, and both can read a MySQL option file
(``read_default_file``), but not the same parts of it: see ``_option_file``.
"""

from __future__ import annotations

import configparser
import os
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
    ]


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
        return WARN, (
            f"TLS: PyMySQL {version} tries TLS by default and builds a new ssl.SSLContext on "
            f"every connect (24-35 ms of CPU measured, stalling every greenlet of a gevent "
            f"worker), even when the server has TLS off. Set OPTIONS['ssl_disabled'] = True "
            f"for a server on loopback or a trusted network, or pass one shared "
            f"ssl.SSLContext as OPTIONS['ssl']."
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
