"""What the API answers about the store's records: jobs, trials, models, log events and Pareto fronts as JSON.

The routes fetch records and hand them here, so the shape of every answer is decided in one
place and can be read (and tested) without HTTP.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from datetime import datetime
from typing import Any

from autocompress.errors import AutocompressError
from autocompress.store import (
    EpochRecord,
    EventRecord,
    JobRecord,
    ModelRecord,
    NotFoundError,
    Store,
    TrialRecord,
)

__all__ = [
    "curve_points",
    "curve_view",
    "event_view",
    "job_summary",
    "job_view",
    "model_summary",
    "model_view",
    "pareto_view",
    "trial_view",
]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_summary(job: JobRecord) -> dict[str, Any]:
    """A job in a listing: identity, state with its reason, and timings."""
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status.value,
        "reason": job.reason,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


@functools.cache
def _space_budget(family: str, preset: str | None, search_space: str | None) -> dict[str, Any] | None:
    from autocompress.search.space import load_search_space

    try:
        return load_search_space(family, preset, search_space).budget.to_dict()
    except AutocompressError:
        return None


def _candidate_view(candidate: Any) -> dict[str, Any]:
    return {
        "trial_key": candidate.trial_id,
        "valid_auc": candidate.valid_auc,
        "latency_ms": candidate.latency_ms,
        "size_mb": candidate.size_mb,
        "feasible": candidate.feasible,
        "distance_to_feasible": candidate.distance_to_feasible,
    }


def _selection(trials: list[TrialRecord]) -> Any:
    """The Pareto front and winner over the trials that finished with a final report."""
    from autocompress.search.pareto import finished_candidates, select_winner

    finished = finished_candidates(trials)
    return select_winner(finished) if finished else None


def job_view(store: Store, job: JobRecord) -> dict[str, Any]:
    """A job in full: its spec, state, progress (trials done / running / failed) and best so far."""
    progress = store.job_progress(job.id)
    spec = job.spec
    budget = spec.get("budget") or _space_budget(
        str(spec.get("family", "dlrm")), spec.get("preset"), spec.get("search_space")
    )
    selection = _selection(store.list_trials(job.id))
    best = None
    if selection is not None:
        leader = selection.winner or (selection.closest[0] if selection.closest else None)
        best = _candidate_view(leader) if leader is not None else None
    return {
        **job_summary(job),
        "heartbeat_at": _iso(job.heartbeat_at),
        "cancel_requested_by": job.cancel_requested_by,
        "idempotency_key": job.idempotency_key,
        "progress": {
            **asdict(progress),
            "done": progress.done,
            "total": progress.total,
            "num_trials": (spec.get("search") or {}).get("num_trials"),
        },
        "budget": budget,  # as given: absolute, or relative to a baseline
        "budget_resolved": ((job.result or {}).get("budget") or {}).get("resolved"),  # ms / MB, once known
        "best": best,
        "model_ids": [m.id for m in store.list_models(job_id=job.id)],
        "result": job.result,
        "spec": spec,
    }


def pareto_view(trials: list[TrialRecord]) -> dict[str, Any]:
    """The Pareto front (valid AUC x latency x size) of the finished trials, the winner, why, and the
    candidates closest to feasible; empty while no trial has finished."""
    selection = _selection(trials)
    if selection is None:
        return {"front": [], "winner": None, "reason": None, "closest": []}
    return {
        "front": [_candidate_view(c) for c in selection.front],
        "winner": _candidate_view(selection.winner) if selection.winner is not None else None,
        "reason": selection.reason,
        "closest": [_candidate_view(c) for c in selection.closest],
    }


def trial_view(trial: TrialRecord, curve: list[EpochRecord] | None = None) -> dict[str, Any]:
    """One trial: its key, state, attempts, config (arch + policy), metrics, error and timings; with
    ``curve``, its learning curve too (as :func:`curve_points`)."""
    view: dict[str, Any] = {
        "id": trial.id,
        "trial_key": trial.trial_key,
        "status": trial.status.value,
        "attempts": trial.attempts,
        "config": trial.config,
        "metrics": trial.metrics,
        "error": trial.error,
        "started_at": _iso(trial.started_at),
        "finished_at": _iso(trial.finished_at),
        "seconds": trial.seconds,
    }
    if curve is not None:
        view["curve"] = curve_points(curve)
    return view


# the same for every point of a curve, so left out of each
_CURVE_CONSTANTS = ("stage", "trial_id")


def curve_points(curve: list[EpochRecord]) -> list[dict[str, Any]]:
    """A learning curve as the API shows it: per epoch, in order, ``epoch`` and what that epoch
    reported (``valid_auc``, ``train_loss``, ``valid_logloss``, ``lr``, ``seconds``, ...)."""
    return [
        {
            **{k: v for k, v in point.metrics.items() if k not in _CURVE_CONSTANTS},
            "epoch": point.epoch,
            "attempt": point.attempt,
        }
        for point in curve
    ]


def curve_view(trial: TrialRecord, curve: list[EpochRecord]) -> dict[str, Any]:
    """One trial's learning curve: which trial, its state, and its epochs in order."""
    return {
        "job_id": trial.job_id,
        "trial_id": trial.id,
        "trial_key": trial.trial_key,
        "status": trial.status.value,
        "epochs": curve_points(curve),
    }


def event_view(event: EventRecord) -> dict[str, Any]:
    """One line of a job's log: its id (to follow from), time, kind and message."""
    return {"id": event.id, "time": _iso(event.time), "kind": event.kind, "message": event.message}


def model_summary(model: ModelRecord) -> dict[str, Any]:
    """A model in a listing: identity (name and version), tags, lineage ids and its headline metrics."""
    metrics = model.metrics
    return {
        "id": model.id,
        "name": model.name,
        "version": model.version,
        "tags": model.tags,
        "job_id": model.job_id,
        "trial_id": model.trial_id,
        "created_at": _iso(model.created_at),
        "valid_auc": metrics.get("valid_auc"),
        "latency_ms": metrics.get("latency_ms"),
        "size_mb": metrics.get("size_mb"),
    }


def model_view(store: Store, model: ModelRecord) -> dict[str, Any]:
    """A model in full: metrics, feature schema and lineage (its job and trial, while they exist)."""
    lineage: dict[str, Any] = {"job_id": model.job_id, "trial_id": model.trial_id}
    if model.job_id is not None:
        try:
            job = store.get_job(model.job_id)
        except NotFoundError:
            job = None
        if job is not None:
            lineage.update(job_name=job.name, job_status=job.status.value)
            trial = next((t for t in store.list_trials(job.id) if t.id == model.trial_id), None)
            if trial is not None:
                lineage.update(trial_key=trial.trial_key, trial_config=trial.config)
    return {
        **model_summary(model),
        "metrics": model.metrics,
        "schema": model.feature_schema,
        "lineage": lineage,
        "artifact": f"/v1/models/{model.id}/artifact",
    }
