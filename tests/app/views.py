"""Views, one per scenario, that use the database the way real applications do (and misuse it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
from django.db import DatabaseError, Error, connections, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from .models import Item

# What on_commit callbacks and execute wrappers did; tests clear it and read it.
RECORDED: list[str] = []
# Context managers entered and never exited; kept alive so that no finalizer exits them.
NEVER_EXITED: list[Any] = []


def _one(sql: str, alias: str = "default") -> Any:
    with connections[alias].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def _alias(request: HttpRequest) -> str:
    return request.GET.get("alias", "default")


def read(request: HttpRequest) -> HttpResponse:
    """One query: the server-side id of the connection that served it."""
    return JsonResponse({"conn_id": _one("SELECT CONNECTION_ID()", _alias(request))})


def orm_read(request: HttpRequest) -> HttpResponse:
    """Names of the rows, through the ORM."""
    return JsonResponse({"names": list(Item.objects.order_by("id").values_list("name", flat=True))})


def orm_write(request: HttpRequest) -> HttpResponse:
    """Insert one row through the ORM, in autocommit mode."""
    item = Item.objects.create(name=request.GET["name"])
    return JsonResponse({"id": item.pk})


def atomic_write(request: HttpRequest) -> HttpResponse:
    """Insert one row inside transaction.atomic(); raise inside the block if asked to."""
    with transaction.atomic():
        Item.objects.create(name=request.GET["name"])
        if request.GET.get("fail"):
            raise RuntimeError("atomic_write failed on purpose")
    return JsonResponse({"ok": True})


def write_in_request(request: HttpRequest) -> HttpResponse:
    """Insert one row; meant for ATOMIC_REQUESTS, where the whole view is one transaction."""
    Item.objects.create(name=request.GET["name"])
    if request.GET.get("fail"):
        raise RuntimeError("write_in_request failed on purpose")
    return JsonResponse({"in_atomic_block": connections["default"].in_atomic_block})


@transaction.non_atomic_requests
def write_non_atomic(request: HttpRequest) -> HttpResponse:
    """Like write_in_request, but opted out of ATOMIC_REQUESTS."""
    return write_in_request(request)


def leave_open(request: HttpRequest) -> HttpResponse:
    """Write a row inside a transaction and never end it, then raise (or return if asked)."""
    how = request.GET["how"]
    conn = connections["default"]
    if how == "raw":
        # Django does not know: it still believes it is in autocommit mode.
        with conn.cursor() as cursor:
            cursor.execute("START TRANSACTION")
    elif how == "sql_autocommit":
        # Neither does it here: autocommit is off on the server only.
        with conn.cursor() as cursor:
            cursor.execute("SET autocommit = 0")
    elif how == "autocommit":
        transaction.set_autocommit(False)
    elif how == "atomic":
        NEVER_EXITED.append(transaction.atomic())
        NEVER_EXITED[-1].__enter__()
    else:
        raise ValueError(how)
    Item.objects.create(name=request.GET["name"])
    conn_id = _one("SELECT CONNECTION_ID()")
    if request.GET.get("then") == "return":
        return JsonResponse({"conn_id": conn_id})
    raise RuntimeError("leave_open failed on purpose, transaction still open")


def leave_atomic_state(request: HttpRequest) -> HttpResponse:
    """Leave an atomic block open with a savepoint, an on_commit callback and a written row."""
    NEVER_EXITED.append(transaction.atomic())
    NEVER_EXITED[-1].__enter__()
    transaction.on_commit(lambda: RECORDED.append("leaked on_commit"))
    Item.objects.create(name=request.GET.get("name", "leaked"))
    transaction.savepoint()
    NEVER_EXITED.append(transaction.atomic())  # a nested block: a second savepoint
    NEVER_EXITED[-1].__enter__()
    return JsonResponse({"conn_id": _one("SELECT CONNECTION_ID()")})


def commit_hook(request: HttpRequest) -> HttpResponse:
    """A clean atomic block whose on_commit callback records its name."""
    with transaction.atomic():
        Item.objects.create(name="hooked")
        transaction.on_commit(lambda: RECORDED.append("clean on_commit"))
    return JsonResponse({"recorded": list(RECORDED)})


def leak_execute_wrapper(request: HttpRequest) -> HttpResponse:
    """Install an execute wrapper and never remove it."""

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        RECORDED.append(f"wrapped: {sql}")
        return execute(sql, params, many, context)

    manager = connections["default"].execute_wrapper(wrapper)
    manager.__enter__()
    NEVER_EXITED.append(manager)
    return JsonResponse({"conn_id": _one("SELECT CONNECTION_ID()")})


def queries(request: HttpRequest) -> HttpResponse:
    """Run ``n`` queries; under DEBUG they fill the wrapper's queries log."""
    for _ in range(int(request.GET.get("n", "3"))):
        _one("SELECT 1")
    return JsonResponse({"logged": len(connections["default"].queries_log)})


def state(request: HttpRequest) -> HttpResponse:
    """What a request finds on the connection it is given, before it runs anything of its own."""
    alias = _alias(request)
    conn = connections[alias]
    django_state = {
        "queries_logged": len(conn.queries_log),
        "execute_wrappers": len(conn.execute_wrappers),
        "in_atomic_block": conn.in_atomic_block,
        "savepoint_ids": list(conn.savepoint_ids),
        "atomic_blocks": len(conn.atomic_blocks),
        "needs_rollback": conn.needs_rollback,
        "run_on_commit": len(conn.run_on_commit),
        "closed_in_transaction": conn.closed_in_transaction,
    }
    django_state["autocommit"] = conn.get_autocommit()
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT CONNECTION_ID(), @@in_transaction, @@autocommit, "
            "(SELECT COUNT(*) FROM app_item), @@session.tx_isolation"
        )
        conn_id, in_trx, autocommit, rows, isolation = cursor.fetchone()
    return JsonResponse(
        {
            **django_state,
            "conn_id": conn_id,
            "server_in_transaction": in_trx,
            "server_autocommit": autocommit,
            "rows_visible": rows,
            "isolation": isolation,
            "recorded": list(RECORDED),
        }
    )


SESSION_STATE = {
    "user_variable": ["SET @leak = 42"],
    "temporary_table": ["CREATE TEMPORARY TABLE t_leak (x INT)"],
    "named_lock": ["SELECT GET_LOCK('wsgi_db_pool_leak', 0)"],
    "session_variable": ["SET SESSION time_zone = '+05:00'", "SET SESSION wait_timeout = 12345"],
    "isolation_level": ["SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
    "prepared_statement": ["PREPARE leak_stmt FROM 'SELECT 1'"],
}


def leave_session_state(request: HttpRequest) -> HttpResponse:
    """Leave one kind of session state behind on the connection."""
    with connections["default"].cursor() as cursor:
        for sql in SESSION_STATE[request.GET["kind"]]:
            cursor.execute(sql)
    return JsonResponse({"conn_id": _one("SELECT CONNECTION_ID()")})


def session(request: HttpRequest) -> HttpResponse:
    """The session state a request finds on its connection."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT CONNECTION_ID(), @leak, @@session.time_zone, @@session.wait_timeout, "
            "@@session.tx_isolation, IS_USED_LOCK('wsgi_db_pool_leak')"
        )
        conn_id, leak, time_zone, wait_timeout, isolation, lock_holder = cursor.fetchone()
        try:
            cursor.execute("SELECT COUNT(*) FROM t_leak")
            temporary_table = True
        except DatabaseError:
            temporary_table = False
        try:
            cursor.execute("EXECUTE leak_stmt")
            prepared_statement = True
        except DatabaseError:
            prepared_statement = False
    return JsonResponse(
        {
            "conn_id": conn_id,
            "user_variable": leak,
            "session_variable": [time_zone, wait_timeout],
            "isolation_level": isolation,
            "named_lock": lock_holder,
            "temporary_table": temporary_table,
            "prepared_statement": prepared_statement,
        }
    )


def no_db(request: HttpRequest) -> HttpResponse:
    """Never touches the database."""
    return HttpResponse(b"no database here", content_type="text/plain")


def stream(request: HttpRequest) -> HttpResponse:
    """A streaming body whose generator queries the database for each chunk."""
    chunks = int(request.GET.get("chunks", "3"))
    fail = bool(request.GET.get("fail"))

    def body() -> Iterator[bytes]:
        for i in range(chunks):
            yield f"{_one('SELECT CONNECTION_ID()')}\n".encode()
            if fail and i == 0:
                raise RuntimeError("stream failed on purpose after its first chunk")

    return StreamingHttpResponse(body(), content_type="text/plain")


def hold(request: HttpRequest) -> HttpResponse:
    """Query, sleep cooperatively while holding the connection, query again."""
    alias = _alias(request)
    first = _one("SELECT CONNECTION_ID()", alias)
    gevent.sleep(float(request.GET.get("seconds", "0.01")))
    second = _one("SELECT CONNECTION_ID()", alias)
    return JsonResponse({"conn_id": first, "same": first == second})


def both(request: HttpRequest) -> HttpResponse:
    """Use both MariaDB aliases in one request."""
    return JsonResponse(
        {
            "default": _one("SELECT CONNECTION_ID()", "default"),
            "other": _one("SELECT CONNECTION_ID()", "other"),
            "other_user": _one("SELECT CURRENT_USER()", "other"),
        }
    )


def close_connection(request: HttpRequest) -> HttpResponse:
    """Close the request's connection by hand; query again afterwards if asked to."""
    alias = _alias(request)
    conn_id = _one("SELECT CONNECTION_ID()", alias)
    connections[alias].close()
    result = {"closed_id": conn_id}
    if request.GET.get("then") == "query":
        result["new_id"] = _one("SELECT CONNECTION_ID()", alias)
    return JsonResponse(result)


def sleep_query(request: HttpRequest) -> HttpResponse:
    """A query that runs on the server for ``seconds``."""
    _one(f"SELECT SLEEP({float(request.GET.get('seconds', '2'))})")
    return JsonResponse({"ok": True})


def query_then_raise(request: HttpRequest) -> HttpResponse:
    """Query, then fail with an ordinary exception."""
    _one("SELECT 1")
    raise RuntimeError("query_then_raise failed on purpose")


# -- fault injection (tests/faults) ----------------------------------------------------------

#: How far each fault_write got, by row name: "started", "committing", then "committed";
#: "failed" when it ended before COMMIT was sent, "in_doubt" when COMMIT was sent and failed.
WRITES: dict[str, str] = {}


def fault_write(request: HttpRequest) -> HttpResponse:
    """Insert one row named ``name`` in a transaction (then SLEEP if asked); record in WRITES."""
    alias = _alias(request)
    name = request.GET["name"]
    sleep = float(request.GET.get("sleep", "0"))
    WRITES[name] = "started"
    try:
        with transaction.atomic(using=alias):
            with connections[alias].cursor() as cursor:
                cursor.execute("INSERT INTO app_item (name) VALUES (%s)", [name])
                if sleep:
                    cursor.execute("SELECT SLEEP(%s)", [sleep])
            WRITES[name] = "committing"
    except BaseException:
        WRITES[name] = "in_doubt" if WRITES[name] == "committing" else "failed"
        raise
    WRITES[name] = "committed"
    return JsonResponse({"name": name})


def interrupt_in_atomic(request: HttpRequest) -> HttpResponse:
    """Insert a row, then run SELECT SLEEP(seconds) in the same transaction.

    ``how``: "escape" lets whatever interrupts the query leave the view; "swallow" puts
    the query under a silent ``gevent.Timeout(after, False)``; "catch" catches any
    BaseException around the query. With the last two the block ends normally and
    Django sends COMMIT.
    """
    alias = _alias(request)
    how = request.GET["how"]
    seconds = float(request.GET.get("seconds", "2"))
    with transaction.atomic(using=alias):
        Item.objects.using(alias).create(name=request.GET["name"])
        with connections[alias].cursor() as cursor:
            if how == "swallow":
                with gevent.Timeout(float(request.GET.get("after", "0.2")), False):
                    cursor.execute("SELECT SLEEP(%s)", [seconds])
            elif how == "catch":
                try:
                    cursor.execute("SELECT SLEEP(%s)", [seconds])
                except BaseException as exc:
                    RECORDED.append(f"caught {type(exc).__name__}")
            elif how == "escape":
                cursor.execute("SELECT SLEEP(%s)", [seconds])
            else:
                raise ValueError(how)
    return JsonResponse({"committed": True})


def slow_stream(request: HttpRequest) -> HttpResponse:
    """A streamed body, one query per chunk, ``delay`` seconds apart.

    With ``write=NAME`` the whole body is one transaction that inserts NAME-i per chunk:
    a ``transaction.atomic()`` block, or with ``tx=raw`` a START TRANSACTION Django does
    not know about (so that nothing but the server ends it).
    """
    alias = _alias(request)
    chunks = int(request.GET.get("chunks", "3"))
    delay = float(request.GET.get("delay", "0.01"))
    write = request.GET.get("write")
    raw = request.GET.get("tx") == "raw"

    def chunk(i: int) -> bytes:
        if write:
            if raw and i == 0:
                with connections[alias].cursor() as cursor:
                    cursor.execute("START TRANSACTION")
            Item.objects.using(alias).create(name=f"{write}-{i}")
        return f"{_one('SELECT CONNECTION_ID()', alias)}\n".encode()

    def body() -> Iterator[bytes]:
        for i in range(chunks):
            yield chunk(i)
            gevent.sleep(delay)

    def atomic_body() -> Iterator[bytes]:
        with transaction.atomic(using=alias):
            yield from body()

    atomic = write and not raw
    return StreamingHttpResponse(atomic_body() if atomic else body(), content_type="text/plain")


#: Session state a request can leave, by kind; probe_state shows each kind.
STATE_KINDS = {
    "sql_mode": ["SET SESSION sql_mode = 'ANSI_QUOTES'"],
    "time_zone": ["SET SESSION time_zone = '+05:00'"],
    "isolation_level": ["SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE"],
    "user_variable": ["SET @leak = 42"],
    "temporary_table": ["CREATE TEMPORARY TABLE t_leak (x INT)"],
    "named_lock": ["SELECT GET_LOCK('wsgi_db_pool_leak', 0)"],
    "autocommit_off": ["SET autocommit = 0"],
    "open_transaction": ["START TRANSACTION", "INSERT INTO app_item (name) VALUES ('leaked')"],
}


#: The same session changes, written the way tools and dumps write them: behind a comment.
COMMENTED_STATE_KINDS = {
    "time_zone": ["/* tagged by a query commenter */ SET SESSION time_zone = '+05:00'"],
    "sql_mode": ["/*!40101 SET SESSION sql_mode = 'ANSI_QUOTES' */"],
}


def leave_state(request: HttpRequest) -> HttpResponse:
    """Run the statements of one STATE_KINDS (or, with commented=1, COMMENTED_STATE_KINDS) kind."""
    kinds = COMMENTED_STATE_KINDS if request.GET.get("commented") else STATE_KINDS
    with connections[_alias(request)].cursor() as cursor:
        for sql in kinds[request.GET["kind"]]:
            cursor.execute(sql)
        cursor.execute("SELECT CONNECTION_ID()")
        (conn_id,) = cursor.fetchone()
    return JsonResponse({"conn_id": conn_id})


def probe_state(request: HttpRequest) -> HttpResponse:
    """Every kind of STATE_KINDS as the request finds it on its connection."""
    with connections[_alias(request)].cursor() as cursor:
        cursor.execute(
            "SELECT CONNECTION_ID(), @@session.sql_mode, @@session.time_zone, "
            "@@session.tx_isolation, @leak, IS_USED_LOCK('wsgi_db_pool_leak'), "
            "@@autocommit, @@in_transaction, (SELECT COUNT(*) FROM app_item)"
        )
        row = cursor.fetchone()
        try:
            cursor.execute("SELECT COUNT(*) FROM t_leak")
            temporary_table = True
        except DatabaseError:
            temporary_table = False
    conn_id, sql_mode, time_zone, isolation, leak, lock_holder, autocommit, in_trx, rows = row
    return JsonResponse(
        {
            "conn_id": conn_id,
            "sql_mode": sql_mode,
            "time_zone": time_zone,
            "isolation_level": isolation,
            "user_variable": leak,
            "named_lock": lock_holder,
            "temporary_table": temporary_table,
            "autocommit_off": autocommit == 0,
            "open_transaction": [in_trx, rows],
        }
    )


# -- operations: pooled() in spawned greenlets, metrics (tests/test_pooled.py, test_ops_servers.py)


def spawn(request: HttpRequest) -> HttpResponse:
    """Spawn ``n`` greenlets that each query, hold ``seconds``, query again; wait for all.

    With ``pooled=1`` each greenlet runs under ``@pooled`` and checks out from the pools;
    without it each gets a connection of Django's own, as in stock Django.
    """
    from wsgi_db_pool import pooled

    n = int(request.GET.get("n", "5"))
    seconds = float(request.GET.get("seconds", "0.02"))

    def work() -> int:
        first = int(_one("SELECT CONNECTION_ID()"))
        gevent.sleep(seconds)
        if _one("SELECT CONNECTION_ID()") != first:
            raise AssertionError("a greenlet's connection changed while it held it")
        return first

    task = pooled(work) if request.GET.get("pooled") else work
    greenlets = [gevent.spawn(task) for _ in range(n)]
    gevent.joinall(greenlets, raise_error=True)
    return JsonResponse({"conn_ids": [greenlet.value for greenlet in greenlets]})


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition: the workers' files in multiprocess mode, else the default registry."""
    import os

    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _vendor_conn_id(alias: str) -> int:
    """The server-side id of the alias's connection (for SQLite, of the sqlite3 object)."""
    conn = connections[alias]
    if conn.vendor == "postgresql":
        return int(_one("SELECT pg_backend_pid()", alias))
    if conn.vendor == "mysql":
        return int(_one("SELECT CONNECTION_ID()", alias))
    conn.ensure_connection()
    return id(conn.connection)


def vendor(request: HttpRequest) -> HttpResponse:
    """Any backend (tests/test_backends.py): ``op`` = id, hold, leave_open (a write in a
    transaction never ended), count (rows and autocommit as this request finds them), or
    for PostgreSQL set_time_zone (session state left behind) and time_zone."""
    alias = _alias(request)
    op = request.GET.get("op", "id")
    conn_id = _vendor_conn_id(alias)
    result: dict[str, Any] = {"conn_id": conn_id}
    if op == "hold":
        gevent.sleep(float(request.GET.get("seconds", "0.02")))
        result["same"] = _vendor_conn_id(alias) == conn_id
    elif op == "leave_open":
        transaction.set_autocommit(False, using=alias)
        Item.objects.using(alias).create(name=request.GET.get("name", "left open"))
    elif op == "count":
        result["rows"] = Item.objects.using(alias).count()
        result["autocommit"] = connections[alias].get_autocommit()
        result["in_atomic_block"] = connections[alias].in_atomic_block
    elif op == "set_time_zone":  # PostgreSQL: session state the next request must not see
        with connections[alias].cursor() as cursor:
            cursor.execute("SET TIME ZONE 'Asia/Tokyo'")
    elif op == "time_zone":
        result["time_zone"] = _one("SELECT current_setting('TimeZone')", alias)
    return JsonResponse(result)


def block(request: HttpRequest) -> HttpResponse:
    """Query, then block the whole process for ``seconds`` without letting another greenlet
    run (as CPU work or a C call would), then return without touching the database again."""
    import gevent.monkey

    real_sleep = gevent.monkey.get_original("time", "sleep")
    conn_id = _one("SELECT CONNECTION_ID()")
    real_sleep(float(request.GET.get("seconds", "0.2")))
    return JsonResponse({"conn_id": conn_id})


def session_counters(request: HttpRequest) -> HttpResponse:
    """This connection's own server counters, read in one statement (which counts itself)."""
    with connections[_alias(request)].cursor() as cursor:
        cursor.execute(
            "SELECT CONNECTION_ID(),"
            " (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS"
            "  WHERE VARIABLE_NAME = 'QUESTIONS'),"
            " (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS"
            "  WHERE VARIABLE_NAME = 'COM_ADMIN_COMMANDS')"
        )
        conn_id, questions, admin = cursor.fetchone()
    return JsonResponse(
        {"conn_id": conn_id, "questions": int(questions), "com_admin_commands": int(admin)}
    )


def call_procedure(request: HttpRequest) -> HttpResponse:
    """Call the stored procedure ``leave_variable`` (which sets @from_procedure) via callproc."""
    with connections[_alias(request)].cursor() as cursor:
        cursor.callproc("leave_variable")
    return JsonResponse({"conn_id": _one("SELECT CONNECTION_ID()", _alias(request))})


def read_procedure_variable(request: HttpRequest) -> HttpResponse:
    """What @from_procedure holds on this request's connection."""
    with connections[_alias(request)].cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID(), @from_procedure")
        conn_id, value = cursor.fetchone()
    return JsonResponse({"conn_id": conn_id, "value": value})


def router_view(request: HttpRequest) -> HttpResponse:
    """Read through the router (replica) and write (primary), in the order ``first`` says."""
    name = request.GET.get("name", "r")

    def read() -> int:
        return Item.objects.filter(name=name).count()  # the router: "other"

    def write() -> None:
        with transaction.atomic():  # the router: "default"
            Item.objects.create(name=name)
            gevent.sleep(0.002)

    if request.GET.get("first") == "write":
        write()
        seen = read()
    else:
        seen = read()
        write()
    return JsonResponse({"seen": seen})


def routed_read(request: HttpRequest) -> HttpResponse:
    """Count the rows through the router's db_for_read: the alias it chose, and the
    ``@@server_id`` of the server that answered on it."""
    items = Item.objects.all()
    count = items.count()
    return JsonResponse(
        {"alias": items.db, "server_id": _one("SELECT @@server_id", items.db), "count": count}
    )


def chain(request: HttpRequest) -> HttpResponse:
    """Query each alias of ``order`` in turn, keeping every connection until the end."""
    ids = []
    for alias in request.GET["order"].split(","):
        ids.append(_one("SELECT CONNECTION_ID()", alias))
        gevent.sleep(0.002)
    return JsonResponse({"conn_ids": ids})


def lost_then_retry(request: HttpRequest) -> HttpResponse:
    """Lose the connection (the test KILLs it during a SLEEP), close it, query again.

    The retry idiom of long-running code: ``except OperationalError: close()``, retry.
    ``then=close-and-query`` closes first; ``then=query`` only queries again.
    """
    alias = _alias(request)
    first = _one("SELECT CONNECTION_ID()", alias)
    try:
        _one("SELECT SLEEP(5)", alias)
    except DatabaseError as exc:
        error = type(exc).__name__
    else:
        error = None
    if request.GET.get("then") == "close-and-query":
        connections[alias].close()
    try:
        second = _one("SELECT CONNECTION_ID()", alias)
    except Error as exc:  # InterfaceError is no DatabaseError
        second = type(exc).__name__
    return JsonResponse({"first": first, "error": error, "second": second})


# -- session state set directly or by stored routines (tests/test_session_state.py) -----------


def run_sql(request: HttpRequest) -> HttpResponse:
    """Run each ``sql`` parameter in turn, rows read and dropped; the connection's id."""
    alias = _alias(request)
    with connections[alias].cursor() as cursor:
        for sql in request.GET.getlist("sql"):
            cursor.execute(sql)
            if cursor.description:
                cursor.fetchall()
    return JsonResponse({"conn_id": _vendor_conn_id(alias)})


def session_counter(request: HttpRequest) -> HttpResponse:
    """The connection's id and its session's count of SELECTs, in one plain SELECT: a
    COM_RESET_CONNECTION between two requests zeroes the count."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT CONNECTION_ID(), VARIABLE_VALUE FROM information_schema.SESSION_STATUS"
            " WHERE VARIABLE_NAME = 'COM_SELECT'"
        )
        conn_id, selects = cursor.fetchone()
    return JsonResponse({"conn_id": conn_id, "selects": int(selects)})


def _runs(cursor: Any, sql: str) -> bool:
    try:
        cursor.execute(sql)
    except DatabaseError:
        return False
    cursor.fetchall()
    return True


def probe_session(request: HttpRequest) -> HttpResponse:
    """Every kind of session state a request may inherit, as this one finds it.

    ``lock``: the named (MySQL) lock to look for; PostgreSQL counts its advisory locks.
    """
    alias = _alias(request)
    if connections[alias].vendor == "postgresql":
        return JsonResponse(_probe_postgresql(alias))
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT CONNECTION_ID(), @secret, @trig, @@session.time_zone, IS_USED_LOCK(%s),"
            " CURRENT_ROLE(), DATABASE()",
            [request.GET.get("lock", "")],
        )
        conn_id, secret, trig, time_zone, lock_holder, role, database = cursor.fetchone()
        state = {
            "conn_id": conn_id,
            "user_variable": [secret, trig],
            "session_variable": time_zone,
            "named_lock": lock_holder,
            "role": role,
            "database": database,
            "temporary_table": _runs(cursor, "SELECT COUNT(*) FROM t_leak"),
            "prepared_statement": _runs(cursor, "EXECUTE leak_stmt"),
        }
    return JsonResponse(state)


def _probe_postgresql(alias: str) -> dict[str, Any]:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT pg_backend_pid(), NULLIF(current_setting('app.secret', true), ''),"
            " current_setting('TimeZone'), to_regclass('t_leak') IS NOT NULL,"
            " (SELECT count(*) FROM pg_locks"
            "  WHERE locktype = 'advisory' AND pid = pg_backend_pid()),"
            " (SELECT count(*) FROM pg_prepared_statements), current_user::text"
        )
        conn_id, secret, time_zone, temporary_table, locks, prepared, role = cursor.fetchone()
    return {
        "conn_id": conn_id,
        "user_variable": secret,
        "session_variable": time_zone,
        "temporary_table": temporary_table,
        "named_lock": locks,
        "prepared_statement": prepared,
        "role": role,
    }


def echo(request: HttpRequest) -> HttpResponse:
    """``SELECT %s`` of the ``value`` parameter: what the driver's escaping sent."""
    with connections[_alias(request)].cursor() as cursor:
        cursor.execute("SELECT %s", [request.GET["value"]])
        return JsonResponse({"value": cursor.fetchone()[0]})
