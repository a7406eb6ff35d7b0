"""Tiny schema, small architectures and batch conversion shared by the model-zoo tests."""

from __future__ import annotations

import numpy as np
import torch

from autocompress.data.schema import DenseFeature, FeatureSchema, SequenceFeature, SparseFeature
from autocompress.models import ArchConfig, arch_class

torch.set_num_threads(1)

# Small enough to train and export in well under a second per family.
SMALL_ARCHS: dict[str, dict[str, object]] = {
    "dlrm": {"embedding_dim": 8, "bottom_mlp": [16, 8], "top_mlp": [16], "embedding_dims": {"user_id": 4}},
    "deepfm": {"embedding_dim": 8, "deep_mlp": [16], "embedding_dims": {"tags": 4}},
    "dcn_v2": {"embedding_dim": 8, "cross_layers": 2, "cross_rank": 4, "deep_mlp": [16]},
    "two_tower": {"embedding_dim": 8, "tower_mlp": [16], "output_dim": 8, "learn_temperature": True},
    "din": {"embedding_dim": 8, "attention_mlp": [8], "mlp": [16]},
}


def make_schema(history_len: int = 6) -> FeatureSchema:
    """Dense, single-hot, multi-hot and a sequence sharing the item table, on all three sides."""
    return FeatureSchema(
        dense=(
            DenseFeature("price", side="item"),
            DenseFeature("user_age", side="user"),
            DenseFeature("hour", side="context"),
        ),
        sparse=(
            SparseFeature("user_id", vocab_size=50, side="user"),
            SparseFeature("item_id", vocab_size=40, side="item"),
            SparseFeature("category", vocab_size=10, side="item"),
            SparseFeature("tags", vocab_size=20, side="item", max_len=4),
            SparseFeature("device", vocab_size=5, side="context"),
        ),
        sequence=(SequenceFeature("clicked_items", shares_embedding_with="item_id", max_len=history_len),),
    )


def small_arch(family: str) -> ArchConfig:
    return arch_class(family).from_dict(SMALL_ARCHS[family])


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(values) for name, values in batch.items()}
