"""Latency measured on the target: p50/p95/p99 per batch size of timed ONNX Runtime (or torch) runs."""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from autocompress.data.schema import FeatureSchema
from autocompress.errors import AutocompressError
from autocompress.export.session import feed
from autocompress.measure.busy import NodeLoad
from autocompress.spec import Target

if TYPE_CHECKING:
    import onnxruntime
    import torch

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class LatencyRow:
    """Timings of one batch size: percentiles, mean and spread (``cv`` = std/mean, the noise), throughput."""

    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    repetitions: int
    rows_per_second: float

    @property
    def p99_over_p50(self) -> float:
        """The tail over the median: near 1 on a quiet node, large when runs were interrupted."""
        return self.p99_ms / self.p50_ms if self.p50_ms > 0 else 1.0


@dataclass(frozen=True)
class LatencyReport:
    """One ``LatencyRow`` per batch size of the target, and the target they were measured on.

    ``load``: how busy the node was and the verdict (``autocompress.measure.busy``); None for a
    measurement taken without the check (``measure_latency`` alone).
    """

    rows: tuple[LatencyRow, ...]
    target: Target
    load: NodeLoad | None = None

    @property
    def busy(self) -> bool:
        """True when the node was busy beyond the policy through every retry (see ``load.warning``)."""
        return self.load is not None and self.load.busy

    @property
    def busy_warning(self) -> str | None:
        """The busy warning for the trial, the job's events and the report; None when quiet or unchecked."""
        return self.load.warning if self.load is not None else None

    def at(self, batch_size: int, percentile: int | None = None) -> float:
        """Milliseconds at ``percentile`` (default: the target's) for ``batch_size``: what a budget checks."""
        p = self.target.percentile if percentile is None else percentile
        if p not in PERCENTILES:
            raise AutocompressError(f"percentile {p!r} is not measured; allowed: {list(PERCENTILES)}")
        for row in self.rows:
            if row.batch_size == batch_size:
                value: float = getattr(row, f"p{p}_ms")
                return value
        raise AutocompressError(
            f"batch_size {batch_size} was not measured; measured: {[r.batch_size for r in self.rows]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (rows, target and load) for the store, the latency cache and the report."""
        return {
            "rows": [asdict(r) for r in self.rows],
            "target": self.target.to_dict(),
            "load": None if self.load is None else asdict(self.load),
        }


def measure_latency(
    session: onnxruntime.InferenceSession, schema: FeatureSchema, target: Target, *, seed: int = 0
) -> LatencyReport:
    """Time ``session.run`` for every batch size of the target on a fixed example batch.

    Per batch size: up to ``target.warmup`` untimed runs (at most half of ``max_seconds``), then up
    to ``target.repetitions`` runs each timed with ``perf_counter_ns``, stopping once
    ``max_seconds`` have passed (at least one timed run). The garbage collector is paused meanwhile.
    """
    rows = []
    for batch_size in target.batch_sizes:
        inputs = feed(session, schema.example_batch(batch_size, seed=seed))
        timings_ns = _timed_runs(functools.partial(session.run, None, inputs), target)
        rows.append(_summarise(batch_size, np.asarray(timings_ns, dtype=np.float64) / 1e6, target.rounds))
    return LatencyReport(rows=tuple(rows), target=target)


def measure_torch_latency(
    model: torch.nn.Module, schema: FeatureSchema, target: Target, *, seed: int = 0
) -> LatencyReport:
    """Time eager PyTorch inference the same way as ``measure_latency``: the baseline ONNX must beat.

    Runs on the CPU in eval mode without gradients, with torch's intra-op threads set to the
    target's for the duration of the measurement.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(target.intra_op_threads)
    model = model.eval()
    rows = []
    try:
        with torch.inference_mode():
            for batch_size in target.batch_sizes:
                example = schema.example_batch(batch_size, seed=seed)
                inputs = {name: torch.from_numpy(example[name]) for name in schema.feature_names}
                timings_ns = _timed_runs(functools.partial(model, inputs), target)
                rows.append(
                    _summarise(batch_size, np.asarray(timings_ns, dtype=np.float64) / 1e6, target.rounds)
                )
    finally:
        torch.set_num_threads(threads)
    return LatencyReport(rows=tuple(rows), target=target)


def _timed_runs(run: Callable[[], object], target: Target) -> list[int]:
    budget_ns = int(target.max_seconds * 1e9)
    start = time.perf_counter_ns()
    warmup_end, deadline = start + budget_ns // 2, start + budget_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(target.warmup):
            if time.perf_counter_ns() >= warmup_end:
                break
            run()
        timings: list[int] = []
        while len(timings) < target.repetitions:
            t0 = time.perf_counter_ns()
            run()
            t1 = time.perf_counter_ns()
            timings.append(t1 - t0)
            if t1 >= deadline:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings


def _summarise(batch_size: int, ms: np.ndarray, rounds: int = 1) -> LatencyRow:
    # each percentile is the median over ``rounds`` consecutive slices of the runs, so one burst of
    # outside load (clustered in time) cannot decide a budget on its own
    slices = np.array_split(ms, min(rounds, len(ms)))
    per_round = np.array([np.percentile(part, PERCENTILES) for part in slices])
    p50, p95, p99 = (float(v) for v in np.median(per_round, axis=0))
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    return LatencyRow(
        batch_size=batch_size,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=mean,
        std_ms=std,
        cv=std / mean if mean > 0 else 0.0,
        repetitions=len(ms),
        rows_per_second=batch_size * 1000.0 / mean if mean > 0 else float("inf"),
    )
