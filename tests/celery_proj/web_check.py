"""A web process of the Celery project: imports proj.wsgi (and so proj.celery), then runs
the @pooled task function in greenlets, as a view would; prints what it found as JSON."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402

import gevent  # noqa: E402
from proj.tasks import hold  # noqa: E402
from proj.wsgi import application  # noqa: E402

from wsgi_db_pool.middleware import live_middlewares  # noqa: E402

jobs = [gevent.spawn(hold, 0.05) for _ in range(10)]
gevent.joinall(jobs, raise_error=True)
print(
    json.dumps(
        {
            "middlewares": len(live_middlewares()),
            "conn_ids": sorted({job.value["conn_id"] for job in jobs}),
            "checkouts": application.stats()["default"]["checkouts"],
        }
    )
)
application.close()
