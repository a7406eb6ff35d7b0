"""What a technique may use besides the model: data, the training recipe, the teacher, a folder."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autocompress.data.schema import FeatureSchema
from autocompress.data.table import Table
from autocompress.errors import AutocompressError
from autocompress.spec import Target
from autocompress.train.config import DistillConfig, TrainConfig

if TYPE_CHECKING:
    from torch import nn

    from autocompress.train import TrainResult


@dataclass
class TechniqueContext:
    """Everything ``apply`` may need: the schema, data for fine-tuning and calibration, a teacher.

    ``train`` / ``valid`` may be None (then fine-tuning is skipped and calibration uses random
    valid batches). Fine-tuning runs at ``finetune_lr_scale`` times the training learning rate
    and, when there is a teacher and ``distill`` is set (the default: soft targets only), learns
    from the teacher's logits: ranking models with large id tables overfit as soon as they see
    the training rows a second time (the reference's validation AUC drops in its second epoch),
    while matching the teacher keeps the compressed model where the reference was.
    """

    schema: FeatureSchema
    work_dir: Path
    train: Table | None = None
    valid: Table | None = None
    train_config: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=1, early_stopping_patience=None)
    )
    teacher: nn.Module | None = None
    distill: DistillConfig | None = field(default_factory=lambda: DistillConfig(temperature=1.0, alpha=0.0))
    finetune_lr_scale: float = 0.1
    target: Target = field(default_factory=Target)
    _counter: itertools.count = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AutocompressError(
                f"work folder {str(self.work_dir)!r} cannot be created: {exc.strerror}"
            ) from None

    def finetune(self, model: nn.Module, epochs: int) -> TrainResult | None:
        """Train ``model`` for ``epochs`` more epochs (from the teacher when distilling); 0 skips."""
        if epochs <= 0 or self.train is None or self.valid is None:
            return None
        from autocompress.train import fit

        config = replace(self.train_config, epochs=epochs, lr=self.train_config.lr * self.finetune_lr_scale)
        teacher = self.teacher if self.distill is not None else None
        return fit(model, self.train, self.valid, config, teacher=teacher, distill=self.distill)

    def calibration_batch(self, rows: int = 1024) -> dict[str, np.ndarray]:
        """Representative inputs (validation rows, else train rows, else random valid ids)."""
        source = self.valid if self.valid is not None else self.train
        if source is None:
            return self.schema.example_batch(rows)
        head = source.head(rows)
        return {name: head.features[name] for name in self.schema.feature_names}

    def new_path(self, stem: str, suffix: str = ".onnx") -> Path:
        """A fresh file path in the work folder, so no step overwrites another's output."""
        return self.work_dir / f"{next(self._counter):02d}-{stem}{suffix}"
