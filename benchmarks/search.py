"""Searchers side by side at an equal trial budget, ASHA against none, and the winner against the baselines.

One run on the data, preset, budget and training recipe of ``examples/default_job.yaml`` (what
``make run`` searches): the reference DLRM is trained once and shared; then the same search space
is searched by ``random`` (the baseline), ``tpe``, ``nsga2`` and ``evolution`` with the same number
of trials, and by ``tpe`` with ASHA early stopping. Per search:

- best feasible valid AUC (the winner's quality within the budget), feasible trial count;
- hypervolume of quality x latency x size over the completed trials, in normalised units: AUC loss
  against the reference / 0.05, p99 latency at the budget's batch / fp32 ONNX's, size / fp32 ONNX's,
  all minimised, reference point (1, 1, 1) (so 1.0 would be a lossless, instant, empty model);
- trial-seconds: the sum of the trials' wall times (what the search cost the cluster).

Latency figures are those a job selects on: every finished candidate measured again, one at a time,
once the searches are over (``runner.remeasure_latency``), not the in-trial figures taken next to
another trial's training.

The overall winner (best feasible valid AUC over every search) is then measured on the test split
next to fp32 ONNX and ONNX Runtime dynamic int8 of the reference, exactly as a job reports it.
Writes ``benchmarks/results/search.json``. ``--quick`` runs on the tiny data (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from autocompress.data.registry import DatasetSpec, load_dataset
from autocompress.engine.comparison import baseline_figures, compare_on_test, remeasure_latency
from autocompress.engine.job import resolve_budget
from autocompress.engine.reference import baseline_models, train_reference
from autocompress.engine.trial import SharedResources, measured_target
from autocompress.engine.tuner import run_search
from autocompress.job import load_job_spec
from autocompress.measure import onnx_size_bytes
from autocompress.search.budget import Budget
from autocompress.search.pareto import Candidate, finished_candidates, select_winner
from autocompress.search.space import load_search_space
from autocompress.spec import SearchSettings
from autocompress.store import Store, TrialStatus

RESULTS = Path(__file__).parent / "results" / "search.json"
DEFAULT_JOB = Path(__file__).parent.parent / "examples" / "default_job.yaml"
SEARCHES: dict[str, dict[str, Any]] = {
    "random": {"searcher": "random"},
    "tpe": {"searcher": "tpe"},
    "nsga2": {"searcher": "nsga2"},
    "evolution": {"searcher": "evolution"},
    "tpe+asha": {"searcher": "tpe", "asha": True},
}
AUC_LOSS_SCALE = 0.05  # an AUC loss of 0.05 against the reference sits on the hypervolume's edge
COMPARED = (
    "test_auc",
    "delta_auc",
    "size_mb",
    "size_ratio",
    "speedup_b256",
    "p99_ms_b256",
    "latency_ms",
    "within_budget",
    "violations",
)


def hypervolume(candidates: list[Candidate], reference_auc: float, fp32_ms: float, fp32_mb: float) -> float:
    """Hypervolume of the candidates' (AUC loss, latency, size), normalised as the module says."""
    from optuna._hypervolume import compute_hypervolume

    points = np.array(
        [
            [(reference_auc - c.valid_auc) / AUC_LOSS_SCALE, c.latency_ms / fp32_ms, c.size_mb / fp32_mb]
            for c in candidates
        ]
    ).reshape(-1, 3)
    inside = points[(points < 1.0).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, np.ones(3)))


def run(quick: bool, trials: int, searches: list[str]) -> dict[str, Any]:
    import ray

    spec = load_job_spec(DEFAULT_JOB)
    if quick:
        spec = spec.model_copy(update={"dataset": DatasetSpec(kind="synthetic", scale="tiny")})
    space = load_search_space(spec.family, spec.preset, spec.search_space)
    budget = spec.budget or space.budget
    target = measured_target(spec.target, budget)
    train_config = spec.train_config()
    dataset = load_dataset(spec.dataset)
    work = Path(tempfile.mkdtemp(prefix="ac-bench-search-"))
    console = Console(stderr=True)
    console.print(f"data {dataset.name}; training the reference; work folder {work}")
    reference = train_reference(spec.family, dataset, train_config, work)
    cache_dir = work / "latency-cache"
    # the baselines first, as a job does: the preset's budget is relative to them
    baselines = baseline_models(reference, dataset, work)
    figures = baseline_figures(baselines, dataset, target, budget, cache_dir)
    budget_record = resolve_budget(budget, figures)
    budget = Budget.from_dict(budget_record["resolved"])
    fp32_ms, fp32_mb = figures["onnx_fp32"].latency_ms, figures["onnx_fp32"].size_mb
    shared = SharedResources(
        dataset=dataset,
        teacher=reference.model,
        reference_valid_auc=reference.valid_auc,
        target=target,
        budget=budget,
        work_dir=work / "trials",
        cache_dir=cache_dir,
        reference_size_bytes=onnx_size_bytes(reference.onnx_path),
    )
    from autocompress.local_ray import local_ray_env

    local_ray_env()  # a Ray of our own on this machine (autocompress.local_ray)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    store = Store(work / "bench.db")
    results: dict[str, Any] = {}
    pool: list[Candidate] = []
    configs: dict[str, dict[str, Any]] = {}  # trial -> its architecture and policy, for the winner's record
    for label in searches:
        settings = SearchSettings.model_validate(
            {**spec.search.model_dump(), **SEARCHES[label], "num_trials": trials, "seed": 0}
        )
        job = store.create_job({"benchmark": label}, name=label)
        console.print(f"searching with {label}: {trials} trials")
        started = time.perf_counter()
        run_search(
            space,
            settings,
            shared,
            store=store,
            job_id=job.id,
            name=label,
            train_config=train_config,
            distill=spec.distill,
        )
        wall = time.perf_counter() - started
        records = store.list_trials(job.id)
        configs.update({r.trial_key: r.config for r in records})
        completed = finished_candidates(records)
        results[label] = {
            "trials": len(records),
            "completed": completed,
            "stopped": sum(r.status == TrialStatus.STOPPED for r in records),
            "failed": sum(r.status == TrialStatus.FAILED for r in records),
            "trial_seconds": sum(r.seconds or 0.0 for r in records),
            "wall_seconds": wall,
        }
    ray.shutdown()

    # as a job does: every finished candidate measured again, one at a time, once no trial runs
    unique = {c.trial_id: c for r in results.values() for c in r["completed"]}
    confirmed = {
        c.trial_id: c for c in remeasure_latency(list(unique.values()), dataset, target, budget, cache_dir)
    }
    for r in results.values():
        completed = [confirmed[c.trial_id] for c in r.pop("completed")]
        feasible = [c for c in completed if c.feasible]
        r["completed"] = len(completed)
        r["feasible"] = len(feasible)
        r["best_feasible_valid_auc"] = max((c.valid_auc for c in feasible), default=None)
        r["hypervolume"] = hypervolume(completed, reference.valid_auc, fp32_ms, fp32_mb)
        r["candidates"] = completed
        pool += completed
    selection = select_winner(pool)
    models = dict(baselines)
    if selection.winner is not None:
        models = {"winner": Path(str(selection.winner.metrics["onnx_path"])), **models}
    rows = {r["name"]: r for r in compare_on_test(models, dataset, target, budget, cache_dir)}
    winner_searcher = None
    if selection.winner is not None:
        winner_searcher = next(n for n, r in results.items() if selection.winner in r["candidates"])
    for r in results.values():
        del r["candidates"]
    return {
        "dataset": dataset.name,
        "preset": f"{spec.family}/{spec.preset}",
        "budget": budget_record,
        "trials_per_search": trials,
        "reference_valid_auc": reference.valid_auc,
        "reference": reference_figures(reference, dataset, rows["onnx_fp32"]["test_auc"]),
        "winner": None
        if selection.winner is None
        else {
            "trial": selection.winner.trial_id,
            "searcher": winner_searcher,
            "config": configs.get(selection.winner.trial_id),
            "techniques": selection.winner.metrics.get("techniques"),
            **{k: rows["winner"][k] for k in COMPARED},
        },
        "no_winner_reason": selection.reason,
        "ort_dynamic_int8": {k: rows["ort_dynamic_int8"][k] for k in COMPARED},
        "onnx_fp32": {k: rows["onnx_fp32"][k] for k in COMPARED},
        "searchers": results,
    }


def reference_figures(reference: Any, dataset: Any, test_auc: float) -> dict[str, Any]:
    """The reference alone: its architecture and parameters, its AUCs, and the ceiling and floor beside them.

    The oracle scores the synthetic log's hidden click logit (the best any model can do); popularity
    scores each item by its click count in the train split (what a count does).
    """
    import torch

    from autocompress.measure import parameter_count
    from autocompress.measure.baselines import popularity_auc

    tables = [
        m for m in reference.model.modules() if isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag)
    ]
    embeddings = sum(t.weight.numel() for t in tables)
    params = parameter_count(reference.model)
    return {
        "arch": reference.model.arch.to_dict(),
        "params": params,
        "embedding_share": embeddings / params,
        "valid_auc": reference.valid_auc,
        "test_auc": test_auc,
        "oracle_test_auc": dataset.oracle_auc,
        "popularity_test_auc": popularity_auc(dataset, "test"),
    }


def targets(result: dict[str, Any]) -> dict[str, bool]:
    """The targets: the winner dominates ORT dynamic int8; >= 16x smaller and 5x faster at ΔAUC >= -0.002."""
    winner, int8 = result["winner"], result["ort_dynamic_int8"]
    if winner is None:
        return {"dominates_ort_dynamic_int8": False, "16x_smaller_5x_faster_at_-0.002": False}
    return {
        "dominates_ort_dynamic_int8": winner["test_auc"] > int8["test_auc"]
        and winner["p99_ms_b256"] < int8["p99_ms_b256"]
        and winner["size_ratio"] > int8["size_ratio"],
        "16x_smaller_5x_faster_at_-0.002": winner["size_ratio"] >= 16
        and winner["speedup_b256"] >= 5
        and winner["delta_auc"] >= -0.002,
    }


def print_tables(result: dict[str, Any]) -> None:
    console = Console()
    searchers = Table(title=f"searchers, {result['trials_per_search']} trials each ({result['preset']})")
    for col in ("search", "done", "stopped", "failed", "feasible", "best AUC", "hypervolume", "trial-s"):
        searchers.add_column(col, justify="right")
    base = result["searchers"].get("random")
    for name, s in result["searchers"].items():
        best = s["best_feasible_valid_auc"]
        hv = f"{s['hypervolume']:.4f}"
        if base and base["hypervolume"] > 0 and name != "random":
            hv += f" ({s['hypervolume'] / base['hypervolume']:.2f}x random)"
        searchers.add_row(
            name,
            str(s["completed"]),
            str(s["stopped"]),
            str(s["failed"]),
            str(s["feasible"]),
            "-" if best is None else f"{best:.4f}",
            hv,
            f"{s['trial_seconds']:.0f}",
        )
    console.print(searchers)
    comparison = Table(title="test split, side by side")
    for col in ("model", "test AUC", "ΔAUC", "smaller", "b256 speed-up", "b256 p99 ms", "in budget"):
        comparison.add_column(col, justify="right")
    for name in ("winner", "ort_dynamic_int8", "onnx_fp32"):
        r = result[name]
        if r is None:
            comparison.add_row(name, result["no_winner_reason"] or "-", "", "", "", "", "")
            continue
        comparison.add_row(
            name,
            f"{r['test_auc']:.4f}",
            f"{r['delta_auc']:+.4f}",
            f"{r['size_ratio']:.1f}x",
            f"{r['speedup_b256']:.2f}x",
            f"{r['p99_ms_b256']:.3f}",
            "yes" if r["within_budget"] else "no",
        )
    console.print(comparison)
    for name, met in result["targets"].items():
        console.print(f"target {name}: {'met' if met else 'MISSED'}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny data: a smoke run")
    parser.add_argument("--trials", type=int, default=8, help="trials per search (default 8)")
    parser.add_argument(
        "--searches", default=",".join(SEARCHES), help=f"comma-separated subset of {list(SEARCHES)}"
    )
    args = parser.parse_args()
    searches = [s.strip() for s in args.searches.split(",") if s.strip()]
    unknown = [s for s in searches if s not in SEARCHES]
    if unknown:
        parser.error(f"--searches: unknown {unknown}; allowed: {list(SEARCHES)}")
    result = run(args.quick, args.trials, searches)
    result["targets"] = targets(result)
    print_tables(result)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True, default=float) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
