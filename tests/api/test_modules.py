"""Every module of ``serve_app.api`` imports first, in a fresh interpreter, without its package ``__init__``.

The package ``__init__`` imports all its modules in one fixed order, which would hide an import
circle between two of them; so each module is imported on its own while ``serve_app.api`` is an
empty shell. A circle, or a module that imports the package ``__init__`` instead of the module
that defines the name, fails here with an ImportError.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "serve_app.api"
_spec = importlib.util.find_spec("serve_app")
assert _spec is not None and _spec.submodule_search_locations is not None
PACKAGE_DIR = Path(next(iter(_spec.submodule_search_locations))) / "api"
MODULES = sorted(
    ".".join([PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]).removesuffix(".__init__")
    for path in PACKAGE_DIR.rglob("*.py")
)

# One interpreter for all of them (a fresh one per module cost ~3 s each in imports of FastAPI,
# SQLAlchemy and pydantic): before each module, every module of ours is dropped from sys.modules,
# so our import order starts from nothing each time; third-party packages stay loaded, and no circle
# of ours can pass through them.
IMPORT_EACH_FIRST = """
import importlib, json, sys, traceback, types
failures = {}
for module in sys.argv[2:]:
    for name in [m for m in sys.modules if m.split(".")[0] in ("serve_app", "autocompress")]:
        del sys.modules[name]
    if module != "serve_app.api":
        import serve_app
        shell = types.ModuleType("serve_app.api")
        shell.__path__ = [sys.argv[1]]
        sys.modules["serve_app.api"] = shell
    try:
        importlib.import_module(module)
    except BaseException:
        failures[module] = traceback.format_exc()[-2000:]
print(json.dumps(failures))
"""


@pytest.fixture(scope="module")
def import_failures() -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_FIRST, str(PACKAGE_DIR), *MODULES],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    failures: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return failures


def test_every_module_was_imported() -> None:
    assert PACKAGE in MODULES and f"{PACKAGE}.factory" in MODULES and len(MODULES) > 10


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first_on_its_own(module: str, import_failures: dict[str, str]) -> None:
    assert module not in import_failures, import_failures[module]
