"""Pieces every family shares: feature embeddings with masked pooling, MLPs, dense input stacking.

All of them trace cleanly for the TorchScript ONNX exporter: no Python control flow on tensor
values, shapes taken from the inputs so the batch axis stays dynamic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from autocompress.data.schema import PAD_ID, FeatureSchema


class FeatureEmbeddings(nn.Module):
    """One embedding table per sparse feature, every feature read out at ``embedding_dim``.

    A table narrower than ``embedding_dim`` (``embedding_dims`` override) is projected up by a
    bias-free Linear; multi-hot and sequence ids are mean-pooled with ``PAD_ID`` masked out; a
    sequence feature is looked up in the table of the sparse feature it shares.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        embedding_dim: int,
        embedding_dims: Mapping[str, int] | None = None,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        dims = dict(embedding_dims or {})
        self.embedding_dim = embedding_dim
        self.table_names: list[str] = [f.name for f in schema.sparse]
        self.tables = nn.ModuleList()
        self.projections = nn.ModuleList()
        for feature in schema.sparse:
            dim = dims.get(feature.name, embedding_dim)
            table = nn.Embedding(feature.vocab_size, dim, padding_idx=PAD_ID)
            with torch.no_grad():
                table.weight.normal_(0.0, dim**-0.5 if init_std is None else init_std)
                table.weight[PAD_ID].zero_()
            self.tables.append(table)
            self.projections.append(
                nn.Identity() if dim == embedding_dim else nn.Linear(dim, embedding_dim, bias=False)
            )
        index = {name: i for i, name in enumerate(self.table_names)}
        self._table_of: dict[str, int] = dict(index)
        self._is_list: dict[str, bool] = {f.name: f.multi_hot for f in schema.sparse}
        for seq in schema.sequence:
            self._table_of[seq.name] = index[seq.shares_embedding_with]
            self._is_list[seq.name] = True
        self.id_features: list[str] = [*self.table_names, *(s.name for s in schema.sequence)]

    def table(self, name: str) -> nn.Module:
        """The embedding table a sparse or sequence feature is looked up in."""
        return self.tables[self._table_of[name]]

    def pooled(self, batch: Mapping[str, Tensor], name: str) -> Tensor:
        """One vector per row for an id feature: [B, embedding_dim] (multi-hot/sequence mean-pooled)."""
        i = self._table_of[name]
        ids = batch[name]
        vectors = self.tables[i](ids)
        if self._is_list[name]:
            # masked mean as a batched matmul [B,1,L] @ [B,L,D]: one MatMul in ONNX instead of
            # Mul + ReduceSum over the middle axis, which ONNX Runtime runs several times slower
            mask = (ids != PAD_ID).to(vectors.dtype).unsqueeze(1)
            vectors = torch.matmul(mask, vectors).squeeze(1) / mask.sum(dim=2).clamp(min=1.0)
        return self.projections[i](vectors)

    def sequence(self, batch: Mapping[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
        """Per-position vectors [B, L, embedding_dim] of a list feature and its mask [B, L] (1 = real id)."""
        i = self._table_of[name]
        ids = batch[name]
        vectors = self.projections[i](self.tables[i](ids))
        return vectors, (ids != PAD_ID).to(vectors.dtype)

    def fields(self, batch: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
        """Pooled vectors of several id features stacked as fields: [B, len(names), embedding_dim]."""
        return torch.stack([self.pooled(batch, name) for name in names], dim=1)


class MLP(nn.Sequential):
    """Linear+ReLU layers of the given widths, then an optional plain Linear to ``out_dim``.

    A plain ``nn.Sequential`` of ``nn.Linear``/``nn.ReLU`` so structured pruning can find and
    shrink its layers; ``out_dim`` is the width of what it returns.
    """

    def __init__(self, in_dim: int, widths: Sequence[int], out_dim: int | None = None) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in widths:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        super().__init__(*layers)
        self.out_dim = width


def stack_dense(batch: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    """Dense features side by side: [B, len(names)] float32."""
    return torch.stack([batch[name] for name in names], dim=1)
