"""The README's remote command, run as written against a real Ray head with token auth on, as the
cluster files start it (dashboard and Jobs API on 127.0.0.1): ``ray job submit -- autocompress
search --spec job.yaml`` runs a whole job on the cluster, recorded in the database the command
names; a request without the token is refused. (``autocompress search --address`` from outside the
cluster: tests/engine/test_faults.py and the API launcher's tests.) The head is started with
``ray start --head --block`` and stopped through its own process, never with ``ray stop``, which
would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from autocompress.store import JobStatus, Store, TrialStatus
from autocompress.testing import tiny_job
from autocompress.testing.cluster import ray_head
from serve_app.launcher import free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


TOKEN = secrets.token_hex(32)  # the cluster files turn token auth on: so does this head


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `autocompress` for the job's driver
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep every address on 127.0.0.1
    }


@pytest.fixture()
def ray_head_with_jobs(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(GCS address, Jobs API URL) of a Ray head with the dashboard on 127.0.0.1, free ports."""
    port, dashboard, agent = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{dashboard}"

    def jobs_api_answers() -> bool:
        try:
            answer = httpx.get(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    args = [
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={agent}",  # not the fixed default: another Ray may hold it
        "--num-cpus=2",
    ]
    log = tmp_path / "ray-head.log"
    with ray_head(args, env=_env(), log=log, ready=jobs_api_answers, ready_within_s=90):
        yield f"127.0.0.1:{port}", url


def _tiny_spec(tmp_path: Path, name: str) -> Path:
    spec = tiny_job(num_trials=2)
    spec["name"] = name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_ray_job_submit_runs_a_search_job_on_the_cluster(
    tmp_path: Path, ray_head_with_jobs: tuple[str, str]
) -> None:
    _, jobs_url = ray_head_with_jobs
    assert httpx.get(f"{jobs_url}/api/jobs/", timeout=10).status_code == 401  # no token: refused
    wrong = {"Authorization": f"Bearer {secrets.token_hex(32)}"}
    assert httpx.get(f"{jobs_url}/api/jobs/", headers=wrong, timeout=10).status_code == 403
    db = tmp_path / "jobs.db"
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        f"--address={jobs_url}",
        "--",
        "autocompress",
        "search",
        "--spec",
        str(_tiny_spec(tmp_path, "submitted")),
        "--db",
        f"sqlite:///{db}",
        "--work-dir",
        str(tmp_path / "runs"),
    ]
    deadline = time.monotonic() + 60
    while True:  # the head's job agent starts a few seconds after the Jobs API answers
        done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
        if "No available agent" not in done.stdout + done.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with Store(db) as store:
        [job] = store.list_jobs()
        trials = store.list_trials(job.id)
    assert job.name == "submitted" and job.status is JobStatus.SUCCEEDED
    assert len(trials) == 2 and all(t.status is TrialStatus.COMPLETED for t in trials)
    assert all(t.metrics["node_id"] for t in trials)  # the trials ran as Ray workers of the cluster
