"""Mixed-dimension embeddings (Ginart et al. 2021): large vocabularies get narrow tables.

Every id's vector is read out at the model's ``embedding_dim``, but a table of many rare ids
does not need that width: each table gets ``dim = clamp(round(base_dim * (vocab / max_vocab) **
-alpha), min_dim, max_dim)`` with ``base_dim = base_dim_ratio * embedding_dim`` (the width of the
model's largest table), and a bias-free Linear in the table's ``projections`` slot maps it back up.
With ``init="svd"`` the narrow table and projection are a truncated SVD of the trained table, so
quality starts close to the original before fine-tuning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

from autocompress.distributions import Categorical, FloatRange, IntRange
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext

if TYPE_CHECKING:
    from torch import nn

    from autocompress.models.layers import FeatureEmbeddings

INITS = ("svd", "random")


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """How table widths follow vocabulary size, which tables change, and how they start."""

    name: ClassVar[str] = "mixed_dim_embedding"
    level: ClassVar[Level] = "torch"

    alpha: float = param(
        0.5,
        FloatRange(0.0, 1.0),
        "how fast a table widens as its vocabulary shrinks: dim ~ (vocab / max_vocab) ** -alpha",
    )
    base_dim_ratio: float = param(
        0.25,
        FloatRange(0.0625, 0.5),
        "width of the model's largest table as a fraction of embedding_dim",
    )
    min_dim: int = param(2, IntRange(1, 8), "narrowest table width")
    max_dim: int | None = param(
        None,
        Categorical([None, 16, 32]),
        "widest table width (null: the model's embedding_dim; a wider value is capped at it)",
    )
    tables: tuple[str, ...] = param((), None, "sparse features whose tables may narrow (empty: all)")
    init: str = param(
        "svd",
        Categorical(list(INITS)),
        "svd: start from a truncated SVD of the trained table; random: start from scratch",
    )
    finetune_epochs: int = param(1, IntRange(0, 3), "epochs of training after the tables narrow")

    def check(self) -> None:
        if not _is_number(self.alpha) or not 0.0 <= self.alpha <= 4.0:
            raise self.fail("alpha", f"must be in [0, 4], got {self.alpha!r}")
        if not _is_number(self.base_dim_ratio) or not 0.0 < self.base_dim_ratio <= 1.0:
            raise self.fail("base_dim_ratio", f"must be in (0, 1], got {self.base_dim_ratio!r}")
        self.require_int("min_dim", 1)
        if self.max_dim is not None:
            if not _is_int(self.max_dim) or self.max_dim < 1:
                raise self.fail("max_dim", f"must be an integer >= 1 or null, got {self.max_dim!r}")
            if self.min_dim > self.max_dim:
                raise self.fail("min_dim", f"({self.min_dim}) must not exceed max_dim ({self.max_dim})")
        if self.init not in INITS:
            raise self.fail("init", f"{self.init!r} is not one of {list(INITS)}")
        self.require_int("finetune_epochs", 0)


def mixed_dims(vocab_sizes: Mapping[str, int], embedding_dim: int, config: Config) -> dict[str, int]:
    """The width each table gets: ``base_dim * (vocab / max_vocab) ** -alpha``, clamped and rounded.

    ``vocab_sizes`` holds every table of the model (the largest one anchors ``base_dim``); widths
    never exceed ``embedding_dim``, since a table wider than its read-out width saves nothing.
    """
    max_vocab = max(vocab_sizes.values())
    high = min(config.max_dim or embedding_dim, embedding_dim)
    low = min(config.min_dim, high)
    base_dim = config.base_dim_ratio * embedding_dim
    return {
        name: max(low, min(high, round(base_dim * (vocab / max_vocab) ** -config.alpha)))
        for name, vocab in vocab_sizes.items()
    }


def apply(model: nn.Module, config: Config, ctx: TechniqueContext) -> nn.Module:
    """Narrow the tables of every FeatureEmbeddings in ``model`` where that saves parameters."""
    from autocompress.models.base import RankingModel
    from autocompress.models.layers import FeatureEmbeddings

    groups = [m for m in model.modules() if isinstance(m, FeatureEmbeddings)]
    known = {name for group in groups for name in group.table_names}
    config.check_names("tables", config.tables, known)
    chosen = set(config.tables or known)
    for group in groups:
        vocab_sizes = {name: ctx.schema.sparse_feature(name).vocab_size for name in group.table_names}
        dims = mixed_dims(vocab_sizes, group.embedding_dim, config)
        narrowed = {}
        for i, name in enumerate(group.table_names):
            if name in chosen and _narrow(group, i, dims[name], config.init):
                narrowed[name] = dims[name]
        if narrowed and isinstance(model, RankingModel) and getattr(model, "embeddings", None) is group:
            # Every family builds ``model.embeddings`` from ``arch.embedding_dims``: keeping the arch
            # in step lets ``build(family, schema, arch)`` rebuild the compressed model.
            dims_now = {**model.arch.embedding_dims, **narrowed}
            model.arch = replace(model.arch, embedding_dims=dims_now)
    ctx.finetune(model, config.finetune_epochs)
    return model


def _narrow(group: FeatureEmbeddings, index: int, dim: int, init: str) -> bool:
    """Replace one plain table by a ``dim``-wide table and projection; False where that saves nothing."""
    import torch
    from torch import nn

    from autocompress.data.schema import PAD_ID

    table = group.tables[index]
    projection = group.projections[index]
    if type(table) is not nn.Embedding:
        return False  # already replaced by another embedding technique
    projected = isinstance(projection, nn.Linear)
    if not (isinstance(projection, nn.Identity) or (projected and projection.bias is None)):
        return False
    vocab, width = table.weight.shape
    out_dim = group.embedding_dim
    params_now = vocab * width + (width * out_dim if projected else 0)
    if dim >= width or vocab * dim + dim * out_dim >= params_now:
        return False
    weight = table.weight.detach()
    new_table = nn.Embedding(vocab, dim, padding_idx=PAD_ID).to(weight.device)
    new_projection = nn.Linear(dim, out_dim, bias=False).to(weight.device)
    with torch.no_grad():
        if init == "svd":
            full = projection(weight).double()  # [vocab, out_dim]: the vectors the model reads today
            u, s, vh = torch.linalg.svd(full, full_matrices=False)
            new_table.weight.copy_(u[:, :dim] * s[:dim])
            new_projection.weight.copy_(vh[:dim].T)
        else:
            new_table.weight.normal_(0.0, dim**-0.5)
        new_table.weight[PAD_ID].zero_()
    group.tables[index] = new_table
    group.projections[index] = new_projection
    return True


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


EXAMPLES = [
    {"alpha": 0.2, "base_dim_ratio": 0.5, "min_dim": 4, "max_dim": 8, "init": "random", "finetune_epochs": 0},
    {"tables": ["item_id"], "finetune_epochs": 0},
]
INVALID = [
    ({"alpha": -0.1}, "mixed_dim_embedding.alpha: must be in [0, 4]"),
    ({"min_dim": 8, "max_dim": 4}, "mixed_dim_embedding.min_dim: (8) must not exceed max_dim (4)"),
    ({"min_dim": 0}, "mixed_dim_embedding.min_dim: must be an integer >= 1"),
    ({"base_dim_ratio": 0.0}, "mixed_dim_embedding.base_dim_ratio: must be in (0, 1]"),
    ({"init": "pca"}, "mixed_dim_embedding.init: 'pca' is not one of ['svd', 'random']"),
    ({"finetune_epochs": -1}, "mixed_dim_embedding.finetune_epochs: must be an integer >= 0"),
    ({"tables": ["no_such_table"]}, "mixed_dim_embedding.tables: unknown name(s) ['no_such_table']"),
]
