"""A tiny ranking model and schema built in code, shared by the export and measure tests."""

from __future__ import annotations

import torch
from torch import nn

from autocompress.data.schema import PAD_ID, DenseFeature, FeatureSchema, SequenceFeature, SparseFeature

EMBEDDING_DIM = 4
HIDDEN = (16, 8)


def tiny_schema(*, unused_dense: bool = False) -> FeatureSchema:
    """Two dense features, two single-hot ids, one multi-hot list and a behaviour sequence."""
    dense = [DenseFeature("price", side="item"), DenseFeature("user_age", side="user")]
    if unused_dense:
        dense.append(DenseFeature("ignored_score"))
    return FeatureSchema(
        dense=tuple(dense),
        sparse=(
            SparseFeature("item_id", vocab_size=50, side="item"),
            SparseFeature("category", vocab_size=10, side="item"),
            SparseFeature("tags", vocab_size=20, side="item", max_len=3),
        ),
        sequence=(SequenceFeature("clicked_items", shares_embedding_with="item_id", max_len=4),),
    )


class TinyRanker(nn.Module):
    """Embeddings (mean-pooled for lists) + dense features -> MLP -> one logit per row."""

    def __init__(self, dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        self.item = nn.Embedding(50, EMBEDDING_DIM)
        self.category = nn.Embedding(10, EMBEDDING_DIM)
        self.tags = nn.Embedding(20, EMBEDDING_DIM)
        self.input_dim = 2 + 4 * EMBEDDING_DIM
        self.norm = nn.BatchNorm1d(self.input_dim) if batch_norm else nn.Identity()
        self.mlp = nn.Sequential(
            nn.Linear(self.input_dim, HIDDEN[0]),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(HIDDEN[0], HIDDEN[1]),
            nn.ReLU(),
            nn.Linear(HIDDEN[1], 1),
        )

    @staticmethod
    def _mean_pool(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != PAD_ID).unsqueeze(-1).float()
        return (table(ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat(
            [
                batch["price"].unsqueeze(1),
                batch["user_age"].unsqueeze(1),
                self.item(batch["item_id"]),
                self.category(batch["category"]),
                self._mean_pool(self.tags, batch["tags"]),
                self._mean_pool(self.item, batch["clicked_items"]),
            ],
            dim=1,
        )
        return self.mlp(self.norm(x)).squeeze(1)


def linear_macs() -> int:
    """Hand-computed multiply-accumulates per example: the sum of in*out over the Linear layers."""
    return (2 + 4 * EMBEDDING_DIM) * HIDDEN[0] + HIDDEN[0] * HIDDEN[1] + HIDDEN[1] * 1
