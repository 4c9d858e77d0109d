"""The README's install line gives a gunicorn whose gevent worker loads.

A fresh virtualenv per run would need the package index; instead the requirements the
install line names are resolved through pyproject.toml and the installed distributions'
metadata, and gunicorn's worker is loaded in a subprocess that may import only those
distributions (and the standard library): what a new user's virtualenv would hold.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")


def _readme_install() -> list[str]:
    """The requirements of the first ``pip install`` line under the README's Install."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^\s+pip install (.+?)\s*(#.*)?$", section, re.MULTILINE)
    assert match, "no pip install line under the README's Install"
    return [arg for arg in shlex.split(match.group(1)) if not arg.startswith("-")]


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution these requirements install, extras followed; this package's own
    requirements from pyproject.toml (the checkout's, not the installed metadata)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = canonicalize_name(project["name"])
    found: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        found.add(name)
        if name == ours:
            extras = project["optional-dependencies"]
            texts = [*project["dependencies"], *(t for e in requirement.extras for t in extras[e])]
            todo += [Requirement(t) for t in texts]
            continue
        try:
            texts = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} is not installed here, so it cannot be checked")
        for text in texts:
            dependency = Requirement(text)
            wanted = {"", *requirement.extras}
            if dependency.marker is None or any(
                dependency.marker.evaluate({"extra": extra}) for extra in wanted
            ):
                todo.append(dependency)
    return found


# Blocks every import of a distribution outside ALLOWED, as if it were not installed.
_FENCED = textwrap.dedent(
    """
    import importlib.metadata, sys
    ALLOWED = set(sys.argv[1].split(","))
    OWNERS = importlib.metadata.packages_distributions()

    class Fence:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            owners = {d.lower().replace("_", "-").replace(".", "-") for d in OWNERS.get(top, ())}
            if owners and not owners & ALLOWED and top not in sys.stdlib_module_names:
                raise ModuleNotFoundError(f"No module named {top!r}", name=top)
            return None

    sys.meta_path.insert(0, Fence())
    from gunicorn.util import load_class
    print(load_class(sys.argv[2], section="gunicorn.workers").__name__)
    """
)


def _load_worker(requirements: list[str], worker: str) -> subprocess.CompletedProcess[str]:
    allowed = ",".join(sorted(_closure(requirements)))
    return subprocess.run(
        [sys.executable, "-c", _FENCED, allowed, worker],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_readme_install_gives_a_gevent_worker_that_loads() -> None:
    """What the README's install line installs is enough for ``gunicorn -k gevent``."""
    requirements = _readme_install()
    assert any(canonicalize_name(Requirement(r).name) == "wsgi-db-pool" for r in requirements)
    result = _load_worker(requirements, "gevent")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "GeventWorker"


def test_the_fence_catches_plain_gunicorn() -> None:
    """The check can fail: our gevent extra plus plain gunicorn is the install that broke,
    when gunicorn's gevent worker imports a module only ``gunicorn[gevent]`` installs."""
    plain = _closure(["wsgi_db_pool[gevent]", "gunicorn"])
    extra_only = _closure(["gunicorn[gevent]"]) - plain
    if not extra_only:
        pytest.skip("this gunicorn's gevent extra adds nothing beyond gevent")
    result = _load_worker(["wsgi_db_pool[gevent]", "gunicorn"], "gevent")
    assert result.returncode != 0
    assert "class uri 'gevent' invalid or not found" in result.stderr
    assert any(f"No module named '{name}'" in result.stderr for name in extra_only)
