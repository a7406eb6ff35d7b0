import numpy as np
import onnx
import pytest

from autocompress.errors import AutocompressError
from autocompress.export import create_session, feed
from autocompress.measure import auc, onnx_size_bytes
from autocompress.spec import Target
from autocompress.techniques.fp16 import Config
from autocompress.testing import tiny_setup

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    setup = tiny_setup("dlrm")
    path = setup.compress(tmp_path_factory.mktemp("base"))
    return setup, path, setup.test_logits(path)


def _elem_types(values):
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_weights_halve_io_types_stay_and_the_cpu_provider_runs_it(baseline, tmp_path):
    setup, base, base_logits = baseline
    out = setup.compress(tmp_path, Config())
    graph = onnx.load(str(out)).graph
    types = {t.name: t.data_type for t in graph.initializer}
    assert types["embeddings.tables.7.weight"] == FLOAT16 and types["top.0.weight"] == FLOAT16
    assert [name for name, t in types.items() if t == FLOAT] == []
    assert {n: t for n, t in _elem_types(graph.input).items() if t == FLOAT} == {
        "item_price": FLOAT,
        "hour_of_day": FLOAT,
    }
    assert _elem_types(graph.output) == {"logit": FLOAT}
    assert onnx_size_bytes(out) / onnx_size_bytes(base) == pytest.approx(0.5, abs=0.03)
    logits = setup.test_logits(out)  # on the CPU provider: every node has a float16 CPU kernel
    labels = setup.dataset.test.labels
    assert abs(auc(labels, logits) - auc(labels, base_logits)) < 0.002
    assert np.abs(logits - base_logits).max() < 0.02


def test_blocked_op_types_and_nodes_stay_float32(baseline, tmp_path):
    setup, _, _ = baseline
    config = Config(
        op_block_list=("ReduceSum", "ReduceMean", "Softmax"), node_block_list=("/top/top.4/Gemm",)
    )
    out = setup.compress(tmp_path, config)
    graph = onnx.load(str(out)).graph
    producers = {o: n for n in graph.node for o in n.output}
    blocked = [n for n in graph.node if n.op_type == "ReduceSum" or n.name == "/top/top.4/Gemm"]
    assert len(blocked) == 3  # the masked mean pooling of two sequences: 2 ReduceSums (the counts)
    for node in blocked:
        cast = producers[node.input[0]]  # fed float32 by a Cast back from the float16 graph
        assert cast.op_type == "Cast" and next(a.i for a in cast.attribute if a.name == "to") == FLOAT
    types = {t.name: t.data_type for t in graph.initializer}
    assert types["top.4.weight"] == FLOAT and types["top.2.weight"] == FLOAT16


def test_io_types_can_go_float16_too(baseline, tmp_path):
    setup, _, _ = baseline
    out = setup.compress(tmp_path, Config(keep_io_types=False))
    graph = onnx.load(str(out)).graph
    assert _elem_types(graph.input)["item_price"] == FLOAT16
    assert _elem_types(graph.output) == {"logit": FLOAT16}
    session = create_session(out, Target())
    logits = session.run(None, feed(session, setup.context(tmp_path).calibration_batch(8)))[0]
    assert logits.dtype == np.float16 and logits.shape == (8,)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"op_block_list": ["ReduceSum", ""]},
            "fp16.op_block_list: operator types must be non-empty strings",
        ),
        ({"keep_io_types": 1}, "fp16.keep_io_types: must be true or false, got 1"),
    ],
)
def test_bad_configs_are_refused(data, message):
    with pytest.raises(AutocompressError) as error:
        Config.from_dict(data)
    assert message in str(error.value)


def test_unknown_nodes_are_refused(baseline, tmp_path):
    setup, _, _ = baseline
    with pytest.raises(AutocompressError, match=r"fp16\.node_block_list: unknown name\(s\) \['top\.4'\]"):
        setup.compress(tmp_path, Config(node_block_list=("top.4",)))
