"""Which MySQL statements provably leave nothing on the session, so "auto" may skip the reset.

A request whose every statement was a plain SELECT that calls no stored routine and
touches no variable, lock or sequence hands its connection back as the reset would
leave it. Such requests are most of a site's traffic (the primary-key read of every
page), and skipping their reset saves the server a COM_RESET_CONNECTION and the
session setup after it: 6-8% of that read's throughput (bench/reset_load.py).

Only what can be proved from the text counts as clean; everything else is reset, as
before. A statement is clean when it:

- begins with SELECT, and is one statement (no ``;``);
- has no ``@`` (user variables, ``SELECT ... INTO @v``, ``@v := ...``) and none of
  the words that act on the session without parentheses (``NEXT VALUE FOR``,
  ``SQL_CALC_FOUND_ROWS``, ``INTO``, ``PROCEDURE``, ``LOCK``...);
- puts ``(`` only after a reserved word (``IN (``, ``EXISTS(``) or right after a
  built-in function known to change nothing (``COUNT(``). A stored function cannot be
  called by a reserved word or by a built-in's name without a schema (the built-in
  wins); with a space before the ``(`` a non-reserved name may be a stored function,
  so only reserved words may have one. A quoted (backquotes, or double quotes under
  ANSI_QUOTES) or qualified name is a routine.
  Comments are read as code: a versioned comment (``/*!...*/``) is executed.
- names no view (a view may call a stored function) and no other schema that holds
  views: the views of the connection's database are read from
  ``information_schema.VIEWS`` when the connection is made, the schemas holding views
  at most once a minute; a view made later is seen by the connections made after that.

The scan is of the statement as sent, values included; a value that looks like code
(``'f('`` in a string) only costs a reset.
"""

from __future__ import annotations

import re
import time
from typing import Any

__all__ = ["StatementWatch", "is_clean", "watch"]

# Words that act on the session with no parenthesis after them; the substrings are a
# cheap first look (a regular expression with word boundaries costs 4 us a statement).
_ACT_HINTS = ("NEXT", "SETVAL", "LASTVAL", "PREVIOUS", "SQL_CALC", "INTO", "PROCEDURE", "LOCK")
_ACTS = re.compile(
    r"\b(?:NEXT|NEXTVAL|SETVAL|LASTVAL|PREVIOUS|SQL_CALC_FOUND_ROWS|INTO|PROCEDURE|LOCK)\b"
)
_NAMES = re.compile(r"[\w$]+")
_BLANKS = " \t\r\n\f\v"

# Reserved words that a SELECT puts before "(": never the name of a stored function.
_RESERVED = frozenset(
    """
    AGAINST ALL AND ANY AS BETWEEN BINARY BY CASE CHAR DISTINCT DIV ELSE ESCAPE EXISTS
    FROM HAVING IN INDEX INTERVAL IS JOIN KEY LIKE LIMIT MATCH MOD NOT ON OR OVER
    PARTITION REGEXP RLIKE ROW SELECT SOME THEN UNION USING WHEN WHERE WITH XOR
    """.split()  # noqa: SIM905
)
# Built-ins that change nothing on the session; a name not here is treated as a routine.
# Not here on purpose: GET_LOCK and the other lock functions, LAST_INSERT_ID (with an
# argument it sets the session's value), NEXTVAL/SETVAL/LASTVAL, MASTER_POS_WAIT.
_PURE = frozenset(
    """
    ABS ACOS ADDDATE ASCII ASIN ATAN ATAN2 AVG BIT_AND BIT_LENGTH BIT_OR BIT_XOR
    CAST CEIL CEILING CHARACTER_LENGTH CHAR_LENGTH CHR COALESCE CONCAT CONCAT_WS
    CONNECTION_ID CONVERT CONVERT_TZ COS COT COUNT CRC32 CUME_DIST CURDATE
    CURRENT_DATE CURRENT_ROLE CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER CURTIME
    DATABASE DATE DATEDIFF DATETIME DATE_ADD DATE_FORMAT DATE_SUB DAY DAYOFMONTH
    DAYOFWEEK DAYOFYEAR DECIMAL DEGREES DENSE_RANK DOUBLE ELT EXP EXTRACT FIELD
    FIND_IN_SET FIRST_VALUE FLOAT FLOOR FORMAT FROM_BASE64 FROM_DAYS FROM_UNIXTIME
    GREATEST GROUP_CONCAT HEX HOUR IF IFNULL INET_ATON INET_NTOA INSTR INT INTEGER
    ISNULL JSON_ARRAY JSON_ARRAYAGG JSON_CONTAINS JSON_CONTAINS_PATH JSON_EXTRACT
    JSON_KEYS JSON_LENGTH JSON_MERGE_PATCH JSON_OBJECT JSON_OBJECTAGG JSON_OVERLAPS
    JSON_QUOTE JSON_SEARCH JSON_TYPE JSON_UNQUOTE JSON_VALID JSON_VALUE LAG LAST_DAY
    LAST_VALUE LCASE LEAD LEAST LEFT LENGTH LN LOCATE LOG LOG10 LOG2 LOWER LPAD
    LTRIM MAKEDATE MAKETIME MAX MD5 MICROSECOND MIN MINUTE MONTH NOW NTH_VALUE NTILE
    NULLIF OCTET_LENGTH ORD PERCENT_RANK PI POSITION POW POWER QUARTER RADIANS RAND
    RANK REGEXP_INSTR REGEXP_LIKE REGEXP_REPLACE REGEXP_SUBSTR REPEAT REPLACE
    REVERSE RIGHT ROUND ROW_NUMBER RPAD RTRIM SECOND SEC_TO_TIME SHA1 SHA2 SIGN
    SIGNED SIN SPACE SQRT STDDEV STDDEV_POP STDDEV_SAMP STRCMP STR_TO_DATE SUBDATE
    SUBSTR SUBSTRING SUM TAN TIME TIMEDIFF TIMESTAMP TIMESTAMPADD TIMESTAMPDIFF
    TIME_FORMAT TIME_TO_SEC TO_BASE64 TO_DAYS TRIM TRUNCATE UCASE UNHEX
    UNIX_TIMESTAMP UNSIGNED UPPER USER UTC_DATE UTC_TIMESTAMP UUID VARCHAR VARIANCE
    VAR_POP VAR_SAMP VERSION WEEK WEEKDAY YEAR YEARWEEK
    """.split()  # noqa: SIM905
)


def is_clean(sql: object, views: frozenset[str] = frozenset()) -> bool:
    """Whether ``sql`` provably leaves nothing on the session (see the module's doc).

    ``views``: upper-case names of the current database's views and of the other
    schemas that hold views (a qualified name may reach one).
    """
    if not isinstance(sql, str) or "@" in sql or ";" in sql:
        return False
    upper = sql.upper()
    if upper.lstrip()[:6] != "SELECT":
        return False
    for hint in _ACT_HINTS:
        if hint in upper:
            if _ACTS.search(upper) is not None:
                return False
            break
    if "(" in sql and not _calls_nothing(upper):
        return False
    for view in views:
        if view in upper:
            # A substring only hints: a column "SESSIONS" is not the view "SESSION".
            return not views.intersection(_NAMES.findall(upper))
    return True


def _calls_nothing(sql: str) -> bool:
    """Whether every "(" in ``sql`` (upper case) follows a reserved word, a pure
    built-in with no blank before it, or a symbol (a subquery, an expression)."""
    at = sql.find("(")
    while at != -1:
        end = at
        while end and sql[end - 1] in _BLANKS:
            end -= 1
        start = end
        while start and (sql[start - 1].isalnum() or sql[start - 1] in "_$"):
            start -= 1
        if start < end:
            name = sql[start:end]
            before = start
            while before and sql[before - 1] in _BLANKS:
                before -= 1
            if before and sql[before - 1] == ".":
                return False  # qualified: a routine (or a schema's function)
            if name not in _RESERVED and (name not in _PURE or end < at):
                return False
        elif end and sql[end - 1] in '`"/':
            # `name`( or "name"( (ANSI_QUOTES), or a comment before "(": maybe a call.
            return False
        at = sql.find("(", at + 1)
    return True


class StatementWatch:
    """Whether every statement since the last reset was clean (see ``is_clean``)."""

    __slots__ = ("clean", "views")

    def __init__(self, views: frozenset[str]) -> None:
        self.clean = True
        self.views = views


def watch(raw: Any) -> StatementWatch:
    """Watch every statement PyMySQL sends on ``raw``: its cursors (Django's and any
    other code's) all go through ``Connection.query``, which is wrapped here.

    Asks the server for the views of the connection's database first (one query, at
    connect), and, at most once a minute per server, which other schemas hold views.
    """
    with raw.cursor() as cursor:
        cursor.execute(
            "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE()"
        )
        names = {name.upper() for (name,) in cursor.fetchall()}
        names |= _schemas_with_views(raw, cursor)
    seen = StatementWatch(frozenset(names))
    query = raw.query

    def watched(sql: Any, unbuffered: bool = False) -> Any:
        if seen.clean and not is_clean(sql, seen.views):
            seen.clean = False
        return query(sql, unbuffered)

    raw.query = watched
    # Session changes PyMySQL makes without query(): never clean.
    for name in ("select_db", "set_character_set", "set_charset"):
        method = getattr(raw, name, None)
        if method is not None:
            setattr(raw, name, _unclean(seen, method))
    return seen


# Per server and user: when the schemas holding views were last read, and which.
_SCHEMAS: dict[tuple[Any, ...], tuple[float, frozenset[str]]] = {}
_SCHEMAS_TTL = 60.0


def _schemas_with_views(raw: Any, cursor: Any) -> frozenset[str]:
    # A scan of every view of the server (8 ms with MariaDB's 100 sys views here, more
    # where tenants each have a schema): shared by the connections of a minute.
    key = (raw.host, raw.port, raw.user)
    now = time.monotonic()
    known = _SCHEMAS.get(key)
    if known is None or now - known[0] > _SCHEMAS_TTL:
        cursor.execute(
            "SELECT DISTINCT TABLE_SCHEMA FROM information_schema.VIEWS"
            " WHERE TABLE_SCHEMA <> DATABASE()"
        )
        known = (now, frozenset(schema.upper() for (schema,) in cursor.fetchall()))
        _SCHEMAS[key] = known
    return known[1]


def _unclean(seen: StatementWatch, method: Any) -> Any:
    def marked(*args: Any, **kwargs: Any) -> Any:
        seen.clean = False
        return method(*args, **kwargs)

    return marked
