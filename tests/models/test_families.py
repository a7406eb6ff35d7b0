"""Every family builds from (schema, arch), returns logits [B], and refuses what it cannot model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from autocompress.data.schema import DenseFeature, FeatureSchema, SequenceFeature, SparseFeature
from autocompress.errors import AutocompressError
from autocompress.models import FAMILIES, build, reference_arch
from autocompress.models.dcn_v2 import DCNv2Arch
from autocompress.models.dlrm import DLRMArch
from autocompress.models.layers import FeatureEmbeddings
from autocompress.models.two_tower import TwoTower, TwoTowerArch
from tests.models.tiny import make_schema, small_arch, to_tensors


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", ["small", "reference"])
def test_logits_have_shape_batch(family: str, size: str) -> None:
    schema = make_schema()
    arch = small_arch(family) if size == "small" else reference_arch(family)
    model = build(family, schema, arch)
    assert model.family == family and model.arch == arch
    logits = model(to_tensors(schema.example_batch(7, seed=1)))
    assert logits.shape == (7,)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert logits.std() > 0  # rows are really scored, not a constant


def test_build_accepts_a_dict_and_none() -> None:
    schema = make_schema()
    assert build("dcn_v2", schema, {"cross_layers": 1}).arch == DCNv2Arch(cross_layers=1)
    assert build("deepfm", schema).arch == reference_arch("deepfm")


def test_unknown_family_lists_the_known_ones() -> None:
    with pytest.raises(AutocompressError, match=r"unknown model family 'nope'.*\['dlrm', 'deepfm', 'dcn_v2'"):
        build("nope", make_schema())


def test_arch_of_another_family_is_refused() -> None:
    with pytest.raises(AutocompressError, match=r"dlrm: arch must be a DLRMArch.*got DCNv2Arch"):
        build("dlrm", make_schema(), DCNv2Arch())


@pytest.mark.parametrize("family", FAMILIES)
def test_embedding_dims_key_must_be_a_sparse_feature(family: str) -> None:
    arch = small_arch(family)
    bad = dataclasses.replace(arch, embedding_dims={"clicked_items": 4, "nope": 2})
    with pytest.raises(AutocompressError, match=r"embedding_dims key\(s\) \['clicked_items', 'nope'\]"):
        build(family, make_schema(), bad)


def test_embedding_dims_override_narrows_one_table_and_projects_it() -> None:
    model = build("dlrm", make_schema(), small_arch("dlrm"))
    embeddings = model.embeddings
    assert isinstance(embeddings, FeatureEmbeddings)
    assert embeddings.table("user_id").weight.shape == (50, 4)
    assert embeddings.table("item_id").weight.shape == (40, 8)
    # The history is looked up in the item table: no table of its own.
    assert embeddings.table("clicked_items") is embeddings.table("item_id")
    assert len(embeddings.tables) == 5


def test_multi_hot_pooling_is_a_mean_over_non_pad_ids() -> None:
    schema = make_schema()
    embeddings = FeatureEmbeddings(schema, embedding_dim=8)
    tags = torch.tensor([[3, 7, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    pooled = embeddings.pooled({"tags": tags}, "tags")
    weight = embeddings.table("tags").weight
    assert isinstance(weight, torch.Tensor)
    torch.testing.assert_close(pooled[0], (weight[3] + weight[7]) / 2)
    torch.testing.assert_close(pooled[1], weight[5])
    torch.testing.assert_close(pooled[2], torch.zeros(8))


def test_din_ignores_padding_whatever_the_history_length() -> None:
    short, long = make_schema(history_len=6), make_schema(history_len=9)
    torch.manual_seed(0)
    model_short = build("din", short, small_arch("din")).eval()
    model_long = build("din", long, small_arch("din")).eval()
    model_long.load_state_dict(model_short.state_dict())
    batch = to_tensors(short.example_batch(16, seed=3))
    longer = dict(
        batch, clicked_items=torch.cat([torch.zeros(16, 3, dtype=torch.long), batch["clicked_items"]], 1)
    )
    torch.testing.assert_close(model_long(longer), model_short(batch))
    # Rows whose history is empty still get finite scores, also in float16 (mixed precision).
    batch["clicked_items"][:] = 0
    assert torch.isfinite(model_short(batch)).all()
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.isfinite(model_short(batch)).all()


def test_din_refuses_a_schema_without_sequence() -> None:
    schema = FeatureSchema(
        dense=(DenseFeature("price"),), sparse=(SparseFeature("item_id", 10, side="item"),)
    )
    with pytest.raises(AutocompressError, match="din: the schema has no sequence feature"):
        build("din", schema)
    with pytest.raises(
        AutocompressError, match=r"history 'views' is not a sequence feature.*\['clicked_items'\]"
    ):
        build("din", make_schema(), {"history": "views"})


def test_two_tower_refuses_a_schema_missing_a_side() -> None:
    no_item = FeatureSchema(sparse=(SparseFeature("user_id", 10, side="user"),))
    with pytest.raises(AutocompressError, match="two_tower: the schema has no item-side feature"):
        build("two_tower", no_item)
    no_user = FeatureSchema(sparse=(SparseFeature("item_id", 10, side="item"),))
    with pytest.raises(AutocompressError, match="two_tower: the schema has no user- or context-side feature"):
        build("two_tower", no_user)


def test_two_tower_logit_is_scaled_dot_of_the_tower_embeddings() -> None:
    schema = make_schema()
    arch = TwoTowerArch(embedding_dim=8, tower_mlp=(16,), output_dim=5, temperature=0.5, l2_normalize=True)
    model = build("two_tower", schema, arch)
    assert isinstance(model, TwoTower)
    batch = to_tensors(schema.example_batch(6))
    user, item = model.user_embedding(batch), model.item_embedding(batch)
    assert user.shape == item.shape == (6, 5)
    torch.testing.assert_close(user.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(model(batch), (user * item).sum(-1) / 0.5)
    # A fixed temperature is not trained; a learned one is.
    assert "log_temperature" not in dict(model.named_parameters())
    learned = build("two_tower", schema, small_arch("two_tower"))
    assert "log_temperature" in dict(learned.named_parameters())


def test_two_tower_item_embedding_reads_only_item_side_features() -> None:
    schema = make_schema()
    model = build("two_tower", schema, small_arch("two_tower")).eval()
    assert isinstance(model, TwoTower)
    batch = to_tensors(schema.example_batch(4, seed=0))
    other = to_tensors(schema.example_batch(4, seed=1))
    mixed = {n: (batch[n] if n in schema.features_on("item") else other[n]) for n in schema.feature_names}
    torch.testing.assert_close(model.item_embedding(mixed), model.item_embedding(batch))
    assert not torch.allclose(model.user_embedding(mixed), model.user_embedding(batch))


def test_dlrm_without_dense_features_and_with_cat_interaction() -> None:
    schema = FeatureSchema(
        sparse=(SparseFeature("user_id", 30, side="user"), SparseFeature("item_id", 20, side="item")),
        sequence=(SequenceFeature("clicked_items", "item_id", max_len=3),),
    )
    batch = to_tensors(schema.example_batch(5))
    dot = build("dlrm", schema, DLRMArch(embedding_dim=8, bottom_mlp=(8,), top_mlp=(4,)))
    assert dot.bottom is None
    assert dot.top[0].in_features == 3  # three vectors, three pairs, no dense block
    assert dot(batch).shape == (5,)
    cat = build(
        "dlrm", make_schema(), DLRMArch(embedding_dim=8, bottom_mlp=(8,), top_mlp=(4,), interaction="cat")
    )
    assert cat.top[0].in_features == 7 * 8  # bottom vector + 6 id vectors


def test_reference_dlrm_parameter_count_matches_the_production_shape() -> None:
    vocabs = {"user_id": 100_000, "item_id": 50_000, "shop_id": 20_000}
    schema = FeatureSchema(
        dense=tuple(DenseFeature(f"d{i}") for i in range(13)),
        sparse=(
            *(SparseFeature(name, vocab) for name, vocab in vocabs.items()),
            SparseFeature("tags", 1_000, max_len=5),
        ),
        sequence=(SequenceFeature("clicked_items", "item_id", max_len=10),),
    )
    model = build("dlrm", schema)
    embeddings = (100_000 + 50_000 + 20_000 + 1_000) * 64  # one 64-dim table per sparse feature
    bottom = (13 * 256 + 256) + (256 * 128 + 128) + (128 * 64 + 64)
    vectors = 1 + 4 + 1  # bottom output, 4 sparse features, 1 sequence in the item table
    top_in = 64 + vectors * (vectors - 1) // 2
    top = (top_in * 512 + 512) + (512 * 512 + 512) + (512 * 256 + 256) + (256 * 1 + 1)
    total = sum(p.numel() for p in model.parameters())
    assert total == embeddings + bottom + top == 11_423_937
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [256, 128, 64, 512, 512, 256, 1]
