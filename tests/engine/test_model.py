"""Every family trains on the default (synthetic) data, exports, and is measured end to end."""

import json

import numpy as np
import pytest
import torch

from autocompress.engine.model import train_and_measure
from autocompress.export import create_session
from autocompress.measure.evaluation import onnx_logits
from autocompress.models import FAMILIES, build
from autocompress.spec import Target
from autocompress.train import TrainConfig, predict

SMALL_ARCHS = {
    "dlrm": {"embedding_dim": 16, "bottom_mlp": [32, 16], "top_mlp": [64, 32]},
    "deepfm": {"embedding_dim": 8, "deep_mlp": [64, 32]},
    "dcn_v2": {"embedding_dim": 8, "cross_layers": 2, "deep_mlp": [64, 32]},
    "two_tower": {"embedding_dim": 16, "tower_mlp": [64], "output_dim": 32},
    "din": {"embedding_dim": 8, "attention_mlp": [32], "mlp": [64, 32]},
}
TARGET = Target(batch_sizes=[1, 64], warmup=3, repetitions=20, max_seconds=2)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_beats_popularity_and_onnx_matches_torch(family, tiny_dataset, tmp_path):
    config = TrainConfig(epochs=3, batch_size=512, lr=3e-3, seed=0)
    report = train_and_measure(tiny_dataset, family, SMALL_ARCHS[family], config, TARGET, tmp_path)

    assert report.test["auc"] > report.popularity_auc + 0.02, report.test
    assert report.test["auc"] < report.oracle_auc  # the oracle is a real ceiling
    assert report.export_max_abs_diff <= 1e-4

    # what was served (ONNX Runtime) equals what was trained (torch), on the whole test split
    model = build(family, tiny_dataset.schema, report.arch)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    torch_logits = predict(model, tiny_dataset.test)
    ort_logits = onnx_logits(create_session(tmp_path / "model.onnx", TARGET), tiny_dataset.test)
    assert np.abs(torch_logits - ort_logits).max() <= 1e-4

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["test"]["auc"] == pytest.approx(report.test["auc"])
    rows = {r["batch_size"]: r for r in saved["latency"]["rows"]}
    assert set(rows) == {1, 64}
    assert 0 < rows[1]["p50_ms"] <= rows[1]["p99_ms"]
    assert report.size_bytes > 4 * report.parameters * 0.9  # fp32 weights are really in the file
    assert report.macs_per_example > 0


def test_candidates_are_measured_again_and_judged_on_the_quiet_figure(tmp_path):
    from autocompress.engine.comparison import remeasure_latency
    from autocompress.measure import measure_exclusively
    from autocompress.search.budget import Budget
    from autocompress.search.pareto import Candidate
    from autocompress.testing import tiny_setup

    setup = tiny_setup("dlrm")
    path = setup.compress(tmp_path / "model")
    target = Target(batch_sizes=[64], warmup=2, repetitions=30, max_seconds=1)
    budget = Budget(latency_ms=500.0, batch_size=64, percentile=99, size_mb=None, max_auc_drop=None)
    cache = tmp_path / "cache"
    # as if a neighbour's training step had landed in the trial's measurement
    busy = {"valid_auc": 0.7, "latency_ms": 900.0, "size_mb": 1.0, "onnx_path": str(path)}
    busy.update(feasible=False, violations=["latency"], distance_to_feasible=0.8)
    (confirmed,) = remeasure_latency(
        [Candidate.from_metrics("t1", busy)], setup.dataset, target, budget, cache
    )
    assert confirmed.metrics["latency_ms_in_trial"] == 900.0
    assert 0 < confirmed.latency_ms < 500.0 and confirmed.feasible and confirmed.metrics["violations"] == []
    # the cache now holds the quiet figure, so the test comparison reports the same one
    assert measure_exclusively(path, setup.dataset.schema, target, cache_dir=cache).at(64, 99) == (
        confirmed.latency_ms
    )


def test_a_candidate_measured_again_on_a_busy_node_says_so_and_the_comparison_too(tmp_path):
    """The job's re-measurement waits for a busy node, then keeps the figure with the busy warning;
    the test comparison reads the same (flagged) figure, so the job's events and report say it."""
    from autocompress.engine.comparison import compare_on_test, remeasure_latency
    from autocompress.search.budget import Budget
    from autocompress.search.pareto import Candidate
    from autocompress.testing import tiny_setup
    from tests.measure.test_busy import cpu_hogs

    setup = tiny_setup("dlrm")
    path = setup.compress(tmp_path / "model")
    target = Target(batch_sizes=[64], warmup=2, repetitions=30, max_seconds=0.5)
    budget = Budget(latency_ms=500.0, batch_size=64, percentile=99, size_mb=None, max_auc_drop=None)
    cache = tmp_path / "cache"
    trial = {"valid_auc": 0.7, "latency_ms": 1.0, "size_mb": 1.0, "onnx_path": str(path), "feasible": True}
    trial.update(violations=[], distance_to_feasible=0.0)
    remeasure_latency(
        [Candidate.from_metrics("t1", trial)], setup.dataset, target, budget, cache
    )  # quiet figure
    with cpu_hogs():
        (busy,) = remeasure_latency(
            [Candidate.from_metrics("t1", trial)], setup.dataset, target, budget, cache
        )
        rows = compare_on_test({"onnx_fp32": path}, setup.dataset, target, budget, cache)
    warning = busy.metrics["latency_busy_warning"]
    assert busy.metrics["latency_busy"] is True and warning.startswith("node busy while measuring latency")
    assert "still busy after 1 measurement(s)" in warning  # the suite waits for none (tests/conftest.py)
    assert rows[0]["busy_warning"] == warning


def test_the_test_comparison_checks_the_budget_again_on_the_figures_it_shows(tmp_path):
    """A model selected on the valid split is judged on the test split's figures, and says which bound
    it misses: the same latency cache entry the selection used, the test AUC against fp32's."""
    from autocompress.engine.comparison import compare_on_test
    from autocompress.measure import measure_exclusively
    from autocompress.search.budget import Budget
    from autocompress.techniques.dynamic_int8 import Config as DynamicInt8
    from autocompress.testing import tiny_setup

    setup = tiny_setup("dlrm")
    fp32 = setup.compress(tmp_path / "fp32")
    int8 = setup.compress(tmp_path / "int8", DynamicInt8(op_types=("MatMul", "Gemm", "Gather")))
    target = Target(batch_sizes=[64], warmup=2, repetitions=30, max_seconds=1)
    cache = tmp_path / "cache"
    selected_on = measure_exclusively(int8, setup.dataset.schema, target, cache_dir=cache).at(64, 95)
    fp32_mb = fp32.stat().st_size / 1e6

    def compare(latency_ms: float) -> dict:  # room for int8's size, not fp32's
        budget = Budget(
            latency_ms=latency_ms, batch_size=64, percentile=95, size_mb=fp32_mb * 0.6, max_auc_drop=0.5
        )
        rows = compare_on_test({"winner": int8, "onnx_fp32": fp32}, setup.dataset, target, budget, cache)
        return {r["name"]: r for r in rows}

    rows = compare(500.0)
    assert rows["winner"]["latency_ms"] == selected_on  # the figure it was selected on, not a new one
    assert rows["winner"]["violations"] == [] and rows["winner"]["within_budget"] is True
    assert rows["onnx_fp32"]["within_budget"] is False
    assert [v.split(" is ")[0] for v in rows["onnx_fp32"]["violations"]] == ["size"]
    # a bound the selection figure misses: the row says so and names it
    winner = compare(selected_on / 2)["winner"]
    assert winner["within_budget"] is False
    assert [v.split(" is ")[0] for v in winner["violations"]] == ["latency p95 at batch 64"]


def test_a_resumed_job_loads_its_reference_instead_of_training_it_again(tiny_dataset, tmp_path, monkeypatch):
    import autocompress.train
    from autocompress.engine.reference import train_reference

    config = TrainConfig(epochs=1, batch_size=512, lr=3e-3, seed=0, early_stopping_patience=None)
    first = train_reference("dlrm", tiny_dataset, config, tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("the reference was trained again")

    monkeypatch.setattr(autocompress.train, "fit", no_training)
    again = train_reference("dlrm", tiny_dataset, config, tmp_path)
    assert again.valid_auc == first.valid_auc and again.onnx_path == first.onnx_path
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert np.allclose(predict(again.model, tiny_dataset.valid), predict(first.model, tiny_dataset.valid))

    # another training config is another reference: trained, not loaded
    with pytest.raises(AssertionError, match="trained again"):
        train_reference("dlrm", tiny_dataset, TrainConfig(epochs=1, batch_size=256, seed=0), tmp_path)
