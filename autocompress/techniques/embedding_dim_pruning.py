"""Embedding-dimension pruning: drop the least important columns of embedding tables.

A column of a table is one coordinate of every id's vector. Columns are ranked by their L2 norm
over the table's rows (times the norm of the projection column that reads them, where the table is
projected) or by first-order Taylor importance, and ``keep_ratio`` of them stay. The narrower table
still reads out at ``embedding_dim``: a projection Linear loses the matching input columns, and a
table read directly gets a ``ZeroFilledColumns`` read-out that puts the kept columns back at their
positions with zeros elsewhere (a Gather and a Mul in ONNX; ``embedding_dim`` indices and 0/1
factors are all it stores). So dot-product interactions and every layer after the embeddings stay
as they were, and only the stored table shrinks. A table is changed only where its bytes (table
plus read-out) really get smaller.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from autocompress.distributions import Categorical, FloatRange, IntRange
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext

if TYPE_CHECKING:
    import torch
    from torch import nn

    from autocompress.models.layers import FeatureEmbeddings

log = logging.getLogger(__name__)

IMPORTANCES = ("l2", "taylor")


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """How many columns each table keeps, how columns are ranked, which tables, how long to fine-tune."""

    name: ClassVar[str] = "embedding_dim_pruning"
    level: ClassVar[Level] = "torch"

    keep_ratio: float = param(
        0.5, FloatRange(0.25, 0.9), "fraction of each table's columns that is kept (at least one)"
    )
    importance: str = param(
        "l2",
        Categorical(list(IMPORTANCES)),
        "how a column is ranked: l2 norm over the rows (x its projection column's norm), "
        "taylor: |weight x loss gradient| summed over the rows",
    )
    tables: tuple[str, ...] = param((), None, "sparse features whose tables are narrowed (empty: all)")
    finetune_epochs: int = param(1, IntRange(0, 3), "epochs of fine-tuning after the tables narrow")

    def check(self) -> None:
        if (
            isinstance(self.keep_ratio, bool)
            or not isinstance(self.keep_ratio, int | float)
            or not 0.0 < self.keep_ratio < 1.0
        ):
            raise self.fail("keep_ratio", f"must be in (0, 1), got {self.keep_ratio!r}")
        if self.importance not in IMPORTANCES:
            raise self.fail("importance", f"{self.importance!r} is not one of {list(IMPORTANCES)}")
        if not all(isinstance(name, str) for name in self.tables):
            raise self.fail("tables", f"must be a list of sparse feature names, got {list(self.tables)!r}")
        self.require_int("finetune_epochs", 0)


def apply(model: nn.Module, config: Config, ctx: TechniqueContext) -> nn.Module:
    """Narrow the chosen tables of every FeatureEmbeddings in ``model`` (in place), then fine-tune."""
    from autocompress.models.layers import FeatureEmbeddings
    from autocompress.techniques.structured_pruning import loss_gradients

    groups = [m for m in model.modules() if isinstance(m, FeatureEmbeddings)]
    known = {name for group in groups for name in group.table_names}
    config.check_names("tables", config.tables, known)
    chosen = set(config.tables or known)
    if config.importance == "taylor":
        loss_gradients(model, ctx, config, "importance")
    narrowed = {}
    for group in groups:
        for i, name in enumerate(group.table_names):
            widths = _narrow(group, i, config) if name in chosen else None
            if widths is not None:
                narrowed[name] = f"{widths[0]}->{widths[1]}"
    if config.importance == "taylor":
        model.zero_grad(set_to_none=True)
    if narrowed:
        log.info("embedding_dim_pruning (%s): %s", config.importance, narrowed)
    else:
        log.warning("embedding_dim_pruning: no table would get smaller at keep_ratio %s", config.keep_ratio)
    ctx.finetune(model, config.finetune_epochs)
    return model


def column_importance(table: nn.Embedding, projection: nn.Module, importance: str) -> torch.Tensor:
    """One score per column of ``table``: its L2 norm (times the projection column's), or Taylor."""
    import torch
    from torch import nn

    weight = table.weight.detach()
    if importance == "taylor":
        grad = table.weight.grad
        return torch.zeros(weight.shape[1]) if grad is None else (weight * grad).abs().sum(0).cpu()
    score = weight.norm(dim=0)
    if isinstance(projection, nn.Linear):
        score = score * projection.weight.detach().norm(dim=0)
    return score.cpu()


def _narrow(group: FeatureEmbeddings, index: int, config: Config) -> tuple[int, int] | None:
    """Keep the best columns of one table; its (old, new) width, or None where nothing would shrink."""
    import torch
    from torch import nn

    table, projection = group.tables[index], group.projections[index]
    if type(table) is not nn.Embedding:
        return None  # already replaced by another embedding technique
    zero_filled = _zero_filled_columns_class()
    if not isinstance(projection, nn.Identity | nn.Linear | zero_filled):
        return None
    vocab, width = table.weight.shape
    keep = max(1, round(config.keep_ratio * width))
    if keep >= width:
        return None
    score = column_importance(table, projection, config.importance)
    kept = sorted(int(i) for i in torch.topk(score, keep).indices)
    weight = table.weight.detach()
    new_projection: nn.Module
    if isinstance(projection, nn.Linear):
        new_projection = nn.Linear(keep, projection.out_features, bias=projection.bias is not None)
        new_projection.to(projection.weight.device, projection.weight.dtype)
        with torch.no_grad():
            new_projection.weight.copy_(projection.weight[:, kept])
            if projection.bias is not None:
                new_projection.bias.copy_(projection.bias)
    elif isinstance(projection, zero_filled):
        new_projection = zero_filled([projection.positions[i] for i in kept], projection.width)
    else:
        new_projection = zero_filled(kept, width)
    new_projection.to(weight.device)
    before = _bytes(table) + _bytes(projection)
    after = vocab * keep * weight.element_size() + _bytes(new_projection)
    if after >= before:
        return None
    new_table = nn.Embedding(vocab, keep, padding_idx=table.padding_idx, sparse=table.sparse)
    new_table.to(weight.device, weight.dtype)
    with torch.no_grad():
        new_table.weight.copy_(weight[:, kept])
    group.tables[index] = new_table
    group.projections[index] = new_projection
    return width, keep


def _bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def __getattr__(name: str) -> Any:
    # ZeroFilledColumns subclasses torch.nn.Module; it is built on first use so that loading a Config
    # does not import torch, and resolves here so pickle finds it by its module and name.
    if name == "ZeroFilledColumns":
        return _zero_filled_columns_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _zero_filled_columns_class() -> type[Any]:
    import torch
    from torch import nn

    class ZeroFilledColumns(nn.Module):
        """Read-out of a column-pruned table: kept column j goes to ``positions[j]`` of a ``width`` vector.

        The other coordinates are zero, so the vector means what it did before pruning minus the
        dropped columns. ``source`` picks each output coordinate's kept column (any one where the
        coordinate was dropped) and ``mask`` zeroes the dropped ones: a Gather and a Mul in ONNX.
        """

        source: torch.Tensor
        mask: torch.Tensor

        def __init__(self, positions: Sequence[int], width: int) -> None:
            super().__init__()
            self.positions = tuple(int(p) for p in positions)
            self.width = width
            source = torch.zeros(width, dtype=torch.int32)
            source[list(self.positions)] = torch.arange(len(self.positions), dtype=torch.int32)
            mask = torch.zeros(width)
            mask[list(self.positions)] = 1.0
            self.register_buffer("source", source)
            self.register_buffer("mask", mask)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.index_select(-1, self.source) * self.mask

        def extra_repr(self) -> str:
            return f"kept={len(self.positions)}, width={self.width}"

    ZeroFilledColumns.__module__ = __name__
    ZeroFilledColumns.__qualname__ = "ZeroFilledColumns"
    return ZeroFilledColumns


EXAMPLES = [
    {"keep_ratio": 0.25, "importance": "taylor", "finetune_epochs": 0},
    {"keep_ratio": 0.9, "tables": ["user_id", "item_id"], "finetune_epochs": 0},
]
INVALID = [
    ({"keep_ratio": 1.0}, "embedding_dim_pruning.keep_ratio: must be in (0, 1), got 1.0"),
    ({"keep_ratio": 0.0}, "embedding_dim_pruning.keep_ratio: must be in (0, 1), got 0.0"),
    ({"importance": "l1"}, "embedding_dim_pruning.importance: 'l1' is not one of ['l2', 'taylor']"),
    ({"finetune_epochs": -1}, "embedding_dim_pruning.finetune_epochs: must be an integer >= 0"),
    (
        {"tables": ["no_such_table"]},
        "embedding_dim_pruning.tables: unknown name(s) ['no_such_table']; the model has ['item_brand'",
    ),
]
