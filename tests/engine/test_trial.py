from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from autocompress.engine.trial import SharedResources, TrialSpec, TrialStopped, run_trial
from autocompress.errors import AutocompressError
from autocompress.export import create_session
from autocompress.measure import latency_cache, onnx_size_bytes
from autocompress.measure.evaluation import onnx_logits
from autocompress.measure.quality import auc
from autocompress.search.budget import Budget
from autocompress.spec import Target
from autocompress.techniques import Policy, apply_policy
from autocompress.testing import TinySetup, tiny_setup
from autocompress.train import DistillConfig, TrainConfig, predict

TARGET = Target(batch_sizes=[1, 64], warmup=2, repetitions=10, max_seconds=1)
SMALL_ARCH = {"embedding_dim": 8, "bottom_mlp": [8], "top_mlp": [16]}
POLICY = Policy.from_dict(
    {
        "steps": [
            {"technique": "frequency_hashing"},
            {"technique": "embedding_quantization"},
            {"technique": "dynamic_int8"},
        ]
    }
)


def _train(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=512, lr=3e-3, early_stopping_patience=None)


@pytest.fixture(scope="module")
def setup() -> TinySetup:
    return tiny_setup("dlrm")


@pytest.fixture(scope="module")
def reference(setup: TinySetup, tmp_path_factory: pytest.TempPathFactory) -> tuple[float, int]:
    """The tiny trained reference exported as is: its ONNX valid AUC and size in bytes."""
    work = tmp_path_factory.mktemp("reference")
    exported = apply_policy(setup.model(), Policy(), setup.context(work))
    valid_auc = auc(
        setup.dataset.valid.labels,
        onnx_logits(create_session(exported.onnx_path, TARGET), setup.dataset.valid),
    )
    return valid_auc, onnx_size_bytes(exported.onnx_path)


@pytest.fixture(scope="module")
def shared(
    setup: TinySetup, reference: tuple[float, int], tmp_path_factory: pytest.TempPathFactory
) -> SharedResources:
    root = tmp_path_factory.mktemp("trials")
    return SharedResources(
        dataset=setup.dataset,
        teacher=setup.trained,
        reference_valid_auc=reference[0],
        target=TARGET,
        budget=Budget(latency_ms=1000.0, batch_size=256, size_mb=100.0, max_auc_drop=0.5),
        work_dir=root / "work",
        cache_dir=root / "cache",
        reference_size_bytes=reference[1],
    )


@pytest.fixture(scope="module")
def compressed(shared: SharedResources) -> tuple[Any, list[dict[str, Any]]]:
    """One trial with a small arch and a three-step policy, and every dict it reported."""
    reports: list[dict[str, Any]] = []
    spec = TrialSpec(
        trial_id="small-1", family="dlrm", arch=SMALL_ARCH, policy=POLICY, train_config=_train(2)
    )
    return run_trial(spec, shared, reports.append), reports


@pytest.mark.slow
def test_a_compressed_trial_reports_real_metrics(
    compressed: tuple[Any, list[dict[str, Any]]], shared: SharedResources, reference: tuple[float, int]
) -> None:
    result, _ = compressed
    m = result.metrics
    assert result.status == "completed" and m["status"] == "completed"
    assert m["techniques"] == ["frequency_hashing", "embedding_quantization", "dynamic_int8"]
    assert 0.5 < m["valid_auc"] < 1.0
    assert m["delta_auc"] == pytest.approx(m["valid_auc"] - reference[0])
    assert 0 < m["valid_logloss"] < 1.0 and 0 < m["valid_gauc"] < 1.0
    # the ONNX file really is the one measured, smaller than the reference's
    assert result.onnx_path is not None and m["onnx_path"] == str(result.onnx_path)
    assert result.onnx_path.is_relative_to(shared.work_dir / "small-1")
    assert m["size_bytes"] == onnx_size_bytes(result.onnx_path) < reference[1]
    assert m["size_mb"] == pytest.approx(m["size_bytes"] / 1e6)
    assert m["size_ratio"] == pytest.approx(reference[1] / m["size_bytes"]) and m["size_ratio"] > 1.5
    assert m["params"] > 0 and m["macs"] > 0
    # latency at the target's batch sizes and the budget's (256, added for the budget), p99 by default
    for batch in (1, 64, 256):
        assert 0 < m[f"p50_ms_b{batch}"] <= m[f"p95_ms_b{batch}"] <= m[f"p99_ms_b{batch}"]
    assert m["latency_ms"] == m["p99_ms_b256"] > 0
    assert m["latency_cache_hit"] is False
    assert m["feasible"] is True and m["violations"] == [] and m["distance_to_feasible"] == 0.0
    stages = ("train", "compress", "evaluate", "latency", "size")
    assert all(m[f"seconds_{s}"] >= 0 for s in stages)
    assert m["seconds_total"] >= sum(m[f"seconds_{s}"] for s in stages)


@pytest.mark.slow
def test_every_epoch_is_reported_then_the_final_metrics(compressed: tuple[Any, list[dict[str, Any]]]) -> None:
    result, reports = compressed
    train_reports = [r for r in reports if r["stage"] == "train"]
    assert [r["epoch"] for r in train_reports] == [1, 2]
    assert [r["valid_auc"] for r in train_reports] == [h.valid_auc for h in result.history]
    assert all(r["trial_id"] == "small-1" and r["seconds"] > 0 for r in train_reports)
    assert len(reports) == 3 and reports[-1] == {"stage": "final", **result.metrics}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["return True", "raise TrialStopped"])
def test_a_report_can_stop_the_trial_early(shared: SharedResources, how: str) -> None:
    reports: list[dict[str, Any]] = []

    def stop_after_first_epoch(metrics: dict[str, Any]) -> bool:
        reports.append(metrics)
        if how == "raise TrialStopped":
            raise TrialStopped
        return True

    spec = TrialSpec(
        trial_id=f"stopped-{len(how)}", family="dlrm", arch=SMALL_ARCH, policy=POLICY, train_config=_train(3)
    )
    result = run_trial(spec, shared, stop_after_first_epoch)
    assert result.status == "stopped" and result.onnx_path is None
    assert [r["stage"] for r in reports] == ["train"] and len(result.history) == 1
    assert result.metrics["epochs_trained"] == 1 and result.metrics["status"] == "stopped"
    assert result.metrics["valid_auc"] == reports[0]["valid_auc"]
    assert not (shared.work_dir / spec.trial_id).exists()  # nothing was compressed or exported


@pytest.mark.slow
def test_an_impossible_budget_is_infeasible_with_the_reason(shared: SharedResources) -> None:
    impossible = replace(
        shared, budget=Budget(latency_ms=1e-6, batch_size=64, percentile=95, size_mb=1e-6, max_auc_drop=0.0)
    )
    spec = TrialSpec(trial_id="impossible", family="dlrm", arch=SMALL_ARCH, train_config=_train(1))
    m = run_trial(spec, impossible).metrics
    assert m["feasible"] is False
    assert m["latency_ms"] == m["p95_ms_b64"]
    assert re.fullmatch(r"latency p95 at batch 64 is [0-9.]+ ms > 1e-06 ms", m["violations"][0])
    assert re.fullmatch(r"size is [0-9.]+ MB > 1e-06 MB", m["violations"][1])
    assert m["violations"][2].startswith("AUC drop vs the reference is")  # the small model is worse
    assert m["distance_to_feasible"] > 1000


@pytest.mark.slow
def test_distillation_learns_from_the_teacher(setup: TinySetup, shared: SharedResources) -> None:
    tiny = {"embedding_dim": 4, "bottom_mlp": [4], "top_mlp": [8]}
    teacher_logits = predict(setup.trained, setup.dataset.valid)

    def correlation(distill: bool) -> float:
        spec = TrialSpec(
            trial_id=f"distill-{distill}",
            family="dlrm",
            arch=tiny,
            train_config=TrainConfig(epochs=1, batch_size=256, lr=0.03, early_stopping_patience=None),
            distill=distill,
            distill_config=DistillConfig(temperature=1.0, alpha=0.0),
        )
        result = run_trial(spec, shared)
        assert result.onnx_path is not None
        student = onnx_logits(create_session(result.onnx_path, TARGET), setup.dataset.valid)
        return float(np.corrcoef(student, teacher_logits)[0, 1])

    assert correlation(True) > correlation(False) + 0.1  # about 0.78 against 0.61


@pytest.mark.slow
def test_an_identical_trial_hits_the_latency_cache(
    compressed: tuple[Any, list[dict[str, Any]]], shared: SharedResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_measuring(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("latency was measured again")

    monkeypatch.setattr(latency_cache, "measure_latency", no_measuring)
    first, _ = compressed
    spec = TrialSpec(
        trial_id="small-2", family="dlrm", arch=SMALL_ARCH, policy=POLICY, train_config=_train(2)
    )
    again = run_trial(spec, shared).metrics
    assert again["latency_cache_hit"] is True
    assert again["latency_ms"] == first.metrics["latency_ms"]
    assert again["valid_auc"] == first.metrics["valid_auc"]


def test_trial_spec_round_trips_and_refuses_bad_fields() -> None:
    spec = TrialSpec(
        trial_id="t-1", family="dlrm", arch=SMALL_ARCH, policy=POLICY, train_config=_train(2), distill=True
    )
    assert spec.arch["family"] == "dlrm"  # stored canonically, every field present
    assert TrialSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(AutocompressError, match=r"unknown model family 'bert'; known families"):
        TrialSpec(trial_id="t", family="bert", arch={})
    with pytest.raises(AutocompressError, match=r"trial_id must be .* got '\.\./escape'"):
        TrialSpec(trial_id="../escape", family="dlrm", arch=SMALL_ARCH)
    with pytest.raises(AutocompressError, match=r"dlrm arch: unknown field\(s\) \['depth'\]"):
        TrialSpec(trial_id="t", family="dlrm", arch={"depth": 3})
    with pytest.raises(AutocompressError, match=r"trial spec: unknown field\(s\) \['epochs'\]"):
        TrialSpec.from_dict({**spec.to_dict(), "epochs": 3})
    with pytest.raises(AutocompressError, match=r"trial spec: missing field\(s\) \['arch'\]"):
        TrialSpec.from_dict({"trial_id": "t", "family": "dlrm"})


def test_distilling_without_a_teacher_is_refused(shared: SharedResources) -> None:
    spec = TrialSpec(trial_id="no-teacher", family="dlrm", arch=SMALL_ARCH, distill=True)
    with pytest.raises(AutocompressError, match="distill is true but the shared resources have no teacher"):
        run_trial(spec, replace(shared, teacher=None))


@pytest.mark.slow
def test_errors_inside_a_trial_propagate(shared: SharedResources) -> None:
    policy = Policy.from_dict({"steps": [{"technique": "frequency_hashing", "tables": ["no_such_table"]}]})
    spec = TrialSpec(trial_id="broken", family="dlrm", arch=SMALL_ARCH, policy=policy, train_config=_train(1))
    with pytest.raises(AutocompressError, match="no_such_table"):
        run_trial(spec, shared)
