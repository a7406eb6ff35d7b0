from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autocompress.errors import AutocompressError
from autocompress.export import export_onnx
from autocompress.measure import (
    macs_per_example,
    onnx_parameter_count,
    onnx_size_bytes,
    parameter_count,
    torch_size_bytes,
)
from tests.export.tiny_ranker import EMBEDDING_DIM, HIDDEN, TinyRanker, linear_macs, tiny_schema


@pytest.fixture(scope="module")
def ranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("size") / "ranker.onnx"
    export_onnx(TinyRanker(), tiny_schema(), path)
    return path


def _matmul_graph(path: Path, k: int, hidden: int, out: int) -> None:
    """x[batch, k] @ w1[k, hidden] -> Relu -> @ w2[hidden, out], written with onnx.helper."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((k, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, out)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out])],
        [w1, w2],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_parameter_counts_of_torch_and_onnx_agree(ranker_path: Path) -> None:
    model = TinyRanker()
    embeddings = (50 + 10 + 20) * EMBEDDING_DIM
    linears = linear_macs() + HIDDEN[0] + HIDDEN[1] + 1  # weights + biases
    assert parameter_count(model) == embeddings + linears == 769
    assert onnx_parameter_count(ranker_path) == parameter_count(model)


def test_torch_size_counts_parameters_and_buffers() -> None:
    plain = TinyRanker()
    assert torch_size_bytes(plain) == 4 * parameter_count(plain)
    normed = TinyRanker(batch_norm=True)
    width = normed.input_dim
    # BatchNorm1d: weight + bias are parameters; running mean/var (float32) + step count (int64) buffers
    assert torch_size_bytes(normed) == 4 * parameter_count(normed) + 2 * 4 * width + 8
    assert parameter_count(normed) == parameter_count(plain) + 2 * width


def test_onnx_size_is_the_file_size(ranker_path: Path) -> None:
    assert onnx_size_bytes(ranker_path) == ranker_path.stat().st_size


def test_onnx_size_includes_external_data(tmp_path: Path) -> None:
    result = export_onnx(TinyRanker(), tiny_schema(), tmp_path / "ranker.onnx", external_data=True)
    data = tmp_path / "ranker.onnx.data"
    size = onnx_size_bytes(result.path)
    assert size == result.path.stat().st_size + data.stat().st_size
    assert data.stat().st_size >= 4 * 50 * EMBEDDING_DIM  # the item table at least
    assert onnx_parameter_count(result.path) == parameter_count(TinyRanker())

    data.unlink()
    with pytest.raises(AutocompressError, match=r"references external data 'ranker.onnx.data'.*missing"):
        onnx_size_bytes(result.path)


def test_macs_of_the_tiny_ranker_are_its_linear_layers(ranker_path: Path) -> None:
    assert macs_per_example(ranker_path) == linear_macs() == 18 * 16 + 16 * 8 + 8 * 1


def test_macs_survive_dynamic_int8_quantization(ranker_path: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = tmp_path / "ranker.int8.onnx"
    quantize_dynamic(str(ranker_path), str(quantized), weight_type=QuantType.QInt8)
    ops = {n.op_type for n in onnx.load(str(quantized)).graph.node}
    assert "MatMulInteger" in ops and "Gemm" not in ops
    assert macs_per_example(quantized) == linear_macs()


def test_macs_of_matmul_and_of_its_int4_form(tmp_path: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    path = tmp_path / "mlp.onnx"
    _matmul_graph(path, k=32, hidden=32, out=16)
    assert macs_per_example(path) == 32 * 32 + 32 * 16

    quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), block_size=16, is_symmetric=True)
    quantizer.process()
    int4 = tmp_path / "mlp.int4.onnx"
    onnx.save(quantizer.model.model, str(int4))
    assert [n.op_type for n in onnx.load(str(int4)).graph.node] == ["MatMulNBits", "Relu", "MatMulNBits"]
    assert macs_per_example(int4) == 32 * 32 + 32 * 16


def test_macs_where_shape_inference_fails_come_from_a_run(tmp_path: Path) -> None:
    # 4-bit tables (GatherBlockQuantized) in a DLRM trip ONNX Runtime's symbolic shape inference
    # (an assertion in its Concat rule); the count falls back to shapes from one real run
    from autocompress.measure.size import _inferred_shapes
    from autocompress.techniques.embedding_quantization import Config as EmbeddingQuantization
    from autocompress.testing import tiny_setup

    setup = tiny_setup("dlrm")
    plain = setup.compress(tmp_path / "plain")
    four_bit = setup.compress(tmp_path / "4bit", EmbeddingQuantization(bits=4, min_rows=10))
    with pytest.raises(AutocompressError, match="shape inference failed"):
        _inferred_shapes(four_bit)
    assert macs_per_example(four_bit) == macs_per_example(plain) > 0  # lookups count 0


def test_macs_of_plain_and_grouped_convolutions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w1"], ["h"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["h", "w2"], ["y"], pads=[1, 1, 1, 1], group=2),
        ],
        "convs",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [w1, w2],
    )
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    # each of 4 x 8 x 8 outputs sums (input channels per group) x 3 x 3 products
    assert macs_per_example(path) == 4 * 8 * 8 * 3 * 3 * 3 + 4 * 8 * 8 * 2 * 3 * 3


def test_missing_or_broken_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(AutocompressError, match=r"nothing\.onnx.*does not exist"):
        onnx_size_bytes(tmp_path / "nothing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model\xff" * 10)
    with pytest.raises(AutocompressError, match=r"junk\.onnx.*not a readable ONNX model"):
        macs_per_example(junk)
