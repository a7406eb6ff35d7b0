"""A store seeded the way a search leaves it: a running job with a resolved budget, baselines, finished and
running trials and a log; a finished job whose winner is registered and served behind an alias that was
promoted and rolled back; a pending job."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autocompress.store import JobStatus, Store, TrialStatus

BUDGET = {
    "rule": {
        "latency": {"speedup_vs": "onnx_fp32", "factor": 4.0},
        "batch_size": 256,
        "percentile": 99,
        "size": {"smaller_than": "onnx_fp32", "factor": 8.0},
        "max_auc_drop": 0.01,
    },
    "resolved": {
        "latency_ms": 0.5,
        "batch_size": 256,
        "percentile": 99,
        "size_mb": 0.25,
        "max_auc_drop": 0.01,
    },
    "baselines": {
        "onnx_fp32": {"latency_ms": 2.0, "size_mb": 2.0, "busy_warning": None},
        "ort_dynamic_int8": {"latency_ms": 1.1, "size_mb": 0.55, "busy_warning": None},
    },
    "text": {
        "latency": "latency p99 at batch 256 >= 4x faster than onnx_fp32 (<= 0.5 ms)",
        "size": "size >= 8x smaller than onnx_fp32 (<= 0.25 MB)",
        "max_auc_drop": "valid AUC drop <= 0.0100",
    },
}
REFERENCE_AUC = 0.75


def final_metrics(auc: float, latency_ms: float, size_mb: float, techniques: list[str]) -> dict[str, object]:
    """A trial's final report (the names ``autocompress.engine.trial`` documents) against ``BUDGET``."""
    feasible = latency_ms <= 0.5 and size_mb <= 0.25 and REFERENCE_AUC - auc <= 0.01
    return {
        "stage": "final",
        "status": "completed",
        "valid_auc": auc,
        "delta_auc": auc - REFERENCE_AUC,
        "latency_ms": latency_ms,
        "size_mb": size_mb,
        "feasible": feasible,
        "violations": [] if feasible else ["over a bound"],
        "distance_to_feasible": 0.0 if feasible else 0.5,
        "techniques": techniques,
        "best_epoch": 2,
        "epochs_trained": 3,
        "train_valid_auc": auc + 0.001,
    }


def sampled(dim: int, pruning: bool, ratio: float) -> dict[str, object]:
    return {
        "sampled": {
            "arch.embedding_dim": dim,
            "arch.top_mlp": [128, 64] if dim > 16 else [64],
            "policy.2.enabled": pruning,
            "policy.2.sparse_ratio": ratio,
        }
    }


@dataclass
class Seeded:
    """The ids of what :func:`seed` recorded."""

    running: str
    finished: str
    pending: str
    finished_trials: list[str] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=list)


def seed(store: Store, work_dir: Path) -> Seeded:
    """Record the jobs, trials, events, models and deployments the dashboard tests look at."""
    running = store.create_job({"name": "ranker-realtime", "family": "dlrm"}, name="ranker-realtime")
    store.set_job_status(running.id, JobStatus.RUNNING, result={"budget": BUDGET})
    store.add_event(running.id, "budget", "budget: " + "; ".join(BUDGET["text"].values()))
    finished_trials = []
    for key, auc, latency, size, techniques, dim, pruning, ratio in (
        ("trial_00000", 0.748, 0.42, 0.20, ["structured_pruning", "dynamic_int8"], 32, True, 0.6),
        ("trial_00001", 0.752, 0.81, 0.40, ["dynamic_int8"], 64, False, 0.4),
        ("trial_00002", 0.741, 0.30, 0.12, ["structured_pruning", "embedding_quantization"], 16, True, 0.8),
    ):
        store.record_trial(running.id, key, TrialStatus.RUNNING, config=sampled(dim, pruning, ratio))
        store.record_trial(
            running.id, key, TrialStatus.COMPLETED, metrics=final_metrics(auc, latency, size, techniques)
        )
        store.add_event(running.id, "trial", f"{key} COMPLETED")
        finished_trials.append(key)
    store.record_trial(
        running.id,
        "trial_00003",
        TrialStatus.RUNNING,
        config=sampled(32, True, 0.5),
        metrics={"stage": "train", "epoch": 1, "valid_auc": 0.70, "train_loss": 0.52},
    )
    store.add_event(running.id, "trial", "trial_00003 RUNNING")

    finished = store.create_job({"name": "ranker-small", "family": "dlrm"}, name="ranker-small")
    store.set_job_status(finished.id, JobStatus.RUNNING, result={"budget": BUDGET})
    store.record_trial(finished.id, "trial_00000", TrialStatus.RUNNING, config=sampled(16, True, 0.7))
    trial = store.record_trial(
        finished.id, "trial_00000", TrialStatus.COMPLETED, metrics=final_metrics(0.745, 0.35, 0.15, [])
    )
    store.set_job_status(finished.id, JobStatus.SUCCEEDED, result={"budget": BUDGET})
    artifact = work_dir / "winner.onnx"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(b"onnx")
    schema = {"dense": [], "sparse": [], "label": "click"}
    first = store.register_model("ranker-small-winner", artifact, schema, trial.metrics, job_id=finished.id)
    second = store.register_model(
        "ranker-small-winner", artifact, schema, {"valid_auc": 0.747}, job_id=finished.id, trial_id=trial.id
    )
    store.deploy("ranking-prod", first.id)
    store.deploy("ranking-prod", second.id)
    store.rollback("ranking-prod")  # back on the first version
    store.deploy("ranking-canary", second.id)

    pending = store.create_job({"name": "tower-pending", "family": "two_tower"}, name="tower-pending")
    return Seeded(running.id, finished.id, pending.id, finished_trials, [first.id, second.id])


@pytest.fixture
def seeded_db(tmp_path: Path) -> tuple[str, Seeded]:
    """A SQLite file seeded by :func:`seed`, and what it holds."""
    url = f"sqlite:///{tmp_path / 'dashboard.db'}"
    with Store(url) as store:
        return url, seed(store, tmp_path / "runs")
