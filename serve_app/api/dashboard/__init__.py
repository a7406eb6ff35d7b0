"""The dashboard at ``/dashboard``: jobs, one job live (trials, Pareto front, parallel coordinates,
learning curves, log), and the registered models with what each endpoint alias serves.

Plain HTML pages and small scripts shipped as package data poll the API's JSON every 1.5 s and draw
with Plotly's JavaScript bundle, served from the installed ``plotly`` package: nothing is loaded
from the internet. The pages read the job routes (``/v1/jobs/...``) as they are, plus two JSON
routes of their own (``routes``) built from the store in ``overview``. Under ``AUTOCOMPRESS_API_AUTH
=all`` a browser carries the bearer token in a cookie that ``token_cookie`` sets once from
``/dashboard?token=...`` and that authorizes only safe methods (GET, HEAD, OPTIONS).

The package sits above ``serve_app.api``'s modules (it imports ``dependencies``, ``views``,
``settings``, ``guards``); the app factory mounts it with :func:`mount_dashboard`.
"""

from __future__ import annotations

from fastapi import FastAPI

from serve_app.api.dashboard.overview import alias_history, jobs_overview, registry_overview
from serve_app.api.dashboard.routes import dashboard_router
from serve_app.api.dashboard.token_cookie import TOKEN_COOKIE, TokenCookie
from serve_app.api.settings import Settings

__all__ = [
    "TOKEN_COOKIE",
    "TokenCookie",
    "alias_history",
    "dashboard_router",
    "jobs_overview",
    "mount_dashboard",
    "registry_overview",
]


def mount_dashboard(app: FastAPI, settings: Settings) -> None:
    """Add the dashboard's routes and its token cookie to the job API ``app``.

    Call it after the app's :class:`~serve_app.api.guards.RequestGuard` is added: the cookie is
    turned into the bearer header before the guard looks for one.
    """
    app.include_router(dashboard_router)
    app.add_middleware(TokenCookie, settings=settings)
