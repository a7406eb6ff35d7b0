"""Budget: the latency, size and quality-loss bounds a searched model must meet, and the check of one trial.

Latency and size are absolute (``latency_ms``, ``size_mb``) or relative to a baseline the job
measures on the same target (``latency: {speedup_vs: onnx_fp32, factor: 5}``, ``size:
{smaller_than: onnx_fp32, factor: 20}``), so one preset means the same on any dataset. A job
resolves the rules once its baselines are measured (``Budget.resolve``); only a resolved budget
checks candidates. A job whose budget nobody meets still finishes: ``Budget.check`` gives every
candidate a ``distance`` to feasibility (0 when feasible) so the closest candidates can be reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from autocompress.errors import AutocompressError
from autocompress.spec import SpecModel

# An excess AUC drop of this much counts as much distance as a 100% latency or size overrun.
AUC_DROP_SCALE = 0.01

# What a relative bound may be stated against: the reference exported as is, and ONNX Runtime's
# dynamic int8 of it, both measured by the job on its own target.
Baseline = Literal["onnx_fp32", "ort_dynamic_int8"]
BASELINES: tuple[str, ...] = ("onnx_fp32", "ort_dynamic_int8")


class RelativeLatency(SpecModel):
    """At least ``factor`` times faster than ``speedup_vs`` (the budget's percentile at its batch size)."""

    speedup_vs: Baseline
    factor: float = Field(gt=0)


class RelativeSize(SpecModel):
    """At least ``factor`` times smaller than ``smaller_than`` (ONNX file plus external data)."""

    smaller_than: Baseline
    factor: float = Field(gt=0)


# Each bound that a budget states in one of two forms: (absolute field, relative field).
BOUND_FORMS: tuple[tuple[str, str], ...] = (("latency_ms", "latency"), ("size_mb", "size"))


def merge_budgets(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s fields over it, where stating one form of a bound drops the other.

    A preset that says ``latency_ms: 2.0`` over a base with ``latency: {speedup_vs: ...}`` means
    2 ms, not a budget with both forms.
    """
    merged = {**base, **override}
    for absolute, relative in BOUND_FORMS:
        if absolute in override and relative not in override:
            merged.pop(relative, None)
        elif relative in override and absolute not in override:
            merged.pop(absolute, None)
    return merged


@dataclass(frozen=True)
class BaselineFigures:
    """What a relative bound is resolved against: one baseline's measured latency and size."""

    latency_ms: float  # at the budget's batch size and percentile, on the job's target
    size_mb: float
    busy_warning: str | None = None  # the latency was measured on a busy node (``measure.busy``)


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
    latency: RelativeLatency | None = None
    batch_size: int = Field(default=256, ge=1)
    percentile: Literal[50, 95, 99] = 99
    size_mb: float | None = Field(default=None, gt=0)
    size: RelativeSize | None = None
    max_auc_drop: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_form_per_bound(self) -> Budget:
        for absolute, relative in BOUND_FORMS:
            if getattr(self, absolute) is not None and getattr(self, relative) is not None:
                raise ValueError(
                    f"give {absolute} (absolute) or {relative} (relative to a baseline), not both"
                )
        return self

    @property
    def relative(self) -> bool:
        """Whether a bound is stated against a baseline (and so must be resolved before checking)."""
        return self.latency is not None or self.size is not None

    def resolve(self, baselines: Mapping[str, BaselineFigures]) -> Budget:
        """The absolute budget: each relative bound turned into ms / MB from the baselines' figures.

        ``baselines`` maps a baseline's name (``BASELINES``) to its figures measured on the job's
        target; an absolute budget comes back unchanged.
        """
        update: dict[str, Any] = {}
        if self.latency is not None:
            figures = _baseline(baselines, self.latency.speedup_vs, "latency.speedup_vs")
            update.update(latency=None, latency_ms=figures.latency_ms / self.latency.factor)
        if self.size is not None:
            figures = _baseline(baselines, self.size.smaller_than, "size.smaller_than")
            update.update(size=None, size_mb=figures.size_mb / self.size.factor)
        return self.model_copy(update=update) if update else self

    def describe(self) -> dict[str, str]:
        """Each bound in words, relative ones as their rule: what the CLI and the report print."""
        out: dict[str, str] = {}
        at = f"latency p{self.percentile} at batch {self.batch_size}"
        if self.latency is not None:
            out["latency"] = f"{at} >= {self.latency.factor:g}x faster than {self.latency.speedup_vs}"
        elif self.latency_ms is not None:
            out["latency"] = f"{at} <= {_fmt(self.latency_ms)} ms"
        if self.size is not None:
            out["size"] = f"size >= {self.size.factor:g}x smaller than {self.size.smaller_than}"
        elif self.size_mb is not None:
            out["size"] = f"size <= {_fmt(self.size_mb)} MB"
        if self.max_auc_drop is not None:
            out["max_auc_drop"] = f"valid AUC drop <= {self.max_auc_drop:.4f}"
        return out

    def check(self, metrics: Mapping[str, Any]) -> Feasibility:
        """Check a trial's final metrics (``latency_ms``, ``size_mb``, ``delta_auc``) against the bounds.

        ``latency_ms`` must be measured at this budget's batch size and percentile; only the
        metrics a bound needs are required, and a missing one raises ``AutocompressError``.
        """
        if self.relative:
            raise AutocompressError(
                "budget: latency / size are relative to a baseline; resolve them with the baselines' "
                "measured figures (Budget.resolve) before checking a candidate"
            )
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


def _baseline(baselines: Mapping[str, BaselineFigures], name: str, field_name: str) -> BaselineFigures:
    if name not in baselines:
        raise AutocompressError(
            f"budget.{field_name}: baseline {name!r} was not measured; measured: {sorted(baselines)}"
        )
    return baselines[name]


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
