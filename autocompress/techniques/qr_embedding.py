"""Quotient-remainder compositional embeddings (Shi et al. 2020): two small tables instead of one.

A table of ``V`` rows becomes a quotient table of ``ceil(V / m)`` rows and a remainder table of
``m`` rows (``m = collisions``); id ``i`` reads ``combine(Q[i // m], R[i % m])``. No two ids share
both a quotient and a remainder row, so ids keep distinct vectors, yet the rows shrink about
``m``-fold. The two tables start as the least-squares fit of the trained table (alternating
updates from ``Q = mean of each quotient bucket, R = ones`` for "mult"), then the model fine-tunes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from autocompress.distributions import Categorical, IntRange
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext

if TYPE_CHECKING:
    import torch
    from torch import nn

    from autocompress.models.layers import FeatureEmbeddings

COMBINES = ("mult", "add", "concat")
# Alternating least-squares sweeps that fit Q and R to the trained table (each sweep is two
# vectorised averages; the fit stops improving after a handful).
FIT_SWEEPS = 10


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """How many ids share a quotient row, how the two halves combine, and which tables split."""

    name: ClassVar[str] = "qr_embedding"
    level: ClassVar[Level] = "torch"

    collisions: int = param(
        4,
        IntRange(2, 64, log=True),
        "ids per quotient row (m): the remainder table has m rows, the quotient table ceil(V / m)",
    )
    combine: str = param(
        "mult",
        Categorical(list(COMBINES)),
        "how the quotient and remainder vectors make one: elementwise product, sum, or concatenation",
    )
    min_vocab: int = param(
        1000,
        IntRange(100, 100_000, log=True),
        "split only tables with more rows than this (when `tables` is empty)",
    )
    tables: tuple[str, ...] = param((), None, "sparse features whose tables split (empty: by min_vocab)")
    finetune_epochs: int = param(1, IntRange(0, 3), "epochs of training after the tables split")

    def check(self) -> None:
        self.require_int("collisions", 2)
        if self.combine not in COMBINES:
            raise self.fail("combine", f"{self.combine!r} is not one of {list(COMBINES)}")
        self.require_int("min_vocab", 0)
        self.require_int("finetune_epochs", 0)


def qr_shapes(vocab: int, dim: int, collisions: int, combine: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes ``(quotient, remainder)`` of the two tables replacing a ``vocab x dim`` table."""
    quotient_rows = math.ceil(vocab / collisions)
    if combine == "concat":
        return (quotient_rows, dim - dim // 2), (collisions, dim // 2)
    return (quotient_rows, dim), (collisions, dim)


def apply(model: nn.Module, config: Config, ctx: TechniqueContext) -> nn.Module:
    """Split the large tables of every FeatureEmbeddings in ``model`` into quotient and remainder tables."""
    from torch import nn

    from autocompress.models.layers import FeatureEmbeddings

    groups = [m for m in model.modules() if isinstance(m, FeatureEmbeddings)]
    known = {name for group in groups for name in group.table_names}
    config.check_names("tables", config.tables, known)
    for group in groups:
        for i, name in enumerate(group.table_names):
            table = group.tables[i]
            vocab = ctx.schema.sparse_feature(name).vocab_size
            wanted = name in config.tables if config.tables else vocab > config.min_vocab
            if wanted and type(table) is nn.Embedding:
                _split(group, i, table, config)
    ctx.finetune(model, config.finetune_epochs)
    return model


def _split(group: FeatureEmbeddings, index: int, table: nn.Embedding, config: Config) -> None:
    """Replace ``table`` (number ``index`` of ``group``) by a QREmbedding fitted to it, where that saves."""
    vocab, dim = table.weight.shape
    if config.combine == "concat" and dim < 2:
        return
    (q_rows, q_dim), (r_rows, r_dim) = qr_shapes(vocab, dim, config.collisions, config.combine)
    if q_rows * q_dim + r_rows * r_dim >= vocab * dim:
        return
    quotient, remainder = _fit(table.weight.detach(), config.collisions, config.combine)
    group.tables[index] = _qr_embedding_class()(quotient, remainder, config.collisions, config.combine, vocab)


def _fit(weight: torch.Tensor, collisions: int, combine: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares quotient and remainder tables whose combination approximates ``weight``.

    ``weight`` is laid out as a [quotient, remainder, dim] grid; the padding row and the grid cells
    past the vocabulary are left out of every average.
    """
    import torch

    from autocompress.data.schema import PAD_ID

    vocab, dim = weight.shape
    q_rows = math.ceil(vocab / collisions)
    grid = torch.zeros(q_rows * collisions, dim, dtype=torch.float64, device=weight.device)
    grid[:vocab] = weight.double()
    mask = torch.zeros(q_rows * collisions, 1, dtype=torch.float64, device=weight.device)
    mask[:vocab] = 1.0
    mask[PAD_ID] = 0.0
    grid, mask = grid.view(q_rows, collisions, dim), mask.view(q_rows, collisions, 1)
    eps = 1e-12

    def mean(values: torch.Tensor, axis: int) -> torch.Tensor:
        return (values * mask).sum(axis) / mask.sum(axis).clamp(min=eps)

    if combine == "concat":
        half = dim - dim // 2
        return mean(grid[..., :half], 1), mean(grid[..., half:], 0)
    if combine == "add":
        remainder = torch.zeros(collisions, dim, dtype=torch.float64, device=weight.device)
        for _ in range(FIT_SWEEPS):
            quotient = mean(grid - remainder, 1)
            remainder = mean(grid - quotient[:, None], 0)
        return quotient, remainder
    remainder = torch.ones(collisions, dim, dtype=torch.float64, device=weight.device)
    for _ in range(FIT_SWEEPS):
        quotient = (grid * remainder * mask).sum(1) / (remainder**2 * mask).sum(1).clamp(min=eps)
        remainder = (grid * quotient[:, None] * mask).sum(0) / (quotient[:, None] ** 2 * mask).sum(0).clamp(
            min=eps
        )
    # Q * R is unchanged by Q * c, R / c: give R unit RMS per dimension (as its "ones" start had).
    scale = remainder.pow(2).mean(0).sqrt().clamp(min=eps)
    return quotient * scale, remainder / scale


def __getattr__(name: str) -> Any:
    # QREmbedding subclasses torch.nn.Module; it is built on first use so that loading a Config
    # does not import torch, and resolves here so pickle finds it by its module and name.
    if name == "QREmbedding":
        return _qr_embedding_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _qr_embedding_class() -> type[nn.Module]:
    import torch
    from torch import nn

    from autocompress.data.schema import PAD_ID

    class QREmbedding(nn.Module):
        """A ``num_embeddings``-row table read as ``combine(quotient[i // m], remainder[i % m])``.

        Drop-in for ``nn.Embedding`` in FeatureEmbeddings: ids of any shape in, ``[..., dim]``
        out, the padding id reads zeros. Integer division traces to ONNX Div on int64.
        """

        def __init__(
            self,
            quotient: torch.Tensor,
            remainder: torch.Tensor,
            collisions: int,
            combine: str,
            num_embeddings: int,
        ) -> None:
            super().__init__()
            self.quotient = nn.Embedding.from_pretrained(quotient.float(), freeze=False)
            self.remainder = nn.Embedding.from_pretrained(remainder.float(), freeze=False)
            self.collisions = collisions
            self.combine = combine
            self.num_embeddings = num_embeddings
            self.embedding_dim = quotient.shape[1] + (remainder.shape[1] if combine == "concat" else 0)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            quotient_ids = torch.div(ids, self.collisions, rounding_mode="trunc")
            q = self.quotient(quotient_ids)
            r = self.remainder(ids - quotient_ids * self.collisions)
            if self.combine == "mult":
                vectors = q * r
            elif self.combine == "add":
                vectors = q + r
            else:
                vectors = torch.cat([q, r], dim=-1)
            return vectors * (ids != PAD_ID).unsqueeze(-1).to(vectors.dtype)

        def extra_repr(self) -> str:
            shape = f"{self.num_embeddings}, {self.embedding_dim}"
            return f"{shape}, collisions={self.collisions}, combine={self.combine!r}"

    QREmbedding.__module__ = __name__
    QREmbedding.__qualname__ = "QREmbedding"
    return QREmbedding


EXAMPLES = [
    {"collisions": 8, "combine": "add", "finetune_epochs": 0},
    {"collisions": 16, "combine": "concat", "tables": ["item_id"], "finetune_epochs": 0},
]
INVALID = [
    ({"collisions": 1}, "qr_embedding.collisions: must be an integer >= 2"),
    ({"combine": "max"}, "qr_embedding.combine: 'max' is not one of ['mult', 'add', 'concat']"),
    ({"min_vocab": -5}, "qr_embedding.min_vocab: must be an integer >= 0"),
    ({"finetune_epochs": -1}, "qr_embedding.finetune_epochs: must be an integer >= 0"),
    ({"tables": ["no_such_table"]}, "qr_embedding.tables: unknown name(s) ['no_such_table']"),
]
