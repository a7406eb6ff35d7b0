"""Registering any finished trial as a model, and learning curves, over real HTTP with a real store.

The store is seeded the way a search leaves it (no search runs): a job with finished trials on and
off its Pareto front, a running one, and trials that cannot be registered for each reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from autocompress.store import JobStatus, Store, TrialStatus
from tests.api.conftest import RunningApi

SCHEMA = {"dense": [], "sparse": [], "label": "click"}
EPOCHS = [(1, 0.61, 0.62), (2, 0.68, 0.55), (3, 0.70, 0.52)]


def final(auc: float, latency_ms: float, size_mb: float, onnx: Path | None) -> dict[str, Any]:
    """A trial's final report (the names ``autocompress.engine.trial`` documents)."""
    metrics: dict[str, Any] = {
        "stage": "final",
        "valid_auc": auc,
        "latency_ms": latency_ms,
        "size_mb": size_mb,
        "feasible": latency_ms <= 1.0,
        "techniques": ["dynamic_int8"],
    }
    if onnx is not None:
        onnx.parent.mkdir(parents=True, exist_ok=True)
        onnx.write_bytes(b"onnx " + onnx.parent.name.encode())
        metrics["onnx_path"] = str(onnx)
    return metrics


@dataclass
class Seeded:
    job: str
    bare_job: str  # recorded no feature schema
    work_dir: Path


def seed(store: Store, work_dir: Path) -> Seeded:
    job = store.create_job({"name": "ranking", "family": "dlrm"}, name="ranking").id
    store.set_job_status(job, JobStatus.RUNNING, result={"feature_schema": SCHEMA})
    trials = work_dir / job / "trials"
    (work_dir / job).mkdir(parents=True, exist_ok=True)
    (work_dir / job / "encoders.json").write_text('{"version": 1}')
    for epoch, auc, loss in EPOCHS:
        metrics = {
            "stage": "train",
            "trial_id": "t_fast",
            "epoch": epoch,
            "valid_auc": auc,
            "train_loss": loss,
        }
        store.record_trial(job, "t_fast", TrialStatus.RUNNING, metrics=metrics, epoch=epoch)
    for key, auc, latency, size in (
        ("t_best", 0.74, 0.9, 2.0),  # the winner
        ("t_fast", 0.70, 0.4, 1.0),  # on the front, not the winner
        ("t_worse", 0.69, 0.5, 1.5),  # dominated by t_fast
    ):
        store.record_trial(
            job, key, TrialStatus.COMPLETED, metrics=final(auc, latency, size, trials / key / "m.onnx")
        )
    store.record_trial(job, "t_running", TrialStatus.RUNNING, metrics={"stage": "train", "epoch": 1})
    store.record_trial(job, "t_no_final", TrialStatus.COMPLETED, metrics={"stage": "train", "epoch": 2})
    store.record_trial(job, "t_no_onnx", TrialStatus.COMPLETED, metrics=final(0.6, 0.3, 1.0, None))
    gone = final(0.6, 0.3, 1.0, trials / "t_gone" / "m.onnx")
    Path(gone["onnx_path"]).unlink()
    store.record_trial(job, "t_gone", TrialStatus.COMPLETED, metrics=gone)
    outside = final(0.6, 0.3, 1.0, work_dir.parent / "elsewhere" / "m.onnx")
    store.record_trial(job, "t_outside", TrialStatus.COMPLETED, metrics=outside)

    bare = store.create_job({"name": "bare", "family": "din"}, name="bare").id
    store.record_trial(
        bare, "t", TrialStatus.COMPLETED, metrics=final(0.7, 0.5, 1.0, trials / "bare" / "m.onnx")
    )
    return Seeded(job, bare, work_dir)


@pytest.fixture
def seeded_api(api_factory: Any, sqlite_url: str) -> tuple[RunningApi, Seeded]:
    api = api_factory(sqlite_url)
    return api, seed(api.store, api.settings.work_dir)


def detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    text: str = response.json()["detail"]
    return text


def test_a_finished_trial_off_the_winner_is_registered_with_versions_and_tags(api_factory, db_url) -> None:
    api = api_factory(db_url)
    seeded = seed(api.store, api.settings.work_dir)
    http, job = api.http, seeded.job
    assert http.get(f"/v1/jobs/{job}/pareto").json()["winner"]["trial_key"] == "t_best"

    response = http.post(f"/v1/jobs/{job}/trials/t_fast/register", json={"tags": {"choice": "fastest"}})
    assert response.status_code == 201, response.text
    model = response.json()
    assert response.headers["location"] == f"/v1/models/{model['id']}"
    assert (model["name"], model["version"], model["tags"]) == ("ranking-dlrm", 1, {"choice": "fastest"})
    assert model["lineage"]["trial_key"] == "t_fast" and model["lineage"]["job_id"] == job
    assert model["valid_auc"] == 0.70 and model["latency_ms"] == 0.4 and model["schema"] == SCHEMA
    # the ONNX file is copied into the job's model folder, with the job's encoders beside it
    stored = Path(api.store.get_model(model["id"]).path)
    trial_id = api.store.get_trial(job, "t_fast").id
    assert stored.parent == (seeded.work_dir / job / "models" / trial_id).resolve()
    assert stored.read_bytes() == b"onnx t_fast" and (stored.parent / "encoders.json").is_file()
    assert http.get(f"/v1/models/{model['id']}/artifact").content == b"onnx t_fast"

    # a dominated trial too, by row id, under a name of its own and tags as a list; then the default again
    dominated = api.store.get_trial(job, "t_worse").id
    named = http.post(
        f"/v1/jobs/{job}/trials/{dominated}/register",
        json={"name": "ranking-cheap", "tags": ["ab=b", "pinned"]},
    ).json()
    assert (named["name"], named["version"], named["tags"]) == ("ranking-cheap", 1, {"ab": "b", "pinned": ""})
    again = http.post(f"/v1/jobs/{job}/trials/t_best/register").json()  # no body at all
    assert (again["name"], again["version"], again["tags"]) == ("ranking-dlrm", 2, {})

    listed = http.get("/v1/models", params={"name": "ranking-dlrm"}).json()["models"]
    assert [(m["version"], m["tags"]) for m in listed] == [(2, {}), (1, {"choice": "fastest"})]
    shown = http.get(f"/v1/models/{named['id']}").json()
    assert (shown["name"], shown["version"], shown["tags"]) == ("ranking-cheap", 1, {"ab": "b", "pinned": ""})
    assert http.get(f"/v1/jobs/{job}").json()["model_ids"] == [again["id"], named["id"], model["id"]]
    logs = [e["message"] for e in http.get(f"/v1/jobs/{job}/logs").json()["events"]]
    assert "trial t_fast registered as model ranking-dlrm v1" in logs


def test_what_cannot_be_registered_is_refused_naming_the_reason(seeded_api) -> None:
    api, seeded = seeded_api
    http, job = api.http, seeded.job

    def register(trial: str, body: Any = None, job_id: str = job) -> httpx.Response:
        return http.post(f"/v1/jobs/{job_id}/trials/{trial}/register", json=body)

    assert detail(register("t", job_id="nope"), 404) == "job_id: no job 'nope'"
    assert detail(register("nope"), 404) == f"trial: no trial 'nope' in job {job}"
    assert detail(register("t_running"), 409) == (
        "trial: t_running is RUNNING; only a finished trial (COMPLETED with its final report) can be "
        "registered"
    )
    assert "trial: t_no_final is COMPLETED without a final report;" in detail(register("t_no_final"), 409)
    assert (
        detail(register("t_no_onnx"), 409)
        == "trial: t_no_onnx has no ONNX artifact (its final report names no onnx_path)"
    )
    assert detail(register("t_gone"), 409).startswith("trial: the ONNX artifact of t_gone is gone (")
    assert detail(register("t_outside"), 409) == (
        "trial: the ONNX artifact of t_outside lies outside this server's artifact root"
    )
    assert detail(register("t", job_id=seeded.bare_job), 409).startswith(
        f"feature_schema: job {seeded.bare_job} has recorded no feature schema yet"
    )
    assert detail(register("t_fast", {"name": "-bad name"}), 422).startswith(
        "body.name: String should match pattern"
    )
    assert detail(register("t_fast", {"tags": {"bad key": "x"}}), 422).startswith(
        "tags: key 'bad key' must be"
    )
    assert detail(register("t_fast", {"tags": ["=x"]}), 422).startswith("tags: key '' must be")
    assert detail(register("t_fast", {"colour": "red"}), 422) == "body.colour: unknown field"
    assert api.store.list_models() == []  # nothing refused left a model behind


def test_the_curve_route_returns_the_stored_epochs_in_order(seeded_api) -> None:
    api, seeded = seeded_api
    http, job = api.http, seeded.job
    curve = http.get(f"/v1/jobs/{job}/trials/t_fast/curve").json()
    assert curve["trial_key"] == "t_fast" and curve["status"] == "COMPLETED" and curve["job_id"] == job
    assert [(e["epoch"], e["valid_auc"], e["train_loss"]) for e in curve["epochs"]] == EPOCHS
    assert "stage" not in curve["epochs"][0] and curve["epochs"][0]["attempt"] == 1
    by_id = http.get(f"/v1/jobs/{job}/trials/{curve['trial_id']}/curve").json()
    assert by_id == curve
    assert http.get(f"/v1/jobs/{job}/trials/t_best/curve").json()["epochs"] == []  # no per-epoch report kept

    assert (
        detail(http.get(f"/v1/jobs/{job}/trials/nope/curve"), 404) == f"trial: no trial 'nope' in job {job}"
    )
    assert detail(http.get("/v1/jobs/nope/trials/t_fast/curve"), 404) == "job_id: no job 'nope'"

    # the dashboard reads every trial's curve with the trials
    trials = {
        t["trial_key"]: t
        for t in http.get(f"/v1/jobs/{job}/trials", params={"curves": "true"}).json()["trials"]
    }
    assert trials["t_fast"]["curve"] == curve["epochs"] and trials["t_best"]["curve"] == []
    assert "curve" not in http.get(f"/v1/jobs/{job}/trials").json()["trials"][0]


def test_registering_needs_the_token_like_every_mutating_route(api_factory, sqlite_url) -> None:
    api = api_factory(sqlite_url, api_token="secret")
    seeded = seed(api.store, api.settings.work_dir)
    url = f"/v1/jobs/{seeded.job}/trials/t_fast/register"
    assert api.http.post(url).status_code == 401
    assert api.http.get(f"/v1/jobs/{seeded.job}/trials/t_fast/curve").status_code == 200  # reads stay open
    answer = api.http.post(url, headers={"Authorization": "Bearer secret"})
    assert answer.status_code == 201 and answer.json()["version"] == 1
