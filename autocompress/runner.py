"""Train one model end to end: build, train, export to ONNX, and measure it on the target.

This is what ``make run`` does with the reference DLRM on the default data; the search issue
wraps the same steps per trial.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autocompress.data.table import Dataset
from autocompress.errors import AutocompressError
from autocompress.models.arch import ArchConfig
from autocompress.spec import Target
from autocompress.train import EpochReport, TrainConfig, TrainResult


@dataclass
class ModelReport:
    """What one trained and exported model achieved: quality, size, speed, and where it lies."""

    family: str
    dataset: str
    arch: dict[str, Any]
    test: dict[str, float]
    oracle_auc: float | None
    popularity_auc: float
    size_bytes: int
    parameters: int
    macs_per_example: int
    latency: dict[str, Any]
    export_max_abs_diff: float
    train: dict[str, Any]
    onnx_path: str
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=float)


def train_and_measure(
    dataset: Dataset,
    family: str,
    arch: ArchConfig | dict[str, Any] | None,
    train_config: TrainConfig,
    target: Target,
    out_dir: str | Path,
    *,
    on_step: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[EpochReport], bool | None] | None = None,
) -> ModelReport:
    """Train ``family`` on ``dataset``, export it, and measure quality, size and latency.

    Quality is computed on the test split from ONNX Runtime's outputs (what will be served);
    latency is measured on ``target``. Writes ``model.onnx``, ``model.pt`` (state dict),
    ``schema.json``, ``arch.json`` and ``report.json`` into ``out_dir``.
    """
    import torch

    from autocompress.export import create_session, export_onnx
    from autocompress.measure import macs_per_example, measure_latency, onnx_size_bytes, parameter_count
    from autocompress.measure.baselines import popularity_feature, popularity_scores
    from autocompress.measure.evaluation import onnx_logits, quality_report
    from autocompress.measure.quality import auc
    from autocompress.models import build
    from autocompress.train import fit

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AutocompressError(f"output folder {str(out)!r} cannot be created: {exc.strerror}") from None
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    model = build(family, dataset.schema, arch)
    result: TrainResult = fit(
        model, dataset.train, dataset.valid, train_config, on_step=on_step, on_epoch=on_epoch
    )
    model = model.cpu().eval()
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    exported = export_onnx(model, dataset.schema, out / "model.onnx")
    torch.save(model.state_dict(), out / "model.pt")
    (out / "schema.json").write_text(dataset.schema.to_json())
    (out / "arch.json").write_text(model.arch.to_json())
    seconds["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    session = create_session(exported.path, target)
    test_quality = quality_report(dataset.test, onnx_logits(session, dataset.test))
    item = popularity_feature(dataset.schema)
    popularity_auc = auc(dataset.test.labels, popularity_scores(dataset.train, dataset.test, item))
    seconds["evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    latency = measure_latency(session, dataset.schema, target)
    seconds["latency"] = time.perf_counter() - t0

    report = ModelReport(
        family=family,
        dataset=dataset.name,
        arch=model.arch.to_dict(),
        test=test_quality,
        oracle_auc=dataset.oracle_auc,
        popularity_auc=popularity_auc,
        size_bytes=onnx_size_bytes(exported.path),
        parameters=parameter_count(model),
        macs_per_example=macs_per_example(exported.path),
        latency=latency.to_dict(),
        export_max_abs_diff=exported.max_abs_diff,
        train={
            "best_epoch": result.best_epoch,
            "best_valid_auc": result.best_valid_auc,
            "stopped_early": result.stopped_early,
            "device": result.device,
            "history": [asdict(h) for h in result.history],
            "config": train_config.to_dict(),
        },
        onnx_path=str(exported.path),
        seconds=seconds,
    )
    (out / "report.json").write_text(report.to_json())
    return report


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


def run_job(spec: Any, store: Any, work_dir: str | Path, *, job_id: str | None = None) -> JobResult:
    """Run one search job end to end and record it: reference, search, winner, test comparison, report.

    The job is RUNNING while it works (its heartbeat beating) and ends SUCCEEDED (with reason "no
    feasible model" when no candidate meets the budget), FAILED with the error text, or CANCELLED
    ("cancelled by X") when its cancel is requested: the search stops, its running trials end
    STOPPED and no winner is registered. Nothing already recorded is lost.
    """
    from autocompress.search.cancel import JobCancelled, heartbeat
    from autocompress.store import JobStatus

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
        return JobResult(
            job_id=job.id, status="CANCELLED", reason=reason, winner_trial=None, rows=[], report_path=None
        )
    except Exception as exc:
        store.set_job_status(job.id, JobStatus.FAILED, reason=f"{type(exc).__name__}: {exc}")
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


@dataclass
class Reference:
    """The job's reference model: trained once, the teacher of every trial and the fp32 baseline."""

    model: Any
    valid_auc: float
    onnx_path: Path


def train_reference(family: str, dataset: Dataset, train_config: TrainConfig, work: Path) -> Reference:
    """Train the family's reference architecture on the full train split and export it (fp32 ONNX).

    A reference this job already trained (a resumed job: its driver was relaunched) is loaded from
    ``work`` instead: ``reference.pt`` (the weights), ``reference.onnx`` and ``reference.json`` (its
    valid AUC and the training config, written last, so a half-written reference is trained again).
    """
    import torch

    from autocompress.export import export_onnx
    from autocompress.models import build
    from autocompress.train import fit

    weights, onnx_path, meta = work / "reference.pt", work / "reference.onnx", work / "reference.json"
    model = build(family, dataset.schema)
    if meta.is_file() and weights.is_file() and onnx_path.is_file():
        saved = json.loads(meta.read_text())
        if saved.get("train_config") == json.loads(json.dumps(train_config.to_dict())):
            model.load_state_dict(torch.load(weights, weights_only=True))  # tensors only: no pickled code
            return Reference(model=model.eval(), valid_auc=float(saved["valid_auc"]), onnx_path=onnx_path)
    result = fit(model, dataset.train, dataset.valid, train_config)
    model = model.cpu().eval()
    path = export_onnx(model, dataset.schema, onnx_path).path
    torch.save(model.state_dict(), weights)
    meta.write_text(json.dumps({"valid_auc": result.best_valid_auc, "train_config": train_config.to_dict()}))
    return Reference(model=model, valid_auc=result.best_valid_auc, onnx_path=path)


def baseline_models(reference: Reference, dataset: Dataset, work: Path) -> dict[str, Path]:
    """What a user would ship without autocompress: fp32 ONNX and ONNX Runtime dynamic int8 of it."""
    import copy

    from autocompress.techniques import Policy, TechniqueContext, apply_policy

    int8 = Policy.from_dict(
        {"steps": [{"technique": "dynamic_int8", "op_types": ["MatMul", "Gemm", "Gather"]}]}
    )
    int8_path = apply_policy(
        copy.deepcopy(reference.model),
        int8,
        TechniqueContext(schema=dataset.schema, work_dir=work / "ort-dynamic-int8"),
    ).onnx_path
    return {"onnx_fp32": reference.onnx_path, "ort_dynamic_int8": int8_path}


def compare_on_test(
    models: Mapping[str, Path], dataset: Dataset, target: Target, budget: Any, cache_dir: Path
) -> list[dict[str, Any]]:
    """Test AUC, size and latency of each model, and each one's ratios to ``onnx_fp32`` (which must be there).

    Latency is measured with ``measure_on_target`` on ``target`` at 1 (when the target has it) and
    the budget's batch size; ``speedup_b256`` compares p50 at that batch size.
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
            }
        )
    base = next(r for r in rows if r["name"] == "onnx_fp32")
    for r in rows:
        r["delta_auc"] = r["test_auc"] - base["test_auc"]
        r["size_ratio"] = base["size_mb"] / r["size_mb"]
        r["speedup_b256"] = base["p50_ms_b256"] / r["p50_ms_b256"]
    return rows


def remeasure_latency(
    candidates: list[Any], dataset: Dataset, target: Target, budget: Any, cache_dir: Path
) -> list[Any]:
    """The finished candidates with latency measured again, one at a time, once no trial runs.

    In-trial figures are taken while other trials train on the same node; a p99 there can be a
    neighbour's training step. The budget is checked again on the quiet figure (the in-trial one
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
        }
        feasibility = budget.check(metrics)
        metrics.update(
            feasible=feasibility.feasible,
            violations=list(feasibility.violations),
            distance_to_feasible=feasibility.distance,
        )
        confirmed.append(Candidate.from_metrics(candidate.trial_id, metrics))
    return confirmed


def _search_job(spec: Any, store: Any, work: Path, job_id: str) -> JobResult:
    import shutil

    from autocompress.data.registry import load_dataset
    from autocompress.measure import onnx_size_bytes
    from autocompress.measure.placement import resolve_target
    from autocompress.report import html_report, pareto_plot
    from autocompress.search.pareto import Candidate, select_winner
    from autocompress.search.space import load_search_space
    from autocompress.search.trial import SharedResources, measured_target
    from autocompress.search.tuner import run_search
    from autocompress.store import TrialStatus

    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = f"work_dir: cannot write the job's folder {str(work)!r}: {exc.strerror}"
        raise AutocompressError(reason) from None
    space = load_search_space(spec.family, spec.preset, spec.search_space)
    budget = spec.budget or space.budget
    target, note = resolve_target(measured_target(spec.target, budget))
    notes = [note] if note else []
    if note:
        store.add_event(job_id, "log", note)
    train_config = spec.train_config()

    store.add_event(job_id, "log", f"loading data ({spec.dataset.kind})")
    dataset = load_dataset(spec.dataset)
    store.add_event(
        job_id, "log", "the reference model (the teacher and fp32 baseline): trained, or loaded on a resume"
    )
    reference = train_reference(spec.family, dataset, train_config, work)
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
    store.add_event(job_id, "log", f"searching {space.name} with {spec.search.searcher}")
    outcome = run_search(
        space,
        spec.search,
        shared,
        store=store,
        job_id=job_id,
        name=job_id,
        train_config=train_config,
        distill=spec.distill,
    )
    finished = [
        Candidate.from_metrics(t.trial_id, t.metrics)
        for t in outcome.by_status(TrialStatus.COMPLETED)
        if "feasible" in t.metrics
    ]
    store.add_event(job_id, "log", f"measuring the latency of {len(finished)} finished candidates again")
    finished = remeasure_latency(finished, dataset, target, budget, shared.cache_dir)
    for candidate in finished:  # the store, the API's pareto view and the winner agree on the figures
        store.record_trial(job_id, candidate.trial_id, TrialStatus.COMPLETED, metrics=candidate.metrics)
    selection = select_winner(finished)

    # the test split decides the comparison: the winner next to fp32 and ORT dynamic int8
    store.add_event(job_id, "log", "measuring the winner and the baselines on the test split")
    models = baseline_models(reference, dataset, work)
    if selection.winner is not None:
        models = {"winner": Path(str(selection.winner.metrics["onnx_path"])), **models}
    rows = compare_on_test(models, dataset, target, budget, shared.cache_dir)

    plot = pareto_plot(finished, selection, work / "pareto.png", budget_latency_ms=budget.latency_ms)
    report = html_report(
        f"autocompress job {spec.name} ({job_id})", rows, selection, plot, work / "report.html", notes
    )
    model_id = None
    if selection.winner is not None:
        from autocompress.serving import FeatureEncoders

        artifact = work / "winner.onnx"
        shutil.copyfile(models["winner"], artifact)
        encoders = FeatureEncoders.from_dataset_info(dataset.info)
        if encoders is not None:  # real data: served requests carry raw values, mapped as in training
            encoders.save(work)
        winner_row = next(r for r in rows if r["name"] == "winner")
        model_id = store.register_model(
            f"{spec.name}-winner",
            artifact,
            dataset.schema.to_dict(),
            {**selection.winner.metrics, "test": {k: v for k, v in winner_row.items() if k != "name"}},
            job_id=job_id,
            trial_id=_trial_row_id(store, job_id, selection.winner.trial_id),
        ).id
    return JobResult(
        job_id=job_id,
        status="SUCCEEDED",
        reason=selection.reason,
        winner_trial=None if selection.winner is None else selection.winner.trial_id,
        rows=rows,
        report_path=str(report),
        model_id=model_id,
        notes=notes,
    )


def _trial_row_id(store: Any, job_id: str, trial_key: str) -> str | None:
    for trial in store.list_trials(job_id):
        if trial.trial_key == trial_key:
            return str(trial.id)
    return None
