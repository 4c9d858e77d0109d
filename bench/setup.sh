#!/usr/bin/env bash
# Prepare the benchmark: wrk, a virtualenv of its own (bench/.venv), the bench DB user.
#
# The peers patch Django (django-db-pooling replaces ConnectionHandler.__getitem__), so
# they live in bench/.venv and never in the project's test venv. Idempotent: a second
# run only checks. Needs root for apt-get and for creating the MariaDB user.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$HERE/.venv"
DB_USER=wsgi_db_pool_bench
DB_NAME=wsgi_db_pool_bench
MAX_USER_CONNECTIONS="${BENCH_MAX_USER_CONNECTIONS:-100}"
MYSQL=(mysql -h 127.0.0.1 -P 3306 -u root --protocol=TCP)

if ! command -v wrk >/dev/null 2>&1; then
    echo "setup: installing wrk (Debian package)"
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: wrk is missing and this is not root: apt-get install wrk" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

# Re-install when this script (the pin list) changes.
STAMP="$VENV/.installed"
if [ ! -f "$STAMP" ] || [ "$HERE/setup.sh" -nt "$STAMP" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # wsgi_db_pool itself (editable, so the bench measures the working tree), the
    # server, the three peers, the plotting and the pools the microbenchmark compares.
    # django-db-connection-pool without its [mysql] extra: that extra is only
    # mysqlclient (C headers to build, and its I/O does not yield to gevent); the
    # peer runs on PyMySQL installed as MySQLdb, like the others.
    "$VENV/bin/python" -m pip install -q \
        -e "$ROOT" \
        'Django>=5.2,<5.3' 'PyMySQL==1.2.4' 'gevent>=24' 'gunicorn[gevent]>=22' structlog \
        'django-db-pooling==0.0.4' \
        'django-db-connection-pool' \
        'django-mysql-geventpool' \
        'SQLAlchemy>=2' \
        'psycopg[binary]>=3.1' 'psycopg-pool>=3.2' \
        matplotlib pytest py-spy
    touch "$STAMP"
fi

echo "setup: MariaDB user $DB_USER and database $DB_NAME"
"${MYSQL[@]}" <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_USER';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_USER';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'%';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
-- Other sessions share this server: stock Django opens one connection per concurrent
-- request, so cap what the bench user may hold and leave the rest of max_connections
-- (151) to them. A configuration that needs more gets error 1203 and counts errors.
ALTER USER '$DB_USER'@'%' WITH MAX_USER_CONNECTIONS $MAX_USER_CONNECTIONS;
ALTER USER '$DB_USER'@'localhost' WITH MAX_USER_CONNECTIONS $MAX_USER_CONNECTIONS;
FLUSH PRIVILEGES;
SQL

echo "setup: ok ($("$VENV/bin/python" -V), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2))"
