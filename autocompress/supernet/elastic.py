"""Supernet: one family's largest model whose weights every smaller architecture of the family shares.

A sub-network reads the leading slice of every weight of the largest model:

* embedding width: the first ``embedding_dim`` columns of each table (the first ``embedding_dims[t]``
  columns of a narrower table ``t``, read out through the largest's up-projection sliced to
  ``[:embedding_dim, :embedding_dims[t]]``, or through zero-padding where the largest has none);
* MLP widths and depths: the first units of each layer and the first layers, then the largest's
  output layer (which reads the first units of the sub-network's last layer);
* inputs that concatenate per-feature vectors take the first columns of every feature's block;
* din's ``history_length``: no weight depends on it, the sub-network reads fewer positions;
* a tensor the family derives from the sub-network's own arch (two_tower's fixed temperature) is the
  sub-network's own, not a slice.

The elastic forward runs the family's own ``forward`` on the sliced weights
(``torch.func.functional_call`` on a shape-only copy of the sub-network's model), so a sub-network
computes exactly what ``extract`` gives as a standalone model of the family.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from autocompress.data.schema import FeatureSchema
from autocompress.errors import AutocompressError
from autocompress.models import ArchConfig, build, load_arch
from autocompress.models.base import RankingModel

SUPERNET_FORMAT_VERSION = 1

_SUPERNETS: dict[str, tuple[str, str]] = {
    "dlrm": ("autocompress.supernet.families", "DLRMSupernet"),
    "dcn_v2": ("autocompress.supernet.families", "DCNv2Supernet"),
    "din": ("autocompress.supernet.families", "DINSupernet"),
    "deepfm": ("autocompress.supernet.families", "DeepFMSupernet"),
    "two_tower": ("autocompress.supernet.families", "TwoTowerSupernet"),
}
SUPERNET_FAMILIES: tuple[str, ...] = tuple(_SUPERNETS)

# A concatenated input axis as blocks of (the largest's width, the sub-network's width): each
# sub-network keeps the first columns of every block.
Blocks = Sequence[tuple[int, int]]


def supernet_class(family: str) -> type[Supernet]:
    """The Supernet subclass of ``family`` (its elastic rules), or AutocompressError listing the supported."""
    if family not in _SUPERNETS:
        raise AutocompressError(
            f"supernet: family {family!r} has no elastic supernet; supported: {list(SUPERNET_FAMILIES)}"
        )
    module, name = _SUPERNETS[family]
    cls: type[Supernet] = getattr(importlib.import_module(module), name)
    return cls


@dataclass
class _Plan:
    """How one sub-network reads the supernet: a shape-only model and each tensor's slice.

    ``slices[name] = (source, axes)``: ``source`` is the largest model's tensor name (None: an
    identity up-projection the largest does not have); each axis keeps its first n entries (an int)
    or the given indices (a tensor of a concatenated input). ``own``: tensors the sub-network takes
    from its own arch (``Supernet._own_tensors``), on the CPU.
    """

    skeleton: RankingModel
    slices: dict[str, tuple[str | None, tuple[int | Tensor, ...]]]
    own: dict[str, Tensor]


class Supernet(nn.Module):
    """The largest model of a family (``self.model``) and the rules by which sub-networks share it.

    Build one with ``Supernet.for_family(schema, largest_arch)``; ``supernet(batch, arch)`` is the
    logits of sub-network ``arch`` (an ArchConfig of the family), ``extract(arch)`` the same
    sub-network as a standalone model of the family, ``check(arch)`` refuses what is not a
    sub-network naming the field. Subclasses, one per family, declare which arch fields are MLP
    widths, which integers may shrink, which fields they check themselves and how concatenated
    inputs are laid out.
    """

    family: ClassVar[str] = ""
    # arch field -> (the MLP module's attribute, whether the field's last width is that MLP's output)
    width_fields: ClassVar[Mapping[str, tuple[str, bool]]] = {}
    # integer arch fields a sub-network may make smaller; every other field must equal the largest's
    shrinking_fields: ClassVar[frozenset[str]] = frozenset({"embedding_dim"})
    # arch fields the family's ``_check_more`` checks instead of the generic rules
    own_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, schema: FeatureSchema, largest_arch: ArchConfig) -> None:
        super().__init__()
        self.schema = schema
        self.largest_arch = largest_arch
        self.model = build(self.family, schema, largest_arch)
        self._plans: dict[ArchConfig, _Plan] = {}

    @staticmethod
    def for_family(schema: FeatureSchema, largest_arch: ArchConfig) -> Supernet:
        """The supernet of ``largest_arch``'s family, initialised like a freshly built model."""
        return supernet_class(largest_arch.family)(schema, largest_arch)

    # -- what a sub-network is ------------------------------------------------------------------

    def check(self, arch: ArchConfig) -> ArchConfig:
        """``arch`` when it is a sub-network, else AutocompressError naming the field that is not inside
        the largest.

        Integers in ``shrinking_fields`` may be smaller; MLP widths may be shallower and narrower
        layer by layer (see ``_check_widths``); per-table ``embedding_dims`` may be narrower than the
        largest's table; ``own_fields`` follow the family's rules (``_check_more``); every other
        field must be equal.
        """
        large = self.largest_arch
        where = f"{self.family} sub-network"
        if type(arch) is not type(large):
            raise AutocompressError(
                f"{where}: arch must be a {type(large).__name__}, got {type(arch).__name__}"
            )
        arch.check_schema(self.schema)
        self._check_more(arch)
        for f in fields(large):
            mine, theirs = getattr(arch, f.name), getattr(large, f.name)
            if f.name in self.own_fields:
                continue
            if f.name == "embedding_dims":
                self._check_table_widths(arch)
            elif f.name in self.width_fields:
                self._check_widths(f.name, mine, theirs, self.width_fields[f.name][1])
            elif f.name in self.shrinking_fields:
                if mine > theirs:
                    raise AutocompressError(
                        f"{where}: {f.name} {mine} is larger than the supernet's (allowed: <= {theirs})"
                    )
            elif mine != theirs:
                raise AutocompressError(
                    f"{where}: {f.name} {mine!r} differs from the supernet's {theirs!r} "
                    f"(a sub-network may only shrink {sorted([*self.shrinking_fields, *self.width_fields])})"
                )
        return arch

    def contains(self, arch: ArchConfig) -> bool:
        """Whether ``arch`` is a sub-network of this supernet (``check`` says why not)."""
        try:
            self.check(arch)
        except AutocompressError:
            return False
        return True

    def _check_more(self, arch: ArchConfig) -> None:
        """Family rules beyond the generic ones (the ``own_fields``, combinations); none in the base."""

    def _check_table_widths(self, arch: ArchConfig) -> None:
        for feature in self.schema.sparse:
            mine = arch.embedding_dims.get(feature.name, arch.embedding_dim)
            theirs = self._table_width(feature.name)
            if mine > theirs:
                raise AutocompressError(
                    f"{self.family} sub-network: table {feature.name!r} would be {mine} wide "
                    f"(embedding_dims[{feature.name!r}], else embedding_dim), wider than the "
                    f"supernet's ({theirs}; allowed: <= {theirs})"
                )

    def _table_width(self, name: str) -> int:
        large = self.largest_arch
        return large.embedding_dims.get(name, large.embedding_dim)

    def _check_widths(
        self, name: str, mine: Sequence[int], theirs: Sequence[int], ends_at_output: bool
    ) -> None:
        """A sub-MLP takes the first layers and the first units of each; the layer after them (the
        largest's output layer) reads the first units of its last hidden layer. ``ends_at_output``:
        the field's last width is that output layer's, compared with the largest's last width."""
        where = f"{self.family} sub-network: {name} {list(mine)} is not inside the supernet's {list(theirs)}"
        if len(mine) > len(theirs):
            raise AutocompressError(f"{where}: {len(mine)} layers, the supernet has {len(theirs)}")
        hidden_mine, hidden_theirs = (mine[:-1], theirs[:-1]) if ends_at_output else (mine, theirs)
        for layer, (a, b) in enumerate(zip(hidden_mine, hidden_theirs, strict=False)):
            if a > b:
                raise AutocompressError(f"{where}: layer {layer} has {a} units, the supernet's {b}")
        if hidden_mine and hidden_mine[-1] > hidden_theirs[-1]:
            raise AutocompressError(
                f"{where}: its last hidden layer has {hidden_mine[-1]} units but the output layer "
                f"reads at most {hidden_theirs[-1]}"
            )
        if ends_at_output and mine[-1] > theirs[-1]:
            raise AutocompressError(f"{where}: output width {mine[-1]} > {theirs[-1]}")

    # -- how a sub-network reads the weights ----------------------------------------------------

    def _input_layouts(self, arch: ArchConfig) -> dict[str, dict[int, Blocks]]:
        """Per sub-network tensor name, the axes that concatenate per-feature blocks (family rules)."""
        return {}

    def _own_tensors(self, arch: ArchConfig) -> dict[str, Tensor]:
        """Tensors sub-network ``arch`` takes from its own arch, not from the supernet (none in the base)."""
        return {}

    def _plan(self, arch: ArchConfig) -> _Plan:
        arch = self.check(arch)
        plan = self._plans.get(arch)
        if plan is not None:
            return plan
        with torch.device("meta"):
            skeleton = build(self.family, self.schema, arch)
        rename = self._depth_map(skeleton)
        layouts = self._input_layouts(arch)
        own = self._own_tensors(arch)
        sources = {n: t.shape for n, t in chain(self.model.named_parameters(), self.model.named_buffers())}
        slices: dict[str, tuple[str | None, tuple[int | Tensor, ...]]] = {}
        for name, tensor in chain(skeleton.named_parameters(), skeleton.named_buffers()):
            if name in own:
                continue
            source: str | None = next(
                (name.replace(a, b, 1) for a, b in rename.items() if name.startswith(a)), name
            )
            if source in sources:
                source_shape = tuple(sources[source])
            elif ".projections." in name:  # the largest reads this table without a projection
                source, source_shape = None, (self.largest_arch.embedding_dim,) * 2
            else:
                raise RuntimeError(f"{self.family} supernet: no weight for {name}")
            axes: list[int | Tensor] = []
            for axis, size in enumerate(tensor.shape):
                blocks = layouts.get(name, {}).get(axis)
                axes.append(size if blocks is None else _block_index(blocks))
                available = source_shape[axis] if blocks is None else sum(b[0] for b in blocks)
                if size > available or (blocks is not None and available != source_shape[axis]):
                    raise AutocompressError(
                        f"{self.family} sub-network {arch.to_json()} is not inside the supernet: "
                        f"{name} needs shape {tuple(tensor.shape)}, the supernet's is {source_shape}"
                    )
            slices[name] = (source, tuple(axes))
        if len(self._plans) >= 1024:
            self._plans.clear()
        plan = self._plans[arch] = _Plan(skeleton=skeleton, slices=slices, own=own)
        return plan

    def _depth_map(self, skeleton: RankingModel) -> dict[str, str]:
        """Name prefixes of the sub-network's MLP layers -> the largest's: layer i reads layer i,
        except the layer to the output (an MLP's trailing Linear, or the last one when the field
        ends at the output width), which reads the largest's last layer."""
        rename: dict[str, str] = {}
        for path, ends_at_output in self.width_fields.values():
            mine, theirs = getattr(skeleton, path, None), getattr(self.model, path, None)
            if not isinstance(mine, nn.Sequential) or not isinstance(theirs, nn.Sequential):
                continue
            mine_layers = [n for n, m in mine.named_children() if isinstance(m, nn.Linear)]
            their_layers = [n for n, m in theirs.named_children() if isinstance(m, nn.Linear)]
            to_output = ends_at_output or isinstance(mine[-1], nn.Linear)
            for i, layer in enumerate(mine_layers):
                last = to_output and i == len(mine_layers) - 1
                rename[f"{path}.{layer}."] = f"{path}.{their_layers[-1 if last else i]}."
        return rename

    def sliced_tensors(self, arch: ArchConfig) -> dict[str, Tensor]:
        """The sub-network's parameters and buffers, by its model's names: differentiable slices
        of the supernet's (gradients reach the shared weights)."""
        return self._slice(self._plan(arch))

    def _slice(self, plan: _Plan) -> dict[str, Tensor]:
        state = dict(chain(self.model.named_parameters(), self.model.named_buffers()))
        weight = next(iter(self.model.parameters()))  # where the supernet lives, and its dtype
        out: dict[str, Tensor] = {name: tensor.to(weight.device) for name, tensor in plan.own.items()}
        for name, (source, axes) in plan.slices.items():
            if source is None:
                dim = self.largest_arch.embedding_dim
                tensor = torch.eye(dim, dtype=weight.dtype, device=weight.device)
            else:
                tensor = state[source]
            for axis, keep in enumerate(axes):
                if isinstance(keep, int):
                    tensor = tensor.narrow(axis, 0, keep)
                else:
                    tensor = tensor.index_select(axis, keep.to(tensor.device))
            out[name] = tensor
        return out

    # -- running and extracting sub-networks ----------------------------------------------------

    def forward(self, batch: Mapping[str, Tensor], arch: ArchConfig) -> Tensor:
        """Logits [B] of sub-network ``arch`` on ``batch``."""
        plan = self._plan(arch)
        plan.skeleton.train(self.training)
        return torch.func.functional_call(plan.skeleton, self._slice(plan), (dict(batch),))

    def extract(self, arch: ArchConfig) -> RankingModel:
        """Sub-network ``arch`` as a standalone model of the family, with copies of the shared weights.

        Built by the family's class from ``(schema, arch)`` on the supernet's device, in eval mode:
        it takes the supernet's inputs, and exports and compresses like any trained model.
        """
        plan = self._plan(arch)
        device = next(iter(self.model.parameters())).device
        with torch.device("meta"):
            model = build(self.family, self.schema, plan.skeleton.arch)
        model = model.to_empty(device=device)
        values = self._slice(plan)
        with torch.no_grad():
            for name, tensor in chain(model.named_parameters(), model.named_buffers()):
                tensor.copy_(values[name])
        return model.eval()

    # -- persistence ----------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (Ray ships a supernet to its trials) without the cached plans: shape-only models."""
        return {**self.__dict__, "_plans": {}}

    def save(self, path: str | Path) -> None:
        """Write the weights with the schema and largest arch they belong to (for a resumed job).

        Written to a temporary file first and renamed: a driver killed while saving leaves no file a
        resumed job would fail to read.
        """
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        torch.save(
            {
                "format": SUPERNET_FORMAT_VERSION,
                "schema": self.schema.to_dict(),
                "largest_arch": self.largest_arch.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            },
            partial,
        )
        os.replace(partial, path)

    @staticmethod
    def load(path: str | Path, device: str | torch.device = "cpu") -> Supernet:
        """A supernet written by ``save``, rebuilt from its own schema and largest arch."""
        try:
            data: dict[str, Any] = torch.load(Path(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise AutocompressError(f"supernet file {str(path)!r} cannot be read: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != SUPERNET_FORMAT_VERSION:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise AutocompressError(
                f"supernet file {str(path)!r}: format {found!r} is not supported "
                f"(supported: {SUPERNET_FORMAT_VERSION})"
            )
        supernet = Supernet.for_family(
            FeatureSchema.from_dict(data["schema"]), load_arch(data["largest_arch"])
        )
        supernet.load_state_dict(data["state_dict"])
        return supernet.to(device)


def _block_index(blocks: Blocks) -> Tensor:
    """Indices of the first ``kept`` columns of each ``(width, kept)`` block laid side by side."""
    starts = np.cumsum([0, *(width for width, _ in blocks)])[:-1]
    return torch.from_numpy(
        np.concatenate([np.arange(s, s + kept) for s, (_, kept) in zip(starts, blocks, strict=True)])
    ).long()
