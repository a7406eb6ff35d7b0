"""DCN-v2: explicit feature crosses (full or low-rank) and a deep MLP, stacked or in parallel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from autocompress.data.schema import FeatureSchema
from autocompress.models.arch import ArchConfig
from autocompress.models.base import RankingModel
from autocompress.models.layers import MLP, FeatureEmbeddings, stack_dense


@dataclass(frozen=True, kw_only=True)
class DCNv2Arch(ArchConfig):
    """DCN-v2 architecture: ``cross_layers`` (0 = none), ``cross_rank`` (0 = full rank), deep MLP widths.

    ``structure`` "stacked" feeds the cross output into the deep MLP; "parallel" runs both on the
    input and concatenates them before the final Linear to one logit.
    """

    family: ClassVar[str] = "dcn_v2"

    embedding_dim: int = 16
    cross_layers: int = 3
    cross_rank: int = 0
    deep_mlp: tuple[int, ...] = (256, 128, 64)
    structure: Literal["stacked", "parallel"] = "stacked"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive_int("cross_layers", allow_zero=True)
        self._check_positive_int("cross_rank", allow_zero=True)
        self._check_widths("deep_mlp")
        self._check_choice("structure", ("stacked", "parallel"))


class CrossLayer(nn.Module):
    """One DCN-v2 cross: ``x0 * (W x + b) + x`` with ``W`` full (rank 0) or factorised as ``U V``."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.weight: nn.Module
        if rank == 0:
            self.weight = nn.Linear(dim, dim)
        else:
            self.weight = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.weight(x) + x


class DCNv2(RankingModel):
    """Deep & Cross Network v2 (Wang et al. 2021) over dense values and id-feature embeddings."""

    family: ClassVar[str] = "dcn_v2"

    def __init__(self, schema: FeatureSchema, arch: DCNv2Arch) -> None:
        super().__init__(schema, arch)
        self.structure = arch.structure
        self.embeddings = FeatureEmbeddings(schema, arch.embedding_dim, arch.embedding_dims)
        in_dim = len(self.dense_names) + len(self.id_names) * arch.embedding_dim
        self.cross = nn.ModuleList([CrossLayer(in_dim, arch.cross_rank) for _ in range(arch.cross_layers)])
        self.deep = MLP(in_dim, arch.deep_mlp)
        head_in = self.deep.out_dim if arch.structure == "stacked" else in_dim + self.deep.out_dim
        self.head = nn.Linear(head_in, 1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        parts: list[Tensor] = []
        if self.dense_names:
            parts.append(stack_dense(batch, self.dense_names))
        if self.id_names:
            parts.append(self.embeddings.fields(batch, self.id_names).flatten(1))
        x0 = torch.cat(parts, dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        hidden = self.deep(x) if self.structure == "stacked" else torch.cat([x, self.deep(x0)], dim=1)
        return self.head(hidden).squeeze(-1)
