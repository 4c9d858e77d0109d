from django.urls import path

from tests.app import views

urlpatterns = [
    path("read/", views.read),
    path("orm-read/", views.orm_read),
    path("orm-write/", views.orm_write),
    path("atomic-write/", views.atomic_write),
    path("write-in-request/", views.write_in_request),
    path("write-non-atomic/", views.write_non_atomic),
    path("leave-open/", views.leave_open),
    path("leave-atomic-state/", views.leave_atomic_state),
    path("commit-hook/", views.commit_hook),
    path("leak-execute-wrapper/", views.leak_execute_wrapper),
    path("queries/", views.queries),
    path("state/", views.state),
    path("leave-session-state/", views.leave_session_state),
    path("session/", views.session),
    path("no-db/", views.no_db),
    path("stream/", views.stream),
    path("hold/", views.hold),
    path("both/", views.both),
    path("close/", views.close_connection),
    path("sleep-query/", views.sleep_query),
    path("raise/", views.query_then_raise),
    # tests/faults
    path("fault-write/", views.fault_write),
    path("interrupt-in-atomic/", views.interrupt_in_atomic),
    path("slow-stream/", views.slow_stream),
    path("leave-state/", views.leave_state),
    path("probe-state/", views.probe_state),
]

# tests/test_pooled.py, tests/test_ops_servers.py
urlpatterns += [
    path("spawn/", views.spawn),
    path("metrics/", views.metrics),
]
urlpatterns += [path("vendor/", views.vendor)]  # tests/test_backends.py
urlpatterns += [path("block/", views.block)]  # tests/test_ops_servers.py
urlpatterns += [path("session-counters/", views.session_counters)]  # Pooled.session_counted
urlpatterns += [
    path("call-procedure/", views.call_procedure),
    path("procedure-variable/", views.read_procedure_variable),
]  # tests/test_reset.py::test_callproc_state_is_reset
urlpatterns += [
    path("router/", views.router_view),
    path("chain/", views.chain),
]  # tests/test_router.py
urlpatterns += [path("lost-then-retry/", views.lost_then_retry)]  # test_availability.py
urlpatterns += [
    path("run-sql/", views.run_sql),
    path("routed-read/", views.routed_read),
    path("probe-session/", views.probe_session),
    path("session-counter/", views.session_counter),
]  # tests/test_session_state.py
urlpatterns += [path("echo/", views.echo)]  # tests/faults/test_isolation.py
