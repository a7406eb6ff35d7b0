"""A real job API for the tests: uvicorn on a free 127.0.0.1 port in a thread, a real store (SQLite file
or a fresh PostgreSQL schema), real HTTP through httpx."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from autocompress.store import Store
from serve_app.api import Settings, create_app
from serve_app.launcher import free_port
from tests.store.test_store import _fresh_pg_schema


@dataclass
class RunningApi:
    """A served app: its base URL, an HTTP client, and a store on the same database for checks."""

    url: str
    settings: Settings
    http: httpx.Client
    store: Store


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port until the block ends; its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the app did not start (see the log above)"
        assert time.monotonic() < deadline, "the app did not start within 60 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(120)
        assert not thread.is_alive(), "the app did not shut down within 120 s"


@contextlib.contextmanager
def running_api(settings: Settings) -> Iterator[RunningApi]:
    """Serve ``create_app(settings)`` with uvicorn until the block ends (startup and shutdown included)."""
    with (
        serving(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
        Store(settings.db_url) as store,
    ):
        yield RunningApi(url, settings, http, store)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database nobody else uses: a fresh SQLite file, or a fresh PostgreSQL schema (skipped without a
    server, failed under CI=true)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'api.db'}"
        return
    with _fresh_pg_schema() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'api.db'}"


@pytest.fixture
def api_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``api_factory(db_url, **settings)`` -> a running API (queue-only unless max_running_jobs is given)."""
    stack = contextlib.ExitStack()

    def start(db_url: str, **overrides: Any) -> RunningApi:
        settings = Settings(db_url=db_url, work_dir=tmp_path / "runs", max_running_jobs=0)
        return stack.enter_context(running_api(replace(settings, **overrides)))

    with stack:
        yield start
