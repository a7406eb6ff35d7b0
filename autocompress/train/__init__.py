"""Training: the `fit` loop (AdamW, lr schedules, clipping, early stopping, AMP on CUDA), KD, predict."""

from autocompress.train.config import DISTILL_CONFIG_VERSION, TRAIN_CONFIG_VERSION, DistillConfig, TrainConfig
from autocompress.train.distillation import distillation_loss
from autocompress.train.inference import predict, resolve_device, to_tensors
from autocompress.train.loop import EpochReport, TrainResult, fit
from autocompress.train.schedule import LearningRateSchedule

__all__ = [
    "DISTILL_CONFIG_VERSION",
    "TRAIN_CONFIG_VERSION",
    "DistillConfig",
    "EpochReport",
    "LearningRateSchedule",
    "TrainConfig",
    "TrainResult",
    "distillation_loss",
    "fit",
    "predict",
    "resolve_device",
    "to_tensors",
]
