"""Budget: the latency, size and quality-loss bounds a searched model must meet, and the check of one trial.

A job whose budget nobody meets still finishes: ``Budget.check`` gives every candidate a
``distance`` to feasibility (0 when feasible) so the closest candidates can be reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from autocompress.errors import AutocompressError
from autocompress.spec import SpecModel

# An excess AUC drop of this much counts as much distance as a 100% latency or size overrun.
AUC_DROP_SCALE = 0.01


@dataclass(frozen=True)
class Feasibility:
    """Whether one candidate meets the budget, what it violates (readable), and how far it is off.

    ``distance`` is 0 for a feasible candidate and otherwise the sum of its overruns: the relative
    excess of latency and size (2.0 ms against 1.0 ms adds 1.0) and the excess AUC drop in units
    of ``AUC_DROP_SCALE``. Smaller is closer; it ranks candidates when nobody is feasible.
    """

    feasible: bool
    violations: list[str] = field(default_factory=list)
    distance: float = 0.0


class Budget(SpecModel):
    """What a winner must meet: latency (ms at ``percentile`` for ``batch_size``), size, quality loss.

    Every bound is optional; ``max_auc_drop`` bounds ``reference valid AUC - candidate valid AUC``.
    Sizes are in MB of 10^6 bytes (ONNX file plus external data).
    """

    latency_ms: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=256, ge=1)
    percentile: Literal[50, 95, 99] = 99
    size_mb: float | None = Field(default=None, gt=0)
    max_auc_drop: float | None = Field(default=None, ge=0)

    def check(self, metrics: Mapping[str, Any]) -> Feasibility:
        """Check a trial's final metrics (``latency_ms``, ``size_mb``, ``delta_auc``) against the bounds.

        ``latency_ms`` must be measured at this budget's batch size and percentile; only the
        metrics a bound needs are required, and a missing one raises ``AutocompressError``.
        """
        violations: list[str] = []
        distance = 0.0
        if self.latency_ms is not None:
            latency = _metric(metrics, "latency_ms", "latency_ms")
            if latency > self.latency_ms:
                violations.append(
                    f"latency p{self.percentile} at batch {self.batch_size} is {_fmt(latency)} ms > "
                    f"{_fmt(self.latency_ms)} ms"
                )
                distance += latency / self.latency_ms - 1.0
        if self.size_mb is not None:
            size = _metric(metrics, "size_mb", "size_mb")
            if size > self.size_mb:
                violations.append(f"size is {_fmt(size)} MB > {_fmt(self.size_mb)} MB")
                distance += size / self.size_mb - 1.0
        if self.max_auc_drop is not None:
            drop = -_metric(metrics, "delta_auc", "max_auc_drop")
            if drop > self.max_auc_drop:
                violations.append(
                    f"AUC drop vs the reference is {drop:.4f} > {self.max_auc_drop:.4f} (max_auc_drop)"
                )
                distance += (drop - self.max_auc_drop) / AUC_DROP_SCALE
        return Feasibility(feasible=not violations, violations=violations, distance=distance)


def _metric(metrics: Mapping[str, Any], name: str, bound: str) -> float:
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AutocompressError(
            f"budget.{bound} needs the metric {name!r} as a number, got {value!r}; "
            f"metrics given: {sorted(metrics)}"
        )
    return float(value)


def _fmt(value: float) -> str:
    """Two decimals, or three significant digits for values too small to show that way."""
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3g}"
