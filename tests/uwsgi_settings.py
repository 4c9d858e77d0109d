"""tests.settings, with ``default`` on the server at TEST_DB_PORT (the tests' private MariaDB)."""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["PORT"] = int(os.environ.get("TEST_DB_PORT", DATABASES["default"]["PORT"]))
