"""`fit`: the one training loop every model family, trial and distillation run goes through."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autocompress.data.table import Table
from autocompress.errors import AutocompressError
from autocompress.measure.quality import auc, logloss
from autocompress.train.config import DistillConfig, TrainConfig
from autocompress.train.distillation import distillation_loss
from autocompress.train.inference import forward_logits, predict_tensors, resolve_device, to_tensors
from autocompress.train.schedule import LearningRateSchedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochReport:
    """What one epoch did: mean train loss, validation AUC and logloss, last lr, wall seconds.

    ``epoch`` counts from 1. `fit` hands each report to ``on_epoch`` (where a Ray Tune trial
    reports it) and keeps all of them in `TrainResult.history`.
    """

    epoch: int
    train_loss: float
    valid_auc: float
    valid_logloss: float
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields, ready for ``tune.report`` or the store."""
        return asdict(self)


@dataclass
class TrainResult:
    """Outcome of `fit`: the restored best epoch, its validation metrics and the full history."""

    best_epoch: int
    best_valid_auc: float
    best_valid_logloss: float
    history: list[EpochReport] = field(default_factory=list)
    stopped_early: bool = False
    device: str = "cpu"


def fit(
    model: torch.nn.Module,
    train: Table,
    valid: Table,
    config: TrainConfig,
    *,
    teacher: torch.nn.Module | None = None,
    distill: DistillConfig | None = None,
    on_epoch: Callable[[EpochReport], bool | None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train`` with AdamW, choosing the epoch by validation AUC.

    Seeded (``torch.manual_seed`` and a shuffle drawn from ``config.seed``): on the CPU two runs
    from the same initial weights give identical weights. Each epoch ends with validation AUC and
    logloss; early stopping watches the AUC, and the best epoch's weights are loaded back at the
    end (the model is left on the training device, in eval mode). With ``teacher`` the loss is
    `distillation_loss` against the frozen teacher's logits of the same batch (``distill`` defaults
    to ``DistillConfig()``; the teacher is moved to the device and put in eval mode, never updated).
    ``on_epoch(report)`` returning True stops training; ``on_step(step, total_steps)`` is called
    after every optimizer step (``step`` counts from 1).
    """
    if distill is not None and teacher is None:
        raise AutocompressError(
            "distill was given but teacher is None: pass the teacher model to distil from"
        )
    if teacher is not None and distill is None:
        distill = DistillConfig()
    _check_tables(train, valid)

    device = resolve_device(config.device)
    use_amp = config.amp and device.type == "cuda"
    torch.manual_seed(config.seed)
    shuffle_generator = torch.Generator().manual_seed(config.seed)

    model.to(device)
    if teacher is not None:
        teacher.to(device)
        teacher.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise AutocompressError(f"model {type(model).__name__} has no trainable parameters")

    # columns become tensors once per fit; batches are index_select gathers from them
    train_x = to_tensors(train.features, device)
    train_y = torch.from_numpy(np.ascontiguousarray(train.labels, dtype=np.float32)).to(device)
    valid_x = to_tensors(valid.features, device)
    rows = len(train)
    batch_size = config.batch_size
    steps_per_epoch = math.ceil(rows / batch_size)
    schedule = LearningRateSchedule(config, steps_per_epoch)
    total_steps = schedule.total_steps
    optimizer = _adamw(params, config)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    history: list[EpochReport] = []
    best_auc, best_logloss, best_epoch = -math.inf, math.nan, 0
    best_state: dict[str, torch.Tensor] | None = None
    epochs_without_improvement = 0
    stopped_early = False
    step = 0
    lr = schedule.lr_at(0)

    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(rows, generator=shuffle_generator).to(device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        for start in range(0, rows, batch_size):
            index = order[start : start + batch_size]
            n = index.numel()
            batch = {name: col.index_select(0, index) for name, col in train_x.items()}
            labels = train_y.index_select(0, index)
            lr = schedule.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = forward_logits(model, batch, n)
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = forward_logits(teacher, batch, n)
            if teacher is not None and distill is not None:
                loss = distillation_loss(logits, teacher_logits, labels, distill)
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
            if scaler is not None:
                scaler.scale(loss).backward()
                if config.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if config.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
                optimizer.step()
            loss_sum += loss.detach() * n
            step += 1
            if on_step is not None:
                on_step(step, total_steps)

        train_loss = float(loss_sum.item()) / rows
        valid_logits = predict_tensors(model, valid_x, config.eval_batch_size)
        if not np.isfinite(valid_logits).all():
            raise AutocompressError(
                f"training diverged at epoch {epoch}: validation logits are NaN or infinite; "
                f"lower lr (now {config.lr:g}) or set clip_grad_norm"
            )
        valid_auc = auc(valid.labels, valid_logits)
        valid_logloss = logloss(valid.labels, valid_logits)
        report = EpochReport(
            epoch=epoch,
            train_loss=train_loss,
            valid_auc=valid_auc,
            valid_logloss=valid_logloss,
            lr=lr,
            seconds=time.perf_counter() - started,
        )
        history.append(report)
        log.debug("epoch %d: %s", epoch, report)

        if valid_auc > best_auc:
            best_auc, best_logloss, best_epoch = valid_auc, valid_logloss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
        schedule.observe_validation(valid_auc)

        if on_epoch is not None and on_epoch(report) is True:
            stopped_early = epoch < config.epochs
            break
        patience = config.early_stopping_patience
        if patience is not None and epochs_without_improvement >= patience and epoch < config.epochs:
            stopped_early = True
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        best_epoch=best_epoch,
        best_valid_auc=best_auc,
        best_valid_logloss=best_logloss,
        history=history,
        stopped_early=stopped_early,
        device=str(device),
    )


def _check_tables(train: Table, valid: Table) -> None:
    if len(train) == 0:
        raise AutocompressError("train split is empty: fit needs at least one training row")
    if len(valid) == 0:
        raise AutocompressError("valid split is empty: fit needs validation rows to pick the best epoch")
    if set(train.features) != set(valid.features):
        only_train = sorted(set(train.features) - set(valid.features))
        only_valid = sorted(set(valid.features) - set(train.features))
        raise AutocompressError(
            f"train and valid have different feature columns: only in train {only_train}, "
            f"only in valid {only_valid}"
        )
    positives = int((valid.labels > 0.5).sum())
    if positives in (0, len(valid)):
        raise AutocompressError(
            f"valid split has only one label class ({positives} positives of {len(valid)} rows): "
            "validation AUC is undefined; use a larger or differently split valid set"
        )


def _adamw(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one for these tensors (several times faster on CPU)."""
    try:
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
