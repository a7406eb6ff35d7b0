"""Low-rank factorisation of Linear layers by truncated SVD.

A Linear ``W`` (out x in) becomes two Linears, ``in -> k`` without bias and ``k -> out`` with
the bias, holding ``sqrt(S_k) V_k^T`` and ``U_k sqrt(S_k)``; a layer is replaced only when that
saves parameters (``k * (in + out) < in * out``). The rank is fixed (``rank``) or the smallest
keeping an ``energy`` fraction of the squared singular values; a short fine-tune follows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from autocompress.distributions import Categorical, FloatRange, IntRange
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

DEFAULT_ENERGY = 0.9


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """How the rank of each factorised layer is chosen, which layers are eligible, how long to fine-tune."""

    name: ClassVar[str] = "low_rank"
    level: ClassVar[Level] = "torch"

    energy: float | None = param(
        DEFAULT_ENERGY,
        FloatRange(0.5, 0.99),
        "kept fraction of the sum of squared singular values (0 < energy <= 1) that picks each layer's "
        "rank; ignored when rank is set",
    )
    rank: int | None = param(
        None,
        None,
        "absolute rank for every factorised layer instead of energy (not searched: one rank means "
        "different things for layers of different widths; energy is the searched knob)",
    )
    layers: tuple[str, ...] = param(
        (), None, "names of the Linear layers to factorise (e.g. 'top.0'); empty: every Linear layer"
    )
    min_features: int = param(
        16,
        Categorical([8, 16, 32, 64]),
        "layers whose smaller side (min of in and out features) is below this are left as they are",
    )
    finetune_epochs: int = param(1, IntRange(0, 3), "epochs of fine-tuning after factorising (0: none)")

    def check(self) -> None:
        if self.rank is not None:
            if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
                raise self.fail("rank", f"must be >= 1 (an integer), got {self.rank!r}")
            if self.energy not in (None, DEFAULT_ENERGY):
                raise self.fail(
                    "energy", f"give rank or energy, not both (rank={self.rank}; leave energy unset or null)"
                )
        elif self.energy is None:
            raise self.fail("energy", "set energy (0 < energy <= 1) or rank")
        if self.energy is not None and (
            isinstance(self.energy, bool)
            or not isinstance(self.energy, int | float)
            or not 0.0 < self.energy <= 1.0
        ):
            raise self.fail("energy", f"must be in (0, 1], got {self.energy!r}")
        self.require_int("min_features", 1)
        self.require_int("finetune_epochs", 0)


def apply(model: nn.Module, config: Config, ctx: TechniqueContext) -> nn.Module:
    """Replace each eligible Linear by its truncated-SVD pair where that saves parameters, then fine-tune."""
    import torch
    from torch import nn

    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    config.check_names("layers", config.layers, linears)
    factorised = 0
    for name in config.layers or tuple(linears):
        layer = linears[name]
        smaller = min(layer.in_features, layer.out_features)
        if smaller < config.min_features:
            log.info("low_rank: %s (%dx%d) left: smaller than min_features", name, *_shape(layer))
            continue
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(layer.weight.detach().double(), full_matrices=False)
        rank = chosen_rank(s, config)
        if not saves_parameters(layer.in_features, layer.out_features, rank):
            log.info(
                "low_rank: %s (%dx%d) left: rank %d would not save parameters", name, *_shape(layer), rank
            )
            continue
        model.set_submodule(name, _factorised(layer, u, s, vh, rank))
        factorised += 1
        log.info("low_rank: %s (%dx%d) -> rank %d", name, *_shape(layer), rank)
    if factorised == 0:
        log.warning("low_rank: no layer was factorised (none would save parameters at this rank)")
    ctx.finetune(model, config.finetune_epochs)
    return model


def chosen_rank(singular_values: torch.Tensor, config: Config) -> int:
    """The rank for one layer: ``rank`` capped at the full rank, else the smallest keeping ``energy``."""
    import torch

    full = int(singular_values.numel())
    if config.rank is not None:
        return min(config.rank, full)
    assert config.energy is not None
    squared = singular_values.double() ** 2
    total = float(squared.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(squared, 0) / total
    # a small tolerance so energy 1.0 is reached despite rounding in the cumulative sum
    rank = int(torch.searchsorted(kept, torch.tensor(config.energy - 1e-12, dtype=kept.dtype))) + 1
    return min(rank, full)


def saves_parameters(in_features: int, out_features: int, rank: int) -> bool:
    """Whether two Linears through ``rank`` hold fewer weights than one ``in x out`` Linear."""
    return rank * (in_features + out_features) < in_features * out_features


def _factorised(
    layer: nn.Linear, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int
) -> nn.Sequential:
    from torch import nn

    weight = layer.weight
    root = s[:rank].sqrt()
    down = nn.Linear(layer.in_features, rank, bias=False, device=weight.device, dtype=weight.dtype)
    up = nn.Linear(
        rank, layer.out_features, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype
    )
    with_grad = weight.requires_grad
    down.weight.data.copy_(root[:, None] * vh[:rank])
    up.weight.data.copy_(u[:, :rank] * root)
    if layer.bias is not None and up.bias is not None:
        up.bias.data.copy_(layer.bias.detach())
    for p in (*down.parameters(), *up.parameters()):
        p.requires_grad_(with_grad)
    return nn.Sequential(down, up)


def _shape(layer: nn.Linear) -> tuple[int, int]:
    return layer.out_features, layer.in_features


EXAMPLES = [
    {"rank": 8, "energy": None, "layers": ["top.0", "top.2"], "finetune_epochs": 0},
    {"energy": 0.5, "min_features": 32},
]
INVALID = [
    ({"rank": 0}, "low_rank.rank: must be >= 1"),
    ({"energy": 0}, "low_rank.energy: must be in (0, 1]"),
    ({"energy": 1.5}, "low_rank.energy: must be in (0, 1]"),
    ({"energy": None}, "low_rank.energy: set energy (0 < energy <= 1) or rank"),
    ({"rank": 4, "energy": 0.7}, "low_rank.energy: give rank or energy, not both"),
    ({"min_features": 0}, "low_rank.min_features: must be an integer >= 1"),
    ({"finetune_epochs": -1}, "low_rank.finetune_epochs: must be an integer >= 0"),
    ({"layers": ["top.9"]}, "low_rank.layers: unknown name(s) ['top.9']; the model has ['bottom.0'"),
    ({"ranks": 4}, "unknown field(s) ['ranks']"),
]
