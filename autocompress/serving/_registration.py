"""Registering a trial of a job as a model: any finished trial on the job's Pareto front or off it,
the job's winner included (the engine registers it through :func:`register_trial` too).

The trial's ONNX file is copied into the job's folder, ``<job dir>/models/<trial row id>/``,
next to a copy of the job's ``encoders.json`` when the job has one, so the registered model stays
servable whatever later happens to the trial's working folder. The store numbers the versions.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autocompress.errors import AutocompressError
from autocompress.search.pareto import finished_candidates
from autocompress.serving._encoders import ENCODERS_FILE
from autocompress.store import ConflictError, JobRecord, ModelRecord, Store, TrialStatus

__all__ = ["MODELS_FOLDER", "MODEL_NAME_PATTERN", "default_model_name", "register_trial"]

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
MODELS_FOLDER = "models"


def default_model_name(job: JobRecord) -> str:
    """The name a model registered from ``job`` gets unless one is given: the job's name followed by
    its model family (``ranking`` + dlrm -> ``ranking-dlrm``), the family left out when the job's
    name already has it as a part (``tiny-dlrm`` stays ``tiny-dlrm``)."""
    family = job.spec.get("family")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", job.name).strip("-._") or "model"
    if isinstance(family, str) and family and family not in re.split(r"[-_.]", name):
        name = f"{name}-{family}"
    return name[:200]


def register_trial(
    store: Store,
    job_id: str,
    trial: str,
    job_dir: str | Path,
    *,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    feature_schema: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    artifact_root: str | Path | None = None,
) -> ModelRecord:
    """Register the finished trial ``trial`` (its key or row id) of a job as the next version of
    ``name`` (default :func:`default_model_name`), with ``tags``.

    The model's metrics are the trial's final report plus ``metrics``; its feature schema is
    ``feature_schema``, else the one the job recorded in its result. Raises NotFoundError for an
    unknown job or trial, ConflictError (naming the reason) for a trial that is not COMPLETED with
    a final report, one without an ONNX file (or, with ``artifact_root``, whose file lies outside
    it) and a job without a feature schema, AutocompressError for a bad name or tags.
    """
    if name is not None and not re.match(MODEL_NAME_PATTERN, name):
        raise AutocompressError(
            f"name: {name!r} must be 1..200 of letters, digits, '.', '_', '-', starting alphanumeric"
        )
    job = store.get_job(job_id)
    record = store.get_trial(job.id, trial)
    key = record.trial_key
    if not finished_candidates([record]):
        state = record.status.value + (
            " without a final report" if record.status is TrialStatus.COMPLETED else ""
        )
        raise ConflictError(
            f"trial: {key} is {state}; only a finished trial (COMPLETED with its final report) can be "
            "registered"
        )
    source_text = record.metrics.get("onnx_path")
    if not source_text:
        raise ConflictError(f"trial: {key} has no ONNX artifact (its final report names no onnx_path)")
    source = Path(str(source_text)).resolve()
    if artifact_root is not None and not source.is_relative_to(Path(artifact_root).resolve()):
        raise ConflictError(f"trial: the ONNX artifact of {key} lies outside this server's artifact root")
    if not source.is_file():
        raise ConflictError(f"trial: the ONNX artifact of {key} is gone ({str(source_text)!r})")
    schema = feature_schema if feature_schema is not None else _job_schema(store, job)
    artifact = _copy_artifact(source, Path(job_dir).resolve(), record.id)
    model = store.register_model(
        name or default_model_name(job),
        artifact,
        schema,
        {**record.metrics, **(metrics or {})},
        job_id=job.id,
        trial_id=record.id,
        tags=tags,
    )
    store.add_event(job.id, "model", f"trial {key} registered as model {model.name} v{model.version}")
    return model


def _job_schema(store: Store, job: JobRecord) -> dict[str, Any]:
    """The feature schema the job recorded once its data was loaded; for a job from before that, the
    schema of a model already registered from it."""
    schema = (job.result or {}).get("feature_schema")
    if isinstance(schema, dict) and schema:
        return schema
    earlier = store.list_models(job_id=job.id, limit=1)
    if earlier and earlier[0].feature_schema:
        return earlier[0].feature_schema
    raise ConflictError(
        f"feature_schema: job {job.id} has recorded no feature schema yet (a job records it once its "
        "data is loaded)"
    )


def _copy_artifact(source: Path, job_dir: Path, trial_row_id: str) -> Path:
    """The trial's ONNX file (with its external data, if any) and the job's encoders in the job's
    model folder; a file already there is kept (a registered model's file never changes)."""
    folder = job_dir / MODELS_FOLDER / trial_row_id
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for file, copy in (
            (source, folder / source.name),
            (source.with_name(source.name + ".data"), folder / (source.name + ".data")),
            (job_dir / ENCODERS_FILE, folder / ENCODERS_FILE),
        ):
            if file.is_file() and not copy.exists():
                partial = copy.with_name(copy.name + ".part")
                shutil.copyfile(file, partial)
                os.replace(partial, copy)
    except OSError as exc:
        raise AutocompressError(
            f"job_dir: cannot copy the model into {str(folder)!r}: {exc.strerror}"
        ) from None
    return folder / source.name
