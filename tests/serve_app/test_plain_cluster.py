"""The apps on a Ray started without ``cluster_env`` (``serve deploy`` on someone else's cluster).

The replicas still get Ray Serve's latency switches from their runtime env, but direct ingress
must stay off, as the controller has it: requests go through the proxy and ``serving_urls`` is
empty. Run in a subprocess, since this test process may hold the package's other Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from autocompress.store import Store
from serve_app.launcher import free_port
from tests.serving.conftest import Registry

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
import httpx, ray
from ray import serve
from serve_app.serve import ServeSettings, run_locally, serving_urls
db_url, root, port, model_id, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
ray.init(num_cpus=2, include_dashboard=False, _temp_dir=root + "-ray", log_to_driver=False)
try:
    settings = ServeSettings.from_dict({"db_url": db_url, "artifact_root": root, "max_running_jobs": 0,
        "api": {"num_cpus": 0.5}, "model_server": {"num_cpus": 0.5}})
    run_locally(settings, port=port)
    answer = httpx.post(f"http://127.0.0.1:{port}/serving/v1/models/{model_id}/predict",
                        json={"rows": json.loads(rows)}, timeout=60)
    print(json.dumps({"status": answer.status_code, "body": answer.json(), "direct": serving_urls(settings)}))
finally:
    serve.shutdown()
    ray.shutdown()
"""


def test_on_a_ray_without_cluster_env_the_proxy_serves_and_there_is_no_direct_port() -> None:
    work = Path(tempfile.mkdtemp(prefix="ac-plain-"))
    db_url = f"sqlite:///{work / 'plain.db'}"
    with Store(db_url) as store:
        registry = Registry(store, work / "runs")
        record = registry.register("dlrm")
        batch = registry.schema.example_batch(3, seed=4)
        rows = [{n: batch[n][i].tolist() for n in registry.schema.feature_names} for i in range(3)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_") and k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    args = [db_url, str(work / "runs"), str(free_port()), record.id, json.dumps(rows)]
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=240
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    answers = [line for line in done.stdout.splitlines() if line.startswith('{"status"')]
    assert answers, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(answers[-1])
    assert result["status"] == 200, result
    assert len(result["body"]["logits"]) == 3
    assert result["direct"] == []
