"""A pytest plugin for runs against PyMySQL older than 1.1.0: ``-p tests.faults.old_pymysql``.

PyMySQL before 1.1.0 tells Django it is mysqlclient 1.4.0, and Django 4.2+ refuses
anything older than 1.4.3 ("mysqlclient 1.4.3 or newer is required"). Users of those
releases set ``pymysql.version_info`` themselves before ``install_as_MySQLdb()``; this
does the same, before the test settings import PyMySQL, so that the driver's own
behaviour (what it does with a socket after an interrupted read) can be tested.
"""

from __future__ import annotations

import pymysql

if pymysql.VERSION[:2] < (1, 1):
    pymysql.version_info = (1, 4, 6, "final", 0)  # type: ignore[assignment]
