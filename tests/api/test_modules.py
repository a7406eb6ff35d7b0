"""Every module of ``serve_app.api`` imports first, in a fresh interpreter, without its package ``__init__``.

The package ``__init__`` imports all its modules in one fixed order, which would hide an import
circle between two of them; so each module is imported on its own while ``serve_app.api`` is an
empty shell. A circle, or a module that imports the package ``__init__`` instead of the module
that defines the name, fails here with an ImportError.
"""

from __future__ import annotations

import importlib.util
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

IMPORT_FIRST = """
import importlib, sys, types
module = sys.argv[1]
if module != "serve_app.api":
    import serve_app
    shell = types.ModuleType("serve_app.api")
    shell.__path__ = [sys.argv[2]]
    sys.modules["serve_app.api"] = shell
importlib.import_module(module)
"""


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first_on_its_own(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_FIRST, module, str(PACKAGE_DIR)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
