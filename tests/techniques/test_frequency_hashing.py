import numpy as np
import pytest
import torch

from autocompress.errors import AutocompressError
from autocompress.measure import onnx_size_bytes
from autocompress.techniques import Policy, apply_policy
from autocompress.techniques.frequency_hashing import (
    Config,
    HashedEmbedding,
    apply,
    hashed_rows,
    id_counts,
    remap_bytes_per_id,
)
from autocompress.testing import check_keeps_auc, converged_setup, table_zeroed, tiny_setup

# Each hashed lookup adds a Gather on the remap to the graph (and a Cast and an Add for an int16 one).
GRAPH_OVERHEAD_BYTES = 2_000
# ids seen fewer than 10 times share 64 rows, then one epoch of the production fine-tuning
HASHED = Config(min_count=10, hash_buckets=64, finetune_epochs=1)


def _saved_bytes(setup, dim, config):
    """Bytes saved on the tables above min_vocab: fewer float rows, less a remap entry per id."""
    saved = 0
    for feature in setup.dataset.schema.sparse:
        if feature.vocab_size > config.min_vocab:
            counts = id_counts(setup.dataset.train, setup.dataset.schema, feature.name)
            _, rows = hashed_rows(counts, config.min_count, config.hash_buckets)
            saved += 4 * (feature.vocab_size - rows) * dim - remap_bytes_per_id(rows) * feature.vocab_size
    return saved


def test_hashed_rows_keep_frequent_ids_and_bucket_rare_ones():
    counts = np.array([0, 0, 5, 1, 7, 0, 2])
    row_of, rows = hashed_rows(counts, min_count=3, hash_buckets=2)
    # pad 0, oov 1, frequent ids 2 and 4 -> rows 2, 3; rare ids 3, 5, 6 -> 4 + id % 2
    assert row_of.tolist() == [0, 1, 2, 5, 3, 5, 4]
    assert row_of.dtype == np.int32 and rows == 6


def test_counts_include_sequences_sharing_the_table():
    dataset = tiny_setup("dlrm").dataset
    counts = id_counts(dataset.train, dataset.schema, "item_id")
    items, history = dataset.train.features["item_id"], dataset.train.features["hist_item_ids"]
    expected = np.bincount(np.concatenate([items.ravel(), history.ravel()]), minlength=3002)
    expected[0] = 0
    assert np.array_equal(counts, expected)
    assert counts.sum() > len(items)  # the history really adds occurrences


def test_frequent_ids_keep_their_trained_rows(tmp_path):
    setup = tiny_setup("dlrm")
    config = Config(min_count=3, hash_buckets=64, tables=("item_id",), finetune_epochs=0)
    model = apply(setup.model(), config, setup.context(tmp_path))
    table = model.embeddings.table("item_id")
    assert isinstance(table, HashedEmbedding)
    trained = setup.trained.embeddings.table("item_id").weight
    counts = id_counts(setup.dataset.train, setup.dataset.schema, "item_id")
    frequent = torch.from_numpy(np.flatnonzero(counts >= 3))
    rare = torch.from_numpy(np.flatnonzero(counts < 3)[1:])  # without the padding id
    assert 100 < len(frequent) < 2000
    with torch.no_grad():
        assert torch.equal(table(frequent), trained[frequent])
        assert torch.equal(table(torch.tensor([1])), trained[[1]])  # out-of-vocabulary keeps its row
        assert torch.all(table(torch.tensor([0])) == 0)  # padding stays zero
        # rare ids in one bucket read one shared row: their weighted mean
        bucket = rare[rare % 64 == 5]
        shared = table(bucket)
        assert torch.equal(shared, shared[:1].expand_as(shared))
        weights = torch.from_numpy(counts[bucket.numpy()] + 1.0)
        mean = (trained[bucket].double() * weights[:, None]).sum(0) / weights.sum()
        assert torch.allclose(shared[0].double(), mean, atol=1e-6)
    assert table.table.weight.shape == (2 + len(frequent) + 64, 16)
    assert table.row_of.dtype == torch.int16  # a few thousand rows: 2 bytes an id


def test_the_remap_is_int16_up_to_65536_rows_and_int32_beyond():
    rng = np.random.default_rng(0)
    for rows, dtype in [(65_536, torch.int16), (65_537, torch.int32)]:
        row_of = np.concatenate([[0, 1, rows - 1, 32_767, 32_768], rng.integers(0, rows, 995)])
        table = HashedEmbedding(row_of, torch.randn(rows, 4))
        assert table.row_of.dtype == dtype and remap_bytes_per_id(rows) == dtype.itemsize
        ids = torch.arange(len(row_of)).reshape(10, 100)
        with torch.no_grad():
            assert torch.equal(table(ids), table.table.weight[torch.from_numpy(row_of)[ids]])


def test_hashes_big_tables_by_the_expected_bytes(tmp_path):
    setup = tiny_setup("dlrm")
    ctx = setup.context(tmp_path)
    config = Config(min_count=10, hash_buckets=64, finetune_epochs=0)
    baseline = apply_policy(setup.model(), Policy(()), ctx)
    result = apply_policy(setup.model(), Policy((config,)), ctx)
    assert sum(isinstance(t, HashedEmbedding) for t in result.model.embeddings.tables) == 2

    saved = _saved_bytes(setup, 16, config)
    bytes_saved = onnx_size_bytes(baseline.onnx_path) - onnx_size_bytes(result.onnx_path)
    assert 0 < saved - GRAPH_OVERHEAD_BYTES < bytes_saved <= saved


@pytest.mark.slow
def test_hashed_model_keeps_the_auc_of_the_converged_model(tmp_path):
    # measured: +0.0003 +- 0.0004 against the baseline given the same fine-tuning (limit -0.01)
    check_keeps_auc(converged_setup("dlrm"), tmp_path, HASHED)


@pytest.mark.slow
def test_the_auc_check_fails_on_a_hashing_that_zeroes_a_table(tmp_path):
    setup = converged_setup("dlrm")
    with pytest.raises(AssertionError, match=r"loses more than 0\.01 AUC"):
        check_keeps_auc(setup, tmp_path, HASHED, sabotage=table_zeroed(setup, "item_category"))


def test_history_sequence_reads_the_hashed_item_table(tmp_path):
    setup = tiny_setup("din")
    ctx = setup.context(tmp_path)
    baseline = apply_policy(setup.model(), Policy(()), ctx)
    result = apply_policy(setup.model(), Policy((Config(finetune_epochs=0),)), ctx)
    embeddings = result.model.embeddings
    assert isinstance(embeddings.table("item_id"), HashedEmbedding)
    assert embeddings.table("hist_item_ids") is embeddings.table("item_id")
    saved = _saved_bytes(setup, 8, Config())  # DIN reads embeddings 8 wide
    bytes_saved = onnx_size_bytes(baseline.onnx_path) - onnx_size_bytes(result.onnx_path)
    assert 0 < saved - GRAPH_OVERHEAD_BYTES < bytes_saved <= saved
    keys, mask = embeddings.sequence({"hist_item_ids": torch.zeros(2, 5, dtype=torch.int64)}, "hist_item_ids")
    assert torch.all(keys == 0) and torch.all(mask == 0)


def test_two_tower_shrinks(tmp_path):
    setup = tiny_setup("two_tower")
    ctx = setup.context(tmp_path)
    config = Config(min_count=5, hash_buckets=32, finetune_epochs=0)
    baseline = apply_policy(setup.model(), Policy(()), ctx)
    result = apply_policy(setup.model(), Policy((config,)), ctx)
    saved = _saved_bytes(setup, 16, config)
    bytes_saved = onnx_size_bytes(baseline.onnx_path) - onnx_size_bytes(result.onnx_path)
    assert 0 < saved - GRAPH_OVERHEAD_BYTES < bytes_saved <= saved


def test_a_table_named_in_table_buckets_gets_its_own_buckets(tmp_path):
    setup = tiny_setup("dlrm")
    config = Config(min_count=10, hash_buckets=64, table_buckets={"item_id": 16}, finetune_epochs=0)
    model = apply(setup.model(), config, setup.context(tmp_path))
    tables = dict(zip(model.embeddings.table_names, model.embeddings.tables, strict=True))
    dataset = setup.dataset
    for name, buckets in {"user_id": 64, "item_id": 16}.items():
        _, rows = hashed_rows(id_counts(dataset.train, dataset.schema, name), 10, buckets)
        assert isinstance(tables[name], HashedEmbedding) and tables[name].table.weight.shape[0] == rows
    assert Config.from_dict(config.to_dict()) == config and config.table_buckets == (("item_id", 16),)
    with pytest.raises(
        AutocompressError, match=r"frequency_hashing\.table_buckets: unknown name\(s\) \['sku'\]"
    ):
        apply(setup.model(), Config(table_buckets={"sku": 8}), setup.context(tmp_path / "b"))


def test_needs_training_data_to_count(tmp_path):
    setup = tiny_setup("dlrm")
    with pytest.raises(AutocompressError, match=r"frequency_hashing: needs training data"):
        apply(setup.model(), Config(), setup.context(tmp_path, train=None))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"hash_buckets": 0}, r"frequency_hashing\.hash_buckets: must be an integer >= 1"),
        ({"min_count": 0}, r"frequency_hashing\.min_count: must be an integer >= 1"),
        ({"min_count": True}, r"frequency_hashing\.min_count: must be an integer >= 1"),
        ({"min_vocab": -1}, r"frequency_hashing\.min_vocab: must be an integer >= 0"),
        ({"finetune_epochs": -1}, r"frequency_hashing\.finetune_epochs: must be an integer >= 0"),
        (
            {"table_buckets": {"item_id": 0}},
            r"frequency_hashing\.table_buckets: 'item_id': must be an integer >= 1",
        ),
        ({"table_buckets": "item_id"}, r"frequency_hashing\.table_buckets: expected \{table: buckets\}"),
    ],
)
def test_bad_values_are_refused(data, message):
    with pytest.raises(AutocompressError, match=message):
        Config.from_dict(data)


def test_unknown_table_is_refused(tmp_path):
    setup = tiny_setup("dlrm")
    with pytest.raises(AutocompressError, match=r"frequency_hashing\.tables: unknown name\(s\) \['sku'\]"):
        apply(setup.model(), Config(tables=("sku",)), setup.context(tmp_path))
