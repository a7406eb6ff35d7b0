"""``autocompress serve`` (Ray, Ray Serve, the job API, the model server and the store in one command)
and ``autocompress predict``.

Ray, Ray Serve and the serving library are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table as RichTable

from autocompress.cli._common import Db, console, user_errors
from autocompress.errors import AutocompressError

__all__ = ["predict", "serve"]

ArtifactRoot = Annotated[
    Path, typer.Option(help="the only folder models are served from (`autocompress search --work-dir`)")
]


@user_errors
def serve(
    db: Db = None,
    artifact_root: ArtifactRoot = Path("runs"),
    host: Annotated[str, typer.Option(help="HTTP address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    replicas: Annotated[
        int, typer.Option(help="model server (prediction) replicas, without autoscaling")
    ] = 1,
    max_replicas: Annotated[
        int | None, typer.Option(help="autoscale the model server between --min-replicas and this")
    ] = None,
    min_replicas: Annotated[int, typer.Option(help="autoscaling lower bound")] = 1,
    target_ongoing_requests: Annotated[
        float, typer.Option(help="autoscaling: in-flight requests per replica to aim for")
    ] = 16.0,
    max_batch_size: Annotated[int, typer.Option(help="dynamic batching: most requests per batch")] = 32,
    batch_wait_ms: Annotated[
        float, typer.Option(help="dynamic batching: longest wait for a batch to fill (ms)")
    ] = 0.0,
    batching: Annotated[bool, typer.Option(help="batch concurrent requests for one model")] = True,
    max_running_jobs: Annotated[int, typer.Option(help="search jobs the API runs at once (0: none)")] = 1,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all)")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus metrics port of the local Ray node (default: Ray's pick)")
    ] = None,
    ray_temp_dir: Annotated[Path | None, typer.Option(help="temp folder of the local Ray")] = None,
) -> None:
    """Serve the job API and the registered models (Ray, Ray Serve, both apps, the store) until Ctrl-C.

    Predictions are answered under /serving: by the model server replicas, which hold the models.
    """
    from autocompress.store import default_store_url

    settings_args: dict[str, Any] = {
        "db_url": db or default_store_url(),
        "artifact_root": str(artifact_root),
        "api_token": os.environ.get("AUTOCOMPRESS_API_TOKEN") or None,
        "max_running_jobs": max_running_jobs,
        "model_server": {
            "num_replicas": replicas,
            "batching": {
                "enabled": batching,
                "max_batch_size": max_batch_size,
                "batch_wait_timeout_s": batch_wait_ms / 1000.0,
            },
        },
    }
    if max_replicas is not None:
        settings_args["model_server"]["autoscaling"] = {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests,
        }
    import ray
    from ray import serve as ray_serve

    from autocompress.local_ray import local_ray_env
    from serve_app.serve import ServeSettings, init_local_ray, run_locally, serving_urls

    settings = ServeSettings.from_dict(settings_args, where="serve")
    Path(settings.artifact_root).mkdir(parents=True, exist_ok=True)
    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        init["address"] = address
    else:  # a new Ray of our own, never one another process started on this machine
        local_ray_env()
        init.update(num_cpus=num_cpus, _metrics_export_port=metrics_port)
        if ray_temp_dir is not None:
            init["_temp_dir"] = str(ray_temp_dir.resolve())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with console.status("starting Ray and Ray Serve ..."):
        if address is None:
            init_local_ray(settings, **init)
        else:
            ray.init(**init)
        try:
            run_locally(settings, host=host, port=port)
        except BaseException:
            ray.shutdown()
            raise
    node = ray.get_runtime_context().get_node_id()
    metrics = next((n.get("MetricsExportPort") for n in ray.nodes() if n.get("NodeID") == node), None)
    console.print(f"serving on http://{host}:{port} (health: /healthz, API docs: /docs)", highlight=False)
    prefix = settings.model_server.route_prefix
    console.print(
        f"predictions on http://{host}:{port}{prefix} (e.g. {prefix}/v1/endpoints/<alias>/predict, "
        f"{prefix}/v2/models/<alias>/infer)",
        highlight=False,
    )
    for url in serving_urls(settings):
        console.print(
            f"and on {url}, a model server replica itself (no proxy hop: lowest latency)", highlight=False
        )
    console.print(f"models from {settings.artifact_root}, database {settings.db_url}", highlight=False)
    if metrics:
        console.print(f"Prometheus metrics: http://127.0.0.1:{metrics}/metrics", highlight=False)
    console.print("Ctrl-C stops", highlight=False)
    try:
        stop.wait()
    finally:
        with console.status("stopping ..."):
            ray_serve.shutdown()
            ray.shutdown()


def _read_rows(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise AutocompressError(f"--rows: {path!r} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AutocompressError(f"--rows: not valid JSON: {exc.msg} at character {exc.pos}") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise AutocompressError('--rows: give a JSON list of rows or {"rows": [...]}')
    return rows


def _predict_over_http(url: str, path: str, rows: list[Any]) -> dict[str, Any]:
    import httpx

    headers = {}
    token = os.environ.get("AUTOCOMPRESS_API_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.post(  # the job API answers predictions with a redirect to the model server
            url.rstrip("/") + path, json={"rows": rows}, headers=headers, timeout=60, follow_redirects=True
        )
    except httpx.HTTPError as exc:
        raise AutocompressError(f"--url: {url} cannot be reached: {exc}") from None
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise AutocompressError(f"{response.status_code}: {detail}")
    result: dict[str, Any] = response.json()
    return result


def _predict_here(
    db: str | None, artifact_root: Path, model: str | None, alias: str | None, rows: list[Any]
) -> dict[str, Any]:
    import asyncio

    from autocompress.serving import LocalPredictor, ModelCatalog, probabilities
    from autocompress.store import Store, default_store_url

    with Store(db or default_store_url()) as store:
        catalog = ModelCatalog(store, artifact_root)
        served = catalog.get(model) if model is not None else catalog.for_alias(str(alias))
        features = served.encoder.encode(rows)
        predictor = LocalPredictor(catalog, max_models=1)
        try:
            logits = asyncio.run(predictor.logits(served.id, features))
        finally:
            predictor.close()
    return {"model_id": served.id, "probabilities": probabilities(logits).tolist(), "logits": logits.tolist()}


@user_errors
def predict(
    model: Annotated[str | None, typer.Argument(help="the model id (or give --alias)")] = None,
    alias: Annotated[str | None, typer.Option(help="the alias to predict with (e.g. ranking-prod)")] = None,
    rows: Annotated[
        str,
        typer.Option(
            "--rows", help='JSON file of rows ([{feature: value}] or {"rows": [...]}); - reads stdin'
        ),
    ] = "-",
    url: Annotated[
        str | None,
        typer.Option(
            help="a running server (http://127.0.0.1:8000, or .../serving); default: run the model here"
        ),
    ] = None,
    db: Db = None,
    artifact_root: ArtifactRoot = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="print the response as JSON")] = False,
) -> None:
    """Click probabilities of rows of named features, from a model id or an alias, here or on a server."""
    if (model is None) == (alias is None):
        raise AutocompressError("give a model id or --alias, not both")
    body = _read_rows(rows)
    if url is not None:
        path = f"/v1/models/{model}/predict" if model is not None else f"/v1/endpoints/{alias}/predict"
        result = _predict_over_http(url, path, body)
    else:
        result = _predict_here(db, artifact_root, model, alias, body)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = RichTable(title=f"model {result['model_id']}")
    for col in ("row", "probability", "logit"):
        table.add_column(col, justify="right")
    for i, (p, logit) in enumerate(zip(result["probabilities"], result["logits"], strict=True)):
        table.add_row(str(i), f"{p:.6f}", f"{logit:.6f}")
    console.print(table)
