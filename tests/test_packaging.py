"""A wheel install works with no repository around it: the default job and the search spaces ship.

This is also the test of `autocompress run` (what `make run` does), through the real entry point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_runs_the_default_job_from_another_folder(tmp_path: Path) -> None:
    # built from a copy: setuptools' build/ folder in the repository could hold modules since removed
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".*", "build", "runs", "*.egg-info", "__pycache__", "*.db", "data_cache")
    shutil.copytree(REPO, source, symlinks=True, ignore=skip)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            wheels,
            source,
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("autocompress-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    # the locked dependencies come from this environment's site-packages, added as a plain path, so
    # its .pth files (the editable install of the repository) are not read: only the wheel is found
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "locked-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = venv / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "-q", wheel], check=True, capture_output=True
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AUTOCOMPRESS_DB_URL")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", COLUMNS="200")
    where = subprocess.run(
        [python, "-c", "import autocompress; print(autocompress.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"autocompress imported from {where}, not the wheel"
    assert not (Path(where).parent / "search_spaces").is_symlink()  # copies, not links into the repo

    result = subprocess.run(
        [venv / "bin" / "autocompress", "run", "--scale", "tiny", "--trials", "2"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the default job ran: two trials, the comparison with the baselines printed, the report written here
    assert "default-dlrm-realtime" in result.stdout and "trials: 2 done, 0 failed" in result.stdout
    assert "onnx_fp32" in result.stdout and "ort_dynamic_int8" in result.stdout, result.stdout[-3000:]
    # and recorded in ./autocompress.db, the default store
    from autocompress.store import JobStatus, Store

    with Store(elsewhere / "autocompress.db") as store:
        (job,) = store.list_jobs()
        assert job.name == "default-dlrm-realtime" and job.status is JobStatus.SUCCEEDED
        assert job.spec["dataset"]["scale"] == "tiny" and job.spec["preset"] == "realtime"
        assert len(store.list_trials(job.id)) == 2
        report = Path(job.result["report"])
        assert report.is_relative_to(elsewhere / "runs") and report.is_file()
        assert (report.parent / "pareto.png").is_file()
        rows = {r["name"]: r for r in job.result["rows"]}
        assert rows["ort_dynamic_int8"]["size_ratio"] > 2  # int8 tables really shrink the reference
