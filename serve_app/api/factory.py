"""The app factory: :func:`create_app` assembles settings, guard, error mapping and routers into one
FastAPI app, and opens the store and the launcher for its lifetime.

``default_app`` is the app built from the environment that ``uvicorn serve_app.api:app`` serves,
built on first use rather than at import.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from autocompress.store import Store
from serve_app.api.errors import COMMON_ERRORS, add_error_handlers, error_responses
from serve_app.api.guards import RequestGuard
from serve_app.api.routes import ROUTERS
from serve_app.api.settings import Settings
from serve_app.launcher import JobLauncher

__all__ = ["create_app", "default_app"]


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
    add_error_handlers(app)
    from serve_app.api.inference import router as serving_router  # predict / rank / deploy / aliases

    for router in ROUTERS:
        app.include_router(router, responses=error_responses(*COMMON_ERRORS))
    app.include_router(serving_router, responses=error_responses(*COMMON_ERRORS, 400, 404, 409))
    from serve_app.api.dashboard import mount_dashboard  # pages at /dashboard; imports this package's modules

    mount_dashboard(app, settings)
    return app


@functools.cache
def default_app() -> FastAPI:
    """The app built from the environment (:meth:`Settings.from_env`), once per process."""
    return create_app(Settings.from_env())
