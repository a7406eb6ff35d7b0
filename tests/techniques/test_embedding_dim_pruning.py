import io
import re

import numpy as np
import pytest
import torch
from torch import nn

from autocompress.errors import AutocompressError
from autocompress.export import create_session
from autocompress.measure import onnx_size_bytes, torch_size_bytes
from autocompress.measure.evaluation import onnx_logits
from autocompress.models import build
from autocompress.techniques import Policy, apply_policy
from autocompress.techniques.embedding_dim_pruning import Config, ZeroFilledColumns
from autocompress.testing import check_keeps_auc, converged_setup, table_zeroed, tiny_setup
from autocompress.testing.quality import max_auc_drop
from autocompress.train import fit, predict

# Half of every table's columns and one epoch of the production fine-tuning cost a real 0.0123 AUC:
# more than the 0.01 other techniques keep to, so this technique is held to its known cost, 0.02
# (autocompress.testing.quality.KNOWN_AUC_COST).
HALF_WIDTH = Config(keep_ratio=0.5, finetune_epochs=1)
KNOWN_COST = max_auc_drop("embedding_dim_pruning")
LOSES_TOO_MUCH = re.escape(f"loses more than {KNOWN_COST} AUC")


def prune(setup, tmp_path, model=None, **config):
    model = setup.model() if model is None else model
    return apply_policy(model, Policy((Config(**config),)), setup.context(tmp_path))


def kept_columns(original, pruned):
    """Which columns of the ``original`` table survive in ``pruned``, in order."""
    old, new = original.weight.detach(), pruned.weight.detach()
    return [int(torch.nonzero((old == new[:, j : j + 1]).all(dim=0))[0]) for j in range(new.shape[1])]


def zeroed_copy(setup, kept):
    """The unpruned model with every dropped column of every table set to zero."""
    model = setup.model()
    with torch.no_grad():
        for i, columns in enumerate(kept):
            weight = model.embeddings.tables[i].weight
            dropped = [c for c in range(weight.shape[1]) if c not in columns]
            weight[:, dropped] = 0.0
    return model


def test_tables_halve_and_the_model_reads_the_kept_columns_in_place(tmp_path):
    setup = tiny_setup("dlrm")
    plain = apply_policy(setup.model(), Policy(()), setup.context(tmp_path / "plain"))
    result = prune(setup, tmp_path / "pruned", keep_ratio=0.5, finetune_epochs=0)
    model, original = result.model, setup.model()
    vocab = [f.vocab_size for f in setup.dataset.schema.sparse]
    assert [tuple(t.weight.shape) for t in model.embeddings.tables] == [(v, 8) for v in vocab]
    assert all(isinstance(p, ZeroFilledColumns) for p in model.embeddings.projections)
    # V*16 floats become V*8 floats plus 16 int32 indices and 16 float 0/1 factors per table
    saved = sum(vocab) * 8 * 4 - len(vocab) * 16 * (4 + 4)
    assert torch_size_bytes(original) - torch_size_bytes(model) == saved
    # the file loses those bytes, less the graph's two new nodes per table (measured: ~400 bytes)
    assert onnx_size_bytes(plain.onnx_path) - onnx_size_bytes(result.onnx_path) > saved - len(vocab) * 512
    # before fine-tuning, the pruned model is exactly the original with the dropped columns zeroed
    kept = [
        kept_columns(a, b) for a, b in zip(original.embeddings.tables, model.embeddings.tables, strict=True)
    ]
    test = setup.dataset.test
    np.testing.assert_allclose(predict(model, test), predict(zeroed_copy(setup, kept), test), atol=1e-5)
    session = create_session(result.onnx_path, setup.context(tmp_path).target)
    np.testing.assert_allclose(onnx_logits(session, test), predict(model, test), atol=1e-4)


def test_l2_keeps_the_columns_with_the_largest_norms_and_taylor_ranks_differently(tmp_path):
    setup = tiny_setup("dlrm")
    original = setup.model().embeddings.tables
    kept = {}
    for importance in ("l2", "taylor"):
        model = prune(setup, tmp_path / importance, importance=importance, finetune_epochs=0).model
        kept[importance] = [
            kept_columns(a, b) for a, b in zip(original, model.embeddings.tables, strict=True)
        ]
    for table, columns in zip(original, kept["l2"], strict=True):
        assert set(columns) == set(torch.topk(table.weight.detach().norm(dim=0), 8).indices.tolist())
    assert kept["l2"] != kept["taylor"]


@pytest.mark.slow
def test_finetuned_model_loses_no_more_than_its_known_auc_cost(tmp_path):
    # measured: -0.0123 +- 0.0022 against the baseline given the same fine-tuning (limit -0.02)
    check_keeps_auc(converged_setup("dlrm"), tmp_path, HALF_WIDTH, max_drop=KNOWN_COST)


@pytest.mark.slow
def test_the_auc_check_fails_on_a_pruning_that_zeroes_a_table(tmp_path):
    setup = converged_setup("dlrm")
    with pytest.raises(AssertionError, match=LOSES_TOO_MUCH):
        check_keeps_auc(
            setup, tmp_path, HALF_WIDTH, max_drop=KNOWN_COST, sabotage=table_zeroed(setup, "item_category")
        )


@pytest.mark.slow
def test_the_auc_check_fails_on_a_pruning_that_skips_its_fine_tuning(tmp_path):
    # a subtler bug, just past the limit: measured -0.0219 +- 0.0028, 95% lower end -0.0274
    with pytest.raises(AssertionError, match=LOSES_TOO_MUCH):
        check_keeps_auc(
            converged_setup("dlrm"), tmp_path, Config(keep_ratio=0.5, finetune_epochs=0), max_drop=KNOWN_COST
        )


def test_only_named_tables_narrow_and_tables_that_would_grow_are_left(tmp_path):
    setup = tiny_setup("dlrm")
    names = setup.model().embeddings.table_names
    model = prune(setup, tmp_path / "named", tables=["user_id", "item_brand"], finetune_epochs=0).model
    widths = dict(zip(names, (t.weight.shape[1] for t in model.embeddings.tables), strict=True))
    assert widths == {name: 8 if name in ("user_id", "item_brand") else 16 for name in names}
    # keeping 14 of 16 columns saves 2 floats a row but costs 16 indices and 16 factors: only the
    # tables with more than 16 * 8 / (2 * 4) = 16 rows get smaller
    model = prune(setup, tmp_path / "most", keep_ratio=0.9, finetune_epochs=0).model
    vocab = {f.name: f.vocab_size for f in setup.dataset.schema.sparse}
    widths = dict(zip(names, (t.weight.shape[1] for t in model.embeddings.tables), strict=True))
    assert widths == {name: 14 if vocab[name] > 16 else 16 for name in names}
    assert sorted(name for name, width in widths.items() if width == 14) == [
        "item_brand",
        "item_id",
        "user_id",
    ]


def test_a_projected_table_loses_the_projection_columns(tmp_path):
    setup = tiny_setup("dlrm")
    arch = {
        "embedding_dim": 16,
        "bottom_mlp": [32, 16],
        "top_mlp": [64, 32],
        "embedding_dims": {"user_id": 8},
    }
    original = build("dlrm", setup.dataset.schema, arch)
    fit(original, setup.dataset.train, setup.dataset.valid, setup.context(tmp_path).train_config)
    before = original.embeddings.projections[0].weight.detach().clone()
    table = original.embeddings.tables[0].weight.detach().clone()
    model = prune(setup, tmp_path, model=original, tables=["user_id"], finetune_epochs=0).model
    projection = model.embeddings.projections[0]
    assert isinstance(projection, nn.Linear) and tuple(projection.weight.shape) == (16, 4)
    assert tuple(model.embeddings.tables[0].weight.shape) == (2002, 4)
    # l2 importance of a projected column: its norm in the table times its norm in the projection
    score = table.norm(dim=0) * before.norm(dim=0)
    kept = sorted(torch.topk(score, 4).indices.tolist())
    torch.testing.assert_close(projection.weight.detach(), before[:, kept])
    torch.testing.assert_close(model.embeddings.tables[0].weight.detach(), table[:, kept])


def test_din_history_shares_the_narrowed_item_table(tmp_path):
    setup = tiny_setup("din")
    result = prune(setup, tmp_path, keep_ratio=0.25, finetune_epochs=0)
    model = result.model
    assert model.embeddings.table("hist_item_ids") is model.embeddings.table("item_id")
    assert model.embeddings.table("item_id").weight.shape[1] == 2
    session = create_session(result.onnx_path, setup.context(tmp_path).target)
    test = setup.dataset.test
    np.testing.assert_allclose(onnx_logits(session, test), predict(model, test), atol=1e-4)


def test_pruning_twice_and_pickling_keep_the_model_working(tmp_path):
    setup = tiny_setup("dlrm")
    once = prune(setup, tmp_path / "once", keep_ratio=0.5, finetune_epochs=0).model
    twice = prune(setup, tmp_path / "twice", model=once, keep_ratio=0.5, finetune_epochs=0).model
    assert [t.weight.shape[1] for t in twice.embeddings.tables] == [4] * 11
    buffer = io.BytesIO()
    torch.save(twice, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    test = setup.dataset.test
    np.testing.assert_array_equal(predict(loaded, test), predict(twice, test))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"keep_ratio": 1.0}, "embedding_dim_pruning.keep_ratio: must be in (0, 1), got 1.0"),
        ({"keep_ratio": 0}, "embedding_dim_pruning.keep_ratio: must be in (0, 1), got 0"),
        ({"keep_ratio": True}, "embedding_dim_pruning.keep_ratio: must be in (0, 1), got True"),
        ({"importance": "l1"}, "embedding_dim_pruning.importance: 'l1' is not one of ['l2', 'taylor']"),
        ({"finetune_epochs": 1.5}, "embedding_dim_pruning.finetune_epochs: must be an integer >= 0"),
    ],
)
def test_bad_values_are_refused(config, message):
    with pytest.raises(AutocompressError) as error:
        Config.from_dict(config)
    assert message in str(error.value)


def test_unknown_tables_are_refused_with_the_known_ones(tmp_path):
    setup = tiny_setup("dlrm")
    with pytest.raises(AutocompressError) as error:
        prune(setup, tmp_path, tables=["item_id", "hist_item_ids"])
    assert str(error.value).startswith(
        "embedding_dim_pruning.tables: unknown name(s) ['hist_item_ids']; the model has ['item_brand', "
    )
