"""The test settings with a primary/replica router and a third alias (tests/test_router.py)."""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, USER, _mysql

# A third alias for chains of waits across three pools; same user as default.
DATABASES = {**DATABASES, "third": _mysql(USER)}
DATABASE_ROUTERS = ["tests.router.PrimaryReplicaRouter"]
