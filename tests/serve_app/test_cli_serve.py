"""``autocompress serve``: one command brings up Ray, Serve, both applications and the store; Ctrl-C stops."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.export import create_session, feed
from autocompress.spec import Target
from autocompress.store import Store
from serve_app.launcher import free_port
from tests.serving.conftest import Registry

pytestmark = pytest.mark.slow

CLI = "from autocompress.cli import app; app()"


def test_serve_starts_everything_in_one_command_and_stops_on_sigint() -> None:
    work = Path(tempfile.mkdtemp(prefix="ac-cli-"))
    db_url = f"sqlite:///{work / 'cli.db'}"
    with Store(db_url) as store:
        record = Registry(store, work / "runs").register("dlrm")
        schema = Registry(store, work / "runs").schema
    port = free_port()
    command = [
        sys.executable, "-c", CLI, "serve",
        "--db", db_url, "--artifact-root", str(work / "runs"), "--port", str(port),
        "--num-cpus", "2", "--ray-temp-dir", str(work / "ray"), "--max-running-jobs", "0",
    ]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 150
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "autocompress serve did not answer /healthz in 150 s"
            time.sleep(1)
        batch = schema.example_batch(4, seed=9)
        rows = [{n: batch[n][i].tolist() for n in schema.feature_names} for i in range(4)]
        response = httpx.post(f"{url}/serving/v1/models/{record.id}/predict", json={"rows": rows}, timeout=60)
        assert response.status_code == 200, response.text
        session = create_session(record.path, Target())
        expected = session.run(None, feed(session, batch))[0]
        np.testing.assert_allclose(response.json()["logits"], expected, atol=1e-5)
        (work / "rows.json").write_text(json.dumps(rows))
        args = ["predict", record.id, "--rows", str(work / "rows.json"), "--url", url, "--json"]  # redirected
        answer = CliRunner().invoke(app, args)
        assert answer.exit_code == 0, answer.output
        np.testing.assert_allclose(json.loads(answer.output)["logits"], expected, atol=1e-5)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        shutil.rmtree(work, ignore_errors=True)
    assert process.returncode == 0, output
    assert f"serving on http://127.0.0.1:{port}" in output
    assert f"predictions on http://127.0.0.1:{port}/serving" in output
    assert re.search(r"and on http://127\.0\.0\.1:\d+/serving, a model server replica itself", output), output
