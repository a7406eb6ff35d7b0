"""The Pareto front of finished trials and the winner: best quality within the budget.

Objectives: valid AUC (higher is better), latency at the budget's batch size and percentile and
size in MB (lower is better). A job whose budget nobody meets still ends with an answer: no
winner, the reason, and the candidates closest to the budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autocompress.store import TrialRecord

NO_FEASIBLE_MODEL = "no feasible model"


@dataclass(frozen=True)
class Candidate:
    """One finished trial, as the search ranks it."""

    trial_id: str
    valid_auc: float
    latency_ms: float
    size_mb: float
    feasible: bool
    distance_to_feasible: float = 0.0
    metrics: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_metrics(cls, trial_id: str, metrics: Mapping[str, Any]) -> Candidate:
        """Build from a trial's final report (the names ``autocompress.engine.trial`` documents)."""
        return cls(
            trial_id=trial_id,
            valid_auc=float(metrics["valid_auc"]),
            latency_ms=float(metrics["latency_ms"]),
            size_mb=float(metrics["size_mb"]),
            feasible=bool(metrics["feasible"]),
            distance_to_feasible=float(metrics.get("distance_to_feasible", 0.0)),
            metrics=dict(metrics),
        )

    def dominates(self, other: Candidate) -> bool:
        """At least as good on every objective and strictly better on one."""
        no_worse = (
            self.valid_auc >= other.valid_auc
            and self.latency_ms <= other.latency_ms
            and self.size_mb <= other.size_mb
        )
        better = (
            self.valid_auc > other.valid_auc
            or self.latency_ms < other.latency_ms
            or self.size_mb < other.size_mb
        )
        return no_worse and better


def finished_candidates(trials: Iterable[TrialRecord], stage: int | None = None) -> list[Candidate]:
    """What a front and a winner are chosen from: the trials COMPLETED with a final report.

    Only a trial's final report carries ``feasible``; a trial that completed without one (its
    candidate could not be scored) is no candidate. Nor is a two-stage search's stage-1 candidate
    (config ``stage: 1``: scored on inherited weights, its model not kept) unless ``stage`` is 1;
    with ``stage``, only the trials of that stage count.
    """
    from autocompress.store import TrialStatus

    return [
        Candidate.from_metrics(t.trial_key, t.metrics)
        for t in trials
        if t.status is TrialStatus.COMPLETED
        and "feasible" in t.metrics
        and (t.config.get("stage") == stage if stage is not None else t.config.get("stage") != 1)
    ]


def pareto_front(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The candidates no other candidate dominates, best AUC first."""
    pool = list(candidates)
    front = [c for c in pool if not any(o.dominates(c) for o in pool)]
    return sorted(front, key=lambda c: (-c.valid_auc, c.latency_ms, c.size_mb))


@dataclass(frozen=True)
class Selection:
    """The outcome of a search: the winner, or why there is none and what came closest."""

    winner: Candidate | None
    front: list[Candidate]
    reason: str | None = None
    closest: list[Candidate] = field(default_factory=list)


def select_winner(candidates: Iterable[Candidate], closest: int = 3) -> Selection:
    """Best valid AUC among feasible candidates (ties: faster, then smaller).

    Without a feasible candidate the reason is ``NO_FEASIBLE_MODEL`` and ``closest`` lists the
    ones nearest the budget (smallest distance, then best AUC).
    """
    pool = list(candidates)
    front = pareto_front(pool)
    feasible = [c for c in pool if c.feasible]
    if feasible:
        winner = min(feasible, key=lambda c: (-c.valid_auc, c.latency_ms, c.size_mb))
        return Selection(winner=winner, front=front)
    nearest = sorted(pool, key=lambda c: (c.distance_to_feasible, -c.valid_auc))[:closest]
    return Selection(winner=None, front=front, reason=NO_FEASIBLE_MODEL, closest=nearest)
