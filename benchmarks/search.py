"""Two-stage against per-trial search at an equal wall-clock budget, rank fidelity, stage-1 searchers, and
the winner against the baselines (issue 17's "Must show").

One run on the data, preset, budget and training recipe of ``examples/default_job.yaml`` (what
``make run`` searches: DLRM, preset ``realtime``, the default synthetic data): the reference is
trained once and the baselines measured before the searches, the preset's relative budget resolved
on them; every part below shares them. Once every search is over, the baselines are measured again
and the budget resolved again on them (``final_budget``), as a job does, before the finished
candidates are measured again and judged.

- ``per_trial``: the job's per-trial search (its searcher, TPE) for ``--minutes`` of wall clock. The
  engine's ``run_search`` has no time limit of its own, so it gets more trials than fit and the
  benchmark stops it at the deadline through the engine's cancel path (the job's cancel flag, read
  by its ``CancelStopper``); trials still running then are stopped and not counted.
- one supernet (``prepare_supernet``, the two-stage search's stage 0), trained once and shared by
  the stage-1 searcher runs and the two-stage run, which loads it; its training time is counted in
  the two-stage run's wall time.
- ``searchers.<name>``: random, TPE, NSGA-II and evolution on stage 1 only (``run_stage_one``),
  ``--candidates`` each, seeds ``--seeds``; hypervolume per seed, its mean and spread.
- ``kendall_tau``: rank fidelity between the stage-1 AUC (inherited weights, valid sample) and the
  stage-2 AUC (fine-tuned from the inherited weights as stage 2 does, full valid split) of
  ``--tau-candidates`` candidates spread over the stage-1 AUC range: evenly spaced ranks of the
  random searcher's seed-0 stage-1 candidates (a uniform sample of the space), not only the top,
  since a top-k-only tau is range-restricted. Outside the budget of either search.
- ``two_stage``: the same job with ``search.strategy: two_stage`` (``run_two_stage``: supernet
  loaded, stage 1, stage 2 on the ``top_k`` finalists). Stage 1 cannot be stopped at a deadline
  without losing stage 2, so its candidate count is sized to the budget before it starts: the
  stage-1 rate of the job's searcher measured above x (budget - supernet seconds - stage 2 as long
  as the Kendall-tau fine-tunes took); its actual wall time, supernet included, is reported next
  to the budget. Candidates evaluated: the stage-1 candidates scored (the finalists are some of
  them again).

Hypervolume: quality x latency x size in normalised units, AUC loss against the reference
(``-delta_auc``; a stage-1 candidate's against the reference on the same valid sample) / 0.05, p99
latency at the budget's batch / fp32 ONNX's, size / fp32 ONNX's, all minimised, reference point
(1, 1, 1). Per-trial and stage-2 candidates are measured again one at a time once every search is
over (``remeasure_latency``), as a job does, and normalised by fp32's figure measured then; stage-1
figures are the in-trial ones the searchers saw, normalised by fp32's from the start. The two-stage
winner (best feasible valid AUC of its stage 2) and the per-trial winner are then measured on the
test split next to fp32 ONNX and ONNX Runtime dynamic int8 of the reference.

Writes ``benchmarks/results/search.json``. ``--quick``: the tiny synthetic data and small counts (a
smoke run of every part; writes nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from autocompress.data.registry import DatasetSpec, load_dataset
from autocompress.engine.cancel import JobCancelled
from autocompress.engine.comparison import baseline_figures, compare_on_test, remeasure_latency
from autocompress.engine.job import final_budget, resolve_budget
from autocompress.engine.reference import baseline_models, train_reference
from autocompress.engine.trial import SharedResources, measured_target
from autocompress.engine.tuner import run_search
from autocompress.engine.two_stage import (
    FINETUNE_LR_SCALE,
    SUPERNET_FILE,
    prepare_supernet,
    run_stage_one,
    run_two_stage,
)
from autocompress.job import load_job_spec
from autocompress.measure import onnx_size_bytes
from autocompress.search.budget import Budget
from autocompress.search.pareto import Candidate, finished_candidates, select_winner
from autocompress.search.space import load_search_space
from autocompress.spec import SearchSettings
from autocompress.store import JobStatus, Store, TrialRecord, TrialStatus

RESULTS = Path(__file__).parent / "results" / "search.json"
DEFAULT_JOB = Path(__file__).parent.parent / "examples" / "default_job.yaml"
SEARCHERS = ("random", "tpe", "nsga2", "evolution")
AUC_LOSS_SCALE = 0.05  # an AUC loss of 0.05 against the reference sits on the hypervolume's edge
PER_TRIAL_MAX_TRIALS = 1000  # more than fit in any budget: the deadline stops the search
DEADLINE = "the benchmark's deadline"
# the issue's sizes: a target measured on less is reported missed
ISSUE_CANDIDATES, ISSUE_SEEDS, ISSUE_TAU_CANDIDATES = 300, 3, 20
# --quick: the tiny data, small counts; stage 1 and 2 as small as the two-stage test's
QUICK = {"minutes": 2.0, "candidates": 8, "seeds": "0,1", "tau_candidates": 4}
QUICK_TWO_STAGE = {
    "supernet_epochs": 1,
    "candidates_per_trial": 4,
    "top_k": 2,
    "valid_sample_rows": 500,
    "finetune_epochs": 1,
}
COMPARED = (
    "test_auc",
    "delta_auc",
    "size_mb",
    "size_ratio",
    "speedup_b256",
    "p50_ms_b256",
    "p99_ms_b256",
    "latency_ms",
    "within_budget",
    "violations",
)


def hypervolume(candidates: list[Candidate], fp32_ms: float, fp32_mb: float) -> float:
    """Hypervolume of the candidates' (AUC loss, latency, size), normalised as the module says."""
    from optuna._hypervolume import compute_hypervolume

    points = np.array(
        [
            [-float(c.metrics["delta_auc"]) / AUC_LOSS_SCALE, c.latency_ms / fp32_ms, c.size_mb / fp32_mb]
            for c in candidates
        ]
    ).reshape(-1, 3)
    inside = points[(points < 1.0).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, np.ones(3)))


def kendall_tau(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b of two paired samples (scipy is not installed); None when either is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    upper = np.triu_indices(len(a), k=1)
    sx = np.sign(a[:, None] - a[None, :])[upper]
    sy = np.sign(b[:, None] - b[None, :])[upper]
    denominator = math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
    return float((sx * sy).sum()) / denominator if denominator > 0 else None


def summary(candidates: list[Candidate], fp32_ms: float, fp32_mb: float) -> dict[str, Any]:
    """Completed and feasible counts, best feasible valid AUC and hypervolume of some candidates."""
    feasible = [c for c in candidates if c.feasible]
    return {
        "completed": len(candidates),
        "feasible": len(feasible),
        "best_feasible_valid_auc": max((c.valid_auc for c in feasible), default=None),
        "hypervolume": hypervolume(candidates, fp32_ms, fp32_mb),
    }


def counts(records: list[TrialRecord]) -> dict[str, int]:
    """Trials by status (a per-trial search's trials still running at its deadline as ``running``)."""
    return {s.value.lower(): sum(r.status is s for r in records) for s in TrialStatus}


def signature(record: TrialRecord) -> str:
    """A candidate's architecture and policy as one string: the same candidate in stage 1 and stage 2."""
    return json.dumps([record.config.get("arch"), record.config.get("policy")], sort_keys=True)


def spread_sample(records: list[TrialRecord], k: int) -> dict[str, TrialRecord]:
    """``k`` completed stage-1 candidates of distinct configs at evenly spaced ranks of their valid AUC."""
    ranked: dict[str, TrialRecord] = {}
    for record in sorted(
        (r for r in records if r.config.get("stage") == 1 and r.status is TrialStatus.COMPLETED),
        key=lambda r: float(r.metrics["valid_auc"]),
    ):
        ranked.setdefault(signature(record), record)
    keys = list(ranked)
    chosen = sorted({round(i) for i in np.linspace(0, len(keys) - 1, k)}) if keys else []
    return {keys[i]: ranked[keys[i]] for i in chosen}


def run_cost(records: list[TrialRecord], started: datetime) -> tuple[float, float | None]:
    """A Tune run's start-up seconds (until its first trial started) and its trials' median seconds."""
    starts = [r.started_at for r in records if r.started_at is not None]
    start_up = (min(starts) - started).total_seconds() if starts else 0.0
    seconds = [r.seconds for r in records if r.status is TrialStatus.COMPLETED and r.seconds is not None]
    return max(start_up, 0.0), statistics.median(seconds) if seconds else None


def new_job(store: Store, label: str) -> str:
    """A job of the benchmark's store, RUNNING (so that a cancel flags it rather than ending it)."""
    job = store.create_job({"benchmark": label}, name=label)
    store.set_job_status(job.id, JobStatus.RUNNING)
    return job.id


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    spec = load_job_spec(DEFAULT_JOB)
    two_stage_options = spec.search.two_stage.model_dump()
    if args.quick:
        spec = spec.model_copy(update={"dataset": DatasetSpec(kind="synthetic", scale="tiny")})
        two_stage_options |= QUICK_TWO_STAGE
    if args.supernet_epochs is not None:
        two_stage_options["supernet_epochs"] = args.supernet_epochs
    search = SearchSettings.model_validate(
        {**spec.search.model_dump(), "two_stage": two_stage_options, "seed": 0}
    )
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
    budget_s = 60.0 * args.minutes
    run_args = {"train_config": train_config, "distill": spec.distill}

    # -- per-trial search, stopped at the deadline ---------------------------------------------------
    per_trial_job = new_job(store, "per_trial")
    console.print(f"per-trial search with {search.searcher} for {args.minutes:g} min")
    deadline = threading.Timer(budget_s, store.request_cancel, args=(per_trial_job,), kwargs={"by": DEADLINE})
    started, per_trial_started = time.perf_counter(), datetime.now(UTC)
    deadline.start()
    try:
        run_search(
            space,
            search.model_copy(update={"num_trials": PER_TRIAL_MAX_TRIALS}),
            shared,
            store=store,
            job_id=per_trial_job,
            name="per_trial",
            **run_args,
        )
    except JobCancelled:
        pass  # the deadline
    finally:
        deadline.cancel()
    per_trial_wall = time.perf_counter() - started
    per_trial_records = store.list_trials(per_trial_job)

    # -- the supernet, trained once ---------------------------------------------------------------
    console.print(f"training the supernet ({two_stage_options['supernet_epochs']} epoch(s))")
    supernet_path = work / SUPERNET_FILE
    started = time.perf_counter()
    supernet, _ = prepare_supernet(
        space,
        shared,
        search.two_stage,
        train_config,
        supernet_path,
        store=store,
        job_id=new_job(store, "supernet"),
    )
    supernet_seconds = time.perf_counter() - started

    # -- stage-1 searchers ------------------------------------------------------------------------
    searchers: dict[str, Any] = {}
    stage_one_jobs: dict[tuple[str, int], str] = {}
    for name in args.searchers:
        runs = []
        for seed in args.seeds:
            settings = search.model_copy(
                update={
                    "searcher": name,
                    "seed": seed,
                    "two_stage": search.two_stage.model_copy(update={"candidates": args.candidates}),
                }
            )
            job_id = stage_one_jobs[name, seed] = new_job(store, f"stage1-{name}-{seed}")
            console.print(f"stage 1 with {name}, seed {seed}: {args.candidates} candidates")
            outcome = run_stage_one(
                space,
                settings,
                shared,
                supernet,
                store=store,
                job_id=job_id,
                name=f"stage1-{name}-{seed}",
                **run_args,
            )
            records = store.list_trials(job_id)
            runs.append(
                {
                    "seed": seed,
                    "scored": outcome.scored,
                    "seconds": outcome.seconds,
                    **counts(records),
                    **summary(finished_candidates(records, stage=1), fp32_ms, fp32_mb),
                }
            )
        volumes = [r["hypervolume"] for r in runs]
        best = [r["best_feasible_valid_auc"] for r in runs if r["best_feasible_valid_auc"] is not None]
        searchers[name] = {
            "hypervolume_mean": statistics.fmean(volumes),
            "hypervolume_std": statistics.pstdev(volumes),
            "hypervolume_per_seed": volumes,
            "best_valid_auc_mean": statistics.fmean(best) if best else None,
            "best_valid_auc_per_seed": [r["best_feasible_valid_auc"] for r in runs],
            "candidates_min": min(r["scored"] for r in runs),
            "candidates_per_second": sum(r["scored"] for r in runs) / sum(r["seconds"] for r in runs),
            "seeds": runs,
            # what readme_tables.search_searchers reads: all seeds together
            "hypervolume": statistics.fmean(volumes),
            "best_feasible_valid_auc": max(best, default=None),
            **{k: sum(r[k] for r in runs) for k in ("completed", "stopped", "failed", "feasible")},
            "trial_seconds": sum(r["seconds"] for r in runs),
        }

    # -- rank fidelity: stage-1 candidates spread over the AUC range, fine-tuned as stage 2 does --
    options = search.two_stage
    source = ("random" if "random" in args.searchers else args.searchers[0], args.seeds[0])
    picks = spread_sample(store.list_trials(stage_one_jobs[source]), args.tau_candidates)
    tau_job = new_job(store, "kendall_tau")
    console.print(f"rank fidelity: fine-tuning {len(picks)} stage-1 candidates spread over the AUC range")
    tau_started = datetime.now(UTC)
    if picks:
        run_search(
            space,
            search,
            dataclasses.replace(shared, supernet=supernet),
            store=store,
            job_id=tau_job,
            name="kendall_tau",
            train_config=dataclasses.replace(
                train_config, epochs=options.finetune_epochs, lr=train_config.lr * FINETUNE_LR_SCALE
            ),
            distill=spec.distill,
            points=[r.config["sampled"] for r in picks.values()],
            stage=2,
        )
    tau_records = store.list_trials(tau_job)
    pairs = [
        {"stage1_auc": float(picks[key].metrics["valid_auc"]), "stage2_auc": float(r.metrics["valid_auc"])}
        for r in tau_records
        if r.status is TrialStatus.COMPLETED and (key := signature(r)) in picks
    ]
    tau = kendall_tau([p["stage1_auc"] for p in pairs], [p["stage2_auc"] for p in pairs])

    # -- the two-stage search, sized to the budget -------------------------------------------------
    rate = searchers.get(search.searcher, {}).get("candidates_per_second") or (
        statistics.fmean(s["candidates_per_second"] for s in searchers.values()) if searchers else None
    )
    # stage 2 as long as the Kendall tau fine-tunes took (the same pipeline), else as per-trial trials
    start_up, trial_s = run_cost(tau_records, tau_started)
    if trial_s is None:
        start_up, trial_s = run_cost(per_trial_records, per_trial_started)
    stage_two_estimate = start_up + math.ceil(options.top_k / search.max_concurrent) * (trial_s or 0.0)
    per_batch = options.candidates_per_trial
    if rate is None:
        candidates = options.candidates
    else:
        fit = int(0.9 * rate * (budget_s - supernet_seconds - stage_two_estimate)) // per_batch * per_batch
        candidates = max(fit, per_batch, options.top_k)
    console.print(
        f"two-stage search: {candidates} stage-1 candidates (sized to the budget), top {options.top_k}"
    )
    two_stage_job = new_job(store, "two_stage")
    started = time.perf_counter()
    outcome = run_two_stage(
        space,
        search.model_copy(
            update={
                "strategy": "two_stage",
                "two_stage": options.model_copy(update={"candidates": candidates}),
            }
        ),
        shared,
        store=store,
        job_id=two_stage_job,
        name="two_stage",
        supernet_path=supernet_path,  # loaded: trained above, its seconds counted here
        **run_args,
    )
    two_stage_run = time.perf_counter() - started
    two_stage_records = store.list_trials(two_stage_job)
    ray.shutdown()

    # -- as a job does: finished candidates measured again, one at a time, once no trial runs ------
    console.print("measuring the baselines and the finished per-trial and stage-2 candidates again")
    budget_record = final_budget(budget_record, baselines, dataset, target, cache_dir)
    budget = Budget.from_dict(budget_record["resolved"])
    end_fp32_ms = budget_record["baselines"]["onnx_fp32"]["latency_ms"]
    per_trial_done = remeasure_latency(
        finished_candidates(per_trial_records), dataset, target, budget, cache_dir
    )
    two_stage_done = remeasure_latency(
        finished_candidates(two_stage_records), dataset, target, budget, cache_dir
    )
    winners = {"winner": select_winner(two_stage_done), "per_trial_winner": select_winner(per_trial_done)}
    models = {name: Path(str(s.winner.metrics["onnx_path"])) for name, s in winners.items() if s.winner}
    console.print("measuring the winners and the baselines on the test split")
    rows = {
        r["name"]: r for r in compare_on_test({**models, **baselines}, dataset, target, budget, cache_dir)
    }

    def test_row(name: str) -> dict[str, Any] | None:
        return {k: rows[name][k] for k in COMPARED} if name in rows else None

    def best_test_auc(name: str) -> float | None:
        return rows[name]["test_auc"] if name in rows else None

    per_trial_completed = len(per_trial_done)
    stage_one = outcome.stage_one
    two_stage_wall = supernet_seconds + two_stage_run
    winner = winners["winner"].winner
    configs = {r.trial_key: r.config for r in two_stage_records}
    return {
        "dataset": dataset.name,
        "preset": f"{spec.family}/{spec.preset}",
        "budget": budget_record,
        "minutes": args.minutes,
        "machine": "local Ray, 2 CPUs, 2 concurrent trials, no GPU",
        "settings": {
            "searcher": search.searcher,
            "two_stage": options.model_dump(),
            "stage1_candidates_per_searcher": args.candidates,
            "seeds": args.seeds,
            "tau_candidates": args.tau_candidates,
        },
        "reference_valid_auc": reference.valid_auc,
        "reference": reference_figures(reference, dataset, rows["onnx_fp32"]["test_auc"]),
        "per_trial": {
            "searcher": search.searcher,
            "candidates": per_trial_completed,
            **counts(per_trial_records),
            "trials_started": len(per_trial_records),
            "wall_seconds": per_trial_wall,
            "trial_seconds_median": run_cost(per_trial_records, per_trial_started)[1],
            **summary(per_trial_done, end_fp32_ms, fp32_mb),
            "best_feasible_test_auc": best_test_auc("per_trial_winner"),
            "winner": test_row("per_trial_winner"),
            "candidates_per_hour": 3600.0 * per_trial_completed / per_trial_wall,
        },
        "two_stage": {
            "searcher": search.searcher,
            "candidates": stage_one.scored,
            "stage1_candidates": stage_one.scored,
            "stage1_counts": stage_one.counts,
            "stage2_trials": len(two_stage_done),
            "finalists": outcome.finalists,
            "supernet_seconds": supernet_seconds,
            "stage1_seconds": stage_one.seconds,
            "stage2_seconds": two_stage_run - stage_one.seconds,
            "stage2_estimate_seconds": stage_two_estimate,
            "wall_seconds": two_stage_wall,
            "within_budget": two_stage_wall <= budget_s,
            **summary(two_stage_done, end_fp32_ms, fp32_mb),
            "stage1_hypervolume": hypervolume(
                finished_candidates(two_stage_records, stage=1), fp32_ms, fp32_mb
            ),
            "best_feasible_test_auc": best_test_auc("winner"),
            "candidates_per_hour": 3600.0 * stage_one.scored / two_stage_wall,
        },
        "kendall_tau": tau,
        "kendall_tau_detail": {
            "sample": "evenly spaced ranks of the stage-1 AUC (a spread over its range, not the top)",
            "source": f"stage 1 of the {source[0]} searcher, seed {source[1]}",
            "candidates": len(pairs),
            "pairs": pairs,
        },
        "searchers": searchers,
        "winner": None
        if winner is None
        else {
            "trial": winner.trial_id,
            "searcher": f"two_stage ({search.searcher})",
            "config": configs.get(winner.trial_id),
            "techniques": winner.metrics.get("techniques"),
            **(test_row("winner") or {}),
        },
        "no_winner_reason": winners["winner"].reason,
        "ort_dynamic_int8": test_row("ort_dynamic_int8"),
        "onnx_fp32": test_row("onnx_fp32"),
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
    """Issue 17's targets, each true or false; one measured on less than the issue asks is false."""
    per_trial, two_stage, searchers = result["per_trial"], result["two_stage"], result["searchers"]
    winner, int8 = result["winner"], result["ort_dynamic_int8"]
    model_based = [searchers[n]["hypervolume_mean"] for n in ("tpe", "nsga2", "evolution") if n in searchers]
    full_size = len(searchers) == len(SEARCHERS) and all(
        s["candidates_min"] >= ISSUE_CANDIDATES and len(s["seeds"]) >= ISSUE_SEEDS for s in searchers.values()
    )
    tau = result["kendall_tau"]
    return {
        "two_stage_20x_candidates_per_hour": two_stage["candidates_per_hour"]
        >= 20 * per_trial["candidates_per_hour"],
        "kendall_tau_at_least_0.6_over_20": tau is not None
        and tau >= 0.6
        and result["kendall_tau_detail"]["candidates"] >= ISSUE_TAU_CANDIDATES,
        "best_searcher_beats_random_on_stage_1": full_size
        and max(model_based) > searchers["random"]["hypervolume_mean"],
        "30x_smaller_8x_faster_at_-0.002": winner is not None
        and winner["size_ratio"] >= 30
        and winner["speedup_b256"] >= 8
        and winner["delta_auc"] >= -0.002,
        "dominates_ort_dynamic_int8": winner is not None
        and winner["test_auc"] > int8["test_auc"]
        and winner["p99_ms_b256"] < int8["p99_ms_b256"]
        and winner["size_ratio"] > int8["size_ratio"],
    }


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_tables(result: dict[str, Any]) -> None:
    console = Console()
    budget = Table(
        title=f"equal wall-clock budget: {result['minutes']:g} min ({result['preset']}, {result['dataset']})"
    )
    for col in (
        "search",
        "candidates",
        "wall s",
        "cand/hour",
        "feasible/done",
        "best valid AUC",
        "best test AUC",
        "hypervolume",
    ):
        budget.add_column(col, justify="right")
    per_trial, two_stage = result["per_trial"], result["two_stage"]
    for name, s, done in (
        ("per_trial", per_trial, per_trial["completed"]),
        ("two_stage", two_stage, two_stage["stage2_trials"]),
    ):
        budget.add_row(
            f"{name} ({s['searcher']})",
            str(s["candidates"]),
            f"{s['wall_seconds']:.0f}",
            f"{s['candidates_per_hour']:.0f}",
            f"{s['feasible']}/{done}",
            _auc(s["best_feasible_valid_auc"]),
            _auc(s["best_feasible_test_auc"]),
            f"{s['hypervolume']:.4f}",
        )
    console.print(budget)
    ratio = two_stage["candidates_per_hour"] / max(per_trial["candidates_per_hour"], 1e-9)
    console.print(
        f"two-stage: supernet {two_stage['supernet_seconds']:.0f} s + stage 1 "
        f"{two_stage['stage1_seconds']:.0f} s + stage 2 {two_stage['stage2_seconds']:.0f} s "
        f"({two_stage['stage2_trials']} finalists; estimated {two_stage['stage2_estimate_seconds']:.0f} s); "
        f"{'within' if two_stage['within_budget'] else 'OVER'} the budget; {ratio:.1f}x the per-trial "
        "candidates per hour; stage-1 hypervolume "
        f"{two_stage['stage1_hypervolume']:.4f}"
    )
    detail = result["kendall_tau_detail"]
    tau = result["kendall_tau"]
    console.print(
        f"rank fidelity: Kendall tau {'-' if tau is None else f'{tau:.3f}'} between stage-1 and stage-2 AUC "
        f"over {detail['candidates']} candidates ({detail['sample']}; from {detail['source']})"
    )
    seeds = result["settings"]["seeds"]
    searchers = Table(
        title=f"stage-1 searchers, {result['settings']['stage1_candidates_per_searcher']} candidates x "
        f"seeds {','.join(map(str, seeds))}"
    )
    for col in ("searcher", "hypervolume mean ± std", "per seed", "best valid AUC (mean)", "cand/s"):
        searchers.add_column(col, justify="right")
    base = result["searchers"].get("random")
    for name, s in result["searchers"].items():
        hv = f"{s['hypervolume_mean']:.4f} ± {s['hypervolume_std']:.4f}"
        if base and base["hypervolume_mean"] > 0 and name != "random":
            hv += f" ({s['hypervolume_mean'] / base['hypervolume_mean']:.2f}x random)"
        searchers.add_row(
            name,
            hv,
            " ".join(f"{v:.3f}" for v in s["hypervolume_per_seed"]),
            _auc(s["best_valid_auc_mean"]),
            f"{s['candidates_per_second']:.2f}",
        )
    console.print(searchers)
    console.print(
        "model budget, as the finished candidates were judged: "
        + "; ".join(result["budget"]["text"].values())
    )
    comparison = Table(title="test split, side by side")
    for col in ("model", "test AUC", "ΔAUC", "smaller", "b256 p50 speed-up", "b256 p99 ms", "in budget"):
        comparison.add_column(col, justify="right")
    for name, r in (
        ("winner (two-stage)", result["winner"]),
        ("per-trial winner", per_trial["winner"]),
        ("ort_dynamic_int8", result["ort_dynamic_int8"]),
        ("onnx_fp32", result["onnx_fp32"]),
    ):
        if r is None:
            comparison.add_row(name, result["no_winner_reason"] or "no feasible model", "", "", "", "", "")
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
    parser.add_argument("--quick", action="store_true", help="tiny data, small counts: a smoke run")
    parser.add_argument(
        "--minutes",
        type=float,
        help=f"wall-clock budget of each search (default 40; quick {QUICK['minutes']})",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        help=f"stage-1 candidates per searcher and seed (default 300; quick {QUICK['candidates']})",
    )
    parser.add_argument(
        "--seeds",
        help=f"comma-separated seeds of the stage-1 searchers (default 0,1,2; quick {QUICK['seeds']})",
    )
    parser.add_argument(
        "--tau-candidates",
        type=int,
        help=f"candidates fine-tuned for Kendall tau (default 20; quick {QUICK['tau_candidates']})",
    )
    parser.add_argument(
        "--searchers", default=",".join(SEARCHERS), help=f"comma-separated subset of {list(SEARCHERS)}"
    )
    parser.add_argument(
        "--supernet-epochs", type=int, help="the supernet's epochs (default: the job's, 3; quick 1)"
    )
    args = parser.parse_args()
    defaults = (
        QUICK if args.quick else {"minutes": 40.0, "candidates": 300, "seeds": "0,1,2", "tau_candidates": 20}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    args.searchers = [s.strip() for s in args.searchers.split(",") if s.strip()]
    unknown = [s for s in args.searchers if s not in SEARCHERS]
    if unknown:
        parser.error(f"--searchers: unknown {unknown}; allowed: {list(SEARCHERS)}")
    if (
        not args.searchers
        or not args.seeds
        or args.candidates < 1
        or args.tau_candidates < 2
        or args.minutes <= 0
    ):
        parser.error("need a searcher and a seed, --candidates >= 1, --tau-candidates >= 2 and --minutes > 0")
    result = run(args)
    result["targets"] = targets(result)
    text = json.dumps(result, indent=2, sort_keys=True, default=float) + "\n"  # --quick: checked, not written
    print_tables(result)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
