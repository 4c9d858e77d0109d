# Two commands a fresh machine needs: `make demo` and `make test`.
# Each creates its virtualenv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
# Contract tests also run against the oldest Django we support, and the interrupt
# and reset tests (the reset reaches into PyMySQL) against the oldest PyMySQL.
VENV42 ?= .venv-django42
VENVPY ?= .venv-pymysql-oldest
BIN := $(VENV)/bin

.PHONY: test test-unit test-main test-cluster test-django42 test-django6 test-pymysql-oldest demo lint nox bench bench-quick bench-faults bench-smoke clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	# mysqlclient (tested under real threads) builds against the client headers.
	command -v mariadb_config >/dev/null || command -v mysql_config >/dev/null || \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-libmysqlclient-dev pkg-config; }
	$(BIN)/python -m pip install -q 'mysqlclient>=2.1'
	# promtool (tests/test_metric_names.py), taken from Debian's prometheus package
	# without installing (or starting) the server; the test skips where it is missing.
	command -v promtool >/dev/null || [ -x $(BIN)/promtool ] || \
		{ tmp=$$(mktemp -d) && (cd $$tmp && apt-get download -qq prometheus) && \
		  dpkg-deb --fsys-tarfile $$tmp/prometheus_*.deb | tar -xO ./usr/bin/promtool > $(BIN)/promtool && \
		  chmod +x $(BIN)/promtool; rm -rf $$tmp; } || echo "promtool not installed"
	touch $@

$(VENV42)/bin/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV42)
	$(VENV42)/bin/python -m pip install -q --upgrade pip
	$(VENV42)/bin/python -m pip install -q -e '.[test]' 'Django>=4.2,<4.3'
	touch $@

$(VENVPY)/bin/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENVPY)
	$(VENVPY)/bin/python -m pip install -q --upgrade pip
	$(VENVPY)/bin/python -m pip install -q -e '.[test]' 'PyMySQL==1.1.0'
	touch $@

test: test-main test-cluster test-django42 test-django6 test-pymysql-oldest

# The pool's policy on a fake connector, in seconds: no Django, no server, no gevent.
# --confcutdir keeps the Django setup in tests/conftest.py out; the main suite runs
# these tests too (under gevent's patching).
test-unit: $(BIN)/.installed
	$(BIN)/python -m pytest --confcutdir=tests/unit -p no:cacheprovider tests/unit $(PYTEST_ARGS)

# gevent patches the standard library before pytest or Django import anything,
# which is what gunicorn's gevent worker does.
test-main: $(BIN)/.installed
	$(BIN)/python -m gevent.monkey --module pytest $(PYTEST_ARGS)

# A private 3-node Galera cluster behind our own HAProxy (tests/cluster/, about 2 min,
# ~400 MiB): node loss and nodes out of sync. The main run leaves them out (-m "not
# cluster" in pyproject.toml). Needs root (the nodes run as the mysql user), Debian's
# galera-4 and haproxy; haproxy is installed when missing, its system service is not used.
test-cluster: $(BIN)/.installed
	command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }
	$(BIN)/python -m gevent.monkey --module pytest -m cluster tests/cluster $(PYTEST_ARGS)

test-django42: $(VENV42)/bin/.installed
	$(VENV42)/bin/python -m gevent.monkey --module pytest -m "contract or smoke" $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check wsgi_db_pool tests example_wsgi.py scripts gunicorn.conf.py noxfile.py bench
	$(BIN)/ruff format --check wsgi_db_pool tests example_wsgi.py scripts gunicorn.conf.py noxfile.py bench
	$(BIN)/mypy

# The Django matrix: 5.2 in full, contract and smoke tests on 4.2 and 6.x.
nox: $(BIN)/.installed
	$(BIN)/nox $(NOX_ARGS)

# The newest Django 6.x needs Python 3.12 (pyenv's, found by the noxfile).
test-django6: $(BIN)/.installed
	$(BIN)/nox -s django6 $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS))

test-pymysql-oldest: $(VENVPY)/bin/.installed
	$(VENVPY)/bin/python -m gevent.monkey --module pytest -m "contract or smoke" \
		tests/test_contract.py tests/test_lifecycle.py tests/test_requests.py \
		tests/faults/test_interrupts.py tests/faults/test_isolation.py $(PYTEST_ARGS)
	$(VENVPY)/bin/python -m gevent.monkey --module pytest \
		tests/faults/test_interrupts.py tests/faults/test_isolation.py \
		tests/test_session_state.py $(PYTEST_ARGS)

# The benchmark keeps its own virtualenv (bench/.venv): the peers it measures patch
# Django and must not reach $(VENV). Needs root (apt-get wrk) and the local MariaDB.
bench:
	bash bench/run.sh

bench-quick:
	bash bench/run.sh --quick

# Kills, a restart and a swinging load against a private mariadbd (two rounds, ~16 min);
# writes bench/FAULTS.md. Never touches the shared server.
bench-faults:
	bash bench/setup.sh
	bench/.venv/bin/python -m gevent.monkey bench/faults.py

# A few seconds of one configuration, so that the benchmark does not rot.
bench-smoke:
	bash bench/setup.sh
	bench/.venv/bin/python -m pytest bench/test_bench_smoke.py -m slow -p no:cacheprovider

demo: $(BIN)/.installed
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) $(VENV42) $(VENVPY) bench/.venv bench/out
