"""The job API over real HTTP with a real store (SQLite and PostgreSQL); jobs stay queued here.

These run with ``max_running_jobs=0`` (record only), so no driver starts; ``test_lifecycle`` runs
searches for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from autocompress.cli import app as cli_app
from autocompress.errors import AutocompressError
from autocompress.store import JobStatus
from serve_app.api import Settings
from serve_app.launcher import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_job.yaml"


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec.update(overrides)
    return spec


def test_openapi_health_and_search_spaces_are_served(api_factory, sqlite_url) -> None:
    api = api_factory(sqlite_url)
    openapi = api.http.get("/openapi.json")
    assert openapi.status_code == 200
    paths = openapi.json()["paths"]
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/models/{model_id}/artifact",
    ):
        assert path in paths
    assert "JobSpec" in openapi.json()["components"]["schemas"]  # the submit body is documented

    health = api.http.get("/healthz").json()
    assert health == {"status": "ok", "database": "sqlite", "schema_revision": "0002", "launcher": None}

    spaces = {s["family"]: s for s in api.http.get("/v1/search-spaces").json()["search_spaces"]}
    assert {"dlrm", "deepfm", "dcn_v2", "two_tower", "din"} <= set(spaces)
    realtime = next(p for p in spaces["dlrm"]["presets"] if p["name"] == "realtime")
    assert realtime["budget"]["latency"] == {"speedup_vs": "onnx_fp32", "factor": 4.5}  # relative


def test_a_submitted_job_is_recorded_pending_with_its_progress(api_factory, db_url) -> None:
    api = api_factory(db_url)
    response = api.http.post("/v1/jobs", json=tiny_spec())
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "PENDING" and job["name"] == "tiny-dlrm"
    assert job["progress"]["num_trials"] == 6 and job["progress"]["total"] == 0
    assert job["budget"]["latency_ms"] == 5.0 and job["best"] is None
    stored = api.store.get_job(job["id"])  # the database is the source of truth
    assert stored.status is JobStatus.PENDING and stored.spec["search"]["num_trials"] == 6

    listed = api.http.get("/v1/jobs", params={"status": "PENDING"}).json()
    assert listed["total"] == 1 and [j["id"] for j in listed["jobs"]] == [job["id"]]
    assert api.http.get("/v1/jobs", params={"status": "RUNNING"}).json()["total"] == 0
    assert api.http.get(f"/v1/jobs/{job['id']}/trials").json() == {"trials": []}
    events = api.http.get(f"/v1/jobs/{job['id']}/logs").json()["events"]
    assert [e["message"] for e in events] == ["job created (PENDING)"]


def test_idempotent_resubmission_returns_the_same_job(api_factory, db_url) -> None:
    api = api_factory(db_url)
    first = api.http.post("/v1/jobs", json=tiny_spec(), headers={"Idempotency-Key": "k-1"})
    again = api.http.post("/v1/jobs", json=tiny_spec(), headers={"Idempotency-Key": "k-1"})
    other = api.http.post("/v1/jobs", json=tiny_spec(), headers={"Idempotency-Key": "k-2"})
    plain = api.http.post("/v1/jobs", json=tiny_spec())
    assert first.status_code == again.status_code == other.status_code == plain.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert len({first.json()["id"], other.json()["id"], plain.json()["id"]}) == 3
    assert api.store.count_jobs() == 3

    reused = api.http.post("/v1/jobs", json=tiny_spec(name="other"), headers={"Idempotency-Key": "k-1"})
    assert reused.status_code == 409
    assert "Idempotency-Key: 'k-1' was used for job" in reused.json()["detail"]


@pytest.mark.slow
def test_fifty_concurrent_submissions_give_exactly_the_jobs_asked_for(api_factory, db_url) -> None:
    api = api_factory(db_url)
    keys = [None] * 50 + [f"key-{i % 20}" for i in range(50)]  # 50 plain, 50 sharing 20 keys
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def submit(key: str | None) -> None:
        headers = {"Idempotency-Key": key} if key else {}
        with httpx.Client(base_url=api.url, timeout=60) as http:
            response = http.post("/v1/jobs", json=tiny_spec(), headers=headers)
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=submit, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == 100
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers if a.status_code != 201]

    ids_by_key: dict[str, set[str]] = {}
    for answer in answers:
        job = answer.json()
        ids_by_key.setdefault(job["idempotency_key"] or job["id"], set()).add(job["id"])
    assert all(len(ids) == 1 for ids in ids_by_key.values())  # one job per key, however often sent
    assert len(ids_by_key) == 70
    assert api.store.count_jobs() == 70 == api.http.get("/v1/jobs").json()["total"]
    keyed = Counter(j.idempotency_key for j in api.store.list_jobs(limit=100) if j.idempotency_key)
    assert keyed == Counter({f"key-{i}": 1 for i in range(20)})

    for job in api.store.list_jobs(limit=100):  # queued jobs cancel at once
        assert api.http.post(f"/v1/jobs/{job.id}/cancel").json()["status"] == "CANCELLED"
    assert api.store.count_jobs(JobStatus.CANCELLED) == 70


def test_client_errors_are_4xx_naming_the_field(api_factory, db_url) -> None:
    api = api_factory(db_url, max_body_bytes=4096)
    http = api.http

    def detail(response: httpx.Response, status: int) -> str:
        assert response.status_code == status, response.text
        text: str = response.json()["detail"]
        return text

    # 404: unknown ids
    assert detail(http.get("/v1/jobs/nope"), 404) == "job_id: no job 'nope'"
    assert "job_id: no job 'nope'" in detail(http.post("/v1/jobs/nope/cancel"), 404)
    assert "job_id" in detail(http.get("/v1/jobs/nope/trials"), 404)
    assert "model_id: no model 'nope'" in detail(http.get("/v1/models/nope"), 404)
    assert "model_id" in detail(http.get("/v1/models/nope/artifact"), 404)

    # 422: the spec, query and headers are strict
    assert detail(http.post("/v1/jobs", json=tiny_spec(bogus=1)), 422) == "spec.bogus: unknown field"
    bad_trials = tiny_spec(search={"searcher": "random", "num_trials": 0})
    assert "spec.search.num_trials: Input should be greater than or equal to 1" in detail(
        http.post("/v1/jobs", json=bad_trials), 422
    )
    bad_baseline = tiny_spec(budget={"latency": {"speedup_vs": "torch", "factor": 5}})
    assert "spec.budget.latency.speedup_vs: Input should be 'onnx_fp32' or 'ort_dynamic_int8'" in detail(
        http.post("/v1/jobs", json=bad_baseline), 422
    )
    both = tiny_spec(budget={"size_mb": 5, "size": {"smaller_than": "onnx_fp32", "factor": 20}})
    assert "spec.budget: give size_mb (absolute) or size (relative to a baseline), not both" in detail(
        http.post("/v1/jobs", json=both), 422
    )
    bad_family = detail(http.post("/v1/jobs", json=tiny_spec(family="resnet")), 422)
    assert "spec.family: unknown model family 'resnet'; known: ['dlrm'" in bad_family
    assert "spec.name: String should match pattern" in detail(
        http.post("/v1/jobs", json=tiny_spec(name="../etc")), 422
    )
    assert "spec.search.storage_path: not accepted over the API" in detail(
        http.post("/v1/jobs", json=tiny_spec(search={"storage_path": "/tmp/elsewhere"})), 422
    )
    local_tracking = tiny_spec(tracking={"mlflow_uri": "sqlite:////tmp/anywhere.db"})
    assert "spec.tracking.mlflow_uri: a 'sqlite' URI would write files on this server" in detail(
        http.post("/v1/jobs", json=local_tracking), 422
    )
    local_artifacts = {"mlflow_uri": "https://mlflow.example", "artifact_location": "file:///tmp/x"}
    assert "spec.tracking.artifact_location: a local folder is not accepted" in detail(
        http.post("/v1/jobs", json=tiny_spec(tracking=local_artifacts)), 422
    )
    assert "spec.dataset.path: this server takes no file paths" in detail(
        http.post("/v1/jobs", json=tiny_spec(dataset={"kind": "criteo", "path": "/etc/passwd"})), 422
    )
    not_json = http.post("/v1/jobs", content=b"{nope", headers={"content-type": "application/json"})
    assert detail(not_json, 422).startswith("body: not valid JSON")
    assert "header Idempotency-Key: String should match pattern" in detail(
        http.post("/v1/jobs", json=tiny_spec(), headers={"Idempotency-Key": "has space"}), 422
    )
    assert "query status: Input should be 'PENDING', 'RUNNING'" in detail(
        http.get("/v1/jobs", params={"status": "DONE"}), 422
    )
    assert "query limit: Input should be less than or equal to 1000" in detail(
        http.get("/v1/jobs", params={"limit": 5000}), 422
    )
    assert "body.by: String should match pattern" in detail(
        http.post("/v1/jobs/nope/cancel", json={"by": "<script>"}), 422
    )

    # 413: bodies beyond the limit, declared or streamed
    assert "larger than the limit of 4096 bytes" in detail(
        http.post("/v1/jobs", json=tiny_spec(train={"padding": "x" * 5000})), 413
    )
    streamed = http.post(
        "/v1/jobs", content=iter([b"{", b" " * 5000, b"}"]), headers={"content-type": "application/json"}
    )
    assert "larger than the limit" in detail(streamed, 413)

    # 409: what the job's state forbids
    job = http.post("/v1/jobs", json=tiny_spec()).json()
    assert "only a job in ['SUCCEEDED', 'FAILED', 'CANCELLED'] can be deleted" in detail(
        http.delete(f"/v1/jobs/{job['id']}"), 409
    )
    assert "report: job" in detail(http.get(f"/v1/jobs/{job['id']}/report"), 404)
    cancelled = http.post(f"/v1/jobs/{job['id']}/cancel", json={"by": "alice"}).json()
    assert cancelled["status"] == "CANCELLED" and cancelled["reason"] == "cancelled by alice"
    assert "is already CANCELLED; only a live job can be cancelled" in detail(
        http.post(f"/v1/jobs/{job['id']}/cancel"), 409
    )
    assert http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert http.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_spec_files_must_lie_in_the_data_folder(api_factory, sqlite_url, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text("1\t2\n")
    (tmp_path / "secret.tsv").write_text("x")
    api = api_factory(sqlite_url, data_dir=data)

    def submit(path: str) -> httpx.Response:
        return api.http.post("/v1/jobs", json=tiny_spec(dataset={"kind": "criteo", "path": path}))

    outside = submit("../secret.tsv")
    assert outside.status_code == 422
    assert (
        outside.json()["detail"]
        == "spec.dataset.path: '../secret.tsv' lies outside the folder this server may read"
    )
    assert submit(str(tmp_path / "secret.tsv")).status_code == 422
    assert "spec.dataset.path: 'missing.tsv' does not exist" in submit("missing.tsv").json()["detail"]
    accepted = submit("train.tsv")
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["spec"]["dataset"]["path"] == str((data / "train.tsv").resolve())

    builtin = api.http.post("/v1/jobs", json=tiny_spec(search_space="dlrm.yaml"))
    assert builtin.status_code == 201, builtin.text
    assert builtin.json()["spec"]["search_space"].endswith("search_spaces/dlrm.yaml")


@pytest.mark.parametrize("mode", ["mutating", "all"])
def test_a_bearer_token_guards_the_routes(api_factory, sqlite_url, mode) -> None:
    api = api_factory(sqlite_url, api_token="s3cret-token", auth=mode)
    good = {"Authorization": "Bearer s3cret-token"}

    missing = api.http.post("/v1/jobs", json=tiny_spec())
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "needs a bearer token" in missing.json()["detail"]
    wrong = api.http.post("/v1/jobs", json=tiny_spec(), headers={"Authorization": "Bearer nope"})
    assert (
        wrong.status_code == 401 and wrong.json()["detail"] == "Authorization: the bearer token is not valid"
    )
    job = api.http.post("/v1/jobs", json=tiny_spec(), headers=good)
    assert job.status_code == 201
    job_id = job.json()["id"]
    assert api.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 401
    assert api.http.delete(f"/v1/jobs/{job_id}").status_code == 401
    assert api.store.get_job(job_id).status is JobStatus.PENDING  # refused requests changed nothing

    reads = ("/v1/jobs", f"/v1/jobs/{job_id}", "/v1/models", "/healthz", "/openapi.json")
    for path in reads:
        expected = 401 if mode == "all" else 200
        assert api.http.get(path).status_code == expected, path
        assert api.http.get(path, headers=good).status_code == 200, path


def test_without_a_token_every_route_is_open(api_factory, sqlite_url) -> None:
    api = api_factory(sqlite_url)
    job_id = api.http.post("/v1/jobs", json=tiny_spec()).json()["id"]
    assert api.http.post(f"/v1/jobs/{job_id}/cancel").json()["reason"] == "cancelled by api"
    assert api.http.delete(f"/v1/jobs/{job_id}").status_code == 204


def test_uvicorn_serves_the_module_app_from_the_environment(tmp_path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "AUTOCOMPRESS_DB_URL": f"sqlite:///{tmp_path / 'env.db'}",
        "AUTOCOMPRESS_MAX_RUNNING_JOBS": "0",
        "AUTOCOMPRESS_API_TOKEN": "t0ken",
    }
    command = [sys.executable, "-m", "uvicorn", "serve_app.api:app", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[0].decode()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "uvicorn did not answer within 60 s"
                time.sleep(0.2)
        assert health.json()["launcher"] is None and health.json()["database"] == "sqlite"
        refused = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", json=tiny_spec())
        assert refused.status_code == 401  # the token came from the environment
    finally:
        server.terminate()
        server.wait(30)


def test_settings_from_the_environment_name_the_bad_variable() -> None:
    with pytest.raises(AutocompressError, match="AUTOCOMPRESS_MAX_RUNNING_JOBS: 'two' is not an integer"):
        Settings.from_env({"AUTOCOMPRESS_MAX_RUNNING_JOBS": "two"})
    with pytest.raises(
        AutocompressError, match=r"AUTOCOMPRESS_API_AUTH: 'some' is not one of \['mutating', 'all'\]"
    ):
        Settings.from_env({"AUTOCOMPRESS_API_AUTH": "some", "AUTOCOMPRESS_API_TOKEN": "x"})
    with pytest.raises(AutocompressError, match="AUTOCOMPRESS_API_AUTH=all needs AUTOCOMPRESS_API_TOKEN"):
        Settings.from_env({"AUTOCOMPRESS_API_AUTH": "all"})
    settings = Settings.from_env({"AUTOCOMPRESS_DB_URL": "sqlite:////x.db", "RAY_ADDRESS": "10.0.0.1:6380"})
    assert settings.max_running_jobs == 1 and settings.ray_address == "10.0.0.1:6380"


def test_the_cli_prints_api_errors_as_one_line(api_factory, sqlite_url, tmp_path) -> None:
    api = api_factory(sqlite_url)
    cli = CliRunner()

    def fails(*args: str) -> str:
        result = cli.invoke(cli_app, list(args))
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
        return " ".join(result.output.split())

    url = ["--url", api.url]
    assert fails("jobs", "show", "nope", *url) == "error: HTTP 404: job_id: no job 'nope'"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_spec(search={"num_trials": 0})))
    assert "error: HTTP 422: spec.search.num_trials: Input should be greater" in fails(
        "jobs", "submit", str(bad), *url
    )
    assert "does not exist" in fails("jobs", "submit", str(tmp_path / "missing.yaml"), *url)
    down = fails("jobs", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert "cannot reach the autocompress API at http://127.0.0.1:" in down and "connection refused" in down

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_spec()))
    submitted = cli.invoke(cli_app, ["jobs", "submit", str(good), "--idempotency-key", "cli-1", *url])
    assert submitted.exit_code == 0, submitted.output
    [job] = api.store.list_jobs()
    assert f"job {job.id} (tiny-dlrm): PENDING" in submitted.output
    cancelled = cli.invoke(cli_app, ["jobs", "cancel", job.id, "--by", "dora", *url])
    assert cancelled.exit_code == 0 and "CANCELLED — cancelled by dora" in cancelled.output
