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

The modules, lowest first (each imports only those before it, never this package): ``settings``;
``guards`` (the ASGI guard: token, body size, NUL in URLs); ``errors`` (exception -> status);
``views`` (records -> JSON); ``paths`` (path sandboxing); ``spec_checks`` (what a submitted spec
may name); ``dependencies`` (store and settings for routes); ``routes`` (one module per resource);
``factory`` (``create_app``).
"""

from __future__ import annotations

from typing import Any

from serve_app.api.errors import COMMON_ERRORS, ErrorBody, add_error_handlers, error_responses
from serve_app.api.factory import create_app, default_app
from serve_app.api.guards import RequestGuard
from serve_app.api.paths import inside
from serve_app.api.routes import ROUTERS
from serve_app.api.routes.jobs import CancelRequest
from serve_app.api.settings import Settings
from serve_app.api.spec_checks import checked_spec
from serve_app.api.views import job_summary, job_view, model_summary, model_view, trial_view

__all__ = [
    "COMMON_ERRORS",
    "ROUTERS",
    "CancelRequest",
    "ErrorBody",
    "RequestGuard",
    "Settings",
    "add_error_handlers",
    "checked_spec",
    "create_app",
    "default_app",
    "error_responses",
    "inside",
    "job_summary",
    "job_view",
    "model_summary",
    "model_view",
    "trial_view",
]


def __getattr__(name: str) -> Any:
    # ``uvicorn serve_app.api:app``: built from the environment on first use, not at import
    if name == "app":
        return default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
