"""MLflow tracking against a real local tracking store (a SQLite file in tmp_path).

The Tune callback is fed what Tune hands it (as in test_learning_curve), without Ray; one slow test
runs a real search on a local Ray (2 CPUs) with tracking on, so Tune's own pickling of the
callback and the hook in ``run_search`` are covered too.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow.onnx
import pytest
import yaml
from mlflow import MlflowClient

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from autocompress import tracking
from autocompress.engine.tracking import MlflowRecorder, tracking_callbacks
from autocompress.errors import AutocompressError
from autocompress.job import JobSpec
from autocompress.search.pareto import Candidate, Selection
from autocompress.search.space import SearchSpace, load_search_space
from autocompress.store import JobStatus, Store, TrialStatus
from autocompress.tracking import MlflowTracker, TrackingSettings, end_job_run, flat_params, log_job_result
from autocompress.train import TrainConfig

TRAIN = TrainConfig(epochs=3, batch_size=256, lr=1e-2, early_stopping_patience=None)
SAMPLED = {"arch.embedding_dim": 16, "arch.bottom_mlp": [8], "arch.top_mlp": [32], "policy.0.enabled": True}
EPOCHS = [  # per-epoch reports as run_trial makes them
    {"epoch": e, "train_loss": loss, "valid_auc": auc, "valid_logloss": 0.6, "lr": 1e-2, "seconds": 0.5}
    for e, loss, auc in [(1, 0.69, 0.61), (2, 0.62, 0.66), (3, 0.58, 0.70)]
]
FINAL = {
    "valid_auc": 0.695,
    "delta_auc": -0.004,
    "latency_ms": 0.42,
    "p99_ms_b64": 0.42,
    "size_mb": 0.031,
    "size_ratio": 3.9,
    "feasible": True,
    "violations": [],
    "distance_to_feasible": 0.0,
    "techniques": ["dynamic_int8"],
    "onnx_path": "/work/trial/model.onnx",
    "latency_busy_warning": None,
}


def _space(tmp_path: Path) -> SearchSpace:
    doc = {
        "version": 1,
        "family": "dlrm",
        "arch": {
            "embedding_dim": {"kind": "categorical", "choices": [8, 16]},
            "bottom_mlp": {"kind": "categorical", "choices": [[], [8]]},
            "top_mlp": {"kind": "categorical", "choices": [[16], [32]]},
        },
        "arch_rules": {"bottom_mlp": {"append": "embedding_dim"}},
        "policy": [
            {"technique": "dynamic_int8", "optional": True, "params": {"op_types": ["MatMul", "Gemm"]}}
        ],
        "budget": {"latency_ms": 1000.0, "batch_size": 64, "size_mb": 100.0},
    }
    file = tmp_path / "space.yaml"
    file.write_text(yaml.safe_dump(doc))
    return load_search_space("dlrm", path=file)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow database for the module: creating its tables takes seconds."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


@pytest.fixture()
def settings(database: Path, request: pytest.FixtureRequest) -> TrackingSettings:
    """A local file-backed tracking URI; an experiment of each test's own."""
    return TrackingSettings.from_dict(
        {"mlflow_uri": f"sqlite:///{database}", "experiment": request.node.name}
    )


class Feed:
    """Plays Tune's part: a trial object and the hooks in the order Tune calls them."""

    def __init__(self, recorder: MlflowRecorder, trial_id: str, config: dict[str, Any]) -> None:
        self.recorder = recorder
        self.trial = SimpleNamespace(trial_id=trial_id, config=config, last_result={}, error_file=None)
        self.iteration = 0
        recorder.on_trial_start(0, [self.trial], self.trial)  # type: ignore[list-item, arg-type]

    def report(self, metrics: dict[str, Any]) -> None:
        self.iteration += 1
        result = {**metrics, "trial_id": self.trial.trial_id, "training_iteration": self.iteration}
        result |= {"time_this_iter_s": 0.1, "done": False, "node_ip": "127.0.0.1", "config": {}}
        self.trial.last_result = result
        self.recorder.on_trial_result(self.iteration, [self.trial], self.trial, result)  # type: ignore[list-item, arg-type]

    def hook(self, name: str) -> None:
        getattr(self.recorder, f"on_trial_{name}")(self.iteration, [self.trial], self.trial)


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "jobs.db") as opened:
        yield opened


@pytest.fixture()
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder: MLflow must write nothing here (its default artifact root is ./mlruns)."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _runs(client: MlflowClient, experiment: str) -> tuple[Any, dict[str, Any]]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (job_run,) = [r for r in runs if r.data.tags.get("autocompress.role") == "job"]
    trial_runs = {r.data.tags["autocompress.trial_id"]: r for r in runs if r is not job_run}
    return job_run, trial_runs


def test_each_trial_is_a_nested_run_with_params_epoch_metrics_and_final_figures(
    tmp_path: Path, store: Store, elsewhere: Path, settings: TrackingSettings, database: Path
) -> None:
    spec = {"name": "ranking", "family": "dlrm", "search": {"searcher": "tpe", "num_trials": 4}}
    job = store.create_job(spec, name="ranking")
    (recorder,) = tracking_callbacks(settings, store, job.id, _space(tmp_path), TRAIN, distill=True)
    assert isinstance(recorder, MlflowRecorder)

    done = Feed(recorder, "t_done", SAMPLED)
    for epoch in EPOCHS:
        done.report({"stage": "train", **epoch})
    done.report({"stage": "final", **FINAL})
    done.hook("complete")

    skipped = Feed(recorder, "t_skipped", {**SAMPLED, "policy.0.enabled": False})
    skipped.report(
        {"stage": "skipped", "predicted_latency_ms": 9.5, "skip_reason": "predicted 9.5 ms > 1.25 ms"}
    )
    skipped.hook("complete")

    failed = Feed(recorder, "t_failed", SAMPLED)
    failed.report({"stage": "train", **EPOCHS[0]})
    (tmp_path / "error.txt").write_text("Traceback ...\nRuntimeError: out of memory\n")
    failed.trial.error_file = str(tmp_path / "error.txt")
    failed.hook("recover")  # Tune retries it: the run stays open
    failed.hook("error")

    undecodable = Feed(recorder, "t_odd", {"arch.embedding_dim": 12})
    undecodable.hook("complete")  # ended before any report: STOPPED

    client = MlflowClient(settings.mlflow_uri)
    job_run, trials = _runs(client, settings.experiment)
    assert set(trials) == {"t_done", "t_skipped", "t_failed", "t_odd"}
    assert job_run.info.run_name == f"ranking ({job.id})"
    assert job_run.data.params["search.searcher"] == "tpe" and job_run.data.params["family"] == "dlrm"
    assert {r.data.tags["mlflow.parentRunId"] for r in trials.values()} == {job_run.info.run_id}

    run = trials["t_done"]
    params = run.data.params
    assert params["arch.embedding_dim"] == "16" and params["arch.top_mlp"] == "[32]"
    assert params["arch.bottom_mlp"] == "[8, 16]"  # decoded: the arch rule appended embedding_dim
    assert params["policy.techniques"] == "dynamic_int8"
    assert params["policy.dynamic_int8.op_types"] == '["MatMul", "Gemm"]'
    assert params["train_config.epochs"] == "3" and params["distill"] == "true"
    assert not any(key.startswith("sampled.") for key in params)  # decoded config only

    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.69), (2, 0.62), (3, 0.58)]
    auc_history = client.get_metric_history(run.info.run_id, "valid_auc")
    assert [(m.step, m.value) for m in auc_history] == [(1, 0.61), (2, 0.66), (3, 0.70), (4, 0.695)]
    metrics = run.data.metrics  # the latest of each: the final figures
    assert metrics["valid_auc"] == pytest.approx(0.695) and metrics["latency_ms"] == pytest.approx(0.42)
    assert metrics["size_mb"] == pytest.approx(0.031) and metrics["feasible"] == 1.0
    assert "node_ip" not in metrics and "training_iteration" not in metrics and "epoch" not in metrics
    assert run.data.tags["result.techniques"] == "dynamic_int8"
    assert run.data.tags["result.onnx_path"] == "/work/trial/model.onnx"
    assert (run.info.status, run.data.tags["autocompress.status"]) == ("FINISHED", "COMPLETED")

    run = trials["t_skipped"]
    assert "policy.techniques" not in run.data.params  # no technique enabled
    assert run.data.metrics == {"predicted_latency_ms": 9.5}
    assert run.data.tags["result.skip_reason"] == "predicted 9.5 ms > 1.25 ms"
    assert (run.info.status, run.data.tags["autocompress.status"]) == ("FINISHED", "SKIPPED")

    run = trials["t_failed"]
    assert (run.info.status, run.data.tags["autocompress.status"]) == ("FAILED", "FAILED")
    assert run.data.tags["autocompress.error"].endswith("RuntimeError: out of memory\n")

    run = trials["t_odd"]
    assert run.data.params == {"sampled.arch.embedding_dim": "12"}  # only the sample, as the store
    assert (run.info.status, run.data.tags["autocompress.status"]) == ("KILLED", "STOPPED")

    # artifacts beside the SQLite file, nothing in the working folder
    experiment = client.get_experiment_by_name(settings.experiment)
    assert experiment.artifact_location == (database.parent / "mlartifacts").as_uri()
    assert list(elsewhere.iterdir()) == []

    # a restored search (Tune unpickles its callbacks) logs into the same runs
    restored = pickle.loads(pickle.dumps(recorder))
    again = Feed(restored, "t_done", SAMPLED)
    again.iteration = 4
    again.report({"stage": "final", **FINAL, "valid_auc": 0.7})
    job_run_after, trials_after = _runs(client, settings.experiment)
    assert job_run_after.info.run_id == job_run.info.run_id
    assert trials_after["t_done"].info.run_id == trials["t_done"].info.run_id
    assert [m.step for m in client.get_metric_history(trials["t_done"].info.run_id, "valid_auc")][-1] == 5

    # a trial the store holds finished, that Tune's lagging state runs again, logs nothing more
    store.record_trial(job.id, "t_done", TrialStatus.COMPLETED, metrics={"stage": "final", **FINAL})
    restored.setup()  # Tune calls it when the restored run starts
    rerun = Feed(restored, "t_done", SAMPLED)
    rerun.report({"stage": "final", **FINAL, "valid_auc": 0.5})
    rerun.hook("complete")
    history = client.get_metric_history(trials["t_done"].info.run_id, "valid_auc")
    assert [(m.step, m.value) for m in history][-1] == (5, pytest.approx(0.7))
    assert set(_runs(client, settings.experiment)[1]) == set(trials)


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(__import__("numpy").ones((3, 1), dtype="float32"), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logit"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


ROWS = [
    {
        "name": "winner",
        "test_auc": 0.71,
        "size_mb": 0.03,
        "p50_ms_b1": None,
        "latency_ms": 0.4,
        "busy_warning": None,
        "delta_auc": -0.002,
        "within_budget": True,
        "violations": [],
    },
    {"name": "onnx_fp32", "test_auc": 0.712, "size_mb": 0.12, "latency_ms": 0.9, "within_budget": False},
]


def test_the_winner_is_logged_as_an_onnx_model_with_the_test_comparison(
    tmp_path: Path, store: Store, elsewhere: Path, settings: TrackingSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    job = store.create_job({"name": "ranking"}, name="ranking")
    (recorder,) = tracking_callbacks(settings, store, job.id, _space(tmp_path), TRAIN)
    feed = Feed(recorder, "t_best", SAMPLED)  # type: ignore[arg-type]
    feed.report({"stage": "final", **FINAL})
    feed.hook("complete")
    model_file = _tiny_onnx(tmp_path / "winner.onnx")
    report = tmp_path / "report.html"
    report.write_text("<html>report</html>")
    winner = Candidate("t_best", 0.695, 0.42, 0.031, True, metrics={**FINAL, "onnx_path": str(model_file)})

    run_id = log_job_result(
        settings, store, job.id, ROWS, Selection(winner=winner, front=[winner]), files=(report, None)
    )

    client = MlflowClient(settings.mlflow_uri)
    job_run, trials = _runs(client, settings.experiment)
    assert run_id == job_run.info.run_id and job_run.info.status == "FINISHED"
    assert job_run.data.tags["autocompress.winner_trial"] == "t_best"
    assert trials["t_best"].data.tags["autocompress.winner"] == "true"
    assert job_run.data.metrics["test.winner.test_auc"] == pytest.approx(0.71)
    assert job_run.data.metrics["test.winner.within_budget"] == 1.0
    assert job_run.data.metrics["test.onnx_fp32.latency_ms"] == pytest.approx(0.9)
    assert "test.winner.p50_ms_b1" not in job_run.data.metrics  # None: not measured

    artifacts = {a.path for a in client.list_artifacts(run_id, "winner_model")}
    assert {"winner_model/MLmodel", "winner_model/model.onnx", "winner_model/requirements.txt"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "report")} == {"report/report.html"}
    comparison = json.loads(
        Path(client.download_artifacts(run_id, "test_comparison.json", str(tmp_path))).read_text()
    )
    assert comparison == ROWS
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    (tmp_path / "download").mkdir()
    loaded = mlflow.onnx.load_model(f"runs:/{run_id}/winner_model", dst_path=str(tmp_path / "download"))
    assert loaded == onnx.load(str(model_file))  # the same graph and weights, one self-contained file
    events = [e.message for e in store.list_events(job.id)]
    assert any(m.startswith(f"MLflow: job logged as run {run_id}") for m in events)
    assert list(elsewhere.iterdir()) == []


def test_no_winner_logs_the_reason_and_no_model(
    store: Store, elsewhere: Path, settings: TrackingSettings
) -> None:
    job = store.create_job({"name": "tight"}, name="tight")
    selection = Selection(winner=None, front=[], reason="no feasible model")
    run_id = log_job_result(settings, store, job.id, ROWS[1:], selection)
    run = MlflowClient(settings.mlflow_uri).get_run(str(run_id))
    assert run.data.tags["autocompress.reason"] == "no feasible model"
    assert run.data.tags["autocompress.winner_trial"] == ""
    assert MlflowClient(settings.mlflow_uri).list_artifacts(str(run_id), "winner_model") == []
    assert log_job_result(None, store, job.id, ROWS, selection) is None  # no tracking asked


def test_a_cancelled_or_failed_job_ends_its_run_killed_or_failed_with_the_reason(
    store: Store, elsewhere: Path, settings: TrackingSettings
) -> None:
    from autocompress.engine.job import run_job
    from autocompress.job import JobSpec

    client = MlflowClient(settings.mlflow_uri)
    spec = JobSpec.from_dict({"name": "stopped", "tracking": settings.model_dump()})
    job = store.create_job(spec.to_dict(), name=spec.name)
    run_id = MlflowTracker(settings, job.id).job_run_id()  # what the search opened before the cancel
    store.set_job_status(job.id, JobStatus.RUNNING)  # a running job (a pending one cancels at once)
    store.request_cancel(job.id)
    assert run_job(spec, store, elsewhere / "runs", job_id=job.id).status == "CANCELLED"
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["autocompress.reason"] == "cancelled by user"

    failed = store.create_job({"name": "failed"}, name="failed")
    failed_run = MlflowTracker(settings, failed.id).job_run_id()
    end_job_run(settings, store, failed.id, "FAILED", "RuntimeError: boom")
    assert client.get_run(failed_run).info.status == "FAILED"
    assert client.get_run(failed_run).data.tags["autocompress.reason"] == "RuntimeError: boom"

    never = store.create_job({"name": "never"}, name="never")  # failed before the search opened a run
    end_job_run(settings, store, never.id, "FAILED", "no data")
    experiment = client.get_experiment_by_name(settings.experiment)
    tagged = f"tags.`autocompress.job_id` = '{never.id}'"
    assert client.search_runs([experiment.experiment_id], filter_string=tagged) == []
    end_job_run(None, store, never.id, "FAILED", "no tracking asked")  # nothing to do, nothing raised


def test_a_broken_tracking_uri_fails_neither_the_trials_nor_the_job(tmp_path: Path, store: Store) -> None:
    (tmp_path / "not-a-folder").write_text("a file where the database's folder should be")
    settings = TrackingSettings.from_dict({"mlflow_uri": f"sqlite:///{tmp_path / 'not-a-folder' / 'x.db'}"})
    job = store.create_job({"name": "broken"}, name="broken")
    (recorder,) = tracking_callbacks(settings, store, job.id, _space(tmp_path), TRAIN)
    for trial_id in ("t1", "t2"):
        feed = Feed(recorder, trial_id, SAMPLED)  # type: ignore[arg-type]
        feed.report({"stage": "train", **EPOCHS[0]})
        feed.report({"stage": "final", **FINAL})
        feed.hook("complete")
    selection = Selection(winner=None, front=[], reason="no feasible model")
    assert log_job_result(settings, store, job.id, ROWS, selection) is None
    events = [(e.kind, e.message) for e in store.list_events(job.id)]
    off = [m for kind, m in events if kind == "warning" and m.startswith("MLflow: tracking is off")]
    assert len(off) == 1  # said once; the callback stopped trying for this search
    assert any(m.startswith("MLflow: could not log the job's result") for _, m in events)


def test_a_bad_tracking_spec_names_the_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good = {"mlflow_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "ctr"}
    spec = JobSpec.from_dict({"tracking": good})
    assert spec.tracking is not None and spec.tracking.experiment == "ctr"
    assert JobSpec.from_dict(spec.to_dict()) == spec
    assert JobSpec.from_dict({}).tracking is None
    assert JobSpec.from_dict({"tracking": {"mlflow_uri": "http://mlflow:5000"}}).tracking.experiment == (  # type: ignore[union-attr]
        "autocompress"
    )

    def refused(tracking_spec: Any) -> str:
        with pytest.raises(AutocompressError) as info:
            JobSpec.from_dict({"tracking": tracking_spec})
        return str(info.value)

    assert "jobspec.tracking.mlflow_uri: Field required" in refused({"experiment": "ctr"})
    assert "jobspec.tracking.uri: unknown field" in refused({**good, "uri": "x"})
    message = refused({"mlflow_uri": "ftp://host/x"})
    assert "jobspec.tracking.mlflow_uri" in message and "'ftp'" in message and "sqlite" in message
    assert "credentials do not belong in the URI" in refused({"mlflow_uri": "https://u:secret@mlflow/"})
    assert "jobspec.tracking.experiment" in refused({**good, "experiment": ""})
    assert "jobspec.tracking.mlflow_uri" in refused({"mlflow_uri": 5})
    monkeypatch.setattr(tracking, "mlflow_installed", lambda: False)
    message = refused(good)
    assert message.startswith("jobspec.tracking.mlflow_uri:") and "install the mlflow extra" in message


def test_params_flatten_policies_by_technique_and_keep_mlflow_limits() -> None:
    config = {
        "version": 1,
        "arch": {"embedding_dim": 8, "bottom_mlp": [8, 8], "embedding_dims": {}},
        "policy": {
            "version": 1,
            "steps": [
                {"technique": "low_rank", "version": 1, "energy": 0.9},
                {"technique": "dynamic_int8", "version": 1, "per_channel": False},
                {"technique": "low_rank", "version": 1, "energy": 0.5},
            ],
        },
        "dataset": {"options": {"a:b/c": "x" * 7000}},
    }
    params = flat_params(config)
    assert params["policy.techniques"] == "low_rank,dynamic_int8,low_rank"
    assert params["policy.low_rank.energy"] == "0.9" and params["policy.low_rank_2.energy"] == "0.5"
    assert params["policy.dynamic_int8.per_channel"] == "false"
    assert params["arch.bottom_mlp"] == "[8, 8]" and "version" not in params
    assert (
        len(params["dataset.options.a:b/c"]) == 6000
    )  # cut to MLflow's limit; the key is made valid on logging
    assert tracking._key("dataset.options.a:b/c") == "dataset.options.a_b_c"


@pytest.mark.slow
def test_a_real_search_with_tracking_logs_every_trial(
    tmp_path: Path, store: Store, elsewhere: Path, settings: TrackingSettings
) -> None:
    import ray

    from autocompress.engine.trial import SharedResources
    from autocompress.engine.tuner import run_search
    from autocompress.search.budget import Budget
    from autocompress.spec import SearchSettings, Target
    from autocompress.testing import tiny_setup

    setup = tiny_setup("dlrm")
    shared = SharedResources(
        dataset=setup.dataset,
        teacher=None,
        reference_valid_auc=0.5,
        target=Target(batch_sizes=[1, 64], warmup=2, repetitions=10, max_seconds=1),
        budget=Budget(latency_ms=1000.0, batch_size=64, size_mb=100.0),
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "cache",
    )
    search = SearchSettings.from_dict(
        {"searcher": "random", "num_trials": 1, "max_failures": 0, "storage_path": str(tmp_path / "tune")}
    )
    job = store.create_job({"name": "real"}, name="real")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcome = run_search(
            _space(tmp_path),
            search,
            shared,
            store=store,
            job_id=job.id,
            name="real",
            train_config=TrainConfig(epochs=1, batch_size=256, lr=1e-2, early_stopping_patience=None),
            tracking=settings,
        )
    finally:
        ray.shutdown()

    client = MlflowClient(settings.mlflow_uri)
    _, trials = _runs(client, settings.experiment)
    assert len(trials) == 1 and set(trials) == {t.trial_id for t in outcome.trials}
    for trial in outcome.trials:
        run = trials[trial.trial_id]
        assert run.info.status == "FINISHED" and run.data.tags["autocompress.status"] == "COMPLETED"
        assert run.data.params["arch.embedding_dim"] in ("8", "16")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "valid_auc")]
        assert steps == [1, 2]  # the epoch, then the final figure
        assert run.data.metrics["valid_auc"] == pytest.approx(trial.metrics["valid_auc"])
        assert run.data.metrics["latency_ms"] == pytest.approx(trial.metrics["latency_ms"])
    assert list(elsewhere.iterdir()) == []
