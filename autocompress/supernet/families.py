"""Each family's elastic rules: its MLP fields, what may shrink, how its concatenated inputs are laid out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar, cast

import torch
from torch import Tensor

from autocompress.errors import AutocompressError
from autocompress.models.arch import ArchConfig
from autocompress.models.base import RankingModel
from autocompress.models.dcn_v2 import DCNv2, DCNv2Arch
from autocompress.models.deepfm import DeepFM, DeepFMArch
from autocompress.models.din import DIN, DINArch
from autocompress.models.dlrm import DLRM, DLRMArch
from autocompress.models.two_tower import TwoTower, TwoTowerArch
from autocompress.supernet.elastic import Blocks, Supernet


class DLRMSupernet(Supernet):
    """DLRM: elastic embedding width, bottom and top MLPs.

    The bottom MLP's last layer always reads the largest's last one (its output joins the
    embeddings in the interaction, unit i against column i); the top MLP's input keeps the first
    ``embedding_dim`` units of every vector ("cat") or of the dense vector ahead of all pairs ("dot").
    """

    family: ClassVar[str] = "dlrm"
    model: DLRM
    largest_arch: DLRMArch
    width_fields: ClassVar[Mapping[str, tuple[str, bool]]] = {
        "bottom_mlp": ("bottom", True),
        "top_mlp": ("top", False),
    }

    def _input_layouts(self, arch: ArchConfig) -> dict[str, dict[int, Blocks]]:
        model = self.model
        full, kept = self.largest_arch.embedding_dim, arch.embedding_dim
        n_vectors = (model.bottom is not None) + len(model.id_names)
        if model.concat_vectors:
            return {"top.0.weight": {1: [(full, kept)] * n_vectors}}
        if model.bottom is None:
            return {}
        n_pairs = model.pair_index.numel()
        return {"top.0.weight": {1: [(full, kept), (n_pairs, n_pairs)]}}


class DCNv2Supernet(Supernet):
    """DCN-v2: elastic embedding width, the first ``cross_layers`` crosses, ``cross_rank`` and the deep MLP.

    The cross input ``x0`` is the dense values then one embedding per id feature; every cross
    weight keeps the first ``embedding_dim`` entries of each embedding on both axes. A low-rank
    sub-network keeps the first ``cross_rank`` factors; full rank and low rank never share.
    """

    family: ClassVar[str] = "dcn_v2"
    model: DCNv2
    largest_arch: DCNv2Arch
    width_fields: ClassVar[Mapping[str, tuple[str, bool]]] = {"deep_mlp": ("deep", False)}
    shrinking_fields: ClassVar[frozenset[str]] = frozenset({"embedding_dim", "cross_layers", "cross_rank"})

    def _check_more(self, arch: ArchConfig) -> None:
        mine, theirs = cast(DCNv2Arch, arch), self.largest_arch
        if (mine.cross_rank == 0) != (theirs.cross_rank == 0):
            allowed = "0 (full rank)" if theirs.cross_rank == 0 else f"1..{theirs.cross_rank}"
            raise AutocompressError(
                f"dcn_v2 sub-network: cross_rank {mine.cross_rank} does not share the supernet's "
                f"crosses (cross_rank {theirs.cross_rank}; allowed: {allowed})"
            )

    def _input_layouts(self, arch: ArchConfig) -> dict[str, dict[int, Blocks]]:
        arch = cast(DCNv2Arch, arch)
        n_dense, n_ids = len(self.model.dense_names), len(self.model.id_names)
        x0: Blocks = [(n_dense, n_dense), *[(self.largest_arch.embedding_dim, arch.embedding_dim)] * n_ids]
        layouts: dict[str, dict[int, Blocks]] = {"deep.0.weight": {1: x0}}
        for i in range(arch.cross_layers):
            w = f"cross.{i}.weight"
            if arch.cross_rank == 0:
                layouts |= {f"{w}.weight": {0: x0, 1: x0}, f"{w}.bias": {0: x0}}
            else:
                layouts |= {f"{w}.0.weight": {1: x0}, f"{w}.1.weight": {0: x0}, f"{w}.1.bias": {0: x0}}
        if arch.structure == "parallel":
            deep = (self.largest_arch.deep_mlp[-1], arch.deep_mlp[-1])
            layouts["head.weight"] = {1: [*x0, deep]}
        return layouts


class DINSupernet(Supernet):
    """DIN: elastic embedding width, attention and output MLPs, and history length.

    A sub-network's ``history_length`` L attends over the last L positions of the behaviour
    sequence (``DINArch``); it may be at most the largest's (None: the whole ``max_len``).
    """

    family: ClassVar[str] = "din"
    model: DIN
    largest_arch: DINArch
    width_fields: ClassVar[Mapping[str, tuple[str, bool]]] = {
        "attention_mlp": ("attention", False),
        "mlp": ("mlp", False),
    }
    own_fields: ClassVar[frozenset[str]] = frozenset({"history_length"})

    def _history_length(self, arch: DINArch) -> int:
        """The positions ``arch`` reads (its history's ``max_len`` when ``history_length`` is None)."""
        if arch.history_length is not None:
            return arch.history_length
        return next(s.max_len for s in self.schema.sequence if s.name == self.model.history)

    def _check_more(self, arch: ArchConfig) -> None:
        mine, theirs = self._history_length(cast(DINArch, arch)), self._history_length(self.largest_arch)
        if mine > theirs:
            raise AutocompressError(
                f"din sub-network: history_length {mine} is longer than the supernet's (allowed: <= {theirs})"
            )

    def _input_layouts(self, arch: ArchConfig) -> dict[str, dict[int, Blocks]]:
        model = self.model
        embedding: Blocks = [(self.largest_arch.embedding_dim, arch.embedding_dim)]
        n_dense = len(model.dense_names)
        return {
            # [candidate, item, candidate - item, candidate * item]
            "attention.0.weight": {1: [*embedding] * 4},
            # [interest, candidate, other id features..., dense values]
            "mlp.0.weight": {1: [*embedding] * (2 + len(model.other_ids)) + [(n_dense, n_dense)]},
        }


class DeepFMSupernet(Supernet):
    """DeepFM: elastic embedding width and deep MLP.

    Every field's vector (one per dense value, one per id feature) keeps its first
    ``embedding_dim`` entries: the FM term sums over those, and the deep MLP's first layer reads the
    first ``embedding_dim`` columns of every field's block. The first-order weights are one wide and
    always shared whole.
    """

    family: ClassVar[str] = "deepfm"
    model: DeepFM
    largest_arch: DeepFMArch
    width_fields: ClassVar[Mapping[str, tuple[str, bool]]] = {"deep_mlp": ("deep", False)}

    def _input_layouts(self, arch: ArchConfig) -> dict[str, dict[int, Blocks]]:
        n_fields = len(self.model.dense_names) + len(self.model.id_names)
        field: Blocks = [(self.largest_arch.embedding_dim, arch.embedding_dim)]
        return {"deep.0.weight": {1: [*field] * n_fields}}


class TwoTowerSupernet(Supernet):
    """Two-tower: elastic embedding width, tower widths (both towers alike) and output width.

    Each tower's first layer reads its dense values and the first ``embedding_dim`` entries of each
    of its id features; its output layer gives the first ``output_dim`` units, so the dot product runs
    over the first ``output_dim`` entries of both towers. The logit's scale is each sub-network's
    own: ``l2_normalize`` holds no weight, a fixed temperature (``learn_temperature`` false) is the
    sub-network's ``temperature``, and one that learns it starts from the supernet's (learnt when
    the largest learns it).
    """

    family: ClassVar[str] = "two_tower"
    model: TwoTower
    largest_arch: TwoTowerArch
    width_fields: ClassVar[Mapping[str, tuple[str, bool]]] = {"tower_mlp": ("user_tower", False)}
    shrinking_fields: ClassVar[frozenset[str]] = frozenset({"embedding_dim", "output_dim"})
    own_fields: ClassVar[frozenset[str]] = frozenset({"temperature", "learn_temperature", "l2_normalize"})

    def _depth_map(self, skeleton: RankingModel) -> dict[str, str]:
        """The user tower's layer map (``width_fields``), and the same for the item tower."""
        user = super()._depth_map(skeleton)
        item = {a.replace("user", "item", 1): b.replace("user", "item", 1) for a, b in user.items()}
        return user | item

    def _input_layouts(self, arch: ArchConfig) -> dict[str, dict[int, Blocks]]:
        model, width = self.model, (self.largest_arch.embedding_dim, arch.embedding_dim)
        user: Blocks = [(len(model.user_dense), len(model.user_dense)), *[width] * len(model.user_ids)]
        item: Blocks = [(len(model.item_dense), len(model.item_dense)), *[width] * len(model.item_ids)]
        return {"user_tower.0.weight": {1: user}, "item_tower.0.weight": {1: item}}

    def _own_tensors(self, arch: ArchConfig) -> dict[str, Tensor]:
        arch = cast(TwoTowerArch, arch)
        if arch.learn_temperature:
            return {}
        return {"log_temperature": torch.tensor(math.log(arch.temperature))}
