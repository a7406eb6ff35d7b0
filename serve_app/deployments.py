"""The serving application's deployment: the HTTP ingress for predictions holds the ONNX Runtime sessions.

A ``ModelServer`` replica answers the prediction routes itself (``serve_app.api.inference``'s
``prediction_app``): one Serve hop from the HTTP proxy, none on its own port with direct ingress.
It opens registered models by id on first use (``serve.multiplexed``: at most
``max_models_per_replica``, the least recently used closed first; Serve routes ``load`` calls and
requests that carry the ``serve_multiplexed_model_id`` header to the replicas holding the model;
a request asks it at most every ``RUNNER_REUSE_S`` per model, ``reuse_opened``),
runs each on a thread of its own with its model's target, and runs a model's concurrent requests
as one batch (``ModelBatcher``; batching on or off, the batch size and the wait are the
deployment's ``user_config``: a ``serve deploy`` that changes only them reconfigures the running
replicas).

Aliases resolve from the replica's ``AliasTable``: read from the store when the replica starts and
every ``alias_refresh_s`` after, in the background, each new model opened before its alias moves.
A promote or rollback on the job API (the control plane, never on this path) so takes effect
within ``alias_refresh_s`` plus the new model's load time, and no request in flight fails: it
finishes on the model it started with. No request reads the database. ``check_health`` fails a
replica that can no longer read the artifact root.

``ModelServerLoader`` is the control plane's side: deploy and promote open the model on a serving
replica (a ``load`` call routed by model id) before the alias moves.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette

from autocompress.errors import AutocompressError
from autocompress.serving import (
    AliasTable,
    BatchPolicy,
    ModelCatalog,
    ModelRunner,
    PredictionService,
    keep_aliases_fresh,
    read_aliases,
    reuse_opened,
)
from autocompress.store import Store
from serve_app.api.inference import ALIAS_REFRESH_S, prediction_app
from serve_app.api.settings import Settings

logger = logging.getLogger("ray.serve")

MODEL_SERVER = "ModelServer"
REPLICA_ATTEMPTS = 3
REPLICA_RETRY_DELAY_S = 0.2


def route_library_logs() -> None:
    """Send the ``autocompress`` loggers through Ray Serve's handlers, whose lines carry the request id."""
    serve_logger = logging.getLogger("ray.serve")
    library = logging.getLogger("autocompress")
    library.handlers = list(serve_logger.handlers)
    library.setLevel(logging.INFO)
    library.propagate = False


@serve.deployment(
    name=MODEL_SERVER,
    max_ongoing_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
    ray_actor_options={"num_cpus": 1},
)
@serve.ingress()
class ModelServer:
    """Prediction ingress replicas that hold ONNX Runtime sessions of registered models, batched per model."""

    def __init__(
        self,
        db_url: str,
        artifact_root: str,
        base_dir: str | None = None,
        max_models_per_replica: int = 8,
        *,
        api_token: str | None = None,
        api_auth: str = "mutating",
        alias_refresh_s: float = ALIAS_REFRESH_S,
    ) -> None:
        route_library_logs()
        self._store = Store(db_url, retry_timeout_s=5.0)
        self._artifact_root = Path(artifact_root)
        self._guard = Settings(db_url=db_url, api_token=api_token, auth=api_auth)
        self._alias_refresh_s = alias_refresh_s
        catalog = ModelCatalog(self._store, artifact_root, base_dir=base_dir)

        async def open_model(model_id: str) -> ModelRunner:
            runner = await asyncio.to_thread(lambda: ModelRunner(catalog.get(model_id)))
            logger.info("opened model %s (%s)", model_id, runner.describe())
            return runner

        multiplexed = serve.multiplexed(max_num_models_per_replica=max_models_per_replica)(open_model)
        runners = reuse_opened(multiplexed)
        try:
            aliases = read_aliases(self._store)
        except Exception as exc:  # the database away at start: the refresh fills the table later
            logger.warning("alias table: cannot read the store at start (%s)", exc)
            aliases = {}
        self._service = PredictionService(runners, aliases=AliasTable(aliases))

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply ``user_config``: ``batching`` (bool), ``max_batch_size``, ``batch_wait_timeout_s``."""
        policy = BatchPolicy.from_user_config(config)
        self._service.reconfigure(policy)
        logger.info(
            "batching %s (max_batch_size %d, batch_wait_timeout_s %g)",
            "on" if policy.enabled else "off",
            policy.max_batch_size,
            policy.batch_wait_timeout_s,
        )

    async def load(self) -> dict[str, Any]:
        """Open the multiplexed model on this replica (deploy / promote) and describe it."""
        described = await self._service.load(serve.get_multiplexed_model_id())
        return {**described, "replica": serve.get_replica_context().replica_tag}

    def check_health(self) -> None:
        """Called by Serve every ``health_check_period_s``; raising makes Serve replace this replica."""
        if not os.access(self._artifact_root, os.R_OK | os.X_OK):
            raise RuntimeError(
                f"artifact root {str(self._artifact_root)!r} is not readable from this replica"
            )

    def __serve_build_asgi_app__(self) -> Starlette:
        store, service = self._store, self._service

        async def refresh_aliases() -> None:
            await keep_aliases_fresh(lambda: read_aliases(store), service.sync_aliases, self._alias_refresh_s)

        return prediction_app(service, self._guard, background=refresh_aliases)


class ModelServerLoader:
    """Opens a model on a serving replica for the control plane: ``ModelServer.load``, routed by model id.

    A replica's refusal (unknown model, not servable) comes back as the same ``AutocompressError``
    subclass, so the API answers it as it would in process; a replica lost under the call is tried
    again, then answered 503.
    """

    def __init__(self, app_name: str) -> None:
        self._app_name = app_name
        self._handle: DeploymentHandle | None = None

    async def __call__(self, model_id: str) -> dict[str, Any]:
        if self._handle is None:
            self._handle = serve.get_deployment_handle(MODEL_SERVER, app_name=self._app_name)
        handle = self._handle.options(multiplexed_model_id=model_id)
        for attempt in range(1, REPLICA_ATTEMPTS + 1):
            try:
                result: dict[str, Any] = await handle.load.remote()
                return result
            except RayTaskError as exc:
                if isinstance(exc.cause, AutocompressError):
                    raise exc.cause from None
                raise
            except RayActorError as exc:
                logger.warning("model replica lost (attempt %d of %d): %s", attempt, REPLICA_ATTEMPTS, exc)
                if attempt == REPLICA_ATTEMPTS:
                    raise HTTPException(
                        503, "model server: no replica answered; retry shortly", headers={"Retry-After": "1"}
                    ) from None
                await asyncio.sleep(REPLICA_RETRY_DELAY_S * attempt)
        raise AssertionError("unreachable")
