import itertools
import math

import pytest

from autocompress.train import LearningRateSchedule, TrainConfig


def test_warmup_ramps_linearly_then_holds_for_constant() -> None:
    schedule = LearningRateSchedule(TrainConfig(lr=0.1, warmup_steps=4, epochs=2), steps_per_epoch=5)
    lrs = [schedule.lr_at(s) for s in range(10)]
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])


def test_warmup_cosine_follows_half_cosine_after_warmup() -> None:
    config = TrainConfig(lr=1.0, schedule="warmup_cosine", warmup_steps=2, epochs=2)
    schedule = LearningRateSchedule(config, steps_per_epoch=11)  # 22 steps, 20 after warmup
    assert schedule.total_steps == 22
    assert schedule.lr_at(0) == pytest.approx(0.5)
    assert schedule.lr_at(2) == pytest.approx(1.0)
    assert schedule.lr_at(12) == pytest.approx(0.5)  # halfway through the cosine
    assert schedule.lr_at(21) == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))
    after = [schedule.lr_at(s) for s in range(2, 22)]
    assert all(a > b for a, b in itertools.pairwise(after))
    assert after[-1] > 0


def test_step_multiplies_by_gamma_every_step_size_epochs() -> None:
    config = TrainConfig(lr=0.2, schedule="step", step_size=2, gamma=0.1, epochs=6)
    schedule = LearningRateSchedule(config, steps_per_epoch=3)
    per_epoch = [schedule.lr_at(epoch * 3) for epoch in range(6)]
    assert per_epoch == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.002, 0.002])
    assert schedule.lr_at(5) == pytest.approx(0.2)  # last step of epoch 2 is still undecayed


def test_plateau_lowers_lr_after_patience_epochs_without_better_auc() -> None:
    config = TrainConfig(lr=1.0, schedule="plateau", plateau_patience=2, plateau_factor=0.5)
    schedule = LearningRateSchedule(config, steps_per_epoch=1)
    lrs = []
    for valid_auc in [0.6, 0.7, 0.7, 0.69, 0.71, 0.71, 0.70, 0.5]:
        schedule.observe_validation(valid_auc)
        lrs.append(schedule.lr_at(0))
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_plateau_scale_is_ignored_by_other_schedules() -> None:
    schedule = LearningRateSchedule(TrainConfig(lr=1.0, schedule="constant"), steps_per_epoch=1)
    for _ in range(5):
        schedule.observe_validation(0.5)
    assert schedule.lr_at(0) == 1.0
