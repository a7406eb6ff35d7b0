"""The Ray Serve model deployment: multiplexed ONNX Runtime sessions with dynamic batching.

``ModelServer`` replicas open registered models by id on first use (``serve.multiplexed``: at
most ``max_models_per_replica`` per replica, least recently used dropped first, and Serve routes a
model's requests to the replicas that have it open). Each session runs with its model's target
(provider, intra-op threads), found through the store. Requests for one model that arrive
together are run as one batch (``serve.batch``); the batch size, the wait for a batch to fill,
and whether to batch at all come from the deployment's ``user_config`` and can change without a
restart. ``check_health`` fails a replica that can no longer read the artifact root.

``HandlePredictor`` is the API side: the ``Predictor`` the routes call, sending validated inputs
to the deployment with the model id as the multiplexed id.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle

from autocompress.errors import AutocompressError
from autocompress.serving import (
    Features,
    ModelCatalog,
    ModelRunner,
    PackedFeatures,
    Side,
    pack_features,
    unpack_features,
)
from autocompress.store import Store

logger = logging.getLogger("ray.serve")

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.0
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
    name="ModelServer",
    max_ongoing_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
    ray_actor_options={"num_cpus": 1},
)
class ModelServer:
    """Replicas that hold ONNX Runtime sessions of registered models, loaded by id, batched per model."""

    def __init__(
        self, db_url: str, artifact_root: str, base_dir: str | None = None, max_models_per_replica: int = 8
    ) -> None:
        route_library_logs()
        self._store = Store(db_url)
        self._catalog = ModelCatalog(self._store, artifact_root, base_dir=base_dir)
        self._artifact_root = Path(artifact_root)
        self._batching = True
        catalog = self._catalog

        async def open_model(model_id: str) -> ModelRunner:
            runner = await asyncio.to_thread(lambda: ModelRunner(catalog.get(model_id)))
            logger.info("opened model %s (%s)", model_id, runner.describe())
            return runner

        self._runner = serve.multiplexed(max_num_models_per_replica=max_models_per_replica)(open_model)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply ``user_config``: ``batching`` (bool), ``max_batch_size``, ``batch_wait_timeout_s``."""
        unknown = sorted(set(config) - {"batching", "max_batch_size", "batch_wait_timeout_s"})
        if unknown:
            raise AutocompressError(
                f"user_config: unknown field(s) {unknown}; allowed: "
                "['batch_wait_timeout_s', 'batching', 'max_batch_size']"
            )
        self._batching = bool(config.get("batching", True))
        batched: Any = self._batched_logits  # serve.batch adds the setters to the wrapper
        batched.set_max_batch_size(int(config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)))
        batched.set_batch_wait_timeout_s(
            float(config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S))
        )

    async def logits(self, packed: PackedFeatures) -> np.ndarray:
        """Logits of one request for the multiplexed model id, batched with others when batching is on."""
        features = unpack_features(packed)
        if self._batching:
            result: np.ndarray = await self._batched_logits(features)
            return result
        runner = await self._runner(serve.get_multiplexed_model_id())
        return runner.logits(features)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def _batched_logits(self, requests: list[Features]) -> list[np.ndarray]:
        # Serve splits batches by multiplexed model id, so one batch is one model.
        runner = await self._runner(serve.get_multiplexed_model_id())
        return runner.logits_many(requests)

    async def embeddings(self, side: Side, packed: PackedFeatures) -> np.ndarray:
        """User or item tower vectors for the multiplexed model id."""
        runner = await self._runner(serve.get_multiplexed_model_id())
        return runner.embeddings(side, unpack_features(packed))

    async def load(self) -> dict[str, Any]:
        """Open the multiplexed model on this replica (deploy / promote) and describe it."""
        runner = await self._runner(serve.get_multiplexed_model_id())
        return {**runner.describe(), "replica": serve.get_replica_context().replica_tag}

    def check_health(self) -> None:
        """Called by Serve every ``health_check_period_s``; raising makes Serve replace this replica."""
        if not os.access(self._artifact_root, os.R_OK | os.X_OK):
            raise RuntimeError(
                f"artifact root {str(self._artifact_root)!r} is not readable from this replica"
            )


class HandlePredictor:
    """The routes' ``Predictor`` in the Serve app: calls ``ModelServer`` with the model id multiplexed.

    Inputs travel packed into one buffer (``pack_features``). Errors a replica raises for a user's
    request (unknown model, not servable) come back as the same ``AutocompressError`` subclass, so
    the API answers them as it would in process.
    """

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle
        self._by_model: dict[str, DeploymentHandle] = {}

    def _for(self, model_id: str) -> DeploymentHandle:
        handle = self._by_model.get(model_id)
        if handle is None:
            if len(self._by_model) >= 1024:
                self._by_model.clear()
            handle = self._handle.options(multiplexed_model_id=model_id)
            self._by_model[model_id] = handle
        return handle

    async def logits(self, model_id: str, features: Features) -> np.ndarray:
        return await self._call(self._for(model_id).logits, pack_features(features))

    async def embeddings(self, model_id: str, side: Side, features: Features) -> np.ndarray:
        return await self._call(self._for(model_id).embeddings, side, pack_features(features))

    async def load(self, model_id: str) -> dict[str, Any]:
        return await self._call(self._for(model_id).load)

    @staticmethod
    async def _call(method: Any, *args: Any) -> Any:
        """Call a replica; retry (inference is idempotent) when the replica died under the request."""
        for attempt in range(1, REPLICA_ATTEMPTS + 1):
            try:
                return await method.remote(*args)
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
