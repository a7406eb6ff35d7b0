"""The learning rate of every optimizer step: linear warmup times the configured schedule."""

from __future__ import annotations

import math

from autocompress.train.config import TrainConfig


class LearningRateSchedule:
    """Learning rate per optimizer step for one `fit` run, as a pure function of the step.

    `lr_at(step)` is asked before each step (0-based); `observe_validation(auc)` is told each
    epoch's validation AUC, which only the "plateau" schedule uses (it multiplies the lr by
    ``plateau_factor`` once ``plateau_patience`` epochs have passed without a better AUC).
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.config = config
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.plateau_scale = 1.0
        self._best_auc = -math.inf
        self._epochs_without_improvement = 0

    def lr_at(self, step: int) -> float:
        """The learning rate for 0-based optimizer step ``step``."""
        c = self.config
        warmup = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps > 0 else 1.0
        if c.schedule == "warmup_cosine":
            span = max(1, self.total_steps - c.warmup_steps)
            progress = min(1.0, max(0, step - c.warmup_steps) / span)
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif c.schedule == "step":
            epoch = step // self.steps_per_epoch
            factor = c.gamma ** (epoch // c.step_size)
        elif c.schedule == "plateau":
            factor = self.plateau_scale
        else:
            factor = 1.0
        return c.lr * warmup * factor

    def observe_validation(self, valid_auc: float) -> None:
        """Record one epoch's validation AUC; on a plateau lower the lr of the following steps."""
        if self.config.schedule != "plateau":
            return
        if valid_auc > self._best_auc:
            self._best_auc = valid_auc
            self._epochs_without_improvement = 0
            return
        self._epochs_without_improvement += 1
        if self._epochs_without_improvement >= self.config.plateau_patience:
            self.plateau_scale *= self.config.plateau_factor
            self._epochs_without_improvement = 0
