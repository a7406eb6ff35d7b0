"""The serving routes in the job API without Ray: models run in process (``LocalPredictor``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from autocompress.export import create_session, feed
from autocompress.serving import LocalPredictor, ModelCatalog, PredictionService
from autocompress.spec import Target
from autocompress.store import Store
from serve_app.api.inference import RequestIdFilter, prediction_app
from serve_app.api.settings import Settings
from serve_app.serve import ServeSettings, api_app
from tests.serving.conftest import Registry


def test_routes_run_models_in_process_and_log_the_request_id(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'api.db'}"
    with Store(db_url) as store:
        registry = Registry(store, tmp_path / "runs")
        first, second = registry.register("dlrm"), registry.register("dlrm", seed=1)
    batch = registry.schema.example_batch(3, seed=5)
    rows = [{n: batch[n][i].tolist() for n in registry.schema.feature_names} for i in range(3)]

    def reference(path: str) -> np.ndarray:
        session = create_session(path, Target())
        return np.asarray(session.run(None, feed(session, batch))[0])

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("autocompress.serving")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    app = api_app(ServeSettings(db_url=db_url, artifact_root=str(tmp_path / "runs"), max_running_jobs=0))
    try:
        with TestClient(app) as client:
            response = client.post(
                f"/v1/models/{first.id}/predict", json={"rows": rows}, headers={"X-Request-ID": "req-42"}
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == "req-42"
            np.testing.assert_allclose(response.json()["logits"], reference(first.path), atol=1e-6)

            loaded = client.post(f"/v1/models/{second.id}/deploy")  # no alias: only opened
            assert loaded.status_code == 200 and loaded.json()["deployment"] is None
            assert loaded.json()["model"]["intra_op_threads"] == 1
            assert client.post(f"/v1/models/{first.id}/deploy", json={"alias": "shop"}).status_code == 200
            assert client.post("/v1/endpoints/shop/promote", json={"model_id": second.id}).status_code == 200
            served = client.post("/v1/endpoints/shop/predict", json={"rows": rows}).json()
            np.testing.assert_allclose(served["logits"], reference(second.path), atol=1e-6)

            # the same rows by column, and as Open Inference Protocol tensors, on the alias
            columns = {n: [row[n] for row in rows] for n in registry.schema.feature_names}
            by_columns = client.post("/v1/endpoints/shop/predict", json={"columns": columns})
            assert by_columns.status_code == 200, by_columns.text
            assert by_columns.json()["logits"] == served["logits"]
            dense = {d.name for d in registry.schema.dense}
            tensors = [
                {"name": n, "shape": list(batch[n].shape), "datatype": "FP32" if n in dense else "INT64",
                 "data": batch[n].reshape(-1).tolist()}
                for n in registry.schema.feature_names
            ]  # fmt: skip
            infer = client.post("/v2/models/shop/infer", json={"id": "q1", "inputs": tensors})
            assert infer.status_code == 200, infer.text
            outputs = {o["name"]: o for o in infer.json()["outputs"]}
            assert infer.json()["id"] == "q1" and infer.json()["model_version"] == second.id
            assert outputs["logits"]["data"] == served["logits"]
            assert client.get("/v2/models/shop/ready").json() == {"name": "shop", "ready": True}
            assert client.get("/v2/health/ready").json() == {"ready": True}
            tensors[0]["datatype"] = "BYTES"
            refused = client.post("/v2/models/shop/infer", json={"inputs": tensors})
            assert refused.status_code == 422 and refused.json()["error"].startswith(
                "inputs.item_price.datatype"
            )

            rows[0]["user_id"] = "seven"
            bad = client.post(
                f"/v1/models/{first.id}/predict", json={"rows": rows}, headers={"X-Request-ID": "req-43"}
            )
            assert bad.status_code == 422 and "rows[0].user_id" in bad.json()["detail"]
            assert client.post("/v1/models/nope/predict", json={"rows": rows}).status_code == 404
    finally:
        logger.removeHandler(handler)
    refused = [r for r in records if getattr(r, "request_id", None) == "req-43"]
    assert refused and all(str(r.msg).startswith("[request_id=req-43]") for r in refused)
    assert any(
        "predict model=" in r.getMessage() and "refused: rows[0].user_id" in r.getMessage() for r in refused
    )


def test_prediction_routes_are_documented_and_check_their_path_parameters_themselves(tmp_path: Path) -> None:
    """The prediction routes skip FastAPI's per-request parameter handling (``PredictionRoute``): the
    document still shows their parameters and bodies, and the service refuses a bad one by name."""
    db_url = f"sqlite:///{tmp_path / 'api.db'}"
    with Store(db_url) as store:
        two_tower = Registry(store, tmp_path / "runs").register("two_tower")
    app = api_app(ServeSettings(db_url=db_url, artifact_root=str(tmp_path / "runs"), max_running_jobs=0))
    with TestClient(app) as client:
        paths = client.get("/openapi.json").json()["paths"]
        embeddings = paths["/v1/models/{model_id}/embeddings/{side}"]["post"]
        parameters = {p["name"]: p for p in embeddings["parameters"]}
        assert parameters["model_id"]["in"] == "path"
        assert parameters["side"]["schema"]["enum"] == ["user", "item"]
        assert "rows" in embeddings["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert "candidates" in str(paths["/v1/endpoints/{alias}/rank"]["post"]["requestBody"])

        shop = client.post(f"/v1/models/{two_tower.id}/embeddings/shop", json={"rows": [{}]})
        assert shop.status_code == 422
        assert shop.json()["detail"].startswith("side: 'shop' is not one of ['user', 'item']")


def test_the_serving_app_answers_refuses_and_documents_its_routes(tmp_path: Path) -> None:
    """``prediction_app`` (a ModelServer replica's app, Starlette under the routes) as a client sees it."""
    db_url = f"sqlite:///{tmp_path / 'api.db'}"
    store = Store(db_url)
    registry = Registry(store, tmp_path / "runs")
    model = registry.register("dlrm")
    batch = registry.schema.example_batch(2, seed=3)
    rows = [{n: batch[n][i].tolist() for n in registry.schema.feature_names} for i in range(2)]
    local = LocalPredictor(ModelCatalog(store, tmp_path / "runs"))
    app = prediction_app(PredictionService(local.open), Settings(db_url=db_url, api_token="s3cret"))
    try:
        with TestClient(app, headers={"Authorization": "Bearer s3cret"}) as client:
            ok = client.post(f"/v1/models/{model.id}/predict", json={"rows": rows})
            assert ok.status_code == 200, ok.text
            session = create_session(model.path, Target())
            expected = np.asarray(session.run(None, feed(session, batch))[0]).reshape(-1)
            np.testing.assert_allclose(ok.json()["logits"], expected, atol=1e-6)

            rows[1]["user_id"] = "seven"
            bad = client.post(f"/v1/models/{model.id}/predict", json={"rows": rows})
            assert bad.status_code == 422 and bad.json()["detail"].startswith("rows[1].user_id")
            assert client.post("/v1/models/nope/predict", json={"rows": rows}).status_code == 404
            assert client.post("/v1/endpoints/shop/predict", json={"rows": rows}).status_code == 404
            assert client.get("/v2/health/live").json() == {"live": True}
            wrong = {"Authorization": "Bearer nope"}
            guarded = client.post(f"/v1/models/{model.id}/predict", json={"rows": rows}, headers=wrong)
            assert guarded.status_code == 401  # the guard runs before the routes

            paths = client.get("/openapi.json").json()["paths"]
            assert {
                "/v1/models/{model_id}/predict",
                "/v1/endpoints/{alias}/rank",
                "/v2/models/{model_name}/infer",
            } <= set(paths)
            assert "404" in paths["/v1/models/{model_id}/predict"]["post"]["responses"]
            assert "/openapi.json" in client.get("/docs").text
        with TestClient(app, root_path="/serving") as prefixed:  # the serving application's route prefix
            assert prefixed.get("/openapi.json").json()["servers"] == [{"url": "/serving"}]
            assert "/serving/openapi.json" in prefixed.get("/docs").text
    finally:
        local.close()
        store.close()
