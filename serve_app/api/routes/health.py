"""The liveness route (``/healthz``): the database answers, and what the job launcher is doing."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from serve_app.api.dependencies import StoreDep
from serve_app.launcher import JobLauncher

__all__ = ["health_router"]

health_router = APIRouter(tags=["service"])


@health_router.get("/healthz")
def healthz(request: Request, store: StoreDep) -> dict[str, Any]:
    """Liveness: the database answers (its kind and schema revision) and the launcher's state."""
    launcher: JobLauncher | None = request.app.state.launcher
    return {
        "status": "ok",
        "database": store.dialect,
        "schema_revision": store.schema_revision(),
        "launcher": launcher.status() if launcher is not None else None,
    }
