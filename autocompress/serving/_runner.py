"""``ModelRunner``: the ONNX Runtime session of one served model, and of its towers when asked."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autocompress.errors import AutocompressError
from autocompress.export import create_session, feed
from autocompress.serving._catalog import ServedModel
from autocompress.serving._payload import join_features, split_rows
from autocompress.serving._two_tower import SIDES, Side, extract_towers

TOWER_CACHE = Path(tempfile.gettempdir()) / "autocompress-towers"

if TYPE_CHECKING:
    import onnxruntime


class ModelRunner:
    """Runs one served model: logits of a batch, logits of many requests in one run, tower embeddings.

    The session uses the model's target (provider, intra-op threads, graph optimisation), so a
    replica serves the model as it was measured. Tower sessions are cut out of the graph the first
    time embeddings are asked for, into ``TOWER_CACHE/<model id>`` (kept: models never change).
    """

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.session: onnxruntime.InferenceSession = create_session(model.path, model.target)
        self._output = self.session.get_outputs()[0].name
        self._inputs = [arg.name for arg in self.session.get_inputs()]
        checked = feed(self.session, model.schema.example_batch(1))  # the dtypes the session takes
        self._dtypes = [(name, checked[name].dtype) for name in self._inputs]
        self._towers: dict[Side, onnxruntime.InferenceSession] | None = None
        self._lock = threading.Lock()

    def logits(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits (float32 ``[rows]``) of one batch of model inputs."""
        (out,) = self.session.run([self._output], self._feed(features))
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def _feed(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The session's inputs: as given when each already has its dtype and layout (what
        ``RequestEncoder`` builds), else checked and converted by ``feed``."""
        fed = {}
        for name, dtype in self._dtypes:
            value = features.get(name)
            if type(value) is not np.ndarray or value.dtype != dtype or not value.flags.c_contiguous:
                return feed(self.session, features)
            fed[name] = value
        return fed

    def logits_many(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
        """Logits of several requests from one session run over their concatenated rows (dynamic batching)."""
        joined, counts = join_features(requests)
        missing = [n for n in self._inputs if n not in joined]
        if missing:
            raise AutocompressError(f"features: missing input(s) {missing} required by the model")
        return split_rows(self.logits(joined), counts)

    def embeddings(self, side: Side, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """User or item vectors (float32 ``[rows, dim]``) from that tower's inputs.

        Raises ``ConflictError`` for a model that is not a two-tower model.
        """
        if side not in SIDES:
            raise AutocompressError(f"side: {side!r} is not one of {list(SIDES)}")
        session = self._tower_sessions()[side]
        (out,) = session.run(None, feed(session, features))
        vectors = np.asarray(out, dtype=np.float32)
        return vectors.reshape(len(vectors), -1)

    def describe(self) -> dict[str, Any]:
        """What a deploy answers: the model's inputs, output and how it runs."""
        return {
            "model_id": self.model.id,
            "inputs": list(self._inputs),
            "output": self._output,
            "execution_provider": self.model.target.execution_provider,
            "intra_op_threads": self.model.target.intra_op_threads,
        }

    def close(self) -> None:
        """Drop the tower sessions (the main session goes with the runner)."""
        with self._lock:
            self._towers = None

    def _tower_sessions(self) -> dict[Side, onnxruntime.InferenceSession]:
        with self._lock:
            if self._towers is None:
                folder = TOWER_CACHE / self.model.id  # models never change, so one folder per id
                paths = extract_towers(self.model.path, self.model.schema, folder, self.model.id)
                self._towers = {side: create_session(paths[side], self.model.target) for side in SIDES}
            return self._towers
