"""The dashboard over real HTTP: pages and assets served from package data with nothing from elsewhere,
its JSON routes, and the auth rules of the API (a read-only token cookie under auth ``all``)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.api import Settings
from serve_app.api.dashboard import TOKEN_COOKIE
from serve_app.api.dashboard.routes import STATIC_FILES
from tests.api.conftest import RunningApi, running_api
from tests.dashboard.conftest import Seeded

PACKAGE = Path(__file__).resolve().parents[2] / "serve_app" / "api" / "dashboard"
TOKEN = "s3cret-token"


@pytest.fixture
def api(seeded_db: tuple[str, Seeded], tmp_path: Path) -> Iterator[RunningApi]:
    url, _ = seeded_db
    with running_api(Settings(db_url=url, work_dir=tmp_path / "runs", max_running_jobs=0)) as running:
        yield running


@pytest.fixture
def locked_api(seeded_db: tuple[str, Seeded], tmp_path: Path) -> Iterator[RunningApi]:
    url, _ = seeded_db
    settings = Settings(
        db_url=url, work_dir=tmp_path / "runs", max_running_jobs=0, api_token=TOKEN, auth="all"
    )
    with running_api(settings) as running:
        yield running


def test_pages_scripts_and_plotly_are_served_from_the_package(
    api: RunningApi, seeded_db: tuple[str, Seeded]
) -> None:
    _, seeded = seeded_db
    for path in ("/dashboard", f"/dashboard/jobs/{seeded.running}", "/dashboard/models"):
        page = api.http.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', page.text):
            served = api.http.get(asset)
            assert served.status_code == 200, asset
            assert served.headers["content-type"].startswith(("text/javascript", "text/css"))
    plotly_js = api.http.get("/dashboard/static/plotly.min.js")
    assert plotly_js.status_code == 200 and len(plotly_js.content) > 1_000_000
    assert api.http.get("/dashboard/static/routes.py").status_code == 404
    assert api.http.get("/dashboard/static/nothing.js").status_code == 404
    assert api.http.get("/dashboard/jobs/no-such-job").status_code == 404
    assert not any(p.startswith("/dashboard") for p in api.http.get("/openapi.json").json()["paths"])


def test_the_json_routes_answer_jobs_and_registry(api: RunningApi, seeded_db: tuple[str, Seeded]) -> None:
    _, seeded = seeded_db
    jobs = api.http.get("/dashboard/api/jobs", params={"limit": 2}).json()
    assert jobs["total"] == 3 and len(jobs["jobs"]) == 2
    assert api.http.get("/dashboard/api/jobs", params={"limit": 0}).status_code == 422
    registry = api.http.get("/dashboard/api/registry").json()
    assert {e["alias"] for e in registry["endpoints"]} == {"ranking-prod", "ranking-canary"}
    assert {m["id"] for m in registry["models"]} == set(seeded.model_ids)


def test_no_page_or_script_names_another_origin() -> None:
    for path in [*PACKAGE.glob("templates/*.html"), *PACKAGE.glob("static/*")]:
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text()), path


def test_every_asset_is_package_data() -> None:
    data = tomllib.loads((PACKAGE.parents[2] / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["serve_app.api.dashboard"]
    assets = [
        p.relative_to(PACKAGE).as_posix() for p in PACKAGE.glob("*/*") if p.parent.name != "__pycache__"
    ]
    assert assets and all(any(fnmatch.fnmatch(a, g) for g in globs) for a in assets), (assets, globs)
    assert {p.name for p in PACKAGE.glob("static/*")} == STATIC_FILES


def test_under_auth_all_the_dashboard_needs_the_token_and_a_cookie_carries_it(locked_api: RunningApi) -> None:
    http = locked_api.http
    assert http.get("/dashboard").status_code == 401
    assert http.get("/dashboard/api/jobs").status_code == 401
    assert http.get("/dashboard", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert http.get("/dashboard", params={"token": "wrong"}).status_code == 401
    assert TOKEN_COOKIE not in http.cookies

    # the token in the address once: a cookie, and the same page without the token in its address
    login = http.get("/dashboard/models", params={"token": TOKEN})
    assert login.status_code == 303 and login.headers["location"] == "/dashboard/models"
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert http.cookies[TOKEN_COOKIE] == TOKEN
    assert http.get("/dashboard").status_code == 200
    assert http.get("/dashboard/api/registry").status_code == 200
    assert http.get("/v1/jobs").status_code == 200  # what the job page reads
    # it reads only: a cookie never authorizes a change
    assert http.post("/v1/jobs/anything/cancel", json={}).status_code == 401
    assert http.delete("/v1/jobs/anything").status_code == 401
    http.cookies.clear()
    http.cookies.set(TOKEN_COOKIE, "wrong")
    assert http.get("/dashboard").status_code == 401


def test_under_auth_mutating_reads_stay_open_and_the_cookie_is_not_needed(
    seeded_db: tuple[str, Seeded], tmp_path: Path
) -> None:
    url, _ = seeded_db
    settings = Settings(db_url=url, work_dir=tmp_path / "runs", max_running_jobs=0, api_token=TOKEN)
    with running_api(settings) as api:
        assert api.http.get("/dashboard").status_code == 200
        assert (
            api.http.get("/dashboard", params={"token": TOKEN}).status_code == 200
        )  # no redirect, no cookie
        assert TOKEN_COOKIE not in api.http.cookies
        assert api.http.post("/v1/jobs/anything/cancel", json={}).status_code == 401
