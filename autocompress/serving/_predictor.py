"""Models run in this process (``LocalPredictor``), and a job's winner pointed at by its alias.

``LocalPredictor`` keeps the last used models open: the stand-alone API (``uvicorn
serve_app.api:app``) opens its models through it, and ``autocompress predict`` runs one with it.
In the Ray Serve data plane, ``serve.multiplexed`` keeps each replica's models instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from autocompress.errors import AutocompressError
from autocompress.serving._catalog import ModelCatalog, check_onnx_loads
from autocompress.serving._payload import Features
from autocompress.serving._runner import ModelRunner
from autocompress.serving._two_tower import Side
from autocompress.store import DeploymentRecord, JobStatus, Store


class LocalPredictor:
    """A ``Predictor`` that runs models in this process, keeping the ``max_models`` last used open."""

    def __init__(self, catalog: ModelCatalog, max_models: int = 8) -> None:
        if max_models < 1:
            raise AutocompressError(f"max_models must be >= 1, got {max_models}")
        self.catalog = catalog
        self._max_models = max_models
        self._runners: OrderedDict[str, ModelRunner] = OrderedDict()
        self._lock = threading.Lock()

    def runner(self, model_id: str) -> ModelRunner:
        """The open runner of a model, opened (and the least recently used one closed) if needed."""
        with self._lock:
            found = self._runners.get(model_id)
            if found is not None:
                self._runners.move_to_end(model_id)
                return found
        opened = ModelRunner(self.catalog.get(model_id))
        with self._lock:
            self._runners[model_id] = opened
            while len(self._runners) > self._max_models:
                _, evicted = self._runners.popitem(last=False)
                evicted.close()
        return opened

    async def open(self, model_id: str) -> ModelRunner:
        """``runner`` for the event loop: an open model at once, one to open in a thread."""
        with self._lock:
            found = self._runners.get(model_id)
            if found is not None:
                self._runners.move_to_end(model_id)
                return found
        return await asyncio.to_thread(self.runner, model_id)

    async def logits(self, model_id: str, features: Features) -> np.ndarray:
        return await asyncio.to_thread(lambda: self.runner(model_id).logits(features))

    async def embeddings(self, model_id: str, side: Side, features: Features) -> np.ndarray:
        return await asyncio.to_thread(lambda: self.runner(model_id).embeddings(side, features))

    async def load(self, model_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(lambda: self.runner(model_id).describe())

    def close(self) -> None:
        """Close every open runner."""
        with self._lock:
            runners, self._runners = list(self._runners.values()), OrderedDict()
        for runner in runners:
            runner.close()


def deploy_job_winner(store: Store, job_id: str) -> DeploymentRecord | None:
    """Point the alias named after the job at its registered winner, if its spec says ``deploy: true``.

    Called when a job has SUCCEEDED; returns None (and deploys nothing) when the spec does not ask
    for it, the job did not succeed, or no candidate met the budget so no model was registered.
    """
    job = store.get_job(job_id)
    if not job.spec.get("deploy") or job.status != JobStatus.SUCCEEDED:
        return None
    result = job.result or {}
    if "model_id" in result:  # the winner, not another trial of the job registered meanwhile
        winner = store.get_model(result["model_id"]) if result["model_id"] else None
    else:  # a job recorded before its result named the model
        winner = next(iter(store.list_models(job_id=job_id, limit=1)), None)
    if winner is None:
        return None
    check_onnx_loads(Path(winner.path), winner.id)  # the alias keeps its model otherwise
    return store.deploy(job.name, winner.id)
