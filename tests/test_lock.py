"""The installed environment is the lock: a package installed by hand cannot hide a stale lock."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.txt"
NNI_LOCK = LOCK.with_name("requirements-nni.txt")  # the nni extra's own environment (make test-nni)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked(lock: Path = LOCK) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{lock.name}: {line!r} is not pinned with =="
            pins[_canonical(name)] = version.strip()
    return pins


def test_the_lock_pins_every_direct_dependency_within_pyproject_ranges() -> None:
    from packaging.requirements import Requirement

    locks = {
        "": _locked(),
        "dev": _locked(),
        "postgres": _locked(),
        "mlflow": _locked(),
        "nni": _locked(NNI_LOCK),
    }
    declared = metadata.requires("autocompress") or []
    for text in declared:
        req = Requirement(text)
        extras = (re.findall(r'extra == "([^"]+)"', str(req.marker)) if req.marker else []) or [""]
        if not set(extras) & set(locks):
            continue  # an extra that no make target installs (gpu: CUDA machines only)
        lock_name = "requirements-nni.txt" if extras == ["nni"] else "requirements.txt"
        pins = locks[extras[0]]
        name = _canonical(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but missing from {lock_name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock_name} pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}"
        )


def test_installed_versions_equal_the_lock() -> None:
    pins = _locked()
    installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {
        name: (version, installed.get(name, "not installed"))
        for name, version in pins.items()
        if installed.get(name) != version
    }
    assert not wrong, f"installed packages differ from requirements.txt (locked, installed): {wrong}"


def test_pip_check_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
