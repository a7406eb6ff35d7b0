"""The dashboard's routes (``/dashboard``): three pages, their scripts and styles, Plotly's bundle,
and two JSON routes the job API has no match for (the jobs list with progress, the registry).

Pages and assets are package data read through ``importlib.resources``, so a wheel install serves
them with no repository around it. The routes stay out of the OpenAPI document: they are for the
pages, not for clients.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from autocompress.store import NotFoundError
from serve_app.api.dashboard.overview import jobs_overview, registry_overview
from serve_app.api.dependencies import StoreDep
from serve_app.api.routes.paging import PageLimit, PageOffset

__all__ = ["CONTENT_SECURITY_POLICY", "PLOTLY_JS", "STATIC_FILES", "dashboard_router"]

PLOTLY_JS = "plotly.min.js"
_MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# what a page may load and connect to: this server only. Plotly's WebGL charts (parallel coordinates)
# compile their shaders' glue code at run time ('unsafe-eval') and style nodes inline.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_PACKAGE = resources.files(__package__ or "serve_app.api.dashboard")
STATIC_FILES = frozenset(
    entry.name for entry in (_PACKAGE / "static").iterdir() if entry.name.endswith(tuple(_MEDIA_TYPES))
)

dashboard_router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False)


@functools.cache
def _asset(folder: str, name: str) -> bytes:
    return (_PACKAGE / folder / name).read_bytes()


@functools.cache
def _plotly_js() -> bytes:
    """Plotly's JavaScript bundle as the ``plotly`` package ships it (its ``package_data``)."""
    return (resources.files("plotly") / "package_data" / PLOTLY_JS).read_bytes()


def _page(name: str) -> HTMLResponse:
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": CONTENT_SECURITY_POLICY}
    return HTMLResponse(_asset("templates", name), headers=headers)


@dashboard_router.get("", response_class=HTMLResponse)
@dashboard_router.get("/", response_class=HTMLResponse)  # no slash redirect: it would echo the Host header
def jobs_page() -> HTMLResponse:
    """The jobs: state, progress, best so far against the budget, started and elapsed time."""
    return _page("jobs.html")


@dashboard_router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, store: StoreDep) -> HTMLResponse:
    """One job, live: trials, Pareto front, searched parameters, learning curves and log (404 if unknown)."""
    store.get_job(job_id)
    return _page("job.html")


@dashboard_router.get("/models", response_class=HTMLResponse)
def models_page() -> HTMLResponse:
    """Registered models and endpoint aliases with their promote / rollback history."""
    return _page("models.html")


@dashboard_router.get("/static/{name}")
def static_file(name: str) -> Response:
    """A script or style of the pages, or Plotly's bundle; nothing outside the package's list."""
    if name == PLOTLY_JS:
        return Response(
            _plotly_js(), media_type=_MEDIA_TYPES[".js"], headers={"Cache-Control": "max-age=3600"}
        )
    if name not in STATIC_FILES:
        raise NotFoundError(f"name: no dashboard file {name!r}")
    media_type = _MEDIA_TYPES["." + name.rsplit(".", 1)[-1]]
    return Response(_asset("static", name), media_type=media_type, headers={"Cache-Control": "no-cache"})


@dashboard_router.get("/api/jobs")
def jobs_data(store: StoreDep, limit: PageLimit = 50, offset: PageOffset = 0) -> dict[str, Any]:
    """Jobs, newest first, each with its progress, best so far and resolved budget."""
    return jobs_overview(store, limit=limit, offset=offset)


@dashboard_router.get("/api/registry")
def registry_data(store: StoreDep) -> dict[str, Any]:
    """Registered models (with versions and the aliases serving them) and every endpoint alias's history."""
    return registry_overview(store)
