"""Views, one per scenario, that use the database the way real applications do (and misuse it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
from django.db import DatabaseError, connections, transaction
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
    conn_id = _one("SELECT CONNECTION_ID()")
    connections["default"].close()
    result = {"closed_id": conn_id}
    if request.GET.get("then") == "query":
        result["new_id"] = _one("SELECT CONNECTION_ID()")
    return JsonResponse(result)


def sleep_query(request: HttpRequest) -> HttpResponse:
    """A query that runs on the server for ``seconds``."""
    _one(f"SELECT SLEEP({float(request.GET.get('seconds', '2'))})")
    return JsonResponse({"ok": True})


def query_then_raise(request: HttpRequest) -> HttpResponse:
    """Query, then fail with an ordinary exception."""
    _one("SELECT 1")
    raise RuntimeError("query_then_raise failed on purpose")
