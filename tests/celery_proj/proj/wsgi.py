import os

from django.core.wsgi import get_wsgi_application

from wsgi_db_pool import PoolingMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

application = PoolingMiddleware(get_wsgi_application(), pool_size=2, max_overflow=0)
