"""Training and distillation settings: frozen, versioned, strict to load, checked on creation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from autocompress.errors import AutocompressError, refuse_unknown_fields

TRAIN_CONFIG_VERSION = 1
DISTILL_CONFIG_VERSION = 1

Schedule = Literal["constant", "warmup_cosine", "step", "plateau"]
Device = Literal["auto", "cpu", "cuda"]
Optimizer = Literal["adamw"]

SCHEDULES: tuple[str, ...] = ("constant", "warmup_cosine", "step", "plateau")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
OPTIMIZERS: tuple[str, ...] = ("adamw",)


@dataclass(frozen=True)
class TrainConfig:
    """How `fit` trains a model: optimizer, learning-rate schedule, clipping, early stopping, device.

    Patience fields count epochs without a strictly better validation AUC; ``step_size`` counts
    epochs; ``warmup_steps`` counts optimizer steps and applies to every schedule (a linear ramp
    from ``lr / warmup_steps`` up to the schedule's value).
    """

    version: int = TRAIN_CONFIG_VERSION
    epochs: int = 5
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Optimizer = "adamw"
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    # "step": the lr is multiplied by gamma every step_size epochs
    step_size: int = 1
    gamma: float = 0.5
    # "plateau": the lr is multiplied by plateau_factor after plateau_patience epochs without improvement
    plateau_patience: int = 1
    plateau_factor: float = 0.5
    clip_grad_norm: float | None = None
    early_stopping_patience: int | None = 2
    seed: int = 0
    device: Device = "auto"
    # mixed precision (autocast fp16 + GradScaler); ignored unless training runs on CUDA
    amp: bool = False
    eval_batch_size: int = 16384

    def __post_init__(self) -> None:
        where = "train config"
        if self.version != TRAIN_CONFIG_VERSION:
            raise AutocompressError(
                f"{where}: version {self.version!r} is not supported (supported: {TRAIN_CONFIG_VERSION})"
            )
        _check_int(where, "epochs", self.epochs, minimum=1)
        _check_int(where, "batch_size", self.batch_size, minimum=1)
        _check_int(where, "eval_batch_size", self.eval_batch_size, minimum=1)
        _check_float(self, where, "lr", low=0.0, low_inclusive=False)
        _check_float(self, where, "weight_decay", low=0.0, low_inclusive=True)
        _check_choice(where, "optimizer", self.optimizer, OPTIMIZERS)
        _check_choice(where, "schedule", self.schedule, SCHEDULES)
        _check_int(where, "warmup_steps", self.warmup_steps, minimum=0)
        _check_int(where, "step_size", self.step_size, minimum=1)
        _check_float(self, where, "gamma", low=0.0, low_inclusive=False, high=1.0, high_inclusive=True)
        _check_int(where, "plateau_patience", self.plateau_patience, minimum=1)
        _check_float(
            self, where, "plateau_factor", low=0.0, low_inclusive=False, high=1.0, high_inclusive=False
        )
        if self.clip_grad_norm is not None:
            _check_float(self, where, "clip_grad_norm", low=0.0, low_inclusive=False, none_means="off")
        if self.early_stopping_patience is not None:
            _check_int(
                where, "early_stopping_patience", self.early_stopping_patience, minimum=1, none_means="off"
            )
        _check_int(where, "seed", self.seed, minimum=0)
        _check_choice(where, "device", self.device, DEVICES)
        if not isinstance(self.amp, bool):
            raise AutocompressError(f"{where}: amp must be true or false, got {self.amp!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, ``version`` included, for the store and for Ray Tune configs."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Strict load: unknown keys are refused by name; missing keys take their defaults."""
        refuse_unknown_fields("train config", data, (f.name for f in fields(cls)))
        return cls(**data)


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a frozen teacher's logits: soft-target temperature and label weight.

    The loss is ``alpha * BCE(student, labels) + (1 - alpha) * T^2 * BCE(student/T, sigmoid(teacher/T))``;
    ``alpha = 1`` is plain training, ``alpha = 0`` learns from the teacher alone.
    """

    version: int = DISTILL_CONFIG_VERSION
    temperature: float = 2.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        where = "distill config"
        if self.version != DISTILL_CONFIG_VERSION:
            raise AutocompressError(
                f"{where}: version {self.version!r} is not supported (supported: {DISTILL_CONFIG_VERSION})"
            )
        _check_float(self, where, "temperature", low=0.0, low_inclusive=False)
        _check_float(self, where, "alpha", low=0.0, low_inclusive=True, high=1.0, high_inclusive=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, ``version`` included."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistillConfig:
        """Strict load: unknown keys are refused by name; missing keys take their defaults."""
        refuse_unknown_fields("distill config", data, (f.name for f in fields(cls)))
        return cls(**data)


def _check_int(where: str, name: str, value: Any, *, minimum: int, none_means: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = f", or null for {none_means}" if none_means else ""
        raise AutocompressError(f"{where}: {name} must be an integer >= {minimum}{extra}, got {value!r}")


def _check_float(
    config: Any,
    where: str,
    name: str,
    *,
    low: float,
    low_inclusive: bool,
    high: float | None = None,
    high_inclusive: bool = True,
    none_means: str | None = None,
) -> None:
    """Check a number against its range and store it as a float on the frozen ``config``."""
    value = getattr(config, name)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value >= low if low_inclusive else value > low
        if ok and high is not None:
            ok = value <= high if high_inclusive else value < high
    if not ok:
        allowed = ("[" if low_inclusive else "(") + f"{low:g}, "
        allowed += "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        extra = f", or null for {none_means}" if none_means else ""
        raise AutocompressError(f"{where}: {name} must be a number in {allowed}{extra}, got {value!r}")
    object.__setattr__(config, name, float(value))


def _check_choice(where: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise AutocompressError(f"{where}: {name} {value!r} is not one of {list(choices)}")
