from __future__ import annotations

import pytest

from autocompress.errors import AutocompressError
from autocompress.search.budget import AUC_DROP_SCALE, Budget


def test_defaults_and_round_trip() -> None:
    budget = Budget()
    assert (budget.latency_ms, budget.batch_size, budget.percentile) == (None, 256, 99)
    assert budget.size_mb is None and budget.max_auc_drop is None
    full = Budget.from_dict(
        {"latency_ms": 1, "batch_size": 64, "percentile": 95, "size_mb": 2.5, "max_auc_drop": 0}
    )
    assert full.latency_ms == 1.0 and full.max_auc_drop == 0.0
    assert Budget.from_dict(full.to_dict()) == full


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"latency_ms": 0}, r"budget\.latency_ms: Input should be greater than 0"),
        ({"size_mb": -1.0}, r"budget\.size_mb: Input should be greater than 0"),
        ({"batch_size": 0}, r"budget\.batch_size: Input should be greater than or equal to 1"),
        ({"percentile": 90}, r"budget\.percentile: Input should be 50, 95 or 99"),
        ({"max_auc_drop": -0.01}, r"budget\.max_auc_drop: Input should be greater than or equal to 0"),
        ({"latencyms": 1.0}, r"budget\.latencyms: unknown field; allowed: \['batch_size', 'latency'"),
        ({"latency": 1.0}, r"budget\.latency: Input should be a valid dictionary"),
        (
            {"latency": {"speedup_vs": "onnx_fp16", "factor": 5}},
            r"budget\.latency\.speedup_vs: Input should be 'onnx_fp32' or 'ort_dynamic_int8'",
        ),
        (
            {"latency": {"speedup_vs": "onnx_fp32", "factor": 0}},
            r"budget\.latency\.factor: Input should be greater",
        ),
        ({"size": {"smaller_than": "onnx_fp32"}}, r"budget\.size\.factor: Field required"),
        ({"size": {"speedup_vs": "onnx_fp32", "factor": 2}}, r"budget\.size\.speedup_vs: unknown field"),
        (
            {"latency_ms": 1.0, "latency": {"speedup_vs": "onnx_fp32", "factor": 5}},
            r"give latency_ms \(absolute\) or latency \(relative to a baseline\), not both",
        ),
        ({"size_mb": 5, "size": {"smaller_than": "onnx_fp32", "factor": 5}}, r"give size_mb .* or size"),
    ],
)
def test_bad_values_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(AutocompressError, match=message):
        Budget.from_dict(data)


def test_no_bounds_means_every_candidate_is_feasible() -> None:
    result = Budget().check({})
    assert result.feasible and result.violations == [] and result.distance == 0.0


def test_violations_are_readable_and_the_distance_sums_the_overruns() -> None:
    budget = Budget(latency_ms=1.0, size_mb=2.0, max_auc_drop=0.001)
    result = budget.check({"latency_ms": 2.31, "size_mb": 3.0, "delta_auc": -0.006})
    assert not result.feasible
    assert result.violations == [
        "latency p99 at batch 256 is 2.31 ms > 1.00 ms",
        "size is 3.00 MB > 2.00 MB",
        "AUC drop vs the reference is 0.0060 > 0.0010 (max_auc_drop)",
    ]
    assert result.distance == pytest.approx(1.31 + 0.5 + 0.005 / AUC_DROP_SCALE)


def test_meeting_every_bound_is_feasible_at_distance_zero() -> None:
    budget = Budget(latency_ms=1.0, batch_size=64, percentile=50, size_mb=2.0, max_auc_drop=0.002)
    result = budget.check({"latency_ms": 1.0, "size_mb": 0.5, "delta_auc": 0.01})
    assert result.feasible and result.violations == [] and result.distance == 0.0
    tight = Budget(latency_ms=0.0005, batch_size=64, percentile=50).check({"latency_ms": 0.25})
    assert tight.violations == ["latency p50 at batch 64 is 0.25 ms > 0.0005 ms"]


def test_distance_ranks_the_closest_candidates_when_nobody_is_feasible() -> None:
    budget = Budget(latency_ms=1.0, size_mb=1.0)
    candidates = {
        "far": {"latency_ms": 4.0, "size_mb": 1.0},
        "near": {"latency_ms": 1.2, "size_mb": 1.1},
        "middle": {"latency_ms": 2.0, "size_mb": 0.5},
    }
    ranked = sorted(candidates, key=lambda name: budget.check(candidates[name]).distance)
    assert ranked == ["near", "middle", "far"]


def test_a_missing_metric_is_named() -> None:
    with pytest.raises(AutocompressError, match=r"budget\.latency_ms needs the metric 'latency_ms'"):
        Budget(latency_ms=1.0).check({"size_mb": 1.0})
    with pytest.raises(AutocompressError, match=r"budget\.max_auc_drop needs the metric 'delta_auc'"):
        Budget(max_auc_drop=0.0).check({"delta_auc": None})


def test_a_relative_budget_resolves_against_the_measured_baselines() -> None:
    from autocompress.search.budget import BaselineFigures

    rule = Budget.from_dict(
        {
            "latency": {"speedup_vs": "ort_dynamic_int8", "factor": 1.5},
            "size": {"smaller_than": "onnx_fp32", "factor": 20},
            "batch_size": 64,
            "max_auc_drop": 0.001,
        }
    )
    assert rule.relative and Budget.from_dict(rule.to_dict()) == rule
    with pytest.raises(AutocompressError, match="relative to a baseline; resolve them"):
        rule.check({"latency_ms": 1.0, "size_mb": 1.0, "delta_auc": 0.0})
    figures = {
        "onnx_fp32": BaselineFigures(latency_ms=4.0, size_mb=80.0),
        "ort_dynamic_int8": BaselineFigures(latency_ms=1.5, size_mb=20.0),
    }
    resolved = rule.resolve(figures)
    assert not resolved.relative
    assert resolved.latency_ms == pytest.approx(1.0) and resolved.size_mb == pytest.approx(4.0)
    assert (resolved.batch_size, resolved.percentile, resolved.max_auc_drop) == (64, 99, 0.001)
    assert resolved.check({"latency_ms": 0.9, "size_mb": 3.9, "delta_auc": 0.0}).feasible
    assert not resolved.check({"latency_ms": 1.1, "size_mb": 3.9, "delta_auc": 0.0}).feasible
    assert rule.describe() == {
        "latency": "latency p99 at batch 64 >= 1.5x faster than ort_dynamic_int8",
        "size": "size >= 20x smaller than onnx_fp32",
        "max_auc_drop": "valid AUC drop <= 0.0010",
    }
    assert Budget(latency_ms=2.0, size_mb=5).describe() == {
        "latency": "latency p99 at batch 256 <= 2.00 ms",
        "size": "size <= 5.00 MB",
    }
    # an absolute budget needs no baseline; a rule whose baseline was not measured is named
    assert Budget(latency_ms=2.0).resolve({}) == Budget(latency_ms=2.0)
    with pytest.raises(AutocompressError, match=r"budget\.latency\.speedup_vs: baseline 'ort_dynamic_int8'"):
        rule.resolve({"onnx_fp32": figures["onnx_fp32"]})


def test_a_preset_stating_one_form_of_a_bound_replaces_the_other() -> None:
    from autocompress.search.budget import merge_budgets

    base = {"latency": {"speedup_vs": "onnx_fp32", "factor": 4}, "size_mb": 10.0, "max_auc_drop": 0.002}
    merged = merge_budgets(base, {"latency_ms": 2.0, "size": {"smaller_than": "onnx_fp32", "factor": 9}})
    assert merged == {
        "latency_ms": 2.0,
        "size": {"smaller_than": "onnx_fp32", "factor": 9},
        "max_auc_drop": 0.002,
    }
    assert Budget.from_dict(merged).relative
    assert merge_budgets(base, {"max_auc_drop": 0.001})["latency"] == base["latency"]  # others inherited
