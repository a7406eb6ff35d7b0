"""Registered-model routes (``/v1/models``): list them (by job or name), read one with its version,
tags and lineage, download its ONNX file. Registering a trial is a job route
(``POST /v1/jobs/{id}/trials/{trial}/register``).

Predicting, ranking and deploying are the serving routes' (``serve_app.api.inference``), which join
the same app under the same prefix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse

from autocompress.store import NotFoundError
from serve_app.api.dependencies import SettingsDep, StoreDep
from serve_app.api.errors import error_responses
from serve_app.api.routes.paging import PageLimit, PageOffset
from serve_app.api.views import model_summary, model_view

__all__ = ["models_router"]

models_router = APIRouter(prefix="/v1/models", tags=["models"])


@models_router.get("")
def list_models(
    store: StoreDep,
    job_id: Annotated[str | None, Query(description="only the models of this job")] = None,
    name: Annotated[str | None, Query(description="only the versions of this model name")] = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> dict[str, Any]:
    """Registered models (name, version, tags, lineage, headline metrics), newest first."""
    models = store.list_models(job_id=job_id, limit=limit, offset=offset, name=name)
    return {"models": [model_summary(m) for m in models], "limit": limit, "offset": offset}


@models_router.get("/{model_id}", responses=error_responses(404))
def get_model(model_id: str, store: StoreDep) -> dict[str, Any]:
    """A registered model: metrics, feature schema and lineage (job and trial)."""
    return model_view(store, store.get_model(model_id))


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
