"""A tiny learnable click task and tiny models in the batch layout of FeatureSchema, for the train tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from autocompress.data.schema import FIRST_ID, PAD_ID
from autocompress.data.table import Table

ITEM_VOCAB = 40
TAG_VOCAB = 20
TAG_LEN = 3
DENSE = ("price", "ctr_hist")


def make_click_table(rows: int, seed: int, dense_scale: float = 1.0) -> tuple[Table, np.ndarray]:
    """Rows whose click depends on two dense features, an item id and multi-hot tags; also the true logit."""
    rng = np.random.default_rng(seed)
    effects = np.random.default_rng(1234)  # the same hidden effects for every split
    item_effect = effects.normal(0.0, 1.5, ITEM_VOCAB)
    tag_effect = effects.normal(0.0, 1.0, TAG_VOCAB)
    tag_effect[PAD_ID] = 0.0
    price = rng.standard_normal(rows).astype(np.float32)
    ctr_hist = rng.standard_normal(rows).astype(np.float32)
    item_id = rng.integers(FIRST_ID, ITEM_VOCAB, rows, dtype=np.int64)
    tags = rng.integers(FIRST_ID, TAG_VOCAB, (rows, TAG_LEN), dtype=np.int64)
    tags[rng.random((rows, TAG_LEN)) < 0.3] = PAD_ID
    logit = 1.5 * price - 1.0 * ctr_hist + item_effect[item_id] + tag_effect[tags].sum(axis=1)
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    features = {
        "price": price * np.float32(dense_scale),
        "ctr_hist": ctr_hist * np.float32(dense_scale),
        "item_id": item_id,
        "tags": tags,
    }
    return Table(features=features, labels=labels), logit


class TinyRanker(nn.Module):
    """Embeddings for the item and (sum-pooled, PAD-masked) tags, concatenated with dense, then linear."""

    def __init__(self, dim: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.item = nn.Embedding(ITEM_VOCAB, dim)
        self.tags = nn.Embedding(TAG_VOCAB, dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(len(DENSE) + 2 * dim, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        dense = torch.stack([batch[name] for name in DENSE], dim=1)
        x = torch.cat([dense, self.item(batch["item_id"]), self.tags(batch["tags"]).sum(dim=1)], dim=1)
        return self.out(self.dropout(x)).squeeze(-1)


class ConstantScorer(nn.Module):
    """Scores every row with one learned bias: validation AUC is always exactly 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.bias.expand(batch["price"].shape[0])


def tiny_ranker(seed: int = 0, dim: int = 4, dropout: float = 0.0) -> TinyRanker:
    """A TinyRanker whose initial weights depend only on ``seed``."""
    torch.manual_seed(seed)
    return TinyRanker(dim=dim, dropout=dropout)
