import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

from autocompress.data.table import Table
from autocompress.errors import AutocompressError
from autocompress.measure.quality import auc
from autocompress.train import DistillConfig, EpochReport, TrainConfig, fit, predict
from tests.train.tiny_click import ConstantScorer, TinyRanker, make_click_table, tiny_ranker

QUICK: dict[str, Any] = {"batch_size": 128, "lr": 0.03, "device": "cpu", "early_stopping_patience": None}


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _with_labels(table: Table, labels: np.ndarray) -> Table:
    return Table(features=table.features, labels=labels)


def test_tiny_model_learns_and_the_best_epoch_is_restored(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    model = tiny_ranker(seed=0)
    before = auc(valid.labels, predict(model, valid))
    result = fit(model, train, valid, TrainConfig(epochs=4, **QUICK))
    assert result.best_valid_auc > 0.75 > before + 0.1
    assert result.best_valid_logloss < math.log(2)
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]
    assert result.best_valid_auc == max(r.valid_auc for r in result.history)
    assert result.history[result.best_epoch - 1].valid_auc == result.best_valid_auc
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert all(r.seconds > 0 and r.lr == pytest.approx(0.03) for r in result.history)
    assert result.device == "cpu" and not result.stopped_early
    assert not model.training
    assert auc(valid.labels, predict(model, valid)) == result.best_valid_auc


def test_same_seed_same_weights_other_seed_other_weights(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    config = TrainConfig(epochs=2, seed=3, **QUICK)
    runs = []
    for seed in (3, 3, 4):
        model = tiny_ranker(seed=0, dropout=0.2)
        fit(model, train, valid, TrainConfig.from_dict({**config.to_dict(), "seed": seed}))
        runs.append(_weights(model))
    assert _same_weights(runs[0], runs[1])
    assert not _same_weights(runs[0], runs[2])


def test_early_stopping_stops_when_auc_cannot_improve(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    model = tiny_ranker(seed=0)
    config = TrainConfig(epochs=10, batch_size=128, lr=1e-12, early_stopping_patience=1, device="cpu")
    result = fit(model, train, valid, config)
    assert result.stopped_early
    assert len(result.history) == 2
    assert result.best_epoch == 1
    assert result.history[1].valid_auc <= result.history[0].valid_auc
    assert auc(valid.labels, predict(model, valid)) == result.best_valid_auc


def test_early_stopping_restores_the_earlier_better_weights(click_splits: tuple[Table, Table]) -> None:
    # valid labels are flipped: the more the model learns the train task, the worse its valid AUC
    train, valid = click_splits
    flipped = _with_labels(valid, 1.0 - valid.labels)
    model = tiny_ranker(seed=0)
    config = TrainConfig(epochs=10, batch_size=128, lr=0.01, early_stopping_patience=1, device="cpu")
    result = fit(model, train, flipped, config)
    assert result.stopped_early and len(result.history) == 2 and result.best_epoch == 1
    first, second = result.history
    assert second.valid_auc < first.valid_auc - 0.01
    restored = auc(flipped.labels, predict(model, flipped))
    assert restored == result.best_valid_auc == first.valid_auc


def test_on_epoch_returning_true_stops_and_on_step_counts_steps(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    seen: list[EpochReport] = []
    steps: list[tuple[int, int]] = []

    def on_epoch(report: EpochReport) -> bool:
        seen.append(report)
        return report.epoch == 2

    config = TrainConfig(epochs=5, **{**QUICK, "batch_size": 1000})
    result = fit(
        tiny_ranker(), train, valid, config, on_epoch=on_epoch, on_step=lambda s, t: steps.append((s, t))
    )
    assert [r.epoch for r in seen] == [1, 2]
    assert seen == result.history
    assert result.stopped_early
    assert steps == [(s, 15) for s in range(1, 7)]  # 3 steps per epoch, 5 epochs planned, 2 run


def _record_lrs() -> tuple[list[float], RemovableHandle]:
    lrs: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: lrs.append(optimizer.param_groups[0]["lr"])
    )
    return lrs, handle


def test_warmup_cosine_sets_the_optimizer_lr_every_step(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    config = TrainConfig(
        epochs=3,
        batch_size=500,
        lr=0.02,
        schedule="warmup_cosine",
        warmup_steps=3,
        device="cpu",
        early_stopping_patience=None,
    )
    lrs, handle = _record_lrs()
    try:
        fit(tiny_ranker(), train, valid, config)
    finally:
        handle.remove()
    total, warmup = 18, 3  # 6 steps per epoch
    expected = [0.02 * (s + 1) / warmup for s in range(warmup)] + [
        0.02 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) for s in range(warmup, total)
    ]
    assert lrs == pytest.approx(expected)


def test_step_schedule_decays_per_epoch(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    config = TrainConfig(
        epochs=3,
        batch_size=500,
        lr=0.02,
        schedule="step",
        step_size=1,
        gamma=0.1,
        device="cpu",
        early_stopping_patience=None,
    )
    lrs, handle = _record_lrs()
    try:
        result = fit(tiny_ranker(), train, valid, config)
    finally:
        handle.remove()
    assert [r.lr for r in result.history] == pytest.approx([0.02, 0.002, 0.0002])
    assert lrs == pytest.approx([0.02] * 6 + [0.002] * 6 + [0.0002] * 6)


def test_constant_schedule_keeps_the_lr_after_warmup(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    config = TrainConfig(epochs=2, batch_size=500, lr=0.02, warmup_steps=2, device="cpu")
    lrs, handle = _record_lrs()
    try:
        fit(tiny_ranker(), train, valid, config)
    finally:
        handle.remove()
    assert lrs == pytest.approx([0.01] + [0.02] * 11)


def test_plateau_halves_the_lr_when_validation_auc_stalls(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    config = TrainConfig(
        epochs=4,
        batch_size=1000,
        lr=0.02,
        schedule="plateau",
        plateau_patience=1,
        plateau_factor=0.5,
        device="cpu",
        early_stopping_patience=None,
    )
    result = fit(ConstantScorer(), train, valid, config)
    assert [r.valid_auc for r in result.history] == [0.5] * 4
    assert [r.lr for r in result.history] == pytest.approx([0.02, 0.02, 0.01, 0.005])
    assert result.best_epoch == 1


def _max_grad_norm_per_step(clip: float | None) -> float:
    train, _ = make_click_table(1000, seed=1, dense_scale=100.0)
    valid, _ = make_click_table(300, seed=2, dense_scale=100.0)
    model = tiny_ranker(seed=0)
    norms: list[float] = []

    def on_step(step: int, total: int) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    config = TrainConfig(epochs=2, batch_size=100, lr=0.05, clip_grad_norm=clip, device="cpu")
    fit(model, train, valid, config, on_step=on_step)
    assert len(norms) == 20
    return max(norms)


def test_clip_grad_norm_bounds_every_step() -> None:
    assert _max_grad_norm_per_step(None) > 10.0
    assert _max_grad_norm_per_step(1.0) <= 1.0 + 1e-4


def _teacher_task() -> tuple[TinyRanker, Table, Table]:
    """A fixed random teacher; train labels are pure noise, valid labels are drawn from the teacher."""
    teacher = tiny_ranker(seed=11)
    with torch.no_grad():
        teacher.out.weight.mul_(3.0)
    train, _ = make_click_table(3000, seed=1)
    valid, _ = make_click_table(1000, seed=2)
    noise = np.random.default_rng(5)
    train = _with_labels(train, (noise.random(len(train)) < 0.3).astype(np.float32))
    p_valid = 1.0 / (1.0 + np.exp(-predict(teacher, valid).astype(np.float64)))
    valid = _with_labels(valid, (noise.random(len(valid)) < p_valid).astype(np.float32))
    return teacher, train, valid


def test_distillation_alone_pulls_the_student_towards_the_teacher() -> None:
    teacher, train, valid = _teacher_task()
    teacher_weights = _weights(teacher)
    student = tiny_ranker(seed=5)
    teacher_scores = predict(teacher, valid)
    before = np.corrcoef(predict(student, valid), teacher_scores)[0, 1]
    config = TrainConfig(epochs=4, **QUICK)
    distill = DistillConfig(temperature=2.0, alpha=0.0)
    result = fit(student, train, valid, config, teacher=teacher, distill=distill)
    after = np.corrcoef(predict(student, valid), teacher_scores)[0, 1]
    assert before < 0.5
    assert after > 0.9
    assert result.best_valid_auc > 0.75
    assert _same_weights(_weights(teacher), teacher_weights)

    # with alpha = 0 the training labels do not matter at all
    other = tiny_ranker(seed=5)
    flipped = _with_labels(train, 1.0 - train.labels)
    fit(other, flipped, valid, config, teacher=teacher, distill=distill)
    assert _same_weights(_weights(other), _weights(student))


def test_alpha_one_with_a_teacher_equals_plain_training(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    config = TrainConfig(epochs=2, **QUICK)
    plain, distilled = tiny_ranker(seed=0), tiny_ranker(seed=0)
    fit(plain, train, valid, config)
    fit(distilled, train, valid, config, teacher=tiny_ranker(seed=9), distill=DistillConfig(alpha=1.0))
    assert _same_weights(_weights(plain), _weights(distilled))


def test_fit_refuses_bad_inputs_with_clear_messages(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    config = TrainConfig(epochs=1, **QUICK)
    with pytest.raises(AutocompressError, match="distill was given but teacher is None"):
        fit(tiny_ranker(), train, valid, config, distill=DistillConfig())
    with pytest.raises(AutocompressError, match="valid split has only one label class"):
        fit(tiny_ranker(), train, _with_labels(valid, np.zeros(len(valid), dtype=np.float32)), config)
    with pytest.raises(AutocompressError, match="train split is empty"):
        fit(tiny_ranker(), train.take(np.arange(0)), valid, config)
    missing = Table(features={k: v for k, v in valid.features.items() if k != "tags"}, labels=valid.labels)
    with pytest.raises(AutocompressError, match=r"only in train \['tags'\]"):
        fit(tiny_ranker(), train, missing, config)
    with pytest.raises(AutocompressError, match=r"training diverged at epoch 1.*lower lr"):
        fit(tiny_ranker(), train, valid, TrainConfig.from_dict({**config.to_dict(), "lr": 1e30}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fit_on_cuda_without_cuda_is_refused(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    with pytest.raises(AutocompressError, match="CUDA is not available"):
        fit(tiny_ranker(), train, valid, TrainConfig(epochs=1, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda_learns(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    model = tiny_ranker(seed=0)
    config = TrainConfig(epochs=4, amp=True, clip_grad_norm=5.0, **{**QUICK, "device": "cuda"})
    result = fit(model, train, valid, config)
    assert result.device.startswith("cuda")
    assert result.best_valid_auc > 0.75
    assert next(model.parameters()).device.type == "cuda"
    assert auc(valid.labels, predict(model, valid)) == pytest.approx(result.best_valid_auc, abs=1e-6)


def test_copy_of_a_trained_model_predicts_the_same(click_splits: tuple[Table, Table]) -> None:
    train, valid = click_splits
    model = tiny_ranker(seed=0)
    fit(model, train, valid, TrainConfig(epochs=1, **QUICK))
    np.testing.assert_array_equal(predict(copy.deepcopy(model), valid), predict(model, valid))
