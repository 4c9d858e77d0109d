"""Django settings for the test suite: two pooled MariaDB aliases and two that cannot be pooled.

Every MariaDB alias logs in as its own user so that the server's PROCESSLIST, filtered by
user, counts exactly the connections that alias's pool holds.
"""

import os

import pymysql

pymysql.install_as_MySQLdb()

# Runs that share one server at once (developers, CI) each set their own namespace:
# database NS_test, users NS and NS_other.
NAMESPACE = os.environ.get("WSGI_DB_POOL_TEST_NS", "wsgi_db_pool")
USER = NAMESPACE
OTHER_USER = f"{NAMESPACE}_other"
DB_NAME = f"{NAMESPACE}_test"
DB_HOST = "127.0.0.1"
DB_PORT = 3306
# A local port nothing listens on: connecting there is refused at once (error 2003).
UNREACHABLE_PORT = 9

# ssl_disabled: PyMySQL 1.2 builds a TLS context on every connect (about 25 ms of CPU).
_OPTIONS = {"ssl_disabled": True, "connect_timeout": 5, "read_timeout": 30, "write_timeout": 30}


def _mysql(user: str, port: int = DB_PORT) -> dict[str, object]:
    return {
        "ENGINE": "django.db.backends.mysql",
        "NAME": DB_NAME,
        "USER": user,
        "PASSWORD": user,
        "HOST": DB_HOST,
        "PORT": port,
        "OPTIONS": dict(_OPTIONS),
        "TEST": {"NAME": DB_NAME},
    }


DATABASES = {
    "default": _mysql(USER),
    "other": _mysql(OTHER_USER),
    # Same credentials as default, but nothing answers: requests using it must get a 503.
    "unreachable": _mysql(USER, port=UNREACHABLE_PORT),
    # A backend the pool cannot serve.
    "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}

SECRET_KEY = "wsgi_db_pool tests only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
INSTALLED_APPS = ["tests.app"]
MIDDLEWARE: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
