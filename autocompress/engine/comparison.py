"""Judging finished candidates on quiet figures: latency measured again, and the test-split comparison."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autocompress.data.table import Dataset
from autocompress.spec import Target

__all__ = ["baseline_figures", "compare_on_test", "remeasure_latency"]


def baseline_figures(
    baselines: Mapping[str, Path],
    dataset: Dataset,
    target: Target,
    budget: Any,
    cache_dir: Path,
    *,
    refresh: bool = False,
) -> dict[str, Any]:
    """Each baseline's latency at the budget's batch size and percentile on ``target``, and its size.

    What a relative budget is resolved against (``Budget.resolve``). The figures go to the same
    latency cache as every other measurement, so the test comparison reports the same ones;
    ``refresh`` measures again over a cached figure.
    """
    from autocompress.measure import onnx_size_bytes
    from autocompress.measure.placement import measure_on_target
    from autocompress.search.budget import BaselineFigures

    figures = {}
    for name, path in baselines.items():
        latency = measure_on_target(path, dataset.schema, target, cache_dir=cache_dir, refresh=refresh).report
        figures[name] = BaselineFigures(
            latency_ms=latency.at(budget.batch_size, budget.percentile),
            size_mb=onnx_size_bytes(path) / 1e6,
            busy_warning=latency.busy_warning,
        )
    return figures


def compare_on_test(
    models: Mapping[str, Path], dataset: Dataset, target: Target, budget: Any, cache_dir: Path
) -> list[dict[str, Any]]:
    """Test AUC, size and latency of each model, and each one's ratios to ``onnx_fp32`` (which must be there).

    Latency is measured with ``measure_on_target`` on ``target`` at 1 (when the target has it) and
    the budget's batch size; ``speedup_b256`` compares p50 at that batch size. ``latency_ms`` is the
    budget's percentile at its batch size, the figure a winner was selected on (the same cache
    entry), and ``within_budget`` / ``violations`` check the budget again on these final figures,
    the AUC drop being the test split's against ``onnx_fp32``.
    """
    from autocompress.export import create_session
    from autocompress.measure import onnx_size_bytes
    from autocompress.measure.evaluation import onnx_logits
    from autocompress.measure.placement import measure_on_target, runnable_here
    from autocompress.measure.quality import auc

    rows: list[dict[str, Any]] = []
    for name, path in models.items():
        session = create_session(path, runnable_here(target))
        latency = measure_on_target(path, dataset.schema, target, cache_dir=cache_dir).report
        rows.append(
            {
                "name": name,
                "test_auc": auc(dataset.test.labels, onnx_logits(session, dataset.test)),
                "size_mb": onnx_size_bytes(path) / 1e6,
                "p50_ms_b1": latency.at(1, 50) if 1 in target.batch_sizes else None,
                "p99_ms_b256": latency.at(budget.batch_size, 99),
                "p50_ms_b256": latency.at(budget.batch_size, 50),
                "latency_ms": latency.at(budget.batch_size, budget.percentile),
                "busy_warning": latency.busy_warning,
            }
        )
    base = next(r for r in rows if r["name"] == "onnx_fp32")
    for r in rows:
        r["delta_auc"] = r["test_auc"] - base["test_auc"]
        r["size_ratio"] = base["size_mb"] / r["size_mb"]
        r["speedup_b256"] = base["p50_ms_b256"] / r["p50_ms_b256"]
        feasibility = budget.check(r)
        r["within_budget"] = feasibility.feasible
        r["violations"] = list(feasibility.violations)
    return rows


def remeasure_latency(
    candidates: list[Any], dataset: Dataset, target: Target, budget: Any, cache_dir: Path
) -> list[Any]:
    """The finished candidates with latency measured again, one at a time, once no trial runs.

    In-trial figures are taken while other trials train on the same node; a p99 there can be a
    neighbour's training step. Here the busy check waits and measures again when the node is still
    busy (``measure.busy``; ``latency_busy_warning`` says so when it stays busy). The budget is
    checked again on the quiet figure (the in-trial one
    stays as ``latency_ms_in_trial``) and the cache entry is replaced, so the test comparison agrees.
    """
    from autocompress.measure.placement import measure_on_target
    from autocompress.search.pareto import Candidate

    confirmed = []
    for candidate in candidates:
        path = Path(str(candidate.metrics["onnx_path"]))
        latency = measure_on_target(path, dataset.schema, target, cache_dir=cache_dir, refresh=True).report
        metrics = {
            **candidate.metrics,
            "latency_ms_in_trial": candidate.metrics["latency_ms"],
            "latency_ms": latency.at(budget.batch_size, budget.percentile),
            "latency_busy": latency.busy,  # the figure the budget is judged on: its load, not the trial's
            "latency_busy_warning": latency.busy_warning,
        }
        feasibility = budget.check(metrics)
        metrics.update(
            feasible=feasibility.feasible,
            violations=list(feasibility.violations),
            distance_to_feasible=feasibility.distance,
        )
        confirmed.append(Candidate.from_metrics(candidate.trial_id, metrics))
    return confirmed
