"""The test suite's settings, plus Celery's (broker and queue from the test)."""

import os

from tests.settings import *  # noqa: F403

CELERY_BROKER_URL = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("TEST_CELERY_QUEUE", "celery")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
