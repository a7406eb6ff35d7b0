"""A real tiny trial (no Ray): its per-epoch reports reach the store through the Tune callback and stay
as its learning curve after the final report; the finished trial then registers as a servable model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from autocompress.data.schema import FeatureSchema
from autocompress.engine.recording import TUNE_RESULT_KEYS, TrialRecorder
from autocompress.engine.trial import SharedResources, TrialSpec, run_trial
from autocompress.search.budget import Budget
from autocompress.search.space import load_search_space
from autocompress.serving import check_onnx_loads, register_trial
from autocompress.spec import Target
from autocompress.store import JobStatus, Store, TrialStatus
from autocompress.techniques import Policy
from autocompress.testing.fixtures import tiny_dataset
from autocompress.train import TrainConfig

pytestmark = pytest.mark.slow

EPOCHS = 3
TRAIN = TrainConfig(epochs=EPOCHS, batch_size=512, lr=3e-3, early_stopping_patience=None)


def test_a_real_trial_keeps_every_epoch_and_registers(tmp_path: Path) -> None:
    dataset = tiny_dataset()
    store = Store(tmp_path / "jobs.db")
    job = store.create_job({"name": "curves", "family": "dlrm"}, name="curves")
    store.set_job_status(job.id, JobStatus.RUNNING, result={"feature_schema": dataset.schema.to_dict()})
    job_dir = tmp_path / "runs" / job.id
    shared = SharedResources(
        dataset=dataset,
        teacher=None,
        reference_valid_auc=0.5,
        target=Target(batch_sizes=[1, 64], warmup=2, repetitions=10, max_seconds=1),
        budget=Budget(latency_ms=1000.0, batch_size=64, size_mb=100.0),
        work_dir=job_dir / "trials",
        cache_dir=job_dir / "latency-cache",
    )
    spec = TrialSpec(
        trial_id="trial_00000",
        family="dlrm",
        arch={"embedding_dim": 8, "bottom_mlp": [8], "top_mlp": [16]},
        policy=Policy(),
        train_config=TRAIN,
        distill=False,
    )
    recorder = TrialRecorder(store, job.id, load_search_space("dlrm", None, None), TRAIN)
    tune_trial = SimpleNamespace(trial_id=spec.trial_id, config={}, last_result={}, error_file=None)
    results: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any]) -> None:
        """What Tune hands the callback: the trial's dict plus Tune's bookkeeping."""
        result = {**metrics, "training_iteration": len(results) + 1, "time_this_iter_s": 0.1, "done": False}
        results.append(result)
        tune_trial.last_result = result
        recorder.on_trial_result(len(results), [tune_trial], tune_trial, result)  # type: ignore[arg-type]

    outcome = run_trial(spec, shared, report)
    recorder.on_trial_complete(len(results), [tune_trial], tune_trial)  # type: ignore[arg-type]

    assert outcome.status == "completed" and len(results) == EPOCHS + 1
    trial, curve = store.trial_curve(job.id, spec.trial_id)
    assert trial.status is TrialStatus.COMPLETED and trial.metrics["stage"] == "final"  # the last report wins
    assert [p.epoch for p in curve] == list(range(1, EPOCHS + 1))
    for point, history in zip(curve, outcome.history, strict=True):
        assert point.metrics["stage"] == "train" and not TUNE_RESULT_KEYS & set(point.metrics)
        assert point.metrics["valid_auc"] == pytest.approx(history.valid_auc)
        assert point.metrics["train_loss"] == pytest.approx(history.train_loss)
        assert 0.5 < point.metrics["valid_auc"] < 1.0 and point.metrics["train_loss"] > 0
    assert curve[-1].metrics["train_loss"] < curve[0].metrics["train_loss"]  # it learnt

    model = register_trial(store, job.id, spec.trial_id, job_dir, tags={"from": "test"})
    assert (model.name, model.version, model.tags) == ("curves-dlrm", 1, {"from": "test"})
    path = Path(model.path)
    assert path.parent == (job_dir / "models" / trial.id).resolve()
    assert path.name == Path(str(outcome.onnx_path)).name
    assert path.read_bytes() == Path(str(trial.metrics["onnx_path"])).read_bytes()
    check_onnx_loads(path, model.id)  # a servable ONNX file
    assert FeatureSchema.from_dict(model.feature_schema) == dataset.schema
    assert model.metrics["valid_auc"] == trial.metrics["valid_auc"]
    store.close()
