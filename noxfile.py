"""The test suite on each supported Django: ``nox`` runs them all, ``nox -s django52`` one.

Django 5.2 on Python 3.11 is the primary: the whole suite runs there. Django 4.2 (the
oldest we support) and the newest 6.x (which needs Python 3.12) run the contract and
smoke tests: the private Django details the package relies on, and a few end-to-end
requests. Every session needs MariaDB on 127.0.0.1:3306 (root, no password), as
``make test`` does; set ``WSGI_DB_POOL_TEST_NS`` to keep concurrent runs apart.

Interpreters are looked up on PATH (``python3.12``) and, failing that, in pyenv's
versions folder, so a machine with pyenv but another global version still finds them.
Nothing is downloaded: an interpreter that cannot be found fails the session.
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
nox.options.default_venv_backend = "venv"
if hasattr(nox.options, "download_python"):
    nox.options.download_python = "never"

# The newest Django of each supported series; bump the 6.x pin when a release lands.
DJANGO_42 = "Django>=4.2,<4.3"
DJANGO_52 = "Django>=5.2,<5.3"
DJANGO_6 = "Django>=6.1,<6.2"

# Test-only packages beyond the `test` extra: metrics and the other backends' drivers.
EXTRA = ["prometheus-client>=0.17", "psycopg[binary]>=3.1"]

# gevent must patch the standard library before pytest imports Django.
PYTEST = ["python", "-m", "gevent.monkey", "--module", "pytest"]


def _python(version: str) -> str:
    """``pythonX.Y`` from PATH if it runs, else pyenv's newest X.Y, else the bare version."""
    name = f"python{version}"
    found = shutil.which(name)
    if found and "/.pyenv/shims/" not in found:
        return found
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(
        glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", name)),
        key=lambda path: [int(n) for n in path.split(os.sep)[-3].split(".") if n.isdigit()],
    )
    if candidates:
        return candidates[-1]
    return version


def _install(session: nox.Session, django: str) -> None:
    session.install("-e", ".[test]", django, *EXTRA)
    # mysqlclient builds against the MySQL/MariaDB client headers; where they are
    # missing, its test reports itself skipped (with the reason) instead.
    if shutil.which("mysql_config") or shutil.which("mariadb_config"):
        session.install("mysqlclient>=2.1")
    session.run("python", "-c", "import django; print('Django', django.get_version())")


@nox.session(python=_python("3.11"))
def django52(session: nox.Session) -> None:
    """Django 5.2 on Python 3.11, the primary: the whole suite."""
    _install(session, DJANGO_52)
    session.run(*PYTEST, *session.posargs)


@nox.session(python=_python("3.11"))
def django42(session: nox.Session) -> None:
    """Django 4.2 on Python 3.11: contract and smoke tests."""
    _install(session, DJANGO_42)
    session.run(*PYTEST, "-m", "contract or smoke", *session.posargs)


@nox.session(python=_python("3.12"))
def django6(session: nox.Session) -> None:
    """The newest Django 6.x on Python 3.12: contract and smoke tests."""
    _install(session, DJANGO_6)
    session.run(*PYTEST, "-m", "contract or smoke", *session.posargs)
