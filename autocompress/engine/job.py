"""A whole search job: reference, search, quiet re-measurement, winner, test comparison, report.

``run_job`` is what a driver runs (``autocompress search``, the REST API's launcher, ``make run``);
it records everything in the store as it goes and never loses what is recorded when it fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocompress.engine.comparison import baseline_figures, compare_on_test, remeasure_latency
from autocompress.engine.reference import baseline_models, train_reference
from autocompress.errors import AutocompressError

__all__ = ["JobResult", "run_job"]


@dataclass
class JobResult:
    """The end of a search job: the winner (or why none), the comparison rows, the report's path."""

    job_id: str
    status: str
    reason: str | None
    winner_trial: str | None
    rows: list[dict[str, Any]]
    report_path: str | None
    model_id: str | None = None
    notes: list[str] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)  # the rule, the resolved ms / MB, the baselines
    feature_schema: dict[str, Any] = field(default_factory=dict)  # what any trial registered later takes


def run_job(spec: Any, store: Any, work_dir: str | Path, *, job_id: str | None = None) -> JobResult:
    """Run one search job end to end and record it: reference, search, winner, test comparison, report.

    The job is RUNNING while it works (its heartbeat beating) and ends SUCCEEDED (with reason "no
    feasible model" when no candidate meets the budget), FAILED with the error text, or CANCELLED
    ("cancelled by X") when its cancel is requested: the search stops, its running trials end
    STOPPED and no winner is registered. Nothing already recorded is lost.
    """
    from autocompress.engine.cancel import JobCancelled, heartbeat
    from autocompress.store import JobStatus
    from autocompress.tracking import end_job_run

    job = store.get_job(job_id) if job_id is not None else store.create_job(spec.to_dict(), name=spec.name)
    if job.status is not JobStatus.RUNNING:  # RUNNING: a launcher claimed it, or a lost driver's job resumes
        store.set_job_status(job.id, JobStatus.RUNNING)
    try:
        with heartbeat(store, job.id):
            if job.cancel_requested_by is not None:
                raise JobCancelled(job.id, job.cancel_requested_by)
            # absolute: trials run in Ray workers with other working directories
            result = _search_job(spec, store, Path(work_dir).resolve() / job.id, job.id)
    except JobCancelled as cancelled:
        reason = f"cancelled by {cancelled.by}"
        store.set_job_status(job.id, JobStatus.CANCELLED, reason=reason)
        end_job_run(spec.tracking, store, job.id, "KILLED", reason)
        return JobResult(
            job_id=job.id, status="CANCELLED", reason=reason, winner_trial=None, rows=[], report_path=None
        )
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        store.set_job_status(job.id, JobStatus.FAILED, reason=reason)
        end_job_run(spec.tracking, store, job.id, "FAILED", reason)
        raise
    store.set_job_status(
        job.id,
        JobStatus.SUCCEEDED,
        reason=result.reason,
        result={
            "winner_trial": result.winner_trial,
            "rows": result.rows,
            "report": result.report_path,
            "model_id": result.model_id,
            "notes": result.notes,
            "budget": result.budget,
            "feature_schema": result.feature_schema,
        },
    )
    if spec.deploy and result.model_id is not None:
        from autocompress.serving import deploy_job_winner

        try:
            deployment = deploy_job_winner(store, job.id)
        except AutocompressError as exc:  # the job's result stands; the alias keeps what it served
            store.add_event(job.id, "log", f"winner not deployed: {exc}")
        else:
            if deployment is not None:
                store.add_event(job.id, "log", f"winner deployed as {deployment.alias!r}")
    return result


def _search_job(spec: Any, store: Any, work: Path, job_id: str) -> JobResult:
    from autocompress.data.registry import load_dataset
    from autocompress.engine.trial import SharedResources, measured_target
    from autocompress.engine.tuner import run_search
    from autocompress.measure import onnx_size_bytes
    from autocompress.measure.baselines import popularity_auc, popularity_warning
    from autocompress.measure.placement import resolve_target
    from autocompress.report import html_report, pareto_plot
    from autocompress.search.budget import Budget
    from autocompress.search.pareto import finished_candidates, select_winner
    from autocompress.search.space import load_search_space
    from autocompress.serving import FeatureEncoders, register_trial
    from autocompress.store import JobStatus, TrialStatus
    from autocompress.tracking import log_job_result

    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = f"work_dir: cannot write the job's folder {str(work)!r}: {exc.strerror}"
        raise AutocompressError(reason) from None
    space = load_search_space(spec.family, spec.preset, spec.search_space)
    budget = rule = spec.budget or space.budget
    target, note = resolve_target(measured_target(spec.target, budget))
    notes = [note] if note else []
    if note:
        store.add_event(job_id, "log", note)
    train_config = spec.train_config()

    store.add_event(job_id, "log", f"loading data ({spec.dataset.kind})")
    dataset = load_dataset(spec.dataset)
    feature_schema = dataset.schema.to_dict()
    encoders = FeatureEncoders.from_dataset_info(dataset.info)
    if encoders is not None:  # real data: served requests carry raw values, mapped as in training
        encoders.save(work)  # beside the job's registered models (``register_trial`` copies it)
    store.add_event(
        job_id, "log", "the reference model (the teacher and fp32 baseline): trained, or loaded on a resume"
    )
    reference = train_reference(spec.family, dataset, train_config, work)
    warning = popularity_warning(reference.valid_auc, popularity_auc(dataset, "valid"), "valid")
    if warning:  # the job goes on (the user asked for it), but says so everywhere
        notes.append(f"reference: {warning}")
        store.add_event(job_id, "warning", notes[-1])
    # the baselines first: a relative budget is resolved against their figures on this target
    store.add_event(job_id, "log", "measuring the baselines (fp32 ONNX, ONNX Runtime dynamic int8)")
    baselines = baseline_models(reference, dataset, work)
    figures = baseline_figures(baselines, dataset, target, budget, work / "latency-cache")
    _warn_busy(store, job_id, notes, "the baselines", [f.busy_warning for f in figures.values()])
    budget_record = resolve_budget(budget, figures)
    budget = Budget.from_dict(budget_record["resolved"])
    store.add_event(job_id, "budget", "budget: " + "; ".join(budget_record["text"].values()))
    # the API shows the budget; a finished trial can be registered with the schema while the job runs
    store.set_job_status(
        job_id, JobStatus.RUNNING, result={"budget": budget_record, "feature_schema": feature_schema}
    )
    shared = SharedResources(
        dataset=dataset,
        teacher=reference.model,
        reference_valid_auc=reference.valid_auc,
        target=target,
        budget=budget,
        work_dir=work / "trials",
        cache_dir=work / "latency-cache",
        reference_size_bytes=onnx_size_bytes(reference.onnx_path),
    )
    store.add_event(
        job_id, "log", f"searching {space.name} with {spec.search.searcher} ({spec.search.strategy})"
    )
    if spec.search.strategy == "two_stage":  # the winner comes from stage 2 (``finished_candidates``)
        from autocompress.engine.two_stage import SUPERNET_FILE, run_two_stage

        run_two_stage(
            space,
            spec.search,
            shared,
            store=store,
            job_id=job_id,
            name=job_id,
            supernet_path=work / SUPERNET_FILE,
            train_config=train_config,
            distill=spec.distill,
            tracking=spec.tracking,
        )
    else:
        run_search(
            space,
            spec.search,
            shared,
            store=store,
            job_id=job_id,
            name=job_id,
            train_config=train_config,
            distill=spec.distill,
            tracking=spec.tracking,
        )
    finished = finished_candidates(store.list_trials(job_id))
    if rule.relative:  # resolved again beside the candidates' final figures (``final_budget``)
        store.add_event(job_id, "log", "measuring the baselines again for the relative budget")
        budget_record = final_budget(budget_record, baselines, dataset, target, shared.cache_dir)
        budget = Budget.from_dict(budget_record["resolved"])
        store.add_event(job_id, "budget", "budget: " + "; ".join(budget_record["text"].values()))
        busy = [f["busy_warning"] for f in budget_record["baselines"].values()]
        _warn_busy(store, job_id, notes, "the baselines measured again", busy)
    store.add_event(job_id, "log", f"measuring the latency of {len(finished)} finished candidates again")
    finished = remeasure_latency(finished, dataset, target, budget, shared.cache_dir)
    for candidate in finished:  # the store, the API's pareto view and the winner agree on the figures
        store.record_trial(job_id, candidate.trial_id, TrialStatus.COMPLETED, metrics=candidate.metrics)
    _warn_busy(
        store, job_id, notes, "the finished candidates", [c.metrics["latency_busy_warning"] for c in finished]
    )
    selection = select_winner(finished)

    # the test split decides the comparison: the winner next to fp32 and ORT dynamic int8
    store.add_event(job_id, "log", "measuring the winner and the baselines on the test split")
    models = dict(baselines)
    if selection.winner is not None:
        models = {"winner": Path(str(selection.winner.metrics["onnx_path"])), **models}
    rows = compare_on_test(models, dataset, target, budget, shared.cache_dir)
    _warn_busy(store, job_id, notes, "the test comparison", [r["busy_warning"] for r in rows])
    winner_row = next((r for r in rows if r["name"] == "winner"), None)
    if winner_row is not None and not winner_row["within_budget"]:  # selected on valid, judged on test
        notes.append(
            "the winner does not meet the budget on the test split: " + "; ".join(winner_row["violations"])
        )
        store.add_event(job_id, "warning", notes[-1])

    plot = pareto_plot(finished, selection, work / "pareto.png", budget_latency_ms=budget.latency_ms)
    budget_note = "Budget: " + "; ".join(budget_record["text"].values())
    report = html_report(
        f"autocompress job {spec.name} ({job_id})",
        rows,
        selection,
        plot,
        work / "report.html",
        [budget_note, *notes],
    )
    model_id = None
    if selection.winner is not None:  # registered as any trial can be, the test figures added
        model_id = register_trial(
            store,
            job_id,
            selection.winner.trial_id,
            work,
            tags={"role": "winner"},
            feature_schema=feature_schema,
            metrics={"test": {k: v for k, v in (winner_row or {}).items() if k != "name"}},
        ).id
    log_job_result(spec.tracking, store, job_id, rows, selection, files=(report, plot))
    return JobResult(
        job_id=job_id,
        status="SUCCEEDED",
        reason=selection.reason,
        winner_trial=None if selection.winner is None else selection.winner.trial_id,
        rows=rows,
        report_path=str(report),
        model_id=model_id,
        notes=notes,
        budget=budget_record,
        feature_schema=feature_schema,
    )


def resolve_budget(
    budget: Any, figures: Mapping[str, Any], at_start: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The job's budget record: the rule as given, the absolute ms / MB it resolves to, the baselines.

    ``text`` says each bound in words, a relative one as its rule next to what it resolved to
    (``latency p99 at batch 256 >= 5x faster than onnx_fp32 (<= 0.89 ms)``): what the CLI, the API
    and the report show. ``at_start`` is the record resolved when the job started, for one
    resolved again at its end (``final_budget``): kept, and its latency bound said in the text.
    """
    resolved = budget.resolve(figures)
    text = budget.describe()
    if budget.latency is not None:
        then = "" if at_start is None else f"; {at_start['resolved']['latency_ms']:.3g} ms at the job's start"
        text["latency"] += f" (<= {resolved.latency_ms:.3g} ms{then})"
    if budget.size is not None:
        text["size"] += f" (<= {resolved.size_mb:.3g} MB)"
    record = {
        "rule": budget.to_dict(),
        "resolved": resolved.to_dict(),
        "baselines": {name: dataclasses.asdict(f) for name, f in figures.items()},
        "text": text,
    }
    if at_start is not None:
        record["at_start"] = {k: at_start[k] for k in ("resolved", "baselines")}
    return record


def final_budget(
    start: Mapping[str, Any], baselines: Mapping[str, Path], dataset: Any, target: Any, cache_dir: Path
) -> dict[str, Any]:
    """The budget record the finished candidates are judged on, once no trial runs.

    A relative rule is resolved again on the baselines measured now, just before the candidates
    are measured again (``remeasure_latency``): "4.5x faster than fp32 ONNX" is a ratio, and over a
    job of hours the node's speed moves (another tenant, a slower hour), moving the candidates'
    figures and fp32's alike while a bound resolved at the start stays put. ``start`` (the record
    ``resolve_budget`` made then) comes back as it is for an absolute budget.
    """
    from autocompress.search.budget import Budget

    rule = Budget.from_dict(start["rule"])
    if not rule.relative:
        return dict(start)
    figures = baseline_figures(baselines, dataset, target, rule, cache_dir, refresh=True)
    return resolve_budget(rule, figures, at_start=start)


def _warn_busy(store: Any, job_id: str, notes: list[str], what: str, warnings: list[str | None]) -> None:
    """One warning (an event and a report note) when any of ``what`` was measured on a busy node."""
    busy = [w for w in warnings if w]
    if busy:
        notes.append(f"latency of {len(busy)} of {len(warnings)} of {what}: {busy[0]}")
        store.add_event(job_id, "warning", notes[-1])
