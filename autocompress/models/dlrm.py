"""DLRM: bottom MLP over dense features, embeddings of id features, pairwise dot interaction, top MLP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from autocompress.data.schema import FeatureSchema
from autocompress.errors import AutocompressError
from autocompress.models.arch import ArchConfig
from autocompress.models.base import RankingModel
from autocompress.models.layers import MLP, FeatureEmbeddings, stack_dense


@dataclass(frozen=True, kw_only=True)
class DLRMArch(ArchConfig):
    """DLRM architecture; the defaults are the production reference (64-dim, 256-128-64, 512-512-256-1).

    ``bottom_mlp`` ends at ``embedding_dim`` so the dense vector joins the interaction;
    ``top_mlp`` is followed by a Linear to one logit; ``interaction`` "dot" takes pairwise dot
    products (upper triangle), "cat" concatenates all vectors instead.
    """

    family: ClassVar[str] = "dlrm"

    embedding_dim: int = 64
    bottom_mlp: tuple[int, ...] = (256, 128, 64)
    top_mlp: tuple[int, ...] = (512, 512, 256)
    interaction: Literal["dot", "cat"] = "dot"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_widths("bottom_mlp")
        self._check_widths("top_mlp")
        self._check_choice("interaction", ("dot", "cat"))
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise AutocompressError(
                f"dlrm arch: bottom_mlp must end at embedding_dim ({self.embedding_dim}), "
                f"got {list(self.bottom_mlp)}"
            )


class DLRM(RankingModel):
    """Deep Learning Recommendation Model (Naumov et al. 2019) over a FeatureSchema.

    One vector per dense block (bottom MLP output) and per id feature (multi-hot and sequences
    mean-pooled); the top MLP sees the bottom output plus all pairwise dot products.
    """

    family: ClassVar[str] = "dlrm"
    pair_index: Tensor

    def __init__(self, schema: FeatureSchema, arch: DLRMArch) -> None:
        super().__init__(schema, arch)
        dim = arch.embedding_dim
        self.interaction = arch.interaction
        self.embeddings = FeatureEmbeddings(schema, dim, arch.embedding_dims)
        self.bottom = MLP(len(self.dense_names), arch.bottom_mlp) if self.dense_names else None
        n_vectors = (1 if self.bottom is not None else 0) + len(self.id_names)
        rows, cols = torch.triu_indices(n_vectors, n_vectors, offset=1)
        self.register_buffer("pair_index", rows * n_vectors + cols, persistent=False)
        n_pairs = len(rows)
        # With no dense block and a single id feature there is no pair: the vector itself goes on.
        self.concat_vectors = arch.interaction == "cat" or (self.bottom is None and n_pairs == 0)
        top_in = n_vectors * dim if self.concat_vectors else (dim if self.dense_names else 0) + n_pairs
        self.top = MLP(top_in, arch.top_mlp, out_dim=1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        vectors = [self.embeddings.pooled(batch, name) for name in self.id_names]
        dense_out = None
        if self.bottom is not None:
            dense_out = self.bottom(stack_dense(batch, self.dense_names))
            vectors.insert(0, dense_out)
        stacked = torch.stack(vectors, dim=1)
        if self.concat_vectors:
            top_in = stacked.flatten(1)
        else:
            products = torch.bmm(stacked, stacked.transpose(1, 2)).flatten(1)
            # the pairs picked with the pair axis first: ONNX Runtime's Gather then copies whole rows
            # of the batch, not one float at a time (batch 256, 14 vectors of 64, one thread: the
            # interaction took 309 us, now 156 us)
            pairs = products.t().index_select(0, self.pair_index).t()
            top_in = pairs if dense_out is None else torch.cat([dense_out, pairs], dim=1)
        return self.top(top_in).squeeze(-1)
