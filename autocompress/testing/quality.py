"""Whether a compressed model keeps the AUC of the model it came from: one check for every technique.

``check_keeps_auc`` compresses the converged tiny model (``converged_setup``) with the production
recipe and scores the ONNX file on the 8,000-row test split. Its baseline is the uncompressed model
given the same fine-tuning: every ``ctx.finetune`` call the policy made, replayed on a fresh copy.
Both score the same rows, so the AUC difference is paired and its standard error (DeLong et al.,
1988) is far smaller than either AUC's own: on this split (1,282 clicks) one AUC has a standard error
of 0.0055, the difference between a registered technique's default and its baseline 0.0000 to 0.0022.

A model keeps the AUC when the lower end of the 95% interval of the difference, ``difference -
1.96 * standard_error``, is above ``-max_drop``: with 97.5% confidence it loses less than
``max_drop``. ``MAX_AUC_DROP`` is 0.01: retraining the reference with seeds 0 to 4 moves its test
AUC with a standard deviation of 0.0037 (0.8447 to 0.8525), so 0.01 is under three of those.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autocompress.techniques.base import TechniqueConfig
from autocompress.techniques.context import TechniqueContext
from autocompress.techniques.policy import Policy, apply_policy
from autocompress.testing.fixtures import ConvergedSetup, one_torch_thread
from autocompress.train.config import DistillConfig

if TYPE_CHECKING:
    from torch import nn

    from autocompress.train import TrainResult

MAX_AUC_DROP = 0.01
# What a technique's default config may lose where it is known to cost more than MAX_AUC_DROP under
# the production recipe. embedding_dim_pruning keeps half of every table's columns and loses
# 0.0123 +- 0.0022 after its one epoch of fine-tuning (0.0219 +- 0.0028 without it).
KNOWN_AUC_COST: dict[str, float] = {"embedding_dim_pruning": 0.02}
Z_95 = 1.959963984540054  # two-sided 95%: the lower end is a one-sided 97.5% bound

Sabotage = Callable[[Path], None]


def max_auc_drop(technique: str) -> float:
    """The AUC a technique's default config may lose: ``MAX_AUC_DROP`` unless ``KNOWN_AUC_COST`` says."""
    return KNOWN_AUC_COST.get(technique, MAX_AUC_DROP)


@dataclass(frozen=True)
class AucComparison:
    """Test AUC of a compressed model and of its baseline on the same rows, and their difference."""

    compressed_auc: float
    baseline_auc: float
    difference: float  # compressed minus baseline
    standard_error: float  # of the difference (DeLong, paired)

    @property
    def lower_bound(self) -> float:
        """The lower end of the 95% interval of the difference."""
        return self.difference - Z_95 * self.standard_error

    def keeps_auc(self, max_drop: float = MAX_AUC_DROP) -> bool:
        """Whether the compressed model loses less than ``max_drop`` AUC, with 97.5% confidence."""
        return self.lower_bound >= -max_drop

    def __str__(self) -> str:
        return (
            f"AUC {self.compressed_auc:.4f} vs {self.baseline_auc:.4f}: "
            f"{self.difference:+.4f} +- {self.standard_error:.4f} (95% lower end {self.lower_bound:+.4f})"
        )


def paired_auc_difference(
    labels: np.ndarray, scores: np.ndarray, baseline_scores: np.ndarray
) -> AucComparison:
    """AUC of ``scores`` minus AUC of ``baseline_scores`` on the same rows, with DeLong's standard error.

    Each positive row's placement is the share of negatives it outranks (ties count half), each
    negative's the share of positives that outrank it; an AUC is their mean, and the variance of the
    difference comes from the per-row differences of the two models' placements.
    """
    positive = np.asarray(labels).ravel() > 0.5
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"need at least two rows of each class, got {m} positive and {n} negative")
    a_pos, a_neg = _placements(positive, np.asarray(scores, dtype=np.float64).ravel())
    b_pos, b_neg = _placements(positive, np.asarray(baseline_scores, dtype=np.float64).ravel())
    d_pos, d_neg = a_pos - b_pos, a_neg - b_neg
    variance = float(d_pos.var(ddof=1) / m + d_neg.var(ddof=1) / n)
    return AucComparison(
        compressed_auc=float(a_pos.mean()),
        baseline_auc=float(b_pos.mean()),
        difference=float(d_pos.mean()),
        standard_error=math.sqrt(max(variance, 0.0)),
    )


def check_keeps_auc(
    setup: ConvergedSetup,
    work_dir: Path,
    *steps: TechniqueConfig,
    max_drop: float = MAX_AUC_DROP,
    sabotage: Sabotage | None = None,
) -> AucComparison:
    """Compress ``setup`` with ``steps`` and fail unless the result keeps the baseline's test AUC.

    ``sabotage`` edits the compressed ONNX file before it is scored: a deliberately broken technique
    for tests of this check. Raises AssertionError naming the numbers; returns the comparison.
    """
    policy = Policy(tuple(steps))
    onnx_bytes, finetuned = _compressed(setup, work_dir, policy)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "checked.onnx"
    path.write_bytes(onnx_bytes)
    if sabotage is not None:
        sabotage(path)
    labels = setup.dataset.test.labels
    comparison = paired_auc_difference(
        labels, setup.test_logits(path), _baseline_logits(setup, work_dir, finetuned)
    )
    if not comparison.keeps_auc(max_drop):
        names = [step.name for step in policy.steps]
        raise AssertionError(f"{names} loses more than {max_drop} AUC: {comparison}")
    return comparison


def table_zeroed(setup: ConvergedSetup, feature: str) -> Sabotage:
    """A deliberate bug: every initializer of ``feature``'s embedding table in the file set to zero.

    The converged DLRM leans on ``item_category``: zeroing that table alone costs 0.07 to 0.08 AUC.
    """
    index = setup.trained.embeddings.table_names.index(feature)
    prefix = f"embeddings.tables.{index}."

    def sabotage(path: Path) -> None:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        zeroed = 0
        for initializer in model.graph.initializer:
            if initializer.name.startswith(prefix):
                values = numpy_helper.to_array(initializer)
                initializer.CopyFrom(numpy_helper.from_array(np.zeros_like(values), initializer.name))
                zeroed += 1
        if not zeroed:
            raise AssertionError(f"{path.name} has no initializer named {prefix}*")
        onnx.save(model, str(path))

    return sabotage


@dataclass
class _RecordingContext(TechniqueContext):
    """A context that notes every fine-tuning it runs, so that the baseline can be given the same."""

    finetuned: list[tuple[int, DistillConfig | None]] = field(default_factory=list)

    def finetune(self, model: nn.Module, epochs: int) -> TrainResult | None:
        self.finetuned.append((epochs, self.distill))
        return super().finetune(model, epochs)


def _compressed(
    setup: ConvergedSetup, work_dir: Path, policy: Policy
) -> tuple[bytes, tuple[tuple[int, DistillConfig | None], ...]]:
    """The compressed ONNX file's bytes and the fine-tuning it took (cached on the setup by policy)."""
    key = ("compressed", json.dumps(policy.to_dict(), sort_keys=True))
    if key not in setup.scored:
        base = setup.context(work_dir / "compressed")
        ctx = _RecordingContext(**{f.name: getattr(base, f.name) for f in fields(TechniqueContext)})
        with one_torch_thread():
            result = apply_policy(setup.model(), policy, ctx)
        setup.scored[key] = (result.onnx_path.read_bytes(), tuple(ctx.finetuned))
    value: tuple[bytes, tuple[tuple[int, DistillConfig | None], ...]] = setup.scored[key]
    return value


def _baseline_logits(
    setup: ConvergedSetup, work_dir: Path, finetuned: Sequence[tuple[int, DistillConfig | None]]
) -> np.ndarray:
    """Test logits of the uncompressed model after the same fine-tuning calls (cached on the setup)."""
    key = ("baseline", tuple(finetuned))
    if key not in setup.scored:
        model = setup.model()
        ctx = setup.context(work_dir / "baseline")
        with one_torch_thread():
            for epochs, distill in finetuned:
                ctx.distill = distill
                ctx.finetune(model, epochs)
            path = apply_policy(model, Policy(()), ctx).onnx_path
        setup.scored[key] = setup.test_logits(path)
    logits: np.ndarray = setup.scored[key]
    return logits


def _placements(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row placement values: for positives the share of negatives below, for negatives the share
    of positives above (ties count half)."""
    m, n = int(positive.sum()), int((~positive).sum())
    ranks = _midranks(scores)
    pos = (ranks[positive] - _midranks(scores[positive])) / n
    neg = 1.0 - (ranks[~positive] - _midranks(scores[~positive])) / m
    return pos, neg


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, equal values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    boundaries = np.flatnonzero(np.diff(ordered)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [values.size]))
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks
