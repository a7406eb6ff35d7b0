"""Job routes (``/v1/jobs``): submit, list, watch, cancel and delete searches; their trials (with
learning curves), Pareto front, report and log; register any finished trial as a model.

Routes read and write the store and return at once; the launcher, woken after a submit or a
cancel, starts and stops the search drivers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from autocompress.job import JobSpec
from autocompress.serving import MODEL_NAME_PATTERN, register_trial
from autocompress.store import ConflictError, JobStatus, NotFoundError, TrialStatus
from serve_app.api.dependencies import SettingsDep, StoreDep
from serve_app.api.errors import error_responses
from serve_app.api.paths import inside
from serve_app.api.routes.paging import MAX_DB_INTEGER, PageLimit, PageOffset
from serve_app.api.spec_checks import checked_spec
from serve_app.api.views import (
    curve_view,
    event_view,
    job_summary,
    job_view,
    model_view,
    pareto_view,
    trial_view,
)
from serve_app.launcher import JobLauncher

__all__ = [
    "CANCELLED_BY_PATTERN",
    "IDEMPOTENCY_KEY_PATTERN",
    "CancelRequest",
    "RegisterTrialRequest",
    "jobs_router",
]

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
CANCELLED_BY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$"

jobs_router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class CancelRequest(BaseModel):
    """Who cancels (the job's reason will say "cancelled by <by>")."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(default="api", pattern=CANCELLED_BY_PATTERN)


class RegisterTrialRequest(BaseModel):
    """The model a trial becomes: its name (default: the job's name and family, ``ranking-dlrm``) and
    tags, as ``{"key": "value"}`` or a list of ``"key=value"`` (a bare ``"key"`` has the value "")."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)
    tags: dict[str, str] | list[str] = Field(default_factory=dict)

    def tag_map(self) -> dict[str, str]:
        """The tags as one mapping (the store checks keys and values, naming a bad one)."""
        if isinstance(self.tags, dict):
            return self.tags
        pairs = [tag.partition("=") for tag in self.tags]
        return {key: value for key, _, value in pairs}


def _wake_launcher(request: Request) -> None:
    launcher: JobLauncher | None = request.app.state.launcher
    if launcher is not None:
        launcher.wake()


@jobs_router.post("", status_code=201, responses=error_responses(400, 409))
def submit_job(
    spec: JobSpec,
    request: Request,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="resubmitting with the same key returns the job it created first",
        ),
    ] = None,
) -> dict[str, Any]:
    """Record a search job (PENDING); it runs when the queue has room. Returns the job."""
    spec = checked_spec(spec, settings)
    spec_json = spec.to_dict()
    job = store.create_job(spec_json, name=spec.name, idempotency_key=idempotency_key)
    if idempotency_key is not None and job.spec != spec_json:
        raise ConflictError(
            f"Idempotency-Key: {idempotency_key!r} was used for job {job.id} with a different spec; "
            "use a new key for a new job"
        )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    _wake_launcher(request)
    return job_view(store, job)


@jobs_router.get("")
def list_jobs(
    store: StoreDep,
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> dict[str, Any]:
    """Jobs, newest first, optionally in one state; ``total`` counts them all for paging."""
    jobs = store.list_jobs(status, limit=limit, offset=offset)
    return {
        "jobs": [job_summary(j) for j in jobs],
        "total": store.count_jobs(status),
        "limit": limit,
        "offset": offset,
    }


@jobs_router.get("/{job_id}", responses=error_responses(404))
def get_job(job_id: str, store: StoreDep) -> dict[str, Any]:
    """The job's state with its reason, progress (trials done / running / failed) and best so far."""
    return job_view(store, store.get_job(job_id))


@jobs_router.get("/{job_id}/trials", responses=error_responses(404))
def list_trials(
    job_id: str,
    store: StoreDep,
    status: Annotated[TrialStatus | None, Query(description="only trials in this state")] = None,
    curves: Annotated[
        bool, Query(description="add each trial's learning curve (its per-epoch reports) as `curve`")
    ] = False,
) -> dict[str, Any]:
    """The job's trials in Tune's order: config (arch + policy), metrics, state and error."""
    trials = store.list_trials(job_id, status)
    if not curves:
        return {"trials": [trial_view(t) for t in trials]}
    by_trial = store.job_curves(job_id)
    return {"trials": [trial_view(t, by_trial.get(t.id, [])) for t in trials]}


@jobs_router.get("/{job_id}/trials/{trial}/curve", responses=error_responses(404))
def trial_curve(job_id: str, trial: str, store: StoreDep) -> dict[str, Any]:
    """A trial's learning curve (``trial``: its key or id): every per-epoch report in epoch order,
    each with ``epoch``, ``valid_auc``, ``train_loss`` and the rest of what the epoch reported."""
    record, curve = store.trial_curve(job_id, trial)
    return curve_view(record, curve)


@jobs_router.post(
    "/{job_id}/trials/{trial}/register", status_code=201, responses=error_responses(400, 404, 409)
)
def register_job_trial(
    job_id: str,
    trial: str,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    body: Annotated[RegisterTrialRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Register a finished trial (``trial``: its key or id) as the next version of a model, on the
    Pareto front or not. 404: no such job or trial; 409: the trial has not finished (COMPLETED with
    its final report) or has no ONNX file; 422: a bad name or tag. Returns the model."""
    body = body or RegisterTrialRequest()
    job = store.get_job(job_id)
    model = register_trial(
        store,
        job.id,
        trial,
        settings.work_dir / job.id,
        name=body.name,
        tags=body.tag_map(),
        artifact_root=settings.work_dir,
    )
    response.headers["Location"] = f"/v1/models/{model.id}"
    return model_view(store, model)


@jobs_router.get("/{job_id}/pareto", responses=error_responses(404))
def job_pareto(job_id: str, store: StoreDep) -> dict[str, Any]:
    """The Pareto front (valid AUC x latency x size) of the finished trials, and the winner so far."""
    return pareto_view(store.list_trials(job_id))


@jobs_router.get("/{job_id}/report", response_class=HTMLResponse, responses=error_responses(404))
def job_report(job_id: str, store: StoreDep, settings: SettingsDep) -> HTMLResponse:
    """The job's HTML report (comparison table and Pareto plot), once the job has finished."""
    job = store.get_job(job_id)
    report = (job.result or {}).get("report")
    if not report:
        raise NotFoundError(f"report: job {job_id} has no report (it is {job.status.value})")
    path = inside(settings.work_dir, report, "report")
    if not path.is_file():
        raise NotFoundError(f"report: the report file of job {job_id} is gone")
    return HTMLResponse(path.read_text(encoding="utf-8"))


@jobs_router.get("/{job_id}/logs", responses=error_responses(404))
def job_logs(
    job_id: str,
    store: StoreDep,
    after_id: Annotated[
        int, Query(ge=0, le=MAX_DB_INTEGER, description="only events after this id (to follow)")
    ] = 0,
    limit: PageLimit = 1000,
) -> dict[str, Any]:
    """The job's log: state changes, trial starts and ends, driver events, in order."""
    events = store.list_events(job_id, after_id=after_id, limit=limit)
    return {
        "events": [event_view(e) for e in events],
        "next_after_id": events[-1].id if events else after_id,
    }


@jobs_router.post("/{job_id}/cancel", responses=error_responses(400, 404, 409))
def cancel_job(
    job_id: str,
    request: Request,
    store: StoreDep,
    cancel: Annotated[CancelRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Cancel a job: a PENDING one at once; a RUNNING one's driver stops the search within seconds."""
    job = store.request_cancel(job_id, by=(cancel or CancelRequest()).by)
    _wake_launcher(request)
    return job_view(store, job)


@jobs_router.delete("/{job_id}", status_code=204, responses=error_responses(404, 409))
def delete_job(job_id: str, store: StoreDep) -> Response:
    """Delete a finished job with its trials and log (409 while it is PENDING or RUNNING)."""
    store.delete_job(job_id)
    return Response(status_code=204)
