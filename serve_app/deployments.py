"""The Ray Serve model deployment: multiplexed ONNX Runtime sessions with dynamic batching.

``ModelServer`` replicas open registered models by id on first use (``serve.multiplexed``: at
most ``max_models_per_replica`` per replica, least recently used dropped first, and Serve routes a
model's requests to the replicas that have it open). Each session runs with its model's target
(provider, intra-op threads), found through the store. Requests for one model that arrive
together are run as one batch (``serve.batch``); the batch size, the wait for a batch to fill,
and whether to batch at all come from the deployment's ``user_config`` and can change without a
restart. ``check_health`` fails a replica that can no longer read the artifact root.

``HandlePredictor`` is the API side: the ``Predictor`` the routes call, sending validated inputs
to the deployment with the model id as the multiplexed id. With batching on it batches too, per
model on its ingress replica (``Coalescer``): the requests that arrive while earlier calls are
out go to ``ModelServer`` as one call, so under load the hop between the deployments and a
replica's per-request work are paid once per batch, not once per request.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
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
    join_features,
    pack_features,
    split_rows,
    unpack_features,
)
from autocompress.store import Store

logger = logging.getLogger("ray.serve")

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.0
REPLICA_ATTEMPTS = 3
REPLICA_RETRY_DELAY_S = 0.2


def batching_config(config: dict[str, Any]) -> tuple[bool, int, float]:
    """``user_config`` of either deployment -> (batching on, max batch size, batch wait timeout in s)."""
    unknown = sorted(set(config) - {"batching", "max_batch_size", "batch_wait_timeout_s"})
    if unknown:
        raise AutocompressError(
            f"user_config: unknown field(s) {unknown}; allowed: "
            "['batch_wait_timeout_s', 'batching', 'max_batch_size']"
        )
    return (
        bool(config.get("batching", True)),
        int(config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
        float(config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S)),
    )


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
        self._batching, max_batch_size, wait_s = batching_config(config)
        batched: Any = self._batched_logits  # serve.batch adds the setters to the wrapper
        batched.set_max_batch_size(max_batch_size)
        batched.set_batch_wait_timeout_s(wait_s)
        logger.info(
            "batching %s (max_batch_size %d, batch_wait_timeout_s %g)",
            "on" if self._batching else "off",
            max_batch_size,
            wait_s,
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


class Coalescer:
    """One model's logits calls from this ingress replica, sent on as few calls as the load allows.

    At most ``max_in_flight`` calls are out at once; the requests that arrive meanwhile wait and
    go out together, rows joined (up to ``max_batch_size`` requests a call, after waiting up to
    ``batch_wait_timeout_s`` for more). Alone a request goes straight out; under load each call
    carries what queued while the previous one ran. A failed call fails the requests it carried.
    """

    def __init__(
        self,
        send: Callable[[Features], Awaitable[np.ndarray]],
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S,
        max_in_flight: int = 1,
    ) -> None:
        self._send = send
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_in_flight = max_in_flight
        self._waiting: list[tuple[Features, asyncio.Future[np.ndarray]]] = []
        self._senders: set[asyncio.Task[None]] = set()
        self._out = 0  # calls out now: senders' and lone requests'
        self.calls = 0  # calls sent, for tests and logs

    async def logits(self, features: Features) -> np.ndarray:
        if not self._waiting and self._out < self.max_in_flight and self.batch_wait_timeout_s <= 0:
            self._out += 1  # alone: straight out from the caller's own task, no queue, no sender
            self.calls += 1
            try:
                return await self._send(features)
            finally:
                self._out -= 1
                self._start_sender()
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append((features, future))
        self._start_sender()
        return await future

    def _start_sender(self) -> None:
        if self._waiting and self._out < self.max_in_flight:
            self._out += 1
            self._senders.add(asyncio.create_task(self._send_waiting()))

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                if self.batch_wait_timeout_s > 0 and len(self._waiting) < self.max_batch_size:
                    await asyncio.sleep(self.batch_wait_timeout_s)
                batch = self._waiting[: self.max_batch_size]
                del self._waiting[: len(batch)]
                await self._send_batch(batch)
        finally:  # in the same step as the last look at the queue, so no request is left behind
            self._out -= 1
            self._senders.discard(asyncio.current_task())

    async def _send_batch(self, batch: list[tuple[Features, asyncio.Future[np.ndarray]]]) -> None:
        self.calls += 1
        try:
            joined, counts = join_features([features for features, _ in batch])
            parts = split_rows(await self._send(joined), counts)
        except Exception as exc:  # the callers get it; a caller that went away is skipped
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # this replica is stopping: its callers are cancelled with it
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), part in zip(batch, parts, strict=True):
            if not future.done():
                future.set_result(part)


class HandlePredictor:
    """The routes' ``Predictor`` in the Serve app: calls ``ModelServer`` with the model id multiplexed.

    Inputs travel packed into one buffer (``pack_features``). Errors a replica raises for a user's
    request (unknown model, not servable) come back as the same ``AutocompressError`` subclass, so
    the API answers them as it would in process. With batching on (``reconfigure``, the same
    ``user_config`` as ``ModelServer``'s) logits calls go through a ``Coalescer`` per model, with
    up to ``max_in_flight`` calls out per model (the model replicas there can be).
    """

    def __init__(self, handle: DeploymentHandle, max_in_flight: int = 1) -> None:
        self._handle = handle
        self._by_model: dict[str, DeploymentHandle] = {}
        self._coalescers: dict[str, Coalescer] = {}
        self._max_in_flight = max_in_flight
        self._batching, self._max_batch_size, self._wait_s = batching_config({})

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply ``user_config``: ``batching`` (bool), ``max_batch_size``, ``batch_wait_timeout_s``."""
        self._batching, self._max_batch_size, self._wait_s = batching_config(config)
        for coalescer in self._coalescers.values():
            coalescer.max_batch_size, coalescer.batch_wait_timeout_s = self._max_batch_size, self._wait_s

    def _for(self, model_id: str) -> DeploymentHandle:
        handle = self._by_model.get(model_id)
        if handle is None:
            if len(self._by_model) >= 1024:
                self._by_model.clear()
                self._coalescers.clear()
            handle = self._handle.options(multiplexed_model_id=model_id)
            self._by_model[model_id] = handle
        return handle

    async def logits(self, model_id: str, features: Features) -> np.ndarray:
        if not self._batching:
            return await self._send_logits(model_id, features)
        coalescer = self._coalescers.get(model_id)
        if coalescer is None:
            coalescer = Coalescer(
                lambda joined: self._send_logits(model_id, joined),
                max_batch_size=self._max_batch_size,
                batch_wait_timeout_s=self._wait_s,
                max_in_flight=self._max_in_flight,
            )
            self._coalescers[model_id] = coalescer
        return await coalescer.logits(features)

    async def _send_logits(self, model_id: str, features: Features) -> np.ndarray:
        result: np.ndarray = await self._call(self._for(model_id).logits, pack_features(features))
        return result

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
