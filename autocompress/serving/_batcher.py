"""Dynamic batching of one model's requests where its ONNX Runtime session runs.

``ModelBatcher`` runs a model's logits calls on as few session runs as the load allows: a request
that finds nothing queued and a run free goes straight out (no added latency at low load); the
requests that arrive while runs are out wait and go as one run, rows joined (up to
``max_batch_size`` requests, after waiting up to ``batch_wait_timeout_s`` for more). Under load each
run carries what queued while the previous one ran. ``BatchPolicy`` is how a deployment's
``user_config`` sets it.
"""

from __future__ import annotations

import asyncio
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


class ModelBatcher:
    """One model's logits calls, sent on as few runs as the load allows.

    At most ``max_in_flight`` runs are out at once; the requests that arrive meanwhile wait and
    go out together, rows joined (up to ``max_batch_size`` requests a run, after waiting up to
    ``batch_wait_timeout_s`` for more). Alone a request goes straight out; under load each run
    carries what queued while the previous one ran. A failed run fails the requests it carried.
    """

    def __init__(
        self,
        run: Callable[[Features], Awaitable[np.ndarray]],
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S,
        max_in_flight: int = 1,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_in_flight = max_in_flight
        self._waiting: list[tuple[Features, asyncio.Future[np.ndarray]]] = []
        self._senders: set[asyncio.Task[None]] = set()
        self._out = 0  # runs out now: senders' and lone requests'
        self.runs = 0  # runs started, for tests and logs

    def follow(self, policy: BatchPolicy) -> None:
        """Take the batch size and wait of a new policy (runs already out keep theirs)."""
        self.max_batch_size, self.batch_wait_timeout_s = policy.max_batch_size, policy.batch_wait_timeout_s

    async def logits(self, features: Features) -> np.ndarray:
        if not self._waiting and self._out < self.max_in_flight and self.batch_wait_timeout_s <= 0:
            self._out += 1  # alone: straight out from the caller's own task, no queue, no sender
            self.runs += 1
            try:
                return await self._run(features)
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
        self.runs += 1
        try:
            joined, counts = join_features([features for features, _ in batch])
            parts = split_rows(await self._run(joined), counts)
        except Exception as exc:  # the callers get it; a caller that went away is skipped
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # the replica is stopping: its callers are cancelled with it
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), part in zip(batch, parts, strict=True):
            if not future.done():
                future.set_result(part)
