import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from autocompress.errors import AutocompressError
from autocompress.export import create_session, feed
from autocompress.measure import auc, onnx_size_bytes
from autocompress.measure.evaluation import onnx_logits
from autocompress.models import build
from autocompress.spec import Target
from autocompress.techniques import Policy, apply_policy
from autocompress.techniques.embedding_quantization import Config, embedding_tables, quantize_rows
from autocompress.testing import tiny_setup

# Tiny DLRM (embedding_dim 16): user_id has 2002 rows, item_id 3002 (also read by hist_item_ids);
# the other tables have < 100 rows and stay float32 under the default min_rows=1000.
TINY_ARCH = {"embedding_dim": 16, "bottom_mlp": [32, 16], "top_mlp": [64, 32]}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    setup = tiny_setup("dlrm")
    path = setup.compress(tmp_path_factory.mktemp("base"))
    return setup, path, auc(setup.dataset.test.labels, setup.test_logits(path))


def _logits(path, batch):
    session = create_session(path, Target())
    return session.run(None, feed(session, batch))[0]


def _test_auc(setup, path):
    test = setup.dataset.test
    return auc(test.labels, onnx_logits(create_session(path, Target()), test))


def _quantized_gathers(path):
    """indices input -> (bits, codes shape) of every GatherBlockQuantized node."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    out = {}
    for node in graph.node:
        if node.op_type == "GatherBlockQuantized":
            bits = next(a.i for a in node.attribute if a.name == "bits")
            out[node.input[1]] = (bits, tuple(inits[node.input[0]].dims))
    return out


def _table_bytes(path, prefix):
    graph = onnx.load(str(path)).graph
    return sum(numpy_helper.to_array(t).nbytes for t in graph.initializer if t.name.startswith(prefix))


def test_int8_rows_shrink_the_big_tables_3x_at_dim_16_and_keep_auc(baseline, tmp_path):
    setup, base, base_auc = baseline
    out = setup.compress(tmp_path, Config())
    assert _quantized_gathers(out) == {
        "user_id": (8, (2002, 16)),
        "item_id": (8, (3002, 16)),
        "hist_item_ids": (8, (3002, 16)),
    }
    for index, rows in ((0, 2002), (7, 3002)):
        table = f"embeddings.tables.{index}.weight"
        assert _table_bytes(base, table) == rows * 16 * 4
        # per row: 16 one-byte codes + a float32 scale + a uint8 zero point = 21 bytes (vs 64)
        assert _table_bytes(out, table) == rows * 21
    saved = (2002 + 3002) * (64 - 21)
    assert onnx_size_bytes(base) - onnx_size_bytes(out) >= 0.99 * saved
    assert abs(auc(setup.dataset.test.labels, setup.test_logits(out)) - base_auc) < 0.01


def test_4bit_rows_pack_two_codes_per_byte_and_keep_auc(baseline, tmp_path):
    setup, base, base_auc = baseline
    out = setup.compress(tmp_path, Config(bits=4, symmetric=True))
    assert _quantized_gathers(out)["item_id"] == (4, (3002, 8))
    # per row: 8 bytes of packed codes + a float32 scale (symmetric: no zero point) = 12 bytes (vs 64)
    assert _table_bytes(out, "embeddings.tables.7.weight") == 3002 * 12
    assert onnx_size_bytes(base) / onnx_size_bytes(out) > 2.9  # the MLP and small tables stay float
    assert abs(auc(setup.dataset.test.labels, setup.test_logits(out)) - base_auc) < 0.02


def test_wide_tables_shrink_by_close_to_32_over_bits(tmp_path):
    setup = tiny_setup("dlrm")
    model = build("dlrm", setup.dataset.schema, {"embedding_dim": 64, "bottom_mlp": [64], "top_mlp": [32]})
    ctx = setup.context(tmp_path)
    base = apply_policy(model, Policy(()), ctx).onnx_path
    table = "embeddings.tables.7.weight"
    ratios = {}
    for bits in (8, 4):
        out = apply_policy(model, Policy((Config(bits=bits, symmetric=True),)), ctx).onnx_path
        ratios[bits] = _table_bytes(base, table) / _table_bytes(out, table)
    assert ratios[8] == pytest.approx(256 / (64 + 4))  # 3.76x
    assert ratios[4] == pytest.approx(256 / (32 + 4))  # 7.1x


def test_table_bits_give_tables_their_own_width(baseline, tmp_path):
    setup, _, _ = baseline
    out = setup.compress(tmp_path, Config(bits=8, table_bits={"item_id": 4, "user_id": 8}))
    gathers = _quantized_gathers(out)
    assert gathers["item_id"] == (4, (3002, 8))
    assert gathers["hist_item_ids"] == (4, (3002, 8))  # the sequence shares item_id's table
    assert gathers["user_id"] == (8, (2002, 16))

    kept = setup.compress(tmp_path / "b", Config(bits=4, table_bits=[["user_id", 32], ["item_brand", 8]]))
    gathers = _quantized_gathers(kept)
    assert "user_id" not in gathers  # 32: stays float32
    assert gathers["item_brand"] == (8, (62, 16))  # named, so quantized although below min_rows
    assert gathers["item_id"] == (4, (3002, 8))


def test_only_the_gathered_rows_are_dequantized(baseline, tmp_path):
    setup, base, _ = baseline
    out = setup.compress(tmp_path, Config(bits=4))
    graph = onnx.load(str(out)).graph
    prefixes = ("embeddings.tables.0.weight_", "embeddings.tables.7.weight_")  # codes, scales, zero points
    readers = [n for n in graph.node if any(name.startswith(prefixes) for name in n.input)]
    assert len(readers) == 3  # user_id, item_id, hist_item_ids
    for node in readers:
        # the ids of the request are looked up in the codes; no node reads (dequantizes) a table whole
        assert node.op_type == "GatherBlockQuantized"
        assert node.input[0].endswith("_q4") and node.input[1] in {"user_id", "item_id", "hist_item_ids"}
    assert not {"embeddings.tables.0.weight", "embeddings.tables.7.weight"} & {
        t.name for t in graph.initializer
    }

    # What the op returns: exactly the dequantized rows of the ids asked for, [batch, 16].
    (node,) = [n for n in readers if n.input[1] == "item_id"]
    batch = setup.context(tmp_path).calibration_batch(32)
    rows = _probe(out, node.output[0], batch, tmp_path)
    weight = numpy_helper.to_array(_initializer(base, "embeddings.tables.7.weight"))
    codes, scales, zero_points = quantize_rows(weight, 4, 16, symmetric=False)
    unpacked = np.stack([codes & 15, codes >> 4], axis=-1).reshape(len(weight), -1).astype(np.float32)
    restored = (unpacked - (zero_points & 15)) * scales
    assert rows.shape == (32, 16)
    np.testing.assert_allclose(rows, restored[batch["item_id"]], rtol=1e-6, atol=1e-6)
    assert np.abs(rows - weight[batch["item_id"]]).max() <= scales.max() / 2 + 1e-6


def _initializer(path, name):
    return next(t for t in onnx.load(str(path)).graph.initializer if t.name == name)


def _probe(path, tensor, batch, tmp_path):
    """Run the model with one inner tensor exposed as an extra output and return it."""
    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    probe = tmp_path / "probe.onnx"
    onnx.save_model(model, str(probe))
    session = create_session(probe, Target())
    return session.run([tensor], feed(session, batch))[0]


def test_quantize_rows_keeps_padding_rows_exact_and_errors_within_half_a_step():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(50, 7)).astype(np.float32)
    weight[0] = 0.0  # the padding row
    for bits in (8, 4):
        for symmetric in (False, True):
            codes, scales, zero_points = quantize_rows(weight, bits, 16, symmetric)
            assert codes.shape == (50, 7 if bits == 8 else 4)
            assert scales.shape == (50, 1) and scales.dtype == np.float32
            if bits == 4:
                codes = np.stack([codes & 15, codes >> 4], axis=-1).reshape(50, -1)[:, :7]
            if symmetric:
                assert zero_points is None
                zero = np.float32(1 << (bits - 1))
            else:
                zero = (zero_points & 15 if bits == 4 else zero_points).astype(np.float32)
            restored = (codes.astype(np.float32) - zero) * scales
            assert np.all(restored[0] == 0.0)
            assert np.all(np.abs(restored - weight) <= scales / 2 + 1e-6)


def test_odd_width_4bit_tables_are_trimmed_after_the_gather(tmp_path):
    setup = tiny_setup("dlrm")
    model = build("dlrm", setup.dataset.schema, {**TINY_ARCH, "embedding_dims": {"item_id": 7}})
    ctx = setup.context(tmp_path)
    base = apply_policy(model, Policy(()), ctx).onnx_path
    out = apply_policy(model, Policy((Config(bits=4, min_rows=0),)), ctx).onnx_path
    graph = onnx.load(str(out)).graph
    assert _quantized_gathers(out)["item_id"] == (4, (3002, 4))
    assert [n.op_type for n in graph.node].count("Slice") == 2  # item_id and hist_item_ids
    batch = ctx.calibration_batch(64)
    logits = [_logits(path, batch) for path in (base, out)]
    assert logits[1].shape == (64,)
    assert np.abs(logits[0] - logits[1]).max() < 0.05


def test_tables_are_named_after_their_features(baseline):
    setup, base, _ = baseline
    tables = embedding_tables(onnx.load(str(base)).graph, setup.dataset.schema)
    assert tables["item_id"] == "embeddings.tables.7.weight"
    assert set(tables) == {f.name for f in setup.dataset.schema.sparse}


def test_deepfm_first_order_tables_are_named_by_module_and_stay_float(tmp_path):
    from autocompress.testing.fixtures import TINY_ARCHS

    setup = tiny_setup("dlrm")
    model = build("deepfm", setup.dataset.schema, TINY_ARCHS["deepfm"])
    ctx = setup.context(tmp_path)
    base = apply_policy(model, Policy(()), ctx).onnx_path
    tables = embedding_tables(onnx.load(str(base)).graph, setup.dataset.schema)
    assert tables["first_order.item_id"] == "first_order.tables.7.weight"
    assert tables["item_id"] == "embeddings.tables.7.weight"
    # one value per row: codes + scale + zero point (6 bytes) would outweigh the float (4 bytes)
    out = apply_policy(model, Policy((Config(min_rows=0, table_bits={"first_order.item_id": 8}),)), ctx)
    graph = onnx.load(str(out.onnx_path)).graph
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather"}
    assert "first_order.tables.7.weight" in gathered
    assert "embeddings.tables.7.weight_q8" in {
        n.input[0] for n in graph.node if n.op_type == "GatherBlockQuantized"
    }


def test_a_hashed_table_keeps_its_name_for_its_own_bits(tmp_path):
    from autocompress.techniques.frequency_hashing import Config as Hashing

    setup = tiny_setup("dlrm")
    hashing = Hashing(min_count=10, hash_buckets=64, tables=("item_id",), finetune_epochs=0)
    policy = Policy((hashing, Config(bits=8, table_bits={"item_id": 4})))
    out = apply_policy(setup.model(), policy, setup.context(tmp_path))
    graph = onnx.load(str(out.onnx_path)).graph
    # the hashed table sits behind its remap (``tables.7.table``); table_bits still finds it by name
    assert {n.input[0] for n in graph.node if n.op_type == "GatherBlockQuantized"} == {
        "embeddings.tables.7.table.weight_q4",
        "embeddings.tables.0.weight_q8",
    }


def test_table_bits_round_trip_as_pairs():
    config = Config(table_bits={"item_id": 4, "user_id": 32})
    assert config.table_bits == (("item_id", 4), ("user_id", 32))
    assert Config.from_dict(config.to_dict()) == config
    assert Config.from_dict({"table_bits": [["item_id", 4], ["user_id", 32]]}) == config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bits": 3}, "embedding_quantization.bits: 3 not allowed; allowed: [4, 8]"),
        ({"bits": True}, "embedding_quantization.bits: True not allowed"),
        ({"table_bits": {"item_id": 2}}, "embedding_quantization.table_bits: 2 not allowed for 'item_id'"),
        ({"table_bits": [["item_id", 4], ["item_id", 8]]}, "table 'item_id' is given twice"),
        ({"table_bits": [["item_id"]]}, "embedding_quantization.table_bits: expected {table: bits}"),
        (
            {"block_size": 8},
            "embedding_quantization.block_size: must be 0 (whole row) or a power of two >= 16",
        ),
    ],
)
def test_bad_configs_are_refused(data, message):
    with pytest.raises(AutocompressError) as error:
        Config.from_dict(data)
    assert message in str(error.value)


def test_unknown_tables_are_refused_with_the_known_names(baseline, tmp_path):
    setup, _, _ = baseline
    with pytest.raises(AutocompressError) as error:
        setup.compress(tmp_path, Config(table_bits={"itemid": 4}))
    assert "embedding_quantization.table_bits: unknown name(s) ['itemid']; the model has [" in str(
        error.value
    )
    assert "'item_id'" in str(error.value)
