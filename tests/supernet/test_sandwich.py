"""Sandwich training on tiny synthetic data: the largest, the smallest and inherited sub-networks learn."""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from autocompress.data.table import Dataset
from autocompress.errors import AutocompressError
from autocompress.measure.quality import auc
from autocompress.models import build
from autocompress.models.din import DINArch
from autocompress.models.dlrm import DLRMArch
from autocompress.supernet import Supernet, train_supernet, valid_auc
from autocompress.testing.fixtures import one_torch_thread, tiny_dataset
from autocompress.train import TrainConfig, predict

LARGEST = DLRMArch(embedding_dim=16, bottom_mlp=(32, 16), top_mlp=(64, 32))
SMALLEST = DLRMArch(embedding_dim=4, bottom_mlp=(8, 4), top_mlp=(8,))
MID = DLRMArch(embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(32, 16))
# Validation AUC measured with seeds 0, 1, 2 (the test uses 0): the largest 0.45-0.60 untrained ->
# 0.76-0.77 trained, the smallest 0.51-0.59 -> 0.71-0.74, MID 0.39-0.51 built untrained -> 0.74-0.77
# inherited; the smallest gain was 0.149.
MARGIN = 0.1


def sample_dlrm(rng: random.Random) -> DLRMArch:
    """A search space's sampler: one of the widths and depths between SMALLEST and LARGEST."""
    dim = rng.choice([4, 8, 12, 16])
    bottom = (rng.choice([8, 16, 32]), dim)[-rng.choice([1, 2]) :]
    top = tuple(rng.choice([8, 16, 32]) for _ in range(rng.choice([1, 2])))
    return DLRMArch(embedding_dim=dim, bottom_mlp=bottom, top_mlp=top)


def config(**overrides: Any) -> TrainConfig:
    base = TrainConfig(epochs=3, batch_size=512, lr=1e-2, seed=0, early_stopping_patience=None)
    return replace(base, **overrides)


def aucs(supernet: Supernet, data: Dataset) -> dict[str, float]:
    features = {k: torch.from_numpy(v) for k, v in data.valid.features.items()}
    return {
        name: valid_auc(supernet, arch, features, data.valid.labels)
        for name, arch in (("largest", LARGEST), ("smallest", SMALLEST), ("mid", MID))
    }


@pytest.mark.slow
def test_sandwich_training_lifts_the_largest_the_smallest_and_inherited_subnetworks() -> None:
    data = tiny_dataset()
    with one_torch_thread():
        torch.manual_seed(0)
        supernet = Supernet.for_family(data.schema, LARGEST)
        before = aucs(supernet, data)
        result = train_supernet(
            supernet, data.train, data.valid, smallest=SMALLEST, sample_arch=sample_dlrm, config=config()
        )
        after = aucs(supernet, data)
        untrained_mid = auc(data.valid.labels, predict(build("dlrm", data.schema, MID, seed=0), data.valid))

    assert result.steps == 3 * 19 and result.device == "cpu"
    assert [h.epoch for h in result.history] == [1, 2, 3]
    best = result.history[result.best_epoch - 1]
    assert best.largest_auc == pytest.approx(after["largest"])
    assert best.smallest_auc == pytest.approx(after["smallest"])
    for name in ("largest", "smallest"):
        assert after[name] > before[name] + MARGIN, (name, before, after)
    # a sub-network the search would slice out inherits what the supernet learnt
    assert after["mid"] > untrained_mid + MARGIN, (untrained_mid, after)
    assert after["mid"] > before["mid"] + MARGIN


def test_a_teacher_and_sampled_histories_train_a_din_supernet() -> None:
    data = tiny_dataset()
    largest = DINArch(embedding_dim=8, attention_mlp=(8,), mlp=(16,))
    smallest = DINArch(embedding_dim=2, attention_mlp=(2,), mlp=(2,), history_length=2)
    with one_torch_thread():
        teacher = build("din", data.schema, DINArch(embedding_dim=4, attention_mlp=(4,), mlp=(8,)), seed=1)
        teacher_before = copy.deepcopy(teacher.state_dict())
        torch.manual_seed(0)
        supernet = Supernet.for_family(data.schema, largest)
        weights_before = copy.deepcopy(supernet.state_dict())
        drawn: list[DINArch] = []

        def sample(rng: random.Random) -> DINArch:
            drawn.append(replace(largest, history_length=rng.randint(1, 20)))
            return drawn[-1]

        result = train_supernet(
            supernet,
            data.train,
            data.valid,
            smallest=smallest,
            sample_arch=sample,
            config=config(epochs=1),
            teacher=teacher,
            random_subnets=3,
            max_steps=3,
        )
    assert result.steps == 3 and len(drawn) == 9
    assert len({s.history_length for s in drawn}) > 1
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not all(torch.equal(v, supernet.state_dict()[k]) for k, v in weights_before.items())
    assert np.isfinite(result.history[0].smallest_auc)


def test_what_the_sandwich_is_given_is_checked_naming_the_field() -> None:
    data = tiny_dataset()
    supernet = Supernet.for_family(data.schema, LARGEST)

    def train(**kwargs: Any) -> None:
        base: dict[str, Any] = {"smallest": SMALLEST, "sample_arch": sample_dlrm, "config": config()}
        train_supernet(supernet, data.train, data.valid, **(base | kwargs))

    with pytest.raises(AutocompressError, match=r"top_mlp \[128\]"):
        train(smallest=DLRMArch(embedding_dim=4, bottom_mlp=(4,), top_mlp=(128,)))
    with pytest.raises(AutocompressError, match="random_subnets must be an integer >= 0"):
        train(random_subnets=-1)
    with pytest.raises(AutocompressError, match="max_steps must be an integer >= 1"):
        train(max_steps=0)
    with pytest.raises(AutocompressError, match="embedding_dim 32"):
        train(sample_arch=lambda rng: DLRMArch(embedding_dim=32, bottom_mlp=(32,), top_mlp=(8,)), max_steps=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    data = tiny_dataset()
    supernet = Supernet.for_family(data.schema, LARGEST)
    with pytest.raises(AutocompressError, match="device 'cuda' was asked for but CUDA is not available"):
        train_supernet(
            supernet,
            data.train,
            data.valid,
            smallest=SMALLEST,
            sample_arch=sample_dlrm,
            config=config(device="cuda"),
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda_and_its_subnetworks_match_on_the_cpu() -> None:
    data = tiny_dataset()
    torch.manual_seed(0)
    supernet = Supernet.for_family(data.schema, LARGEST)
    result = train_supernet(
        supernet,
        data.train,
        data.valid,
        smallest=SMALLEST,
        sample_arch=sample_dlrm,
        config=config(device="cuda", amp=True, epochs=1),
        max_steps=5,
    )
    assert result.device.startswith("cuda") and result.steps == 5
    assert next(supernet.parameters()).is_cuda
    on_gpu = supernet.extract(MID)
    on_cpu = Supernet.for_family(data.schema, LARGEST)
    on_cpu.load_state_dict({k: v.cpu() for k, v in supernet.state_dict().items()})
    np.testing.assert_allclose(
        predict(on_gpu, data.valid), predict(on_cpu.extract(MID), data.valid), atol=1e-4, rtol=0
    )
