"""The two Ray Serve applications: the job API (control plane) and the prediction ingress (data plane).

``autocompress`` (route prefix ``/``) is the job API of ``serve_app.api.create_app`` (jobs, models,
deploy / promote / rollback, the dashboard) in the ``Api`` deployment: it is never on a
prediction's path; its prediction URLs answer 307 to the serving application. ``autocompress-serving``
(route prefix ``model_server.route_prefix``, ``/serving``) is the ``ModelServer`` deployment
(``serve_app.deployments``): replicas that are the HTTP ingress for predictions and hold the ONNX
Runtime sessions (multiplexed by model id, batched per model in the replica), with aliases read
from the store in the background. ``build_control_app`` and ``build_serving_app`` are the
application builders ``serve_app/config.yaml`` names (``serve deploy`` / ``serve run``);
``run_locally`` is what ``autocompress serve`` does: both, on one HTTP proxy. On a Ray started
with ``cluster_env`` every ingress replica also answers on a port of its own (``ingress_urls``),
without the proxy's hop: a prediction is then one HTTP request to the replica that runs it.

Operations
----------
* ``GET /healthz`` (job API): the database answers; ``GET /serving/v2/health/ready``: a serving
  replica answers. Serve calls ``ModelServer.check_health`` on every replica and replaces one that
  fails.
* Request ids: Ray Serve gives every request an id (``X-Request-ID`` in the response); replica log
  lines (``<ray session>/logs/serve/replica_*.log``) carry it, including the ``autocompress``
  library's lines, which are routed through Serve's logger. Without Serve, the serving routes
  take ``X-Request-ID`` or make one; ``serve_app.api.inference.RequestIdFilter`` on a log handler
  stamps it on every line.
* Prometheus: Ray exports metrics on each node's metrics port (``ray start
  --metrics-export-port=PORT``, or ``autocompress serve --metrics-port PORT``) at
  ``http://127.0.0.1:PORT/metrics``. The ones that matter here, all prefixed ``ray_``:
  ``serve_num_http_requests_total`` and ``serve_http_request_latency_ms`` (by route and status),
  ``serve_deployment_request_counter_total``, ``serve_deployment_processing_latency_ms`` and
  ``serve_deployment_error_counter_total`` (by deployment and replica),
  ``serve_replica_processing_queries`` (in-flight requests, what autoscaling targets),
  ``serve_multiplexed_model_load_latency_ms``, ``serve_num_multiplexed_models`` and
  ``serve_multiplexed_models_unload_counter_total`` (the per-replica model LRU),
  ``serve_deployment_replica_starts_total`` (replicas replaced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from fastapi import FastAPI
from pydantic import Field, model_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from autocompress.serving import BatchPolicy
from autocompress.spec import SpecModel
from serve_app.api.inference import ALIAS_REFRESH_S
from serve_app.deployments import ModelServer, ModelServerLoader, route_library_logs

APP_NAME = "autocompress"
SERVING_APP_NAME = "autocompress-serving"
SERVING_ROUTE_PREFIX = "/serving"
# Ray Serve's latency switches, in the replicas' runtime env (right on any cluster): user code
# and the handle's router on the replica's own event loop, gRPC rather than actor calls between
# deployments, and log lines written as they happen.
REPLICA_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
}
# What the whole cluster is started with (``cluster_env``; the Serve controller reads it, so it
# cannot come from a runtime env): Ray Serve's throughput-optimized mode, whose direct ingress has
# every ingress replica answer HTTP on a port of its own (``ingress_urls``) with no proxy hop (the
# proxy keeps serving ``http_options.port``). Two of the mode's defaults are changed: log lines
# are not held 1000 at a time in memory (a quiet replica's would not show, a crash would lose
# them), and a stopping ingress replica drains 2 s, not the 30 s given to cloud load balancers.
THROUGHPUT_OPTIMIZED_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}


class Autoscaling(SpecModel):
    """Serve autoscaling of the model deployment: replicas between the bounds, scaled on ongoing requests."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=16.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})"
            )
        return self


_DEFAULT_BATCHING = BatchPolicy()


class Batching(SpecModel):
    """Dynamic batching of one model's requests: up to ``max_batch_size``, waiting at most the timeout.

    A timeout of 0 runs whatever has queued up while the previous batch ran: no added latency
    at low load, full batches under load.
    """

    enabled: bool = True
    max_batch_size: int = Field(default=_DEFAULT_BATCHING.max_batch_size, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(default=_DEFAULT_BATCHING.batch_wait_timeout_s, ge=0, le=1)

    def user_config(self) -> dict[str, Any]:
        """What ``ModelServer.reconfigure`` reads."""
        return BatchPolicy(self.enabled, self.max_batch_size, self.batch_wait_timeout_s).user_config()


class ModelDeploymentSettings(SpecModel):
    """``ModelServer``, the prediction ingress: replicas or ``autoscaling``, CPUs, queue bound, model
    LRU, batching, its route prefix, and how often a replica reads the alias table."""

    num_replicas: int = Field(default=1, ge=1)
    autoscaling: Autoscaling | None = None
    num_cpus: float = Field(default=1.0, ge=0)
    max_ongoing_requests: int = Field(default=64, ge=1)
    max_models_per_replica: int = Field(default=8, ge=1)
    batching: Batching = Field(default_factory=Batching)
    route_prefix: str = Field(default=SERVING_ROUTE_PREFIX, pattern=r"^/[A-Za-z0-9._-]+$")
    alias_refresh_s: float = Field(default=ALIAS_REFRESH_S, ge=0.05, le=60)


class ApiSettings(SpecModel):
    """Replicas of the job API (the control plane)."""

    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.5, ge=0)
    max_ongoing_requests: int = Field(default=256, ge=1)


class ServeSettings(SpecModel):
    """Both applications: database, artifact root, API auth and jobs, the job API and the model server.

    ``artifact_root`` is the only folder models are loaded from (the job API's ``work_dir``);
    a registered model's relative path is taken from ``base_dir`` (default: the working directory
    where the app is built). ``max_running_jobs`` > 0 lets the job API launch search jobs on
    ``ray_address`` (default: the cluster the app runs on). ``throughput_optimized`` runs both
    deployments with Ray Serve's latency switches (``REPLICA_ENV``; a Ray started with
    ``cluster_env`` adds direct ingress). The bearer token guards both applications alike.
    """

    db_url: str = Field(min_length=1)
    artifact_root: str = "runs"
    base_dir: str | None = None
    api_token: str | None = None
    api_auth: Literal["mutating", "all"] = "mutating"
    max_running_jobs: int = Field(default=1, ge=0)
    ray_address: str | None = None
    throughput_optimized: bool = True
    api: ApiSettings = Field(default_factory=ApiSettings)
    model_server: ModelDeploymentSettings = Field(default_factory=ModelDeploymentSettings)

    def resolved(self) -> ServeSettings:
        """The settings with folders made absolute here, so replicas started elsewhere agree on them."""
        base = Path(self.base_dir) if self.base_dir else Path.cwd()
        root = Path(self.artifact_root)
        return self.model_copy(
            update={
                "artifact_root": str((root if root.is_absolute() else base / root).resolve()),
                "base_dir": str(base.resolve()),
            }
        )


def api_app(settings: ServeSettings) -> FastAPI:
    """The job API's FastAPI app with the serving routes, predictions answered in this process."""
    from serve_app.api import Settings, create_app

    app = create_app(
        Settings(
            db_url=settings.db_url,
            api_token=settings.api_token,
            auth=settings.api_auth,
            work_dir=Path(settings.artifact_root),
            max_running_jobs=settings.max_running_jobs,
            ray_address=settings.ray_address,
        )
    )
    app.state.artifact_base_dir = settings.base_dir
    return app


def control_app(settings: ServeSettings, serving_app_name: str = SERVING_APP_NAME) -> FastAPI:
    """The job API as the control plane: predictions are the serving application's (307 there),
    and deploy / promote open models on its replicas before an alias moves."""
    app = api_app(settings)
    app.state.predictions_at = settings.model_server.route_prefix
    app.state.model_loader = ModelServerLoader(serving_app_name)
    return app


@serve.deployment(name="Api", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
@serve.ingress()
class Api:
    """The job API (control plane), built on the replica."""

    def __init__(self, settings: dict[str, Any], serving_app_name: str = SERVING_APP_NAME) -> None:
        route_library_logs()
        self._settings = ServeSettings.from_dict(settings)
        self._serving_app_name = serving_app_name

    def __serve_build_asgi_app__(self) -> FastAPI:
        return control_app(self._settings, self._serving_app_name)


def _replica_env(settings: ServeSettings) -> dict[str, Any]:
    """Environment of both deployments' replicas: Ray Serve's latency switches when asked for."""
    if not settings.throughput_optimized:
        return {}
    return {"runtime_env": {"env_vars": dict(REPLICA_ENV)}}


def _settings(args: dict[str, Any]) -> ServeSettings:
    settings = ServeSettings.from_dict(args, where="args").resolved()
    if settings.max_running_jobs > 0 and settings.ray_address is None:
        import ray

        if ray.is_initialized():
            settings = settings.model_copy(update={"ray_address": ray.get_runtime_context().gcs_address})
    return settings


def build_control_app(args: dict[str, Any]) -> Any:
    """The job API application from ``ServeSettings`` fields (``serve_app/config.yaml``'s ``args``).

    ``serving_app`` (an extra arg, default ``autocompress-serving``) names the serving application.
    """
    args = dict(args)
    serving_app_name = str(args.pop("serving_app", SERVING_APP_NAME))
    settings = _settings(args)
    return Api.options(  # type: ignore[attr-defined]
        num_replicas=settings.api.num_replicas,
        max_ongoing_requests=settings.api.max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.api.num_cpus, **_replica_env(settings)},
    ).bind(settings.to_dict(), serving_app_name)


def build_serving_app(args: dict[str, Any]) -> Any:
    """The prediction application (``ModelServer``) from the same ``ServeSettings`` fields.

    Its route prefix is the application's (``route_prefix`` in the config); give
    ``model_server.route_prefix`` the same value, which the job API redirects predictions to.
    """
    settings = _settings(args)
    m = settings.model_server
    options: dict[str, Any] = {
        "max_ongoing_requests": m.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": m.num_cpus, **_replica_env(settings)},
        "user_config": m.batching.user_config(),
    }
    if m.autoscaling is not None:
        options["autoscaling_config"] = m.autoscaling.to_dict()
    else:
        options["num_replicas"] = m.num_replicas
    return ModelServer.options(**options).bind(  # type: ignore[attr-defined]
        settings.db_url,
        settings.artifact_root,
        settings.base_dir,
        m.max_models_per_replica,
        api_token=settings.api_token,
        api_auth=settings.api_auth,
        alias_refresh_s=m.alias_refresh_s,
    )


def cluster_env(settings: ServeSettings) -> dict[str, str]:
    """Environment to start a local Ray with (before ``ray.init``): Serve's throughput-optimized mode.

    Ray's processes (the Serve controller and proxy among them) take it from the environment
    they are started in; on a cluster, ``ray start`` with these variables does the same.
    """
    return dict(THROUGHPUT_OPTIMIZED_ENV) if settings.throughput_optimized else {}


def init_local_ray(settings: ServeSettings, **init_args: Any) -> None:
    """Start a new local Ray (``ray.init(address="local", **init_args)``) with ``cluster_env``.

    Ray's processes take the environment they are started with; this process's is restored.
    """
    import os

    import ray

    saved = dict(os.environ)
    os.environ.update(cluster_env(settings))
    try:
        ray.init(address="local", **init_args)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_locally(
    settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, name: str = APP_NAME
) -> DeploymentHandle:
    """Start Serve's HTTP proxy on ``host:port`` (Ray must be initialised) and run both applications:
    the serving one (``<name>-serving`` at ``model_server.route_prefix``) first, then the job API at ``/``."""
    serve.start(http_options={"host": host, "port": port})
    serving = serving_app_name(name)
    serve.run(
        build_serving_app(settings.to_dict()),
        name=serving,
        route_prefix=settings.model_server.route_prefix,
    )
    return serve.run(
        build_control_app({**settings.to_dict(), "serving_app": serving}), name=name, route_prefix="/"
    )


def serving_app_name(name: str = APP_NAME) -> str:
    """The serving application's name next to the job API application ``name``."""
    return SERVING_APP_NAME if name == APP_NAME else f"{name}-serving"


def serving_urls(settings: ServeSettings, name: str = APP_NAME) -> list[str]:
    """Base URLs of the serving replicas themselves (direct ingress): ``http://host:port/serving``."""
    prefix = settings.model_server.route_prefix
    return [url + prefix for url in ingress_urls(serving_app_name(name))]


def ingress_urls(name: str = APP_NAME) -> list[str]:
    """``http://host:port`` of each running ingress replica of the application (direct ingress).

    Empty without direct ingress (``throughput_optimized`` off, or a cluster started without
    ``cluster_env``): then only the proxy answers. The host is the one the replicas bind,
    ``http_options.host``.
    """
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        return []
    details = client.get_serve_details()
    host = (details.get("http_options") or {}).get("host") or "127.0.0.1"
    groups = [g for g in details.get("target_groups") or [] if g.get("app_name") == name]
    return [
        f"http://{host}:{target['port']}"
        for group in groups
        if group.get("protocol") == "HTTP"
        for target in group.get("targets") or []
    ]
