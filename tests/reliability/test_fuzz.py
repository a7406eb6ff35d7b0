"""Schemathesis against the running job API: every operation of its ``/openapi.json``, valid and invalid
data, with the bearer token, on a real store (a SQLite file and a PostgreSQL schema), jobs only queued.

No request may get a 5xx, and every answer must be what the document says (status code, content
type, headers, body schema). ``make fuzz`` (``benchmarks/fuzz.py``) runs the same fuzzer with 1000+
requests; here it is a bounded pass. The last tests pin what the fuzzer found, so it stays fixed.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from autocompress.data.schema import FeatureSchema
from benchmarks.fuzz import TOKEN, fuzz_api, run, seeded_api
from serve_app.api import Settings
from tests.api.conftest import RunningApi, running_api
from tests.store.test_store import _fresh_pg_schema

pytestmark = pytest.mark.slow

REQUESTS = 100  # per database: about 4 per operation, valid and invalid data
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ID_OPERATIONS = ("{job_id}", "{model_id}", "{alias}")


@pytest.fixture(scope="module")
def seeded() -> Iterator[tuple[RunningApi, dict[str, list[str]]]]:
    """The queue-only API on a SQLite file, seeded with the fuzzer's jobs, models and alias."""
    with seeded_api() as served:
        yield served


@contextlib.contextmanager
def database(kind: str) -> Iterator[str | None]:
    """None (a SQLite file) or the URL of a fresh PostgreSQL schema."""
    if kind == "sqlite":
        yield None
        return
    with _fresh_pg_schema() as url:
        yield url


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_fuzzing_finds_no_server_error_and_no_schema_violation(kind: str, request) -> None:
    if kind == "sqlite":  # the module's seeded API, which the next test reuses
        api, known = request.getfixturevalue("seeded")
        report = fuzz_api(api.url, token=TOKEN, max_requests=REQUESTS, known_ids=known, max_seconds=600)
    else:
        with _fresh_pg_schema() as url:
            report = run(REQUESTS, seed=0, max_seconds=600, db_url=url)
    failures = "\n\n".join(report.failures)
    assert report.server_errors == 0, f"{report.server_errors} requests got a 5xx or no answer:\n{failures}"
    assert report.schema_violations == 0, (
        f"{report.schema_violations} answers break the document:\n{failures}"
    )
    assert report.requests == REQUESTS  # the budget was spent, within the time bound
    assert len(report.statuses) == report.operations >= 24  # every operation was exercised
    # the seeded jobs, models and alias were reached, not only 404s for generated ids
    reached = sum(
        n
        for label, statuses in report.statuses.items()
        if any(p in label for p in ID_OPERATIONS)
        for status, n in statuses.items()
        if 200 <= status < 300
    )
    assert reached >= 3, report.statuses
    answered = {status for statuses in report.statuses.values() for status in statuses}
    assert {200, 201, 404, 409, 422} <= answered, answered  # 409: a seeded job or model's state


def _broken_app(_settings: Settings) -> FastAPI:
    """An app whose document lies: one route crashes, one answers a body its schema forbids."""
    app = FastAPI()

    class Count(BaseModel):
        count: int

    @app.get("/boom")
    def boom() -> dict[str, Any]:
        raise RuntimeError("a bug")

    @app.get("/count", response_model=Count)
    def count() -> Any:
        return {"count": "many"}  # FastAPI refuses to send it: a 500

    @app.get("/undocumented", responses={200: {"model": Count}})
    def undocumented() -> Any:
        return JSONResponse({"count": "many"}, status_code=200)

    return app


def test_the_fuzzer_reports_server_errors_and_schema_violations(monkeypatch, tmp_path) -> None:
    # the counts above can fail: against an app with such bugs, they are not zero
    monkeypatch.setattr("tests.api.conftest.create_app", _broken_app)
    with running_api(Settings(db_url=f"sqlite:///{tmp_path / 'x.db'}", max_running_jobs=0)) as api:
        report = fuzz_api(api.url, token=None, max_requests=12, max_seconds=60)
    assert report.requests >= 3
    assert report.server_errors >= 2  # /boom, and /count that fails to serialize
    assert report.schema_violations >= 1  # /undocumented's body is not a Count
    assert any("GET /boom -> 500" in f for f in report.failures), report.failures
    assert any("GET /undocumented -> 200" in f and "schema" in f for f in report.failures), report.failures


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities too: Python's JSON writes and reads them
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def _valid(schema: FeatureSchema, name: str) -> tuple[Any, st.SearchStrategy[Any]]:
    """A value the feature takes, and a strategy of such values."""
    if name in {d.name for d in schema.dense}:
        return 0.5, st.floats(-1e6, 1e6)
    if name in {q.name for q in schema.sequence}:
        return [1, 2, 3], st.lists(st.integers(0, 5000), max_size=30)
    return 1, st.integers(-5, 5000)


def test_prediction_rows_with_any_values_get_200_or_422(seeded) -> None:
    """Rows with the model's real feature names and any JSON values: scored, or refused naming the field."""
    api, known = seeded
    model_id = known["model_id"][0]  # the tiny DLRM
    schema = FeatureSchema.from_dict(api.http.get(f"/v1/models/{model_id}").json()["schema"])
    names = schema.feature_names
    value = {name: _valid(schema, name)[1] | JSON_VALUES for name in names}
    answers: Counter[int] = Counter()
    rows_strategy = st.lists(st.fixed_dictionaries(value), min_size=1, max_size=3)

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(rows=rows_strategy)
    def scored_or_refused(rows: list[dict[str, Any]]) -> None:
        body = json.dumps({"rows": rows})  # NaN and Infinity as Python writes them (httpx refuses to)
        answer = api.http.post(
            f"/v1/models/{model_id}/predict",
            content=body,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert answer.status_code in (200, 422), (rows, answer.text)
        answers[answer.status_code] += 1
        result = answer.json()
        if answer.status_code == 422:
            assert result["detail"].startswith("rows["), result  # names the row and the feature
            return
        probabilities = result["probabilities"]
        assert len(probabilities) == len(rows)
        assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probabilities), probabilities

    scored_or_refused()
    assert answers[200] >= 1 and answers[422] >= 1, answers  # both paths were taken
    valid = {name: _valid(schema, name)[0] for name in names}
    assert api.http.post(f"/v1/models/{model_id}/predict", json={"rows": [valid]}, headers=AUTH).is_success
    nested: Any = 1
    for _ in range(600):  # deeper than pydantic serializes, shallower than the JSON parser's limit
        nested = [nested]
    row = {**valid, names[0]: nested}
    deep = api.http.post(f"/v1/models/{model_id}/predict", json={"rows": [row]}, headers=AUTH)
    assert deep.status_code == 422 and deep.json()["detail"].startswith(f"rows[0].{names[0]}"), deep.text


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_what_the_fuzzer_found_is_answered_4xx(kind: str, tmp_path) -> None:
    """Found by fuzzing: NUL characters (PostgreSQL refuses them in text), integers beyond 64 bits and
    specs nested deeper than pydantic serializes all gave 500."""
    with database(kind) as url:
        settings = Settings(db_url=url or f"sqlite:///{tmp_path / 'api.db'}", max_running_jobs=0)
        with running_api(settings) as api:
            job = api.http.post("/v1/jobs", json={"name": "kept"}).json()["id"]

            def refused(method: str, path: str, status: int, where: str, **kwargs: Any) -> None:
                answer = api.http.request(method, path, **kwargs)
                assert answer.status_code == status, (method, path, answer.text)
                assert answer.json()["detail"].startswith(where), (method, path, answer.text)

            for path in (
                "/v1/jobs/a%00b",
                f"/v1/jobs/{job}%00/logs",
                "/v1/models/m%00",
                "/v1/endpoints/a%00",
            ):
                refused("GET", path, 422, "path: must not contain a NUL character")
            refused("GET", "/v1/models?job_id=a%00", 422, "query: must not contain a NUL character")
            refused("POST", "/v1/jobs/a%00/cancel", 422, "path:", json={"by": "x"})
            refused("DELETE", "/v1/jobs/a%00", 422, "path:")
            refused(
                "POST",
                "/v1/endpoints/prod/promote",
                422 if kind == "postgresql" else 404,
                "",
                json={"model_id": "m\u0000"},
            )

            huge = str(2**64)
            refused(
                "GET", f"/v1/jobs?offset={huge}", 422, "query offset: Input should be less than or equal to"
            )
            refused("GET", f"/v1/models?offset={huge}", 422, "query offset:")
            refused("GET", f"/v1/jobs/{job}/logs?after_id={huge}", 422, "query after_id:")

            nested: Any = 1
            for _ in range(600):
                nested = [nested]
            options = {"dataset": {"kind": "synthetic", "options": {"x": nested}}}
            refused(
                "POST", "/v1/jobs", 422, "spec.dataset.options: nested deeper than 32 levels", json=options
            )
            refused("POST", "/v1/jobs", 422, "spec.train:", json={"train": {"epochs": nested}})
            assert api.store.count_jobs() == 1  # nothing refused was recorded
            assert api.http.get(f"/v1/jobs/{job}").status_code == 200
