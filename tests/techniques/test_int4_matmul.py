import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autocompress.errors import AutocompressError
from autocompress.export import create_session, feed
from autocompress.measure import auc, onnx_size_bytes
from autocompress.spec import Target
from autocompress.techniques import Policy, apply_policy
from autocompress.techniques import embedding_quantization as eq
from autocompress.techniques.int4_matmul import Config, apply, packed_bytes
from autocompress.testing import tiny_setup

# Tiny DLRM Gemms as (K inputs, N outputs). bottom.0 (K=2) would grow in 4-bit blocks and stays float.
QUANTIZED = {"/bottom/bottom.2/Gemm": (32, 16), "/top/top.0/Gemm": (107, 64), "/top/top.2/Gemm": (64, 32)}
QUANTIZED["/top/top.4/Gemm"] = (32, 1)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    setup = tiny_setup("dlrm")
    path = setup.compress(tmp_path_factory.mktemp("base"))
    return setup, path, setup.test_logits(path)


def _nbits_nodes(graph):
    return {n.name: n for n in graph.node if n.op_type == "MatMulNBits"}


def test_dense_layers_run_on_4bit_blocks_and_keep_auc(baseline, tmp_path):
    setup, base, base_logits = baseline
    out = setup.compress(tmp_path, Config(block_size=32))
    graph = onnx.load(str(out)).graph
    nodes = _nbits_nodes(graph)
    assert set(nodes) == {f"{name}_Q4" for name in QUANTIZED}
    ops = {n.name: n.op_type for n in graph.node}
    assert ops["/bottom/bottom.0/Gemm"] == "Gemm" and ops["/MatMul"] == "MatMul"
    assert all(ops[f"{name}_bias"] == "Add" for name in QUANTIZED)  # each Gemm's bias, after its MatMul
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for name, (k, n) in QUANTIZED.items():
        node = nodes[f"{name}_Q4"]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert (attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]) == (k, n, 4, 32)
        blocks = -(-k // 32)
        assert inits[node.input[1]].shape == (n, blocks, 16)  # 32 values in 16 bytes per block
        stored = sum(inits[i].nbytes for i in node.input[1:4])  # codes, scales, zero points
        assert stored == packed_bytes(k, n, 32, symmetric=False) < 4 * k * n
    saved = sum(4 * k * n - packed_bytes(k, n, 32, False) for k, n in QUANTIZED.values())
    assert onnx_size_bytes(base) - onnx_size_bytes(out) > 0.6 * saved  # less the MatMul/Add nodes
    logits = setup.test_logits(out)
    labels = setup.dataset.test.labels
    assert abs(auc(labels, logits) - auc(labels, base_logits)) < 0.02
    assert np.abs(logits - base_logits).mean() < 0.05


def test_symmetric_small_blocks_drop_zero_points_and_compute_in_int8(baseline, tmp_path):
    setup, _, base_logits = baseline
    out = setup.compress(tmp_path, Config(block_size=16, symmetric=True, accuracy_level=4))
    graph = onnx.load(str(out)).graph
    node = _nbits_nodes(graph)["/top/top.0/Gemm_Q4"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["block_size"] == 16 and attrs["accuracy_level"] == 4
    assert len(node.input) == 3  # A, codes, scales: no zero points
    inits = {t.name: t for t in graph.initializer}
    assert list(inits[node.input[1]].dims) == [64, 7, 8]  # ceil(107 / 16) blocks of 8 bytes
    labels = setup.dataset.test.labels
    assert abs(auc(labels, setup.test_logits(out)) - auc(labels, base_logits)) < 0.02


def test_excluded_layers_stay_float(baseline, tmp_path):
    setup, _, _ = baseline
    out = setup.compress(tmp_path, Config(exclude_nodes=("/top/top.4/Gemm",)))
    graph = onnx.load(str(out)).graph
    assert "/top/top.4/Gemm_Q4" not in _nbits_nodes(graph)
    assert {n.name: n.op_type for n in graph.node}["/top/top.4/Gemm"] == "Gemm"
    assert "/top/top.0/Gemm_Q4" in _nbits_nodes(graph)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_alpha_beta_and_transposed_weights_fold_into_matmul_add(tmp_path, trans_b):
    rng = np.random.default_rng(0)
    # Integers in [-7, 8] with both ends in every block of 16 inputs: 4-bit asymmetric blocks hold
    # them exactly (scale 1, zero point 7), so any error left would come from the Gemm rewrite.
    weight = rng.integers(-7, 9, size=(64, 32)).astype(np.float32)  # [K, N]
    weight[0::16], weight[1::16] = -7.0, 8.0
    bias = rng.normal(size=(32,)).astype(np.float32)
    stored = weight.T.copy() if trans_b else weight
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="gemm", alpha=0.5, beta=2.0, transB=trans_b)
    graph = helper.make_graph(
        [gemm],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 32])],
        [numpy_helper.from_array(stored, "w"), numpy_helper.from_array(bias, "b")],
    )
    source = tmp_path / "gemm.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    out = apply(source, Config(block_size=16), tiny_setup("dlrm").context(tmp_path))
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["MatMulNBits", "Add"]
    x = rng.normal(size=(8, 64)).astype(np.float32)
    (y,) = create_session(out, Target()).run(None, {"x": x})
    np.testing.assert_allclose(y, 0.5 * x @ weight + 2.0 * bias, rtol=1e-4, atol=1e-4)


def test_composes_with_embedding_quantization(baseline, tmp_path):
    setup, base, base_logits = baseline
    policy = Policy((eq.Config(bits=4), Config()))
    result = apply_policy(setup.model(), policy, setup.context(tmp_path))
    assert result.applied == ["embedding_quantization", "int4_matmul"]
    ops = [n.op_type for n in onnx.load(str(result.onnx_path)).graph.node]
    assert ops.count("GatherBlockQuantized") == 3 and ops.count("MatMulNBits") == 4
    assert onnx_size_bytes(result.onnx_path) < 0.4 * onnx_size_bytes(base)
    session = create_session(result.onnx_path, Target())
    out = session.run(None, feed(session, setup.context(tmp_path).calibration_batch(16)))[0]
    assert out.shape == (16,)
    labels = setup.dataset.test.labels
    assert abs(auc(labels, setup.test_logits(result.onnx_path)) - auc(labels, base_logits)) < 0.03


def test_loading_the_quantizer_leaves_the_process_logging_alone():
    # ONNX Runtime's quantizer module calls logging.basicConfig(level=INFO) when imported.
    code = (
        "import logging; from autocompress.techniques.int4_matmul import _quantizer_class; "
        "_quantizer_class(); root = logging.getLogger(); "
        "assert (root.handlers, root.level) == ([], logging.WARNING), (root.handlers, root.level)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"block_size": 48}, "int4_matmul.block_size: must be a power of two >= 16, got 48"),
        ({"block_size": 8}, "int4_matmul.block_size: must be a power of two >= 16, got 8"),
        ({"accuracy_level": 7}, "int4_matmul.accuracy_level: 7 not allowed; allowed: [0, 1, 2, 3, 4]"),
    ],
)
def test_bad_configs_are_refused(data, message):
    with pytest.raises(AutocompressError) as error:
        Config.from_dict(data)
    assert message in str(error.value)


def test_unknown_nodes_are_refused(baseline, tmp_path):
    setup, _, _ = baseline
    with pytest.raises(
        AutocompressError, match=r"int4_matmul\.exclude_nodes: unknown name\(s\) \['top\.4'\]"
    ):
        setup.compress(tmp_path, Config(exclude_nodes=("top.4",)))
