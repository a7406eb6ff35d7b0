"""Knowledge distillation: the trained reference model (the teacher) teaches a smaller student.

The model given to ``apply`` is the student, typically built from a smaller ArchConfig; it is
trained on labels and on the teacher's temperature-softened click probabilities
(``autocompress.train.fit`` with a teacher). ``ctx.distill`` is set as well, so fine-tuning by
later steps of the same policy keeps learning from the teacher. Distillation alone does not
shrink a model: the smaller architecture does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

from autocompress.distributions import FloatRange, IntRange
from autocompress.errors import AutocompressError
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext
from autocompress.train.config import DistillConfig

if TYPE_CHECKING:
    from torch import nn

SHRINKS = False


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """Soft-target temperature, weight of the hard labels, and how many epochs the student trains."""

    name: ClassVar[str] = "distillation"
    level: ClassVar[Level] = "torch"

    temperature: float = param(
        2.0, FloatRange(1.0, 8.0), "softens the teacher's logits (logit / T) before they become targets"
    )
    alpha: float = param(
        0.5, FloatRange(0.0, 1.0), "weight of the hard labels; 1 - alpha goes to the teacher's soft targets"
    )
    epochs: int = param(2, IntRange(1, 5), "epochs the student trains against labels and the teacher")

    def check(self) -> None:
        if _not_number(self.temperature) or not 0 < self.temperature < math.inf:
            raise self.fail("temperature", f"must be a finite number > 0, got {self.temperature!r}")
        if _not_number(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise self.fail("alpha", f"must be in [0, 1], got {self.alpha!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise self.fail("epochs", f"must be an integer >= 1, got {self.epochs!r}")

    def distill_config(self) -> DistillConfig:
        """The training loop's view of this config: temperature and label weight."""
        return DistillConfig(temperature=self.temperature, alpha=self.alpha)


def apply(model: nn.Module, config: Config, ctx: TechniqueContext) -> nn.Module:
    """Train the student ``model`` from ``ctx.teacher`` and the labels; later fine-tuning distils too."""
    from autocompress.train import fit

    if ctx.teacher is None:
        raise AutocompressError(
            "distillation: no teacher: the context has no trained reference model (ctx.teacher is None) "
            "to distil from"
        )
    if model is ctx.teacher:
        raise AutocompressError(
            "distillation: the student is the teacher itself; pass a new (smaller) model to train"
        )
    if ctx.train is None or ctx.valid is None:
        raise AutocompressError("distillation: needs training and validation data (ctx.train, ctx.valid)")
    distill = config.distill_config()
    fit(
        model,
        ctx.train,
        ctx.valid,
        replace(ctx.train_config, epochs=config.epochs),
        teacher=ctx.teacher,
        distill=distill,
    )
    ctx.distill = distill
    return model


def _not_number(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | float)


EXAMPLES = [{"temperature": 4.0, "alpha": 0.0, "epochs": 1}]
INVALID = [
    ({"temperature": 0}, "distillation.temperature: must be a finite number > 0"),
    ({"alpha": 1.5}, "distillation.alpha: must be in [0, 1]"),
    ({"alpha": -0.1}, "distillation.alpha: must be in [0, 1]"),
    ({"epochs": 0}, "distillation.epochs: must be an integer >= 1"),
    ({"teacher_path": "x.pt"}, "unknown field(s) ['teacher_path']"),
]
