"""Dynamic batching of one model's requests where its ONNX Runtime session runs.

``ModelBatcher`` runs a model's logits calls on as few session runs as the load allows: a request
that finds no run out goes straight out (no added latency at low load); the requests that arrive
while a run is out wait and go as one run, rows joined (up to ``max_batch_size`` requests, after
waiting up to ``batch_wait_timeout_s`` for more). Under load each run carries what queued while
the previous one ran, taken when the session's thread is free for it. ``BatchPolicy`` is how a
deployment's ``user_config`` sets it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from autocompress.errors import AutocompressError
from autocompress.serving._payload import Features, join_features, split_rows

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.0


@dataclass(frozen=True)
class BatchPolicy:
    """Whether to batch, the most requests a run, and the longest wait for a batch to fill (0: none)."""

    enabled: bool = True
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S

    USER_CONFIG_FIELDS = ("batch_wait_timeout_s", "batching", "max_batch_size")

    @classmethod
    def from_user_config(cls, config: Mapping[str, Any]) -> BatchPolicy:
        """The policy a deployment's ``user_config`` sets; unknown fields are refused."""
        unknown = sorted(set(config) - set(cls.USER_CONFIG_FIELDS))
        if unknown:
            raise AutocompressError(
                f"user_config: unknown field(s) {unknown}; allowed: {list(cls.USER_CONFIG_FIELDS)}"
            )
        return cls(
            enabled=bool(config.get("batching", True)),
            max_batch_size=int(config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
            batch_wait_timeout_s=float(config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S)),
        )

    def user_config(self) -> dict[str, Any]:
        """The ``user_config`` that ``from_user_config`` reads back."""
        return {
            "batching": self.enabled,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
        }


Take = Callable[[], Features]
"""What a run calls when it starts, where the session runs: the inputs it runs on."""


class NothingToRun(Exception):
    """Raised by a run's ``take`` that finds no request left: the runs before it took them all."""


class ModelBatcher:
    """One model's logits calls, sent on as few runs as the load allows.

    ``run(take)`` runs the session on ``take()``, called when the run starts (on the session's
    thread), so a run's rows are those waiting when the thread is free, not when the run was sent.
    A request that finds nothing out goes straight out alone. The others wait, and up to
    ``max_in_flight`` runs are out for them at once: with two (the default) on one session thread,
    one runs while the next waits for the thread and then takes everything that queued meanwhile
    (up to ``max_batch_size`` requests, after waiting up to ``batch_wait_timeout_s`` for more), so
    under load the thread goes from run to run without waiting for the event loop to hand it the
    next batch. A failed run fails the requests it carried.
    """

    def __init__(
        self,
        run: Callable[[Take], Awaitable[np.ndarray]],
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S,
        max_in_flight: int = 2,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_in_flight = max_in_flight
        self._waiting: list[tuple[Features, asyncio.Future[np.ndarray]]] = []
        self._taking = threading.Lock()  # the event loop appends, a run's take (on its thread) pops
        self._senders: set[asyncio.Task[None]] = set()
        self._out = 0  # runs out now: senders' and lone requests'
        self.runs = 0  # runs that took requests, for tests and logs

    def follow(self, policy: BatchPolicy) -> None:
        """Take the batch size and wait of a new policy (runs already out keep theirs)."""
        self.max_batch_size, self.batch_wait_timeout_s = policy.max_batch_size, policy.batch_wait_timeout_s

    async def logits(self, features: Features) -> np.ndarray:
        if not self._out and not self._waiting and self.batch_wait_timeout_s <= 0:
            self._out += 1  # alone: straight out from the caller's own task, no queue, no sender
            self.runs += 1
            try:
                return await self._run(lambda: features)
            finally:
                self._out -= 1
                self._start_sender()
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        with self._taking:
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
                await self._send_batch()
        finally:  # in the same step as the last look at the queue, so no request is left behind
            self._out -= 1
            self._senders.discard(asyncio.current_task())

    async def _send_batch(self) -> None:
        batch: list[tuple[Features, asyncio.Future[np.ndarray]]] = []
        counts: list[int] = []

        def take() -> Features:
            with self._taking:
                batch.extend(self._waiting[: self.max_batch_size])
                del self._waiting[: len(batch)]
            if not batch:
                raise NothingToRun
            joined, row_counts = join_features([features for features, _ in batch])
            counts.extend(row_counts)
            return joined

        try:
            parts = split_rows(await self._run(take), counts)
        except NothingToRun:
            return
        except Exception as exc:  # the callers get it; a caller that went away is skipped
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # the replica is stopping: its callers are cancelled with it
            for _, future in batch:
                future.cancel()
            raise
        finally:
            self.runs += 1 if batch else 0
        for (_, future), part in zip(batch, parts, strict=True):
            if not future.done():
                future.set_result(part)
