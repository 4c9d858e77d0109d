# Celery's standard Django layout: the app is loaded whenever Django (or wsgi.py) is.
from .celery import app as celery_app

__all__ = ["celery_app"]
