"""Sandwich-rule training of a supernet (Once-for-All, BigNAS): every step trains the largest, the
smallest and a few random sub-networks on one batch, summing their gradients before one update."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autocompress.data.table import Table
from autocompress.errors import AutocompressError
from autocompress.measure.quality import auc
from autocompress.models import ArchConfig
from autocompress.supernet.elastic import Supernet
from autocompress.train.config import DistillConfig, TrainConfig
from autocompress.train.distillation import distillation_loss
from autocompress.train.inference import forward_logits, predict_tensors, resolve_device, to_tensors
from autocompress.train.schedule import LearningRateSchedule

log = logging.getLogger(__name__)

SampleArch = Callable[[random.Random], ArchConfig]


@dataclass(frozen=True)
class SandwichEpoch:
    """One epoch: mean loss of the largest sub-network, validation AUC of the largest and smallest."""

    epoch: int
    train_loss: float
    largest_auc: float
    smallest_auc: float
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SandwichResult:
    """Outcome of `train_supernet`: the restored epoch (best mean of largest and smallest AUC) and history."""

    best_epoch: int
    history: list[SandwichEpoch] = field(default_factory=list)
    steps: int = 0
    device: str = "cpu"


def train_supernet(
    supernet: Supernet,
    train: Table,
    valid: Table,
    *,
    smallest: ArchConfig,
    sample_arch: SampleArch,
    config: TrainConfig,
    random_subnets: int = 2,
    teacher: torch.nn.Module | None = None,
    distill: DistillConfig | None = None,
    max_steps: int | None = None,
) -> SandwichResult:
    """Train ``supernet`` in place by the sandwich rule with AdamW and ``config``'s schedule.

    Each step runs the largest sub-network, ``smallest`` and ``random_subnets`` sub-networks drawn by
    ``sample_arch(rng)`` (the search space's sampler; ``rng`` is seeded by ``config.seed``) on one
    batch and steps once on their summed gradients. With ``teacher`` (the trained reference) every
    sub-network learns from labels and its logits (``distillation_loss``); without one the largest
    learns from labels and the others from the largest's own logits (in-place distillation).
    ``config.device`` picks the device ("auto": CUDA when available); ``max_steps`` caps the steps of
    the whole run. Each epoch ends with the validation AUC of the largest and the smallest; the best
    epoch by their mean is loaded back, and the supernet is left on the device in eval mode.
    """
    if random_subnets < 0:
        raise AutocompressError(f"random_subnets must be an integer >= 0, got {random_subnets!r}")
    if max_steps is not None and max_steps < 1:
        raise AutocompressError(f"max_steps must be an integer >= 1 or null, got {max_steps!r}")
    if len(train) == 0 or len(valid) == 0:
        raise AutocompressError("train_supernet needs training and validation rows; a split is empty")
    largest = supernet.largest_arch
    smallest = supernet.check(smallest)
    distill = distill or DistillConfig()

    device = resolve_device(config.device)
    use_amp = config.amp and device.type == "cuda"
    torch.manual_seed(config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    supernet.to(device)
    if teacher is not None:
        teacher.to(device).eval()

    train_x = to_tensors(train.features, device)
    train_y = torch.from_numpy(np.ascontiguousarray(train.labels, dtype=np.float32)).to(device)
    valid_x = to_tensors(valid.features, device)
    rows, batch_size = len(train), config.batch_size
    steps_per_epoch = math.ceil(rows / batch_size)
    if max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, math.ceil(max_steps / config.epochs))
    schedule = LearningRateSchedule(config, steps_per_epoch)
    params = list(supernet.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    def backward(loss: torch.Tensor) -> None:
        (loss if scaler is None else scaler.scale(loss)).backward()

    history: list[SandwichEpoch] = []
    best_score, best_epoch, best_state = -math.inf, 0, None
    epochs_without_improvement, step, lr = 0, 0, schedule.lr_at(0)
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        supernet.train()
        order = torch.randperm(rows, generator=shuffle).to(device)
        loss_sum, seen = torch.zeros((), device=device), 0
        for start in range(0, steps_per_epoch * batch_size, batch_size):
            if max_steps is not None and step >= max_steps:
                break
            index = order[start : start + batch_size]
            n = index.numel()
            batch = {name: column.index_select(0, index) for name, column in train_x.items()}
            labels = train_y.index_select(0, index)
            lr = schedule.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                soft_targets = None if teacher is None else forward_logits(teacher, batch, n).detach()
                logits = supernet(batch, largest)
            if soft_targets is None:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
                soft_targets = logits.detach()
            else:
                loss = distillation_loss(logits, soft_targets, labels, distill)
            backward(loss)
            loss_sum += loss.detach() * n
            seen += n
            for sub in [smallest, *(sample_arch(rng) for _ in range(random_subnets))]:
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    logits = supernet(batch, sub)
                backward(distillation_loss(logits, soft_targets, labels, distill))
            if scaler is not None:
                if config.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                if config.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
                optimizer.step()
            step += 1

        largest_auc = valid_auc(supernet, largest, valid_x, valid.labels, config.eval_batch_size)
        smallest_auc = valid_auc(supernet, smallest, valid_x, valid.labels, config.eval_batch_size)
        report = SandwichEpoch(
            epoch=epoch,
            train_loss=float(loss_sum.item()) / max(seen, 1),
            largest_auc=largest_auc,
            smallest_auc=smallest_auc,
            lr=lr,
            seconds=time.perf_counter() - started,
        )
        history.append(report)
        log.debug("supernet epoch %d: %s", epoch, report)
        score = (largest_auc + smallest_auc) / 2
        schedule.observe_validation(score)
        if score > best_score:
            best_score, best_epoch, epochs_without_improvement = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in supernet.state_dict().items()}
        else:
            epochs_without_improvement += 1
        patience = config.early_stopping_patience
        if patience is not None and epochs_without_improvement >= patience:
            break

    if best_state is not None:
        supernet.load_state_dict(best_state)
    supernet.eval()
    return SandwichResult(best_epoch=best_epoch, history=history, steps=step, device=str(device))


def valid_auc(
    supernet: Supernet,
    arch: ArchConfig,
    features: dict[str, torch.Tensor],
    labels: np.ndarray,
    batch_size: int = 16384,
) -> float:
    """AUC of sub-network ``arch`` with inherited weights on columns already on the supernet's device."""
    model = supernet.extract(arch)
    logits = predict_tensors(model, features, batch_size)
    if not np.isfinite(logits).all():
        raise AutocompressError(
            f"supernet training diverged: {supernet.family} sub-network logits are NaN or infinite; "
            "lower lr or set clip_grad_norm"
        )
    return auc(labels, logits)
