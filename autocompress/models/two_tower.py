"""Two-tower retrieval model: a user tower and an item tower whose scaled dot product is the logit."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from autocompress.data.schema import FeatureSchema
from autocompress.errors import AutocompressError
from autocompress.models.arch import ArchConfig
from autocompress.models.base import RankingModel
from autocompress.models.layers import MLP, FeatureEmbeddings, stack_dense


@dataclass(frozen=True, kw_only=True)
class TwoTowerArch(ArchConfig):
    """Two-tower architecture: tower MLP widths (then a Linear to ``output_dim``) and the logit scale.

    logit = dot(user, item) / ``temperature``; ``learn_temperature`` makes it a trained parameter,
    ``l2_normalize`` turns the dot product into a cosine similarity.
    """

    family: ClassVar[str] = "two_tower"

    embedding_dim: int = 32
    tower_mlp: tuple[int, ...] = (256, 128)
    output_dim: int = 64
    temperature: float = 1.0
    learn_temperature: bool = False
    l2_normalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_widths("tower_mlp")
        self._check_positive_int("output_dim")
        self._check_positive_float("temperature")
        self._check_bool("learn_temperature")
        self._check_bool("l2_normalize")

    def check_schema(self, schema: FeatureSchema) -> None:
        super().check_schema(schema)
        if not schema.features_on("item"):
            raise AutocompressError(
                "two_tower: the schema has no item-side feature; give the item features side='item'"
            )
        if not schema.features_on("user") and not schema.features_on("context"):
            raise AutocompressError(
                "two_tower: the schema has no user- or context-side feature for the user tower; "
                "give the query/user features side='user' or side='context'"
            )


class TwoTower(RankingModel):
    """User tower over user- and context-side features, item tower over item-side features.

    ``user_embedding`` and ``item_embedding`` expose the towers for retrieval (index the items,
    embed the query); ``forward`` scores user-item pairs row by row.
    """

    family: ClassVar[str] = "two_tower"
    log_temperature: Tensor

    def __init__(self, schema: FeatureSchema, arch: TwoTowerArch) -> None:
        super().__init__(schema, arch)
        dim = arch.embedding_dim
        self.l2_normalize = arch.l2_normalize
        self.embeddings = FeatureEmbeddings(schema, dim, arch.embedding_dims)
        item_side = set(schema.features_on("item"))
        self.user_dense = [n for n in self.dense_names if n not in item_side]
        self.user_ids = [n for n in self.id_names if n not in item_side]
        self.item_dense = [n for n in self.dense_names if n in item_side]
        self.item_ids = [n for n in self.id_names if n in item_side]
        user_in = len(self.user_dense) + len(self.user_ids) * dim
        item_in = len(self.item_dense) + len(self.item_ids) * dim
        self.user_tower = MLP(user_in, arch.tower_mlp, out_dim=arch.output_dim)
        self.item_tower = MLP(item_in, arch.tower_mlp, out_dim=arch.output_dim)
        log_t = torch.tensor(math.log(arch.temperature))
        if arch.learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    def _tower_input(self, batch: Mapping[str, Tensor], dense: list[str], ids: list[str]) -> Tensor:
        parts: list[Tensor] = []
        if dense:
            parts.append(stack_dense(batch, dense))
        if ids:
            parts.append(self.embeddings.fields(batch, ids).flatten(1))
        return torch.cat(parts, dim=1)

    def _finish(self, vectors: Tensor) -> Tensor:
        return nn.functional.normalize(vectors, dim=-1) if self.l2_normalize else vectors

    def user_embedding(self, batch: Mapping[str, Tensor]) -> Tensor:
        """User/query vectors [B, output_dim] from the user- and context-side features of ``batch``."""
        return self._finish(self.user_tower(self._tower_input(batch, self.user_dense, self.user_ids)))

    def item_embedding(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Item vectors [B, output_dim] from the item-side features of ``batch``."""
        return self._finish(self.item_tower(self._tower_input(batch, self.item_dense, self.item_ids)))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        scores = (self.user_embedding(batch) * self.item_embedding(batch)).sum(dim=-1)
        return scores * torch.exp(-self.log_temperature)
