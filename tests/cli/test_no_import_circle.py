"""The CLI's modules form no import circle: each imports on its own, in any order, without torch or Ray.

The command modules may import :mod:`autocompress.cli._common` and library code only, never the
package ``__init__`` (which assembles ``app`` from them) nor each other.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import autocompress.cli

PACKAGE = "autocompress.cli"
MODULES = sorted(f"{PACKAGE}.{info.name}" for info in pkgutil.iter_modules(autocompress.cli.__path__))
COMMAND_MODULES = [m for m in MODULES if m not in (f"{PACKAGE}.__main__", f"{PACKAGE}._common")]
HEAVY = ("torch", "ray", "onnxruntime")


def _import_in_a_fresh_interpreter(modules: list[str]) -> None:
    """Import ``modules`` in this order in a new Python; fail with its output when that raises."""
    code = "\n".join(
        [
            "import importlib, sys",
            *(f"importlib.import_module({name!r})" for name in modules),
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})",
            "assert not heavy, f'importing the CLI imported {heavy}'",
            "assert callable(sys.modules['autocompress.cli'].app)",
        ]
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_package_holds_the_expected_modules() -> None:
    assert {f"{PACKAGE}.{name}" for name in ("_common", "remote", "search", "serve", "train")} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_on_its_own(module: str) -> None:
    _import_in_a_fresh_interpreter([module])


@pytest.mark.parametrize("order", [MODULES, MODULES[::-1]], ids=["forward", "reverse"])
def test_all_modules_import_in_any_order(order: list[str]) -> None:
    _import_in_a_fresh_interpreter(order)


def _imported_names(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names, including imported submodules."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_command_modules_import_only_common_from_the_cli(module: str) -> None:
    path = Path(autocompress.cli.__path__[0]) / f"{module.rsplit('.', 1)[1]}.py"
    cli_imports = {
        name for name in _imported_names(path) if name == PACKAGE or name.startswith(f"{PACKAGE}.")
    }
    # ``from autocompress.cli._common import X`` also yields ``autocompress.cli._common.X``: allowed
    forbidden = {
        name
        for name in cli_imports
        if name != f"{PACKAGE}._common" and not name.startswith(f"{PACKAGE}._common.")
    }
    assert not forbidden, f"{module} imports {sorted(forbidden)}; the command modules import only _common"


def test_common_imports_nothing_from_the_cli() -> None:
    path = Path(autocompress.cli.__path__[0]) / "_common.py"
    assert not {name for name in _imported_names(path) if name.startswith(PACKAGE)}
