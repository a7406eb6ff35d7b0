import pytest
import torch
from torch import nn

from autocompress.errors import AutocompressError
from autocompress.measure import onnx_size_bytes
from autocompress.models import build
from autocompress.techniques import Policy, apply_policy
from autocompress.techniques.mixed_dim_embedding import Config, apply, mixed_dims
from autocompress.testing import check_keeps_auc, converged_setup, table_zeroed, tiny_setup

# Each narrowed table adds a MatMul and its name to the graph: a few hundred bytes at most.
GRAPH_OVERHEAD_BYTES = 2_000


def _saved_params(schema, embedding_dim, config):
    """Parameters saved by narrowing every table whose mixed dimension is below embedding_dim."""
    vocab = {f.name: f.vocab_size for f in schema.sparse}
    dims = mixed_dims(vocab, embedding_dim, config)
    narrowed = {name: d for name, d in dims.items() if d < embedding_dim}
    saved = sum(vocab[n] * embedding_dim - (vocab[n] * d + d * embedding_dim) for n, d in narrowed.items())
    return saved, narrowed


def test_mixed_dims_shrink_with_vocabulary_and_stay_in_bounds():
    config = Config(alpha=0.5, base_dim_ratio=0.25, min_dim=2)
    dims = mixed_dims({"items": 10_000, "users": 2_500, "brands": 100, "tiny": 5}, 16, config)
    # base_dim = 4 for the largest table; 4 * (1/4)^-0.5 = 8; 4 * (1/100)^-0.5 = 40 -> capped at 16
    assert dims == {"items": 4, "users": 8, "brands": 16, "tiny": 16}
    capped = mixed_dims(
        {"items": 10_000, "users": 2_500}, 16, Config(alpha=1.0, base_dim_ratio=0.0625, max_dim=3)
    )
    assert capped == {"items": 2, "users": 3}  # 1 -> raised to min_dim 2; 4 -> capped at max_dim 3
    assert mixed_dims({"a": 10, "b": 1000}, 16, Config(alpha=0.0, base_dim_ratio=0.5)) == {"a": 8, "b": 8}


def test_narrows_big_tables_by_the_expected_bytes(tmp_path):
    setup = tiny_setup("dlrm")
    ctx = setup.context(tmp_path)
    config = Config(finetune_epochs=0)
    baseline = apply_policy(setup.model(), Policy(()), ctx)
    result = apply_policy(setup.model(), Policy((config,)), ctx)

    saved, narrowed = _saved_params(setup.dataset.schema, 16, config)
    assert narrowed == {"user_id": 5, "item_id": 4}
    params_before = sum(p.numel() for p in setup.trained.parameters())
    assert sum(p.numel() for p in result.model.parameters()) == params_before - saved
    bytes_saved = onnx_size_bytes(baseline.onnx_path) - onnx_size_bytes(result.onnx_path)
    assert 4 * saved - GRAPH_OVERHEAD_BYTES < bytes_saved <= 4 * saved
    assert onnx_size_bytes(result.onnx_path) < 0.45 * onnx_size_bytes(baseline.onnx_path)

    # The arch follows the narrowed tables, so the family rebuilds the compressed model exactly.
    assert result.model.arch.embedding_dims == narrowed
    rebuilt = build("dlrm", setup.dataset.schema, result.model.arch.to_dict())
    rebuilt.load_state_dict(result.model.state_dict())


@pytest.mark.slow
def test_narrowed_model_keeps_the_auc_of_the_converged_model(tmp_path):
    # the default widths (user_id 5, item_id 4) and one epoch of the production fine-tuning; measured:
    # -0.0015 +- 0.0013 against the baseline given the same fine-tuning (limit -0.01)
    check_keeps_auc(converged_setup("dlrm"), tmp_path, Config(finetune_epochs=1))


@pytest.mark.slow
def test_the_auc_check_fails_on_a_narrowing_that_zeroes_a_table(tmp_path):
    setup = converged_setup("dlrm")
    with pytest.raises(AssertionError, match=r"loses more than 0\.01 AUC"):
        check_keeps_auc(
            setup, tmp_path, Config(finetune_epochs=1), sabotage=table_zeroed(setup, "item_category")
        )


def test_svd_start_is_closer_to_the_trained_model_than_random(tmp_path):
    setup = tiny_setup("dlrm")
    batch = {k: torch.from_numpy(v) for k, v in setup.dataset.valid.features.items()}
    with torch.no_grad():
        original = setup.trained(batch)
        gaps = {}
        torch.manual_seed(0)
        for init in ("svd", "random"):
            model = apply(setup.model(), Config(init=init, finetune_epochs=0), setup.context(tmp_path))
            gaps[init] = float((model(batch) - original).abs().mean())
    assert gaps["svd"] < 0.8 * gaps["random"], gaps


def test_svd_start_is_the_best_low_rank_fit_of_the_trained_table(tmp_path):
    setup = tiny_setup("dlrm")
    model = apply(
        setup.model(),
        Config(tables=("item_id",), finetune_epochs=0, base_dim_ratio=0.5, alpha=0.0),
        setup.context(tmp_path),
    )
    embeddings = model.embeddings
    table, projection = (
        embeddings.table("item_id"),
        embeddings.projections[embeddings.table_names.index("item_id")],
    )
    assert table.weight.shape == (3002, 8) and isinstance(projection, nn.Linear)
    assert torch.all(table.weight[0] == 0)  # the padding row stays zero
    trained = setup.trained.embeddings.table("item_id").weight
    u, s, vh = torch.linalg.svd(trained.double(), full_matrices=False)
    best_rank8 = (u[:, :8] * s[:8]) @ vh[:8]
    assert torch.allclose(projection(table.weight).double(), best_rank8, atol=1e-5)
    # untouched tables keep their trained weights
    assert torch.equal(embeddings.table("user_id").weight, setup.trained.embeddings.table("user_id").weight)


def test_history_sequence_reads_the_narrowed_item_table(tmp_path):
    setup = tiny_setup("din")
    ctx = setup.context(tmp_path)
    baseline = apply_policy(setup.model(), Policy(()), ctx)
    result = apply_policy(setup.model(), Policy((Config(finetune_epochs=0),)), ctx)
    embeddings = result.model.embeddings
    assert embeddings.table("hist_item_ids") is embeddings.table("item_id")
    assert embeddings.table("item_id").weight.shape[1] < embeddings.embedding_dim
    assert onnx_size_bytes(result.onnx_path) < 0.5 * onnx_size_bytes(baseline.onnx_path)
    # a history of padding only still pools to zero through the narrowed table and its projection
    keys, mask = embeddings.sequence({"hist_item_ids": torch.zeros(2, 5, dtype=torch.int64)}, "hist_item_ids")
    assert torch.all(keys == 0) and torch.all(mask == 0)


def test_two_tower_shrinks(tmp_path):
    setup = tiny_setup("two_tower")
    ctx = setup.context(tmp_path)
    baseline = apply_policy(setup.model(), Policy(()), ctx)
    config = Config(finetune_epochs=0)
    result = apply_policy(setup.model(), Policy((config,)), ctx)
    saved, narrowed = _saved_params(setup.dataset.schema, 16, config)
    assert set(narrowed) == {"user_id", "item_id"}
    bytes_saved = onnx_size_bytes(baseline.onnx_path) - onnx_size_bytes(result.onnx_path)
    assert 4 * saved - GRAPH_OVERHEAD_BYTES < bytes_saved <= 4 * saved


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"alpha": -0.5}, r"mixed_dim_embedding\.alpha: must be in \[0, 4\]"),
        ({"alpha": "fast"}, r"mixed_dim_embedding\.alpha: must be in \[0, 4\], got 'fast'"),
        ({"min_dim": 9, "max_dim": 8}, r"mixed_dim_embedding\.min_dim: \(9\) must not exceed max_dim \(8\)"),
        ({"min_dim": 0}, r"mixed_dim_embedding\.min_dim: must be an integer >= 1"),
        ({"max_dim": 2.5}, r"mixed_dim_embedding\.max_dim: must be an integer >= 1 or null"),
        ({"base_dim_ratio": 1.5}, r"mixed_dim_embedding\.base_dim_ratio: must be in \(0, 1\]"),
        ({"init": "pca"}, r"mixed_dim_embedding\.init: 'pca' is not one of \['svd', 'random'\]"),
    ],
)
def test_bad_values_are_refused(data, message):
    with pytest.raises(AutocompressError, match=message):
        Config.from_dict(data)


def test_unknown_table_is_refused_with_the_known_names(tmp_path):
    setup = tiny_setup("dlrm")
    with pytest.raises(
        AutocompressError, match=r"mixed_dim_embedding\.tables: unknown name\(s\) \['sku'\]"
    ) as err:
        apply(setup.model(), Config(tables=("sku", "item_id")), setup.context(tmp_path))
    assert "'item_id'" in str(err.value) and "'user_id'" in str(err.value)
