import warnings

import numpy as np
import pytest
import torch
from torch import nn

from autocompress.data.table import Table
from autocompress.errors import AutocompressError
from autocompress.train import predict, resolve_device, to_tensors
from tests.train.tiny_click import tiny_ranker


def test_to_tensors_shares_memory_when_dtypes_already_fit() -> None:
    dense = np.arange(6, dtype=np.float32)
    ids = np.arange(12, dtype=np.int64).reshape(6, 2)
    tensors = to_tensors({"price": dense, "tags": ids})
    assert tensors["price"].dtype == torch.float32 and tensors["tags"].dtype == torch.int64
    assert tuple(tensors["tags"].shape) == (6, 2)
    assert np.shares_memory(tensors["price"].numpy(), dense)
    assert np.shares_memory(tensors["tags"].numpy(), ids)


def test_to_tensors_converts_to_the_batch_layout_dtypes() -> None:
    tensors = to_tensors({"price": np.array([0.5, 1.5]), "item_id": np.array([2, 3], dtype=np.int32)})
    assert tensors["price"].dtype == torch.float32
    assert tensors["item_id"].dtype == torch.int64
    assert tensors["item_id"].tolist() == [2, 3]


def test_to_tensors_copies_read_only_columns_without_warning() -> None:
    column = np.arange(4, dtype=np.float32)
    column.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = to_tensors({"price": column})["price"]
    assert tensor.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert not np.shares_memory(tensor.numpy(), column)


def test_to_tensors_refuses_non_numeric_columns_by_name() -> None:
    with pytest.raises(AutocompressError, match=r"feature 'query'.*float .* or integer"):
        to_tensors({"query": np.array(["shoes", "hats"], dtype=object)})


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(AutocompressError, match=r"device 'tpu' is not one of \['auto', 'cpu', 'cuda'\]"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(AutocompressError, match="CUDA is not available"):
        resolve_device("cuda")


def test_predict_gives_float32_logits_independent_of_batch_size(click_splits: tuple[Table, Table]) -> None:
    _, valid = click_splits
    model = tiny_ranker(seed=3, dropout=0.5)
    model.train()
    full = predict(model, valid, batch_size=100_000)
    small = predict(model, valid.features, batch_size=7)
    assert full.dtype == np.float32 and full.shape == (len(valid),)
    np.testing.assert_allclose(small, full, rtol=1e-5, atol=1e-6)
    # eval mode: dropout is off, so two calls agree exactly; the caller's train mode comes back
    np.testing.assert_array_equal(predict(model, valid), full)
    assert model.training
    with torch.no_grad():
        direct = model.eval()({k: torch.from_numpy(v[:5]) for k, v in valid.features.items()})
    np.testing.assert_allclose(full[:5], direct.numpy(), rtol=1e-6)


class _WrongShape(nn.Module):
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.zeros(batch["price"].shape[0], 2)


def test_predict_refuses_a_model_that_does_not_return_one_logit_per_row() -> None:
    with pytest.raises(AutocompressError, match=r"_WrongShape returned \(4, 2\) for a batch of 4 rows"):
        predict(_WrongShape(), {"price": np.zeros(4, dtype=np.float32)})


def test_predict_refuses_columns_of_different_lengths() -> None:
    with pytest.raises(AutocompressError, match="different row counts"):
        predict(tiny_ranker(), {"price": np.zeros(4, dtype=np.float32), "ctr_hist": np.zeros(3)})
