"""The package's surface: the core imports without Django, the vocabulary lives once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wsgi_db_pool.config import PoolConfig
from wsgi_db_pool.pool import Reason

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

# Any import of django raises, as if it were not installed.
_NO_DJANGO = """
import sys

class NoDjango:
    def find_spec(self, name, path=None, target=None):
        if name == "django" or name.startswith("django."):
            raise ImportError(f"No module named {name!r} (blocked)")
        return None

sys.meta_path.insert(0, NoDjango())
"""

_CORE = """
import wsgi_db_pool, wsgi_db_pool.pool, wsgi_db_pool.config, wsgi_db_pool.errors
from wsgi_db_pool import PoolTimeout, __version__
assert wsgi_db_pool.__file__.startswith(sys.argv[1]), wsgi_db_pool.__file__
assert "django" not in sys.modules
try:
    wsgi_db_pool.PoolingMiddleware
except ImportError as exc:
    assert "blocked" in str(exc), exc
else:
    raise AssertionError("PoolingMiddleware imported without Django")
print("core ok")
"""

_PUBLIC = """
import wsgi_db_pool
assert wsgi_db_pool.__file__.startswith(sys.argv[1]), wsgi_db_pool.__file__
assert "django" not in sys.modules, "imported eagerly"
from wsgi_db_pool import PoolingMiddleware, pooled
from wsgi_db_pool.middleware import PoolingMiddleware as Middleware
assert PoolingMiddleware is Middleware
assert all(hasattr(wsgi_db_pool, name) for name in wsgi_db_pool.__all__)
assert set(wsgi_db_pool.__all__) <= set(dir(wsgi_db_pool))
try:
    wsgi_db_pool.no_such_name
except AttributeError:
    print("public ok")
"""


def _run(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, str(ROOT / "wsgi_db_pool")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_core_imports_without_django_and_the_public_names_lazily() -> None:
    """pool, config and errors import with Django blocked; PoolingMiddleware comes on use."""
    runs = {
        "core ok": _run("import sys\n" + _NO_DJANGO + _CORE),
        "public ok": _run("import sys\n" + _PUBLIC),
    }
    for expected, run in runs.items():
        out, _ = run.communicate(timeout=30)
        assert run.returncode == 0, out
        assert out.strip().endswith(expected), out


def test_reasons_are_the_strings_they_always_were() -> None:
    """Each discard reason is its plain string: in comparisons, str(), format() and keys."""
    assert [r.value for r in Reason] == [
        "overflow",
        "max_age",
        "max_idle",
        "broken",
        "closed",
        "interrupted",
        "reset_failed",
        "shutdown",
        "leak",
        "reserve",
        "rebalance",
    ]
    assert Reason.BROKEN == "broken"
    assert (str(Reason.BROKEN), f"{Reason.BROKEN}") == ("broken", "broken")
    assert {Reason.BROKEN: 1} == {"broken": 1}


@pytest.mark.parametrize(
    ("settings", "interval"),
    [
        pytest.param({}, 15.0, id="defaults-half-overflow_max_idle"),
        pytest.param({"max_idle": 8.0}, 4.0, id="half-max_idle"),
        pytest.param({"warn_hold": 1.0}, 0.5, id="half-warn_hold"),
        pytest.param(
            {"max_idle": None, "overflow_max_idle": None, "max_age": None, "rebalance": None},
            30.0,
            id="at-most-30",
        ),
        pytest.param({"max_age": 0.01}, 0.05, id="at-least-0.05"),
    ],
)
def test_the_reaper_interval(settings: dict[str, float | None], interval: float) -> None:
    """Half the shortest lifetime setting, within 0.05 s and 30 s."""
    assert PoolConfig(**settings).reap_interval == interval  # type: ignore[arg-type]
