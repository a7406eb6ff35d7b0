import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from autocompress.errors import AutocompressError
from autocompress.measure import auc, onnx_size_bytes
from autocompress.techniques.static_int8 import Config
from autocompress.testing import tiny_setup

# The tiny DLRM's dense layers: five Gemms (bottom 2->32->16, top 107->64->32->1) and one MatMul of
# two activations (the pairwise dot-product interaction).
GEMMS = [
    "/bottom/bottom.0/Gemm",
    "/bottom/bottom.2/Gemm",
    "/top/top.0/Gemm",
    "/top/top.2/Gemm",
    "/top/top.4/Gemm",
]
GEMM_WEIGHTS = 2 * 32 + 32 * 16 + 107 * 64 + 64 * 32 + 32 * 1


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    setup = tiny_setup("dlrm")
    path = setup.compress(tmp_path_factory.mktemp("base"))
    return setup, path, auc(setup.dataset.test.labels, setup.test_logits(path))


def _producers(graph):
    return {output: node for node in graph.node for output in node.output}


def _dequantized_inputs(graph, name):
    """Which inputs of node ``name`` come out of a DequantizeLinear."""
    producers = _producers(graph)
    (node,) = [n for n in graph.node if n.name == name]
    return [i in producers and producers[i].op_type == "DequantizeLinear" for i in node.input]


def _activation_scale(graph, tensor):
    """The scale of the QuantizeLinear that quantizes activation ``tensor``."""
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    (node,) = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
    return float(inits[node.input[1]])


def test_inserts_qdq_pairs_around_the_dense_layers_and_keeps_auc(baseline, tmp_path):
    setup, base, base_auc = baseline
    out = setup.compress(tmp_path, Config())
    graph = onnx.load(str(out)).graph
    for gemm in GEMMS:
        assert _dequantized_inputs(graph, gemm) == [True, True, True]  # activation, int8 weight, int32 bias
    assert _dequantized_inputs(graph, "/MatMul") == [False, False]  # activation x activation stays float
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert sum(int(np.prod(t.dims)) for t in int8) == GEMM_WEIGHTS
    # each weight: 4 bytes -> 1 byte (28.5 KB saved); the QDQ nodes and shape annotations take back
    # ~10 KB, a fixed cost that is noise on a real model
    saved = onnx_size_bytes(base) - onnx_size_bytes(out)
    assert 0.5 * 3 * GEMM_WEIGHTS < saved < 3 * GEMM_WEIGHTS
    assert abs(auc(setup.dataset.test.labels, setup.test_logits(out)) - base_auc) < 0.01


@pytest.mark.parametrize("rows", [256, 2048])
def test_activation_ranges_come_from_the_calibration_rows(baseline, tmp_path, rows):
    setup, _, _ = baseline
    out = setup.compress(tmp_path, Config(calibrate_method="MinMax", calibration_rows=rows))
    graph = onnx.load(str(out)).graph
    # bottom.0 reads the dense features stacked: its uint8 range is theirs over the calibration rows
    batch = setup.context(tmp_path).calibration_batch(rows)
    dense = np.concatenate([batch["item_price"], batch["hour_of_day"]])
    expected = (max(dense.max(), 0.0) - min(dense.min(), 0.0)) / 255
    assert _activation_scale(graph, "/Concat_output_0") == pytest.approx(expected, rel=1e-5)


def test_entropy_calibration_clips_ranges_that_min_max_keeps_whole(baseline, tmp_path):
    setup, _, _ = baseline
    graphs = {
        method: onnx.load(str(setup.compress(tmp_path / method, Config(calibrate_method=method)))).graph
        for method in ("MinMax", "Entropy")
    }
    tensors = [n.input[0] for n in graphs["MinMax"].node if n.op_type == "QuantizeLinear"]
    scales = {
        m: [_activation_scale(g, t) for t in tensors if not t.endswith(".weight")] for m, g in graphs.items()
    }
    narrower = [e < mm * 0.99 for e, mm in zip(scales["Entropy"], scales["MinMax"], strict=True)]
    assert any(narrower)
    assert all(e <= mm * 1.0001 for e, mm in zip(scales["Entropy"], scales["MinMax"], strict=True))


def test_per_channel_weights_get_one_scale_per_output_and_gather_quantizes_tables(baseline, tmp_path):
    setup, base, base_auc = baseline
    out = setup.compress(tmp_path, Config(per_channel=True, op_types=("MatMul", "Gemm", "Gather")))
    graph = onnx.load(str(out)).graph
    inits = {t.name: t for t in graph.initializer}
    producers = _producers(graph)
    (top0,) = [n for n in graph.node if n.name == "/top/top.0/Gemm"]
    weight_dq = producers[top0.input[1]]
    assert list(inits[weight_dq.input[1]].dims) == [64]  # one scale per output channel
    tables = [t for t in graph.initializer if t.name.startswith("embeddings.tables.") and len(t.dims) == 2]
    assert len(tables) == 11  # Gather's table shares the activation type (uint8 here), one scale per table
    assert all(t.data_type == onnx.TensorProto.UINT8 for t in tables)
    assert onnx_size_bytes(out) < 0.35 * onnx_size_bytes(base)
    assert abs(auc(setup.dataset.test.labels, setup.test_logits(out)) - base_auc) < 0.01


def test_excluded_nodes_stay_float(baseline, tmp_path):
    setup, _, _ = baseline
    out = setup.compress(tmp_path, Config(exclude_nodes=("/top/top.4/Gemm",)))
    graph = onnx.load(str(out)).graph
    assert _dequantized_inputs(graph, "/top/top.4/Gemm") == [False, False, False]
    assert _dequantized_inputs(graph, "/top/top.2/Gemm") == [True, True, True]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"calibrate_method": "KL"}, "static_int8.calibrate_method: 'KL' not allowed; allowed: ['MinMax',"),
        ({"calibration_rows": 0}, "static_int8.calibration_rows: must be an integer >= 1, got 0"),
        ({"activation_type": "int16"}, "static_int8.activation_type: 'int16' not allowed"),
        ({"op_types": ["Gemm", "Conv"]}, "static_int8.op_types: ['Conv'] not allowed"),
    ],
)
def test_bad_configs_are_refused(data, message):
    with pytest.raises(AutocompressError) as error:
        Config.from_dict(data)
    assert message in str(error.value)


def test_unknown_nodes_are_refused(baseline, tmp_path):
    setup, _, _ = baseline
    with pytest.raises(
        AutocompressError, match=r"static_int8\.exclude_nodes: unknown name\(s\) \['/top/Gemm'\]"
    ):
        setup.compress(tmp_path, Config(exclude_nodes=("/top/Gemm",)))
