"""DeepFM: first-order weights + factorization-machine pairwise term + a deep MLP, sharing embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from autocompress.data.schema import FeatureSchema
from autocompress.models.arch import ArchConfig
from autocompress.models.base import RankingModel
from autocompress.models.layers import MLP, FeatureEmbeddings, stack_dense


@dataclass(frozen=True, kw_only=True)
class DeepFMArch(ArchConfig):
    """DeepFM architecture: field embedding width and the deep MLP widths (a Linear to 1 follows)."""

    family: ClassVar[str] = "deepfm"

    embedding_dim: int = 16
    deep_mlp: tuple[int, ...] = (256, 128, 64)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_widths("deep_mlp")


class DeepFM(RankingModel):
    """DeepFM (Guo et al. 2017): logit = bias + first order + FM second order + deep MLP.

    Fields are the id features (pooled) and the dense features (value times a learned vector, as
    in the FM paper), so dense and sparse features interact in the FM term.
    """

    family: ClassVar[str] = "deepfm"

    def __init__(self, schema: FeatureSchema, arch: DeepFMArch) -> None:
        super().__init__(schema, arch)
        dim = arch.embedding_dim
        n_dense = len(self.dense_names)
        self.embeddings = FeatureEmbeddings(schema, dim, arch.embedding_dims)
        self.first_order = FeatureEmbeddings(schema, 1, init_std=0.01)
        self.bias = nn.Parameter(torch.zeros(1))
        self.dense_weights = nn.Linear(n_dense, 1, bias=False) if n_dense else None
        self.dense_vectors = nn.Parameter(torch.randn(n_dense, dim) * dim**-0.5) if n_dense else None
        n_fields = n_dense + len(self.id_names)
        self.deep = MLP(n_fields * dim, arch.deep_mlp, out_dim=1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        fields: list[Tensor] = []
        logit: Tensor = self.bias
        if self.dense_weights is not None and self.dense_vectors is not None:
            dense = stack_dense(batch, self.dense_names)
            logit = logit + self.dense_weights(dense).squeeze(-1)
            fields.append(dense.unsqueeze(-1) * self.dense_vectors)
        if self.id_names:
            logit = logit + self.first_order.fields(batch, self.id_names).sum(dim=(1, 2))
            fields.append(self.embeddings.fields(batch, self.id_names))
        vectors = torch.cat(fields, dim=1)
        summed = vectors.sum(dim=1)
        fm = 0.5 * (summed * summed - (vectors * vectors).sum(dim=1)).sum(dim=1)
        return logit + fm + self.deep(vectors.flatten(1)).squeeze(-1)
