"""The REST job API: submit, watch, cancel and inspect searches; list and download registered models.

``create_app(settings)`` builds the FastAPI app; ``uvicorn serve_app.api:app`` serves one built
from the environment (:meth:`Settings.from_env`), and the Ray Serve application mounts the same
app as its ingress (more routers join with ``app.include_router``). The database is the single
source of truth: routes read and write the store and return at once, while searches run in
detached driver processes started by :class:`serve_app.launcher.JobLauncher`.

Errors a client can cause are 4xx with a one-line ``detail`` naming the field: 404 (no such job
or model), 409 (the job's state forbids it), 413 (body too large), 401 (bearer token), 422 (a bad
spec, query or header), 503 (the database is away); the OpenAPI document lists them per route with
their body (:class:`ErrorBody`). Nothing a client sends is unpickled; spec paths must lie in the data
folder and name formats the loaders parse.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from autocompress.errors import AutocompressError
from autocompress.job import JobSpec
from autocompress.store import (
    ConflictError,
    JobRecord,
    JobStatus,
    ModelRecord,
    NotFoundError,
    Store,
    TrialRecord,
    TrialStatus,
    default_store_url,
)
from serve_app.launcher import JobLauncher

API_AUTH_MODES = ("mutating", "all")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_MAX_BODY_BYTES = 1 << 20
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
CANCELLED_BY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$"
MAX_SPEC_DEPTH = 32  # free-form spec fields (train, dataset.options) nest at most this deep
# spec files are parsed (text, CSV, Parquet, YAML), never unpickled: these formats are refused by name
CODE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib", ".npy", ".npz")
YAML_SUFFIXES = (".yaml", ".yml")
MAX_DB_INTEGER = 2**63 - 1  # offsets and ids beyond a 64-bit integer are refused, not sent to the database


# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How the API runs: database, auth, folders, the job queue and the Ray cluster.

    ``max_running_jobs`` 0 records jobs without launching any (an API replica next to the one
    that launches). ``data_dir`` is the only place a submitted spec may name files in; without
    it, specs with file paths are refused.
    """

    db_url: str
    api_token: str | None = None
    auth: str = "mutating"
    work_dir: Path = Path("runs")
    data_dir: Path | None = None
    max_running_jobs: int = 1
    max_relaunches: int = 2
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    launcher_poll_s: float = 2.0
    stale_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.auth not in API_AUTH_MODES:
            raise AutocompressError(
                f"AUTOCOMPRESS_API_AUTH: {self.auth!r} is not one of {list(API_AUTH_MODES)}"
            )
        if self.auth == "all" and not self.api_token:
            raise AutocompressError("AUTOCOMPRESS_API_AUTH=all needs AUTOCOMPRESS_API_TOKEN to be set")
        if self.max_running_jobs < 0:
            raise AutocompressError(f"AUTOCOMPRESS_MAX_RUNNING_JOBS: {self.max_running_jobs} must be >= 0")
        if self.max_body_bytes < 1024:
            raise AutocompressError(f"AUTOCOMPRESS_MAX_BODY_BYTES: {self.max_body_bytes} must be >= 1024")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``AUTOCOMPRESS_*`` variables and ``RAY_ADDRESS``; bad values name the variable."""
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def integer(name: str) -> int | None:
            value = text(name)
            if value is None:
                return None
            try:
                return int(value)
            except ValueError:
                raise AutocompressError(f"{name}: {value!r} is not an integer") from None

        data_dir = text("AUTOCOMPRESS_DATA_DIR")
        numbers = {
            field: value
            for field, name in (
                ("max_running_jobs", "AUTOCOMPRESS_MAX_RUNNING_JOBS"),
                ("max_relaunches", "AUTOCOMPRESS_MAX_RELAUNCHES"),
                ("ray_num_cpus", "AUTOCOMPRESS_RAY_NUM_CPUS"),
                ("max_body_bytes", "AUTOCOMPRESS_MAX_BODY_BYTES"),
            )
            if (value := integer(name)) is not None
        }
        return cls(
            db_url=text("AUTOCOMPRESS_DB_URL") or default_store_url(),
            api_token=text("AUTOCOMPRESS_API_TOKEN"),
            auth=text("AUTOCOMPRESS_API_AUTH") or "mutating",
            work_dir=Path(text("AUTOCOMPRESS_WORK_DIR") or "runs"),
            data_dir=Path(data_dir) if data_dir else None,
            ray_address=text("RAY_ADDRESS"),
            **numbers,
        )


# -- guard: bearer token and body size -----------------------------------------------------------

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestGuard:
    """ASGI middleware: the bearer token (mutating methods, or every request with auth ``all``), the
    body size limit (413 from ``Content-Length``, or while a chunked body streams in) and URLs with a
    NUL character (422)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.token = settings.api_token.encode() if settings.api_token else None
        self.auth_all = settings.auth == "all"
        self.max_body_bytes = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.token is not None and (self.auth_all or scope["method"] not in SAFE_METHODS):
            refusal = self._refuse_token(headers.get(b"authorization"))
            if refusal is not None:
                await _send_json(send, 401, refusal, {"www-authenticate": "Bearer"})
                return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_json(send, 413, self._too_large())
            return
        nul = _nul_in(scope)
        if nul is not None:
            await _send_json(send, 422, f"{nul}: must not contain a NUL character (%00)")
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, limited, send)

    def _refuse_token(self, header: bytes | None) -> str | None:
        assert self.token is not None
        if not header:
            return "Authorization: this route needs a bearer token (Authorization: Bearer <token>)"
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.token):
            return "Authorization: the bearer token is not valid"
        return None

    def _too_large(self) -> str:
        return f"body: larger than the limit of {self.max_body_bytes} bytes"


def _nul_in(scope: Scope) -> str | None:
    """``path`` or ``query`` when the URL carries a NUL character (no id, name or value holds one, and
    PostgreSQL refuses them in text), else None."""
    if "\x00" in scope["path"]:
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        return "query"
    return None


async def _send_json(send: Send, status: int, detail: str, extra: Mapping[str, str] | None = None) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers=dict(extra or {}))
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# -- errors --------------------------------------------------------------------------------------


def _error(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handler


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with one line naming each bad field (``spec.search.num_trials: ...``), plus pydantic's list."""
    assert isinstance(exc, RequestValidationError)
    body_name = "spec" if request.url.path.rstrip("/") == "/v1/jobs" else "body"
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if err.get("type") == "json_invalid":
            lines.append(f"body: not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})")
            continue
        if loc and loc[0] == "body":
            where = ".".join([body_name, *loc[1:]])
        else:
            where = " ".join([loc[0], ".".join(loc[1:])]) if loc else "request"
        if err.get("type") == "extra_forbidden":
            lines.append(f"{where}: unknown field")
        elif err.get("type") == "missing":
            lines.append(f"{where}: required")
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            got = repr(err.get("input"))
            lines.append(f"{where}: {message} (got {got[:80] + '...' if len(got) > 80 else got})")
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
    ]
    return JSONResponse({"detail": "; ".join(lines), "errors": errors}, status_code=422)


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: one line naming the field (``spec.search.num_trials: ...``); a 422 from
    request validation also lists pydantic's errors."""

    detail: str
    errors: list[dict[str, Any]] | None = None


_ERROR_MEANINGS = {
    400: "the body cannot be parsed (not UTF-8 text)",
    401: "the bearer token is missing or wrong",
    403: "the model's file lies outside this server's artifact root",
    404: "no such job, model or alias",
    409: "the state of the job, model or alias forbids it",
    413: "the body is larger than the server's limit",
    422: "a bad spec, body, query or header: one line naming each field",
    503: "the database is unavailable; try again shortly",
}
# what any route may answer: auth and the body limit (RequestGuard), validation, the database away
COMMON_ERRORS = (401, 413, 422, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting these error statuses with the :class:`ErrorBody` they carry."""
    # JSON whatever the route's own media type (the report is HTML, its errors are not)
    json_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {
        status: {"model": ErrorBody, "description": _ERROR_MEANINGS[status], "content": json_body}
        for status in statuses
    }


async def _database_refused_value(_request: Request, exc: Exception) -> JSONResponse:
    """A value that passed validation but the database cannot hold (a NUL in a PostgreSQL text field)."""
    assert isinstance(exc, DataError)
    reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0][:200]
    return JSONResponse({"detail": f"body: a value the database cannot store ({reason})"}, status_code=422)


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, OperationalError) and not getattr(exc, "connection_invalidated", False):
        raise exc  # a database error that is not the database being away stays a server error
    return JSONResponse(
        {"detail": f"database: unavailable ({type(exc).__name__}); try again shortly"}, status_code=503
    )


# -- views ---------------------------------------------------------------------------------------


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
        "budget": budget,
        "best": best,
        "model_ids": [m.id for m in store.list_models(job_id=job.id)],
        "result": job.result,
        "spec": spec,
    }


def trial_view(trial: TrialRecord) -> dict[str, Any]:
    """One trial: its key, state, attempts, config (arch + policy), metrics, error and timings."""
    return {
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


def model_summary(model: ModelRecord) -> dict[str, Any]:
    """A model in a listing: identity, lineage ids and its headline metrics."""
    metrics = model.metrics
    return {
        "id": model.id,
        "name": model.name,
        "job_id": model.job_id,
        "trial_id": model.trial_id,
        "created_at": _iso(model.created_at),
        "valid_auc": metrics.get("valid_auc"),
        "latency_ms": metrics.get("latency_ms"),
        "size_mb": metrics.get("size_mb"),
    }


# -- dependencies and checks ---------------------------------------------------------------------


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _wake_launcher(request: Request) -> None:
    launcher: JobLauncher | None = request.app.state.launcher
    if launcher is not None:
        launcher.wake()


StoreDep = Annotated[Store, Depends(_store)]
SettingsDep = Annotated[Settings, Depends(_settings)]


def inside(root: Path, path: str | Path, where: str) -> Path:
    """``path`` (relative ones taken from ``root``) resolved, if it lies inside ``root``; else a 4xx error."""
    base = root.resolve()
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not resolved.is_relative_to(base):
        raise AutocompressError(f"{where}: {str(path)!r} lies outside the folder this server may read")
    return resolved


def _nesting_depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests lists and objects, counted up to ``limit + 1`` at most."""
    if limit < 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_nesting_depth(child, limit - 1) for child in children), default=0)


def _check_format(path: Path, where: str, suffixes: tuple[str, ...] | None) -> None:
    """Refuse pickles and checkpoints by name, and files not of the format ``where`` takes."""
    if any(suffix.lower() in CODE_SUFFIXES for suffix in path.suffixes):
        raise AutocompressError(
            f"{where}: {path.name!r} is a pickle or checkpoint file, which this server never loads "
            "(datasets are CSV, TSV or Parquet files; schemas and search spaces are YAML)"
        )
    if suffixes is not None and path.is_file() and not path.name.lower().endswith(suffixes):
        raise AutocompressError(f"{where}: {path.name!r} is not one of the formats {list(suffixes)}")


def checked_spec(spec: JobSpec, settings: Settings) -> JobSpec:
    """The spec with its file paths resolved inside the server's data folder; other paths refused.

    ``search.storage_path`` is the server's to choose (each job's Tune run lives in its work
    folder); ``dataset.path``, ``dataset.schema_path`` and ``search_space`` must name existing
    files inside ``data_dir`` (a search space may also come from the built-in ``search_spaces/``),
    in a format their loader parses (never a pickle or a checkpoint). The search space and preset
    are loaded, so a technique outside the registry is refused here rather than in the driver.
    """
    from autocompress.data.tabular import DATA_EXTENSIONS
    from autocompress.search.space import default_search_space_dir, load_search_space

    if spec.search.storage_path is not None:
        raise AutocompressError(
            "spec.search.storage_path: not accepted over the API; the server keeps each job's run "
            "in its work folder"
        )
    for where, free_form in (("spec.train", spec.train), ("spec.dataset.options", spec.dataset.options)):
        if _nesting_depth(free_form, MAX_SPEC_DEPTH) > MAX_SPEC_DEPTH:
            raise AutocompressError(f"{where}: nested deeper than {MAX_SPEC_DEPTH} levels")

    def resolve(value: str, where: str, roots: list[Path], suffixes: tuple[str, ...] | None) -> str:
        if not roots:
            raise AutocompressError(
                f"{where}: this server takes no file paths in specs (its data folder, "
                "AUTOCOMPRESS_DATA_DIR, is not set)"
            )
        errors = []
        for root in roots:
            try:
                resolved = inside(root, value, where)
            except AutocompressError as exc:
                errors.append(str(exc))
                continue
            if resolved.exists():
                _check_format(resolved, where, suffixes)
                return str(resolved)
            errors.append(f"{where}: {value!r} does not exist")
        raise AutocompressError(errors[-1])

    data_roots = [settings.data_dir] if settings.data_dir is not None else []
    formats = {
        "path": DATA_EXTENSIONS if spec.dataset.kind == "tabular" else None,  # Criteo days have no suffix
        "schema_path": YAML_SUFFIXES,
    }
    dataset_update = {
        name: resolve(value, f"spec.dataset.{name}", data_roots, formats[name])
        for name in ("path", "schema_path")
        if (value := getattr(spec.dataset, name)) is not None
    }
    update: dict[str, Any] = {}
    if dataset_update:
        update["dataset"] = spec.dataset.model_copy(update=dataset_update)
    if spec.search_space is not None:
        update["search_space"] = resolve(
            spec.search_space,
            "spec.search_space",
            [default_search_space_dir(), *data_roots],
            YAML_SUFFIXES,
        )
    space_field = "spec.search_space" if spec.search_space is not None else "spec.preset"
    try:
        load_search_space(spec.family, spec.preset, update.get("search_space"))
    except AutocompressError as exc:
        raise AutocompressError(f"{space_field}: {exc}") from None
    return spec.model_copy(update=update) if update else spec


class CancelRequest(BaseModel):
    """Who cancels (the job's reason will say "cancelled by <by>")."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(default="api", pattern=CANCELLED_BY_PATTERN)


# -- routes --------------------------------------------------------------------------------------

jobs_router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
models_router = APIRouter(prefix="/v1/models", tags=["models"])
service_router = APIRouter(tags=["service"])


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
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INTEGER)] = 0,
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
) -> dict[str, Any]:
    """The job's trials in Tune's order: config (arch + policy), metrics, state and error."""
    return {"trials": [trial_view(t) for t in store.list_trials(job_id, status)]}


@jobs_router.get("/{job_id}/pareto", responses=error_responses(404))
def job_pareto(job_id: str, store: StoreDep) -> dict[str, Any]:
    """The Pareto front (valid AUC x latency x size) of the finished trials, and the winner so far."""
    selection = _selection(store.list_trials(job_id))
    if selection is None:
        return {"front": [], "winner": None, "reason": None, "closest": []}
    return {
        "front": [_candidate_view(c) for c in selection.front],
        "winner": _candidate_view(selection.winner) if selection.winner is not None else None,
        "reason": selection.reason,
        "closest": [_candidate_view(c) for c in selection.closest],
    }


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
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> dict[str, Any]:
    """The job's log: state changes, trial starts and ends, driver events, in order."""
    events = store.list_events(job_id, after_id=after_id, limit=limit)
    return {
        "events": [{"id": e.id, "time": _iso(e.time), "kind": e.kind, "message": e.message} for e in events],
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


@models_router.get("")
def list_models(
    store: StoreDep,
    job_id: Annotated[str | None, Query(description="only the models of this job")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INTEGER)] = 0,
) -> dict[str, Any]:
    """Registered models, newest first."""
    models = store.list_models(job_id=job_id, limit=limit, offset=offset)
    return {"models": [model_summary(m) for m in models], "limit": limit, "offset": offset}


@models_router.get("/{model_id}", responses=error_responses(404))
def get_model(model_id: str, store: StoreDep) -> dict[str, Any]:
    """A registered model: metrics, feature schema and lineage (job and trial)."""
    model = store.get_model(model_id)
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


@models_router.get(
    "/{model_id}/artifact",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(403, 404),
    },
)
def model_artifact(model_id: str, store: StoreDep, settings: SettingsDep) -> FileResponse:
    """The model's ONNX file (only files inside the server's artifact root are served)."""
    model = store.get_model(model_id)
    path = Path(model.path).resolve()
    if not path.is_relative_to(settings.work_dir.resolve()):
        raise HTTPException(
            403, f"artifact: model {model_id}'s file lies outside this server's artifact root"
        )
    if not path.is_file():
        raise NotFoundError(f"artifact: the ONNX file of model {model_id} is gone")
    # the name a client saves the file under: no folders, no dot files, whatever the model is called
    filename = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.name).lstrip(".") or "model"
    return FileResponse(path, media_type="application/octet-stream", filename=f"{filename}.onnx")


@functools.cache
def _search_spaces() -> list[dict[str, Any]]:
    from autocompress.search.space import list_search_spaces, load_search_space

    out = []
    for family, presets in list_search_spaces().items():
        base = load_search_space(family)
        entries = []
        for preset in presets:
            space = load_search_space(family, preset)
            entries.append(
                {"name": preset, "description": space.description, "budget": space.budget.to_dict()}
            )
        out.append(
            {
                "family": family,
                "description": base.description,
                "budget": base.budget.to_dict(),
                "presets": entries,
            }
        )
    return out


@service_router.get("/v1/search-spaces")
def search_spaces() -> dict[str, Any]:
    """The built-in search spaces: per model family its presets with their descriptions and budgets."""
    return {"search_spaces": _search_spaces()}


@service_router.get("/healthz")
def healthz(request: Request, store: StoreDep) -> dict[str, Any]:
    """Liveness: the database answers (its kind and schema revision) and the launcher's state."""
    launcher: JobLauncher | None = request.app.state.launcher
    return {
        "status": "ok",
        "database": store.dialect,
        "schema_revision": store.schema_revision(),
        "launcher": launcher.status() if launcher is not None else None,
    }


# -- the app -------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> FastAPI:
    """The job API as a FastAPI app: the store and the launcher open on startup and close on shutdown.

    Other routers (model serving) join with ``app.include_router``; the bearer token and the
    body limit apply to them too.
    """
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # a request waits at most a few seconds for a database that went away, then gets a 503
        store = Store(settings.db_url, retry_timeout_s=5.0)
        launcher = None
        if settings.max_running_jobs > 0:
            launcher = JobLauncher(
                store,
                db_url=settings.db_url,
                work_dir=settings.work_dir.resolve(),
                max_running_jobs=settings.max_running_jobs,
                ray_address=settings.ray_address,
                ray_num_cpus=settings.ray_num_cpus,
                max_relaunches=settings.max_relaunches,
                poll_s=settings.launcher_poll_s,
                stale_after_s=settings.stale_after_s,
            )
        app.state.store, app.state.launcher = store, launcher
        if launcher is not None:
            launcher.start()
        try:
            yield
        finally:
            if launcher is not None:
                await run_in_threadpool(launcher.close)
            store.close()

    app = FastAPI(
        title="autocompress",
        version="1",
        summary="Submit, watch and cancel model-compression searches; download the winners.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.launcher = None
    app.add_middleware(RequestGuard, settings=settings)
    app.add_exception_handler(NotFoundError, _error(404))
    app.add_exception_handler(ConflictError, _error(409))
    app.add_exception_handler(AutocompressError, _error(422))
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(DBAPIError, _database_unavailable)  # a lost connection of another class
    app.add_exception_handler(DataError, _database_refused_value)
    from serve_app.inference import router as serving_router  # predict / rank / deploy / aliases

    for router in (jobs_router, models_router, service_router):
        app.include_router(router, responses=error_responses(*COMMON_ERRORS))
    app.include_router(serving_router, responses=error_responses(*COMMON_ERRORS, 400, 404, 409))
    return app


@functools.cache
def _default_app() -> FastAPI:
    return create_app(Settings.from_env())


def __getattr__(name: str) -> Any:
    # ``uvicorn serve_app.api:app``: built from the environment on first use, not at import
    if name == "app":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
