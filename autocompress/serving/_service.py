"""What a serving replica does with a prediction request, tested without Ray or HTTP.

``PredictionService`` finds the model (by id, or by alias from its ``AliasTable``), turns the
payload into model inputs (rows, columns or Open Inference Protocol tensors, all through
``RequestEncoder.encode_columns``), runs them on the replica's ONNX Runtime thread, batched per
model (``ModelBatcher``), and shapes the answer. The Serve data plane (``serve_app.deployments``)
and the stand-alone API (``serve_app.api.inference``) are thin layers over it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from autocompress.errors import AutocompressError
from autocompress.serving._aliases import AliasTable
from autocompress.serving._batcher import BatchPolicy, ModelBatcher, Take
from autocompress.serving._oip import infer_columns, infer_response, model_metadata
from autocompress.serving._payload import MAX_ROWS, Features, PayloadError, probabilities, top_k
from autocompress.serving._runner import ModelRunner
from autocompress.serving._two_tower import SIDES, Side
from autocompress.store import NotFoundError

logger = logging.getLogger("autocompress.serving")

RunnerSource = Callable[[str], Awaitable[ModelRunner]]
"""Opens a registered model by id (or returns it open): ``serve.multiplexed`` in a Serve replica."""

RUNNER_REUSE_S = 0.1


def reuse_opened(source: RunnerSource, within_s: float = RUNNER_REUSE_S) -> RunnerSource:
    """``source``, asked at most once every ``within_s`` for a model: in between, the runner it gave last.

    ``serve.multiplexed`` counts every lookup in a Ray metric: ~6% of a replica's event loop under
    load (py-spy). Still asked every ``within_s``, it keeps its least-recently-used order. A runner
    it has closed since is held here only weakly: it answers at most that window's requests, while
    something else still holds it.
    """
    recent: dict[str, tuple[weakref.ref[ModelRunner], float]] = {}

    async def runner(model_id: str) -> ModelRunner:
        now = time.monotonic()
        given = recent.get(model_id)
        if given is not None and now - given[1] < within_s:
            found = given[0]()
            if found is not None:
                return found
        opened = await source(model_id)
        recent[model_id] = (weakref.ref(opened), now)
        return opened

    return runner


@contextmanager
def _refusals_logged(route: str, runner: ModelRunner) -> Iterator[None]:
    """Log a refused payload (one line, with the request id in Serve); an answered request logs at debug."""
    try:
        yield
    except PayloadError as exc:
        logger.info("%s model=%s refused: %s", route, runner.model.id, exc)
        raise


def _ranking_inputs(runner: ModelRunner, body: object) -> tuple[int, Features]:
    """``k`` and the model inputs of a ranking body: context repeated for every candidate."""
    if not isinstance(body, Mapping):
        raise PayloadError("body", "must be an object with 'candidates' (and 'context', 'k')")
    for key in body:
        if key not in ("candidates", "context", "k"):
            raise PayloadError(f"body.{key}", "unknown field; allowed: ['candidates', 'context', 'k']")
    k = body.get("k", 10)
    if type(k) is not int or not 1 <= k <= MAX_ROWS:
        raise PayloadError("k", f"must be an integer from 1 to {MAX_ROWS}, got {k!r}")
    if "candidates" not in body:
        raise PayloadError("candidates", "required: the items to rank, as rows or {'columns': {...}}")
    return k, runner.model.encoder.encode_ranking(body.get("context", {}), body["candidates"])


class PredictionService:
    """Answers predict, rank, embeddings and Open Inference Protocol requests for models by id or alias.

    Sessions run on one thread of their own (``executor``), so the event loop reads and checks the
    next requests meanwhile; with batching on, the requests for a model that arrive while its
    session runs go together in the next run. A request alone in the service, with nothing on that
    thread, runs on the event loop instead: the hand-off would cost more than a small model's run.
    ``sync_aliases`` moves aliases, each new model opened before the alias points at it, so a
    switch fails no request.
    """

    def __init__(
        self,
        runners: RunnerSource,
        *,
        aliases: AliasTable | None = None,
        batching: BatchPolicy | None = None,
        executor: Executor | None = None,
    ) -> None:
        self._runners = runners
        self.aliases = aliases or AliasTable()
        self.batching = batching or BatchPolicy()
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")
        self._batchers: weakref.WeakKeyDictionary[ModelRunner, ModelBatcher] = weakref.WeakKeyDictionary()
        self._refused: set[tuple[str, str]] = set()  # (alias, model) moves already logged as refused
        self._active = 0  # requests inside predict / rank / infer now
        self._on_thread = 0  # session runs handed to the executor and not finished

    # -- finding the model --------------------------------------------------------------------------

    async def runner(self, model_id: str) -> ModelRunner:
        """The open model with this id (``NotFoundError`` / ``ConflictError`` if it cannot be served)."""
        return await self._runners(model_id)

    async def for_alias(self, alias: str) -> ModelRunner:
        """The model the alias serves, as the alias table has it (no database call)."""
        return await self._runners(self.aliases.resolve(alias))

    async def for_name(self, name: str) -> ModelRunner:
        """An Open Inference Protocol model name: an alias if there is one by that name, else a model id."""
        model_id = self.aliases.get(name)
        if model_id is not None:
            return await self._runners(model_id)
        try:
            return await self._runners(name)
        except NotFoundError:
            raise NotFoundError(f"model: no alias or model named {name!r}") from None

    async def load(self, model_id: str) -> dict[str, Any]:
        """Open the model here (deploy, promote) and describe it."""
        return (await self._runners(model_id)).describe()

    # -- the requests -------------------------------------------------------------------------------

    async def predict(self, runner: ModelRunner, body: object) -> dict[str, Any]:
        """``{"rows": [...]}`` or ``{"columns": {...}}`` -> click probabilities and logits, row by row."""
        with _refusals_logged("predict", runner):
            features, n_rows = runner.model.encoder.encode_payload(body)
        with self._request():
            logits = await self.logits(runner, features)
        logger.debug("predict model=%s rows=%d", runner.model.id, n_rows)
        return {
            "model_id": runner.model.id,
            "probabilities": probabilities(logits).tolist(),
            "logits": logits.tolist(),
        }

    async def rank(self, runner: ModelRunner, body: object) -> dict[str, Any]:
        """``{"context": {...}, "candidates": rows or {"columns": {...}}, "k": 10}`` -> the k best first."""
        with _refusals_logged("rank", runner):
            k, features = _ranking_inputs(runner, body)
        with self._request():
            logits = await self.logits(runner, features)
        best = top_k(logits, k)
        probs = probabilities(logits[best])
        items = [
            {"index": int(i), "probability": float(p), "logit": float(logits[i])}
            for i, p in zip(best.tolist(), probs.tolist(), strict=True)
        ]
        logger.debug("rank model=%s candidates=%d k=%d", runner.model.id, len(logits), k)
        return {"model_id": runner.model.id, "items": items}

    async def embeddings(self, runner: ModelRunner, side: Side, body: object) -> dict[str, Any]:
        """User or item vectors of a two-tower model from that tower's features (rows or columns)."""
        if side not in SIDES:
            raise PayloadError("side", f"{side!r} is not one of {list(SIDES)}")
        encoder = runner.model.encoder
        with _refusals_logged("embeddings", runner):
            features, n_rows = encoder.encode_payload(
                body, features=encoder.side_features(side), not_here=f"not a {side}-tower input"
            )
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._executor, runner.embeddings, side, features)
        logger.debug("embeddings model=%s side=%s rows=%d", runner.model.id, side, n_rows)
        return {
            "model_id": runner.model.id,
            "side": side,
            "dim": int(vectors.shape[1]),
            "embeddings": vectors.tolist(),
        }

    async def infer(self, runner: ModelRunner, name: str, body: object) -> dict[str, Any]:
        """An Open Inference Protocol infer request -> its answer (``autocompress.serving._oip``)."""
        encoder = runner.model.encoder
        with _refusals_logged("infer", runner):
            columns, outputs, request_id = infer_columns(encoder, body)
            features = encoder.encode_columns(columns)
        with self._request():
            logits = await self.logits(runner, features)
        logger.debug("infer model=%s rows=%d", runner.model.id, columns.n_rows)
        return infer_response(name, runner.model.id, logits, outputs, request_id)

    @staticmethod
    def metadata(runner: ModelRunner, name: str) -> dict[str, Any]:
        """Open Inference Protocol model metadata: the model's inputs and outputs as tensors."""
        return model_metadata(name, runner.model.id, runner.model.encoder)

    async def logits(self, runner: ModelRunner, features: Features) -> np.ndarray:
        """Logits of one request's inputs, run with other requests for the model when batching is on.

        A request of ``max_batch_size`` rows or more (a ranking's candidates) is a batch of its own.
        """
        rows = len(next(iter(features.values()))) if features else 0
        if not self.batching.enabled or rows >= self.batching.max_batch_size:
            return await self._run(runner, lambda: features)
        batcher = self._batchers.get(runner)
        if batcher is None:
            model = weakref.ref(runner)  # the batcher must not keep a model the replica has closed

            async def run(take: Take) -> np.ndarray:
                live = model()
                if live is None:  # pragma: no cover - a waiting request holds the runner
                    raise AutocompressError("model closed while its requests waited")
                return await self._run(live, take)

            batcher = ModelBatcher(
                run,
                max_batch_size=self.batching.max_batch_size,
                batch_wait_timeout_s=self.batching.batch_wait_timeout_s,
            )
            self._batchers[runner] = batcher
        return await batcher.logits(features)

    async def _run(self, runner: ModelRunner, take: Take) -> np.ndarray:
        """The session on ``take()``, called when the run starts: on the event loop if nothing else
        is in the service, else on the session thread (where a batch takes its rows when its turn
        comes)."""

        def run() -> np.ndarray:
            return runner.logits(take())

        if self._active <= 1 and self._on_thread == 0:
            await asyncio.sleep(0)  # requests that arrived with this one reach the service first
            if self._active <= 1 and self._on_thread == 0:  # still alone: nothing to overlap with
                return run()
        self._on_thread += 1
        try:
            result: np.ndarray = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        finally:
            self._on_thread -= 1
        return result

    @contextmanager
    def _request(self) -> Iterator[None]:
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    # -- configuration ------------------------------------------------------------------------------

    def reconfigure(self, batching: BatchPolicy) -> None:
        """Batch (or not) from the next request on, with the new size and wait."""
        self.batching = batching
        for batcher in list(self._batchers.values()):
            batcher.follow(batching)

    async def sync_aliases(self, table: Mapping[str, str], read_at: float | None = None) -> list[str]:
        """Point the aliases as ``table`` says; each new model is opened first. The aliases moved.

        A model that cannot be opened leaves its alias on the model it served (logged once); an
        alias missing from the table stops resolving. With ``read_at`` (when the table's read
        began, ``time.monotonic``), an alias pointed here since then is left alone: it is newer.
        """
        moved = []
        for alias, model_id in table.items():
            if self.aliases.get(alias) == model_id:
                continue
            if read_at is not None and self.aliases.pointed_since(alias, read_at):
                continue
            try:
                await self._runners(model_id)
            except Exception as exc:  # the model cannot be served here: the alias stays where it was
                if (alias, model_id) not in self._refused:
                    logger.warning(
                        "alias %s stays on its model: model %s does not open (%s)", alias, model_id, exc
                    )
                    self._refused.add((alias, model_id))
                continue
            self.aliases.point(alias, model_id)
            moved.append(alias)
            logger.info("alias %s -> model %s", alias, model_id)
        for alias in set(self.aliases.snapshot()) - set(table):
            if read_at is None or not self.aliases.pointed_since(alias, read_at):
                self.aliases.drop(alias)
        return moved

    def close(self) -> None:
        """Stop the session thread (runs already started finish)."""
        self._executor.shutdown(wait=False)
