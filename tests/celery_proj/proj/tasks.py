import os

from django.db import connection

from wsgi_db_pool import pooled

from .celery import app


@app.task
@pooled
def hold(seconds: float) -> dict[str, int]:
    """One query that holds its connection ``seconds``: which process, which connection."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID(), SLEEP(%s)", [seconds])
        conn_id = cursor.fetchone()[0]
    return {"pid": os.getpid(), "conn_id": conn_id}
