from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from autocompress.errors import AutocompressError
from autocompress.export import ExportError, create_session, export_onnx, feed
from autocompress.spec import Target
from tests.export.tiny_ranker import TinyRanker, tiny_schema


def _torch_logits(model: nn.Module, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model({k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    return out


def test_export_matches_torch_and_keeps_batch_axis_dynamic(tmp_path: Path) -> None:
    torch.manual_seed(0)
    schema = tiny_schema()
    model = TinyRanker().eval()
    result = export_onnx(model, schema, tmp_path / "ranker.onnx", sample_rows=32)

    assert result.path == tmp_path / "ranker.onnx" and result.path.is_file()
    assert result.max_abs_diff <= 1e-4
    assert result.input_names == schema.feature_names
    assert result.output_name == "logit" and result.opset == 17
    assert onnx.load(str(result.path)).opset_import[0].version == 17
    assert not result.external_data and result.seconds > 0

    session = create_session(result.path, Target())
    batch = schema.example_batch(7, seed=42)
    (got,) = session.run(["logit"], feed(session, batch))
    assert got.shape == (7,)
    np.testing.assert_allclose(got, _torch_logits(model, batch), atol=1e-4)


def test_export_uses_eval_mode_and_restores_train_mode(tmp_path: Path) -> None:
    schema = tiny_schema()
    model = TinyRanker(dropout=0.5, batch_norm=True)
    model.train()
    result = export_onnx(model, schema, tmp_path / "ranker.onnx")
    # with dropout active the check against torch could not pass: the export ran in eval mode
    assert result.max_abs_diff <= 1e-4
    assert model.training and all(m.training for m in model.modules())


def test_features_the_model_never_reads_are_not_graph_inputs(tmp_path: Path) -> None:
    schema = tiny_schema(unused_dense=True)
    result = export_onnx(TinyRanker(), schema, tmp_path / "ranker.onnx")
    assert "ignored_score" not in result.input_names
    assert result.input_names == [n for n in schema.feature_names if n != "ignored_score"]
    session = create_session(result.path, Target())
    (got,) = session.run(None, feed(session, schema.example_batch(5)))
    assert got.shape == (5,)


class DataDependentConstant(TinyRanker):
    """Reads a value out of the batch into Python: tracing freezes it as a constant."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scale = float(batch["price"].abs().max())
        return super().forward(batch) * scale


class FrozenBatchSize(TinyRanker):
    """Builds a tensor from the batch size as a Python int: the traced graph only fits that size."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = int(batch["price"].shape[0])
        return super().forward(batch) + torch.ones(rows)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_forward_that_traces_differently_raises_export_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=r"differs from torch by up to .*\(allowed atol=0.0001\)"):
        export_onnx(DataDependentConstant(), tiny_schema(), path)
    assert not path.exists(), "a model that failed the check must not be left behind"


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_batch_size_frozen_by_tracing_raises_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"shape \(64,\) for a batch of 1 rows.*batch axis"):
        export_onnx(FrozenBatchSize(), tiny_schema(), tmp_path / "bad.onnx")


def test_zero_tolerance_with_a_random_op_raises_export_error(tmp_path: Path) -> None:
    class Noisy(TinyRanker):
        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            out = super().forward(batch)
            return out + 1e-3 * torch.rand_like(out)

    with pytest.raises(ExportError) as info:
        export_onnx(Noisy(), tiny_schema(), tmp_path / "noisy.onnx", atol=0.0)
    assert "allowed atol=0" in str(info.value)
    assert isinstance(info.value, AutocompressError)


def test_logits_of_wrong_shape_are_refused(tmp_path: Path) -> None:
    class Column(TinyRanker):
        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return super().forward(batch).unsqueeze(1)

    with pytest.raises(ExportError, match=r"returned \(64, 1\).*logits must have shape \[B\]"):
        export_onnx(Column(), tiny_schema(), tmp_path / "column.onnx")


def test_external_data_is_written_next_to_the_file(tmp_path: Path) -> None:
    schema = tiny_schema()
    result = export_onnx(TinyRanker(), schema, tmp_path / "ranker.onnx", external_data=True)
    data = tmp_path / "ranker.onnx.data"
    assert result.external_data and data.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranker.onnx", "ranker.onnx.data"]
    header = onnx.load(str(result.path), load_external_data=False)
    assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in header.graph.initializer)
    assert result.max_abs_diff <= 1e-4


def test_bad_sample_rows_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AutocompressError, match="sample_rows must be >= 1"):
        export_onnx(TinyRanker(), tiny_schema(), tmp_path / "x.onnx", sample_rows=0)


def test_models_above_the_threshold_get_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autocompress.export import torch_to_onnx

    monkeypatch.setattr(torch_to_onnx, "EXTERNAL_DATA_THRESHOLD_BYTES", 1000)  # the tiny ranker has ~3 kB
    result = export_onnx(TinyRanker(), tiny_schema(), tmp_path / "big.onnx")
    assert result.external_data and (tmp_path / "big.onnx.data").is_file()
    assert result.max_abs_diff <= 1e-4
