"""DIN: attention from the candidate item over the user's behaviour history, then an MLP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from autocompress.data.schema import FeatureSchema
from autocompress.errors import AutocompressError
from autocompress.models.arch import ArchConfig
from autocompress.models.base import RankingModel
from autocompress.models.layers import MLP, FeatureEmbeddings, stack_dense


@dataclass(frozen=True, kw_only=True)
class DINArch(ArchConfig):
    """DIN architecture: attention MLP widths, output MLP widths, which sequence is the history and
    how much of it the attention reads.

    ``history`` names the behaviour sequence feature (default: the schema's first sequence); the
    candidate item is the sparse feature that sequence shares its embedding table with.
    ``history_length`` attends over the last L positions only (the most recent ones: the data
    pipeline pads on the left); None reads the whole ``max_len``. The model's input keeps the
    schema's full length either way, so a model with a shorter history serves the same requests.
    """

    family: ClassVar[str] = "din"

    embedding_dim: int = 16
    attention_mlp: tuple[int, ...] = (80, 40)
    mlp: tuple[int, ...] = (200, 80)
    history: str | None = None
    history_length: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_widths("attention_mlp")
        self._check_widths("mlp")
        if self.history is not None and not isinstance(self.history, str):
            raise AutocompressError(
                f"din arch: history must be a sequence feature name or null, got {self.history!r}"
            )
        if self.history_length is not None:
            self._check_positive_int("history_length")

    def check_schema(self, schema: FeatureSchema) -> None:
        super().check_schema(schema)
        names = [s.name for s in schema.sequence]
        if not names:
            raise AutocompressError(
                "din: the schema has no sequence feature; DIN needs a behaviour history "
                "(a SequenceFeature sharing the candidate item's table, e.g. the last clicked item ids)"
            )
        if self.history is not None and self.history not in names:
            raise AutocompressError(
                f"din arch: history {self.history!r} is not a sequence feature of the schema "
                f"(sequence features: {names})"
            )
        history = next(s for s in schema.sequence if self.history in (None, s.name))
        if self.history_length is not None and self.history_length > history.max_len:
            raise AutocompressError(
                f"din arch: history_length {self.history_length} is longer than the history "
                f"{history.name!r} (allowed: 1..{history.max_len}, its max_len, or null)"
            )


class DIN(RankingModel):
    """Deep Interest Network (Zhou et al. 2018) with softmax attention over non-padded positions.

    The attention unit scores each history item against the candidate from
    ``[candidate, item, candidate - item, candidate * item]``; the weighted history, the candidate
    and all other features (pooled ids, dense values) go through the output MLP. With
    ``arch.history_length`` L it reads the last L positions of the (full-length) history input.
    """

    family: ClassVar[str] = "din"

    def __init__(self, schema: FeatureSchema, arch: DINArch) -> None:
        super().__init__(schema, arch)
        dim = arch.embedding_dim
        history = next(s for s in schema.sequence if arch.history in (None, s.name))
        self.history = history.name
        self.history_length = arch.history_length
        self.candidate = history.shares_embedding_with
        self.other_ids = [n for n in self.id_names if n not in (self.history, self.candidate)]
        self.embeddings = FeatureEmbeddings(schema, dim, arch.embedding_dims)
        self.attention = MLP(4 * dim, arch.attention_mlp, out_dim=1)
        mlp_in = 2 * dim + len(self.other_ids) * dim + len(self.dense_names)
        self.mlp = MLP(mlp_in, arch.mlp, out_dim=1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        if self.history_length is not None:  # the most recent positions: sequences are padded on the left
            batch = {**batch, self.history: batch[self.history][:, -self.history_length :]}
        keys, mask = self.embeddings.sequence(batch, self.history)
        candidate = self.embeddings.pooled(batch, self.candidate)
        query = candidate.unsqueeze(1).expand_as(keys)
        scores = self.attention(torch.cat([query, keys, query - keys, query * keys], dim=-1)).squeeze(-1)
        # Padded positions score -1e4 (finite in float16, so an all-padded row cannot turn into NaN)
        # and get weight 0 after the softmax: an empty history pools to the zero vector.
        weights = torch.softmax(scores.masked_fill(mask == 0, -1e4), dim=-1) * mask
        interest = (weights.unsqueeze(-1) * keys).sum(dim=1)
        parts = [interest, candidate]
        if self.other_ids:
            parts.append(self.embeddings.fields(batch, self.other_ids).flatten(1))
        if self.dense_names:
            parts.append(stack_dense(batch, self.dense_names))
        return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)
