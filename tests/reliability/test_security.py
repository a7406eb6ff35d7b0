"""Security of the job API over real HTTP (uvicorn on 127.0.0.1, a SQLite file, jobs only queued).

The bearer token guards every mutating route of the OpenAPI document (so a new route cannot slip
past this test); ids, names and stored paths never lead outside the artifact, work and data
folders; bodies over the limit are refused before they are read; nothing in a spec loads code or a
pickle; and the service is no way through to the Ray dashboard.
"""

from __future__ import annotations

import contextlib
import http.client
import pickle
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
import yaml
from fastapi.routing import APIRoute
from starlette.routing import Mount

from autocompress.data.registry import load_dataset
from autocompress.errors import AutocompressError
from autocompress.job import JobSpec
from autocompress.store import JobStatus
from serve_app.api import Settings, create_app
from serve_app.launcher import free_port
from tests.api.conftest import RunningApi, running_api

TOKEN = "s3cret-token"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
SPEC: dict[str, Any] = {"name": "sec", "dataset": {"kind": "synthetic", "scale": "tiny"}}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
HTTP_METHODS = {"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"}
SECRET = "top-secret-contents"
BAD_CREDENTIALS: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Bearer"},
    {"Authorization": TOKEN},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., RunningApi]]:
    """``serve(**settings)`` -> the queue-only API with a data folder (``tmp_path/data``) and work folder."""
    (tmp_path / "data").mkdir()
    (tmp_path / "runs").mkdir()
    stack = contextlib.ExitStack()

    def start(**overrides: Any) -> RunningApi:
        settings = Settings(
            db_url=f"sqlite:///{tmp_path / 'api.db'}",
            work_dir=tmp_path / "runs",
            data_dir=tmp_path / "data",
            max_running_jobs=0,
        )
        return stack.enter_context(running_api(replace(settings, **overrides)))

    with stack:
        yield start


def documented(api: RunningApi) -> list[tuple[str, str]]:
    """(method, path template) of every operation in the served OpenAPI document."""
    doc = api.http.get("/openapi.json", headers=GOOD).json()
    return [
        (m.upper(), path) for path, item in doc["paths"].items() for m in item if m.upper() in HTTP_METHODS
    ]


def fill(template: str, **ids: str) -> str:
    """A concrete URL for a path template: the given ids, ``user`` for a tower side, ``x`` otherwise."""
    values = {"side": "user", **ids}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], "x"), template)


def body_for(template: str) -> Any:
    """A body the route would accept, so only the missing token can explain a refusal."""
    bodies = {
        "/v1/jobs": SPEC,
        "/v1/jobs/{job_id}/cancel": {"by": "mallory"},
        "/v1/endpoints/{alias}/promote": {"model_id": "x"},
        "/v1/models/{model_id}/deploy": {"alias": "prod"},
    }
    return bodies.get(template, {"rows": [{}]})


def served_routes(settings: Settings) -> list[Any]:
    """Every route of the app with its full path and methods (newer FastAPI keeps included routers nested;
    ``iter_route_contexts`` is how it walks them for the document)."""
    routes = create_app(settings).routes
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(walk(routes)) if walk is not None else list(routes)


def raw_request(
    api: RunningApi, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """Send a request line exactly as given (no client-side path normalisation)."""
    host, port = api.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": f"{host}:{port}", **(headers or {})}.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


# -- the token -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mutating", "all"])
def test_every_mutating_route_in_the_document_needs_the_token(serve, mode) -> None:
    api = serve(api_token=TOKEN, auth=mode)
    operations = documented(api)
    mutating = [(method, path) for method, path in operations if method not in SAFE_METHODS]
    assert len(mutating) >= 12, mutating  # the jobs, models and serving routes are all there
    for expected in (
        ("POST", "/v1/jobs"),
        ("DELETE", "/v1/jobs/{job_id}"),
        ("POST", "/v1/models/{model_id}/deploy"),
        ("POST", "/v1/endpoints/{alias}/promote"),
    ):
        assert expected in mutating
    pending = api.store.create_job(SPEC)
    failed = api.store.create_job(SPEC)
    api.store.set_job_status(failed.id, "FAILED", "for the test")

    guarded = operations if mode == "all" else mutating
    for method, template in guarded:
        for url in {fill(template, job_id=job_id) for job_id in (pending.id, failed.id)}:
            body = body_for(template) if method not in SAFE_METHODS else None
            for headers in BAD_CREDENTIALS:
                answer = api.http.request(method, url, json=body, headers=headers)
                assert answer.status_code == 401, (method, url, headers, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
                assert TOKEN not in answer.text
    # nothing a refused request asked for happened
    assert api.store.count_jobs() == 2
    assert api.store.get_job(pending.id).status is JobStatus.PENDING
    assert api.store.get_job(failed.id).status is JobStatus.FAILED
    assert api.store.active_deployment("prod") is None
    # and the token opens them
    assert api.http.post("/v1/jobs", json=SPEC, headers=GOOD).status_code == 201
    assert api.http.delete(f"/v1/jobs/{failed.id}", headers=GOOD).status_code == 204

    # every route the app serves is in the document, so the loop above saw all mutating ones
    in_document = set(operations)
    for route in served_routes(api.settings):
        if isinstance(getattr(route, "route", route), APIRoute):
            for method in route.methods - SAFE_METHODS:
                assert (method, route.path) in in_document, (method, route.path)
        else:  # Starlette's own: the document and its viewers, read-only
            assert route.path in {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}, route.path
            assert route.methods <= SAFE_METHODS, route.path


def test_no_method_trick_reaches_a_mutating_route_without_the_token(serve) -> None:
    api = serve(api_token=TOKEN)
    failed = api.store.create_job(SPEC)
    api.store.set_job_status(failed.id, "FAILED", "for the test")
    pending = api.store.create_job(SPEC)
    override = {"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "DELETE", "X-Method-Override": "DELETE"}
    for job in (failed, pending):
        for path in (f"/v1/jobs/{job.id}", f"/v1/jobs/{job.id}/cancel"):
            answer = api.http.get(path, headers=override)
            assert answer.status_code in (200, 405), (path, answer.text)  # GET reads, never deletes
            for method in ("delete", "Delete", "post", "PUT", "PATCH", "CONNECT", "TRACE"):
                status, text = raw_request(api, method, path)
                assert status in (400, 401, 405), (method, path, status, text)
    assert api.store.get_job(failed.id).status is JobStatus.FAILED
    assert api.store.get_job(pending.id).status is JobStatus.PENDING


# -- paths ------------------------------------------------------------------------------------------


def test_artifacts_and_reports_are_served_only_from_inside_their_roots(serve, tmp_path) -> None:
    api = serve(api_token=TOKEN)
    root = tmp_path / "runs"
    secret = tmp_path / "secret.onnx"
    secret.write_text(SECRET)
    (root / "models").mkdir()
    link = root / "models" / "link.onnx"
    link.symlink_to(secret)
    outside = [str(secret), str(root / ".." / "secret.onnx"), "runs/../secret.onnx", str(link)]
    for path in outside:
        model = api.store.register_model("m", path, {}, {})
        artifact = api.http.get(f"/v1/models/{model.id}/artifact")
        assert artifact.status_code == 403, (path, artifact.text)
        assert "outside this server's artifact root" in artifact.json()["detail"]
        predicted = api.http.post(f"/v1/models/{model.id}/predict", json={"rows": [{}]}, headers=GOOD)
        assert predicted.status_code == 409, (path, predicted.text)
        deployed = api.http.post(f"/v1/models/{model.id}/deploy", json={"alias": "prod"}, headers=GOOD)
        assert deployed.status_code == 409, (path, deployed.text)
        assert SECRET not in artifact.text + predicted.text + deployed.text
    assert api.store.active_deployment("prod") is None

    # a model inside the root downloads under a name that cannot climb out of the client's folder
    inside = root / "models" / "winner.onnx"
    inside.write_bytes(b"onnx bytes")
    for name in ("../../.bashrc", "/etc/cron.d/evil", "..", "a\\..\\b"):
        model = api.store.register_model(name, inside, {}, {})
        download = api.http.get(f"/v1/models/{model.id}/artifact")
        assert download.status_code == 200 and download.content == b"onnx bytes"
        filename = re.search(r'filename="([^"]+)"', download.headers["content-disposition"])
        assert filename is not None, download.headers["content-disposition"]
        assert not filename[1].startswith(".") and not set("/\\") & set(filename[1]), filename[1]

    # ids that try to climb: no route matches, or no such id
    for target in (
        "/v1/models/../../secret.onnx/artifact",
        "/v1/models/..%2F..%2Fsecret.onnx/artifact",
        "/v1/models/%2e%2e/artifact",
        "/v1/jobs/..%2F..%2F..%2Fetc%2Fpasswd/report",
        "/v1/jobs/../../../etc/passwd",
        "/v1/endpoints/..%2Fx/predict",
    ):
        status, text = raw_request(api, "GET", target)
        assert status in (404, 405), (target, status, text)
        assert SECRET not in text and "root:" not in text

    # a report path stored with a job is served only from inside the work folder
    secret_report = tmp_path / "secret.html"
    secret_report.write_text(SECRET)
    (root / "linked.html").symlink_to(secret_report)
    for report in (str(secret_report), "../secret.html", str(root / "linked.html")):
        job = api.store.create_job(SPEC)
        api.store.set_job_status(job.id, "RUNNING")
        api.store.set_job_status(job.id, "SUCCEEDED", result={"report": report})
        answer = api.http.get(f"/v1/jobs/{job.id}/report")
        assert answer.status_code == 422 and "lies outside the folder" in answer.json()["detail"], answer.text
        assert SECRET not in answer.text


def test_spec_paths_cannot_leave_the_data_folder(serve, tmp_path) -> None:
    api = serve(api_token=TOKEN)
    data = tmp_path / "data"
    (tmp_path / "secret.tsv").write_text(SECRET)
    (tmp_path / "secret.yaml").write_text("family: dlrm\n")
    (data / "escape.tsv").symlink_to(tmp_path / "secret.tsv")
    (data / "escape.yaml").symlink_to(tmp_path / "secret.yaml")
    (data / "train.csv").write_text("y,a\n1,2\n")
    cases = [
        ("spec.dataset.path", {"dataset": {"kind": "criteo", "path": "escape.tsv"}}),
        ("spec.dataset.path", {"dataset": {"kind": "criteo", "path": "../secret.tsv"}}),
        ("spec.dataset.path", {"dataset": {"kind": "criteo", "path": str(tmp_path / "secret.tsv")}}),
        ("spec.dataset.path", {"dataset": {"kind": "movielens", "path": ".."}}),
        (
            "spec.dataset.schema_path",
            {"dataset": {"kind": "tabular", "path": "train.csv", "schema_path": "escape.yaml"}},
        ),
        (
            "spec.dataset.schema_path",
            {"dataset": {"kind": "tabular", "path": "train.csv", "schema_path": "../secret.yaml"}},
        ),
        ("spec.search_space", {"search_space": "escape.yaml"}),
        ("spec.search_space", {"search_space": "../../../../../../etc/passwd"}),
        ("spec.search_space", {"search_space": "/etc/passwd"}),
    ]
    for field, fields in cases:
        answer = api.http.post("/v1/jobs", json={**SPEC, **fields}, headers=GOOD)
        assert answer.status_code == 422, (fields, answer.text)
        assert answer.json()["detail"].startswith(f"{field}: "), (fields, answer.text)
        assert "lies outside the folder" in answer.json()["detail"], (fields, answer.text)
        assert SECRET not in answer.text
    assert api.store.count_jobs() == 0


# -- bodies -----------------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_refused_on_every_mutating_route(serve) -> None:
    api = serve(api_token=TOKEN)
    limit = api.settings.max_body_bytes
    assert limit == 1 << 20  # the default: 1 MiB
    doc = api.http.get("/openapi.json").json()
    pending = api.store.create_job(SPEC)
    failed = api.store.create_job(SPEC)
    api.store.set_job_status(failed.id, "FAILED", "for the test")
    too_large = f"body: larger than the limit of {limit} bytes"
    json_type = {**GOOD, "Content-Type": "application/json"}
    mutating = [(m, p) for m, p in documented(api) if m not in SAFE_METHODS]
    for method, template in mutating:
        for url in {fill(template, job_id=job_id) for job_id in (pending.id, failed.id)}:
            declared = api.http.request(method, url, content=b"[" + b" " * limit + b"]", headers=json_type)
            assert declared.status_code == 413 and declared.json()["detail"] == too_large, (method, url)
            if "requestBody" in doc["paths"][template][method.lower()]:  # read, so refused as it streams in
                chunks = iter([b"[", b" " * (limit // 2), b" " * (limit // 2), b"]"])
                streamed = api.http.request(method, url, content=chunks, headers=json_type)
                assert streamed.status_code == 413 and streamed.json()["detail"] == too_large, (method, url)
    assert api.store.count_jobs() == 2  # neither submitted nor deleted
    assert api.store.get_job(pending.id).status is JobStatus.PENDING

    # up to the limit a body is read and validated: the refusal then names the field
    padding = "x" * (limit - len('{"name": "sec", "train": {"padding": ""}}'))
    body = ('{"name": "sec", "train": {"padding": "' + padding + '"}}').encode()
    assert len(body) == limit
    answer = api.http.post("/v1/jobs", content=body, headers=json_type)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("spec.train:"), answer.text[:300]


# -- nothing that loads code or pickles --------------------------------------------------------------


class _Marker:
    """Unpickling this creates the file ``path``: the proof that something unpickled it."""

    path: Path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def _pickle_bytes(marker: Path) -> bytes:
    payload = _Marker()
    payload.path = marker
    return pickle.dumps({"weights": payload})


@pytest.mark.parametrize(
    "family",
    ["os.system", "builtins.eval", "autocompress.models.dlrm.DLRM", "subprocess:Popen", "__import__('os')"],
)
def test_a_family_is_a_registered_name_never_an_import_path(serve, family) -> None:
    api = serve()
    answer = api.http.post("/v1/jobs", json={**SPEC, "family": family})
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(f"spec.family: unknown model family {family!r}; known: ['dlrm'")
    assert api.store.count_jobs() == 0


def test_spec_files_that_would_load_code_or_pickles_are_refused(serve, tmp_path) -> None:
    api = serve()
    data = tmp_path / "data"
    marker = tmp_path / "unpickled"
    for name in ("model.pkl", "weights.pt", "ckpt.pth", "arrays.npz", "train.pkl.gz", "model.joblib"):
        (data / name).write_bytes(_pickle_bytes(marker))
    (data / "schema.yaml").write_text("label: y\ndense: [a]\n")
    (data / "data.txt").write_text("y,a\n1,2\n")
    (data / "train.csv").write_text("y,a\n1,2\n")
    (data / "schema.json").write_text("{}")
    (data / "space.pkl").write_bytes(_pickle_bytes(marker))
    technique_as_import = yaml.safe_dump(
        {"version": 1, "family": "dlrm", "arch": {}, "policy": [{"technique": "os.system"}]}
    )
    (data / "os_system.yaml").write_text(technique_as_import)
    (data / "dotted.yaml").write_text(
        technique_as_import.replace("os.system", "autocompress.techniques.fp16")
    )
    (data / "python_tag.yaml").write_text(f"!!python/object/apply:pathlib.Path.touch ['{marker}']\n")

    def refused(field: str, fields: dict[str, Any], why: str) -> None:
        answer = api.http.post("/v1/jobs", json={**SPEC, **fields})
        assert answer.status_code == 422, (fields, answer.text)
        detail = answer.json()["detail"]
        assert detail.startswith(f"{field}: ") and why in detail, (fields, detail)

    for name in ("model.pkl", "weights.pt", "ckpt.pth", "arrays.npz", "train.pkl.gz", "model.joblib"):
        for kind in ("criteo", "tabular"):
            dataset = {
                "kind": kind,
                "path": name,
                "schema_path": "schema.yaml" if kind == "tabular" else None,
            }
            refused("spec.dataset.path", {"dataset": dataset}, "is a pickle or checkpoint file")
    tabular = {"kind": "tabular", "path": "data.txt", "schema_path": "schema.yaml"}
    refused("spec.dataset.path", {"dataset": tabular}, "is not one of the formats ['.csv'")
    for schema_path, why in (
        ("model.pkl", "pickle or checkpoint"),
        ("schema.json", "not one of the formats"),
    ):
        tabular = {"kind": "tabular", "path": "train.csv", "schema_path": schema_path}
        refused("spec.dataset.schema_path", {"dataset": tabular}, why)
    refused("spec.search_space", {"search_space": "space.pkl"}, "is a pickle or checkpoint file")
    refused("spec.search_space", {"search_space": "os_system.yaml"}, "unknown technique 'os.system'; known:")
    refused(
        "spec.search_space",
        {"search_space": "dotted.yaml"},
        "unknown technique 'autocompress.techniques.fp16'",
    )
    refused("spec.search_space", {"search_space": "python_tag.yaml"}, "not valid YAML")
    refused("spec.preset", {"preset": "__import__('os')"}, "unknown preset")
    refused("spec.dataset.kind", {"dataset": {"kind": "pickle", "path": "model.pkl"}}, "Input should be")

    # a body is JSON, whatever its content type says
    for content_type in ("application/x-python-pickle", "application/octet-stream", "application/json"):
        answer = api.http.post(
            "/v1/jobs", content=_pickle_bytes(marker), headers={"Content-Type": content_type}
        )
        assert answer.status_code in (400, 422), (content_type, answer.text)
    assert api.store.count_jobs() == 0
    assert not marker.exists()


def test_pickles_disguised_as_data_files_are_parsed_never_unpickled(serve, tmp_path) -> None:
    api = serve()
    data = tmp_path / "data"
    marker = tmp_path / "unpickled"
    payload = _pickle_bytes(marker)
    for name in ("day_0", "train.tsv", "data.csv", "data.parquet"):
        (data / name).write_bytes(payload)
    (data / "ml").mkdir()
    (data / "ml" / "ratings.parquet").write_bytes(payload)
    (data / "schema.yaml").write_text("label: y\ndense: [a]\n")
    datasets = [
        {"kind": "criteo", "path": "day_0"},
        {"kind": "criteo", "path": "train.tsv"},
        {"kind": "tabular", "path": "data.csv", "schema_path": "schema.yaml"},
        {"kind": "tabular", "path": "data.parquet", "schema_path": "schema.yaml"},
        {"kind": "movielens", "path": "ml"},
    ]
    for dataset in datasets:
        # the names are of formats the loaders parse, so the API records the job ...
        answer = api.http.post("/v1/jobs", json={**SPEC, "dataset": dataset})
        assert answer.status_code == 201, answer.text
        # ... and the driver, loading the recorded spec, refuses the bytes without unpickling them
        spec = JobSpec.from_dict(api.store.get_job(answer.json()["id"]).spec)
        with pytest.raises(AutocompressError) as refusal:
            load_dataset(spec.dataset)
        assert str(data) in str(refusal.value)  # names the file
    assert not marker.exists()


# -- the Ray dashboard --------------------------------------------------------------------------------

DASHBOARD_PAGE = "ray-dashboard-page"


@contextlib.contextmanager
def stand_in_dashboard() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on a free loopback port standing in for Ray's dashboard; records what reaches it."""
    reached: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            reached.append(f"{self.command} {self.path}")
            body = DASHBOARD_PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], reached
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_ray_dashboard_is_not_reachable_through_the_service(serve) -> None:
    api = serve(api_token=TOKEN)
    dashboard_paths = (
        "/",
        "/api/version",
        "/api/jobs/",
        "/api/cluster_status",
        "/dashboard/",
        "/nodes",
        "/logs",
    )
    with stand_in_dashboard() as (port, reached):
        for host in (f"127.0.0.1:{port}", "127.0.0.1:8265", "localhost:8265"):
            for path in dashboard_paths:
                for headers in ({"Host": host}, {"Host": host, "X-Forwarded-Host": host, **GOOD}):
                    answer = api.http.get(path, headers=headers)
                    assert DASHBOARD_PAGE not in answer.text
                    if path == "/dashboard/":  # autocompress's own dashboard, not a redirect to the Host
                        assert answer.status_code == 200 and "location" not in answer.headers, (host, answer)
                        assert "/dashboard/static/jobs.js" in answer.text
                        continue
                    assert answer.status_code == 404, (host, path, answer.text)
            submitted = api.http.post(
                "/api/jobs/", json={"entrypoint": "touch /tmp/pwned"}, headers={"Host": host, **GOOD}
            )
            assert submitted.status_code in (404, 405)
            # absolute-form request targets, as sent to a forward proxy
            for path in ("/api/version", "/api/jobs/"):
                status, text = raw_request(api, "GET", f"http://{host}{path}", {"Host": host})
                assert status in (400, 404), (host, path, status)
                assert DASHBOARD_PAGE not in text
            status, text = raw_request(api, "CONNECT", host, {"Host": host})
            assert 400 <= status < 500 and DASHBOARD_PAGE not in text
        assert reached == []  # nothing was forwarded
    assert api.store.count_jobs() == 0

    # and no route could forward: only the API's own paths (its dashboard included), no catch-all,
    # no mounted app (v2: the Open Inference Protocol routes of the stand-alone API)
    own = re.compile(r"^/(v1/|v2(/|$)|healthz$|openapi\.json$|docs|redoc$|dashboard(/|$))")
    for route in served_routes(api.settings):
        assert own.match(route.path), route.path
        assert ":path}" not in route.path, route.path
        assert not isinstance(getattr(route, "route", route), Mount), route.path
