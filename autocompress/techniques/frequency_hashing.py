"""Frequency-threshold hashing: frequent ids keep their own rows, rare ids share hash buckets.

Most rows of a large table belong to ids seen a handful of times in training (or never), whose
vectors are barely trained. Ids seen fewer than ``min_count`` times in ``ctx.train`` (counting the
sparse feature and every sequence that shares its table) share ``hash_buckets`` rows by
``id % hash_buckets``; the padding and out-of-vocabulary ids and the frequent ids keep theirs.
The model gathers through a remap ``[V]`` into the smaller table, whose frequent rows are copied
from the trained table and whose buckets start as the frequency-weighted mean of their rare rows.
The remap is int16 when the smaller table has at most 65,536 rows (2 bytes an id, offset by 32,768:
ONNX has no uint16 in torch's exporter), else int32 (4 bytes), versus ``4 * dim`` for a row of floats;
on the default data the remaps of ``user_id`` and ``item_id`` weigh 1.2 MB in int32, 0.6 MB in int16.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from autocompress.distributions import IntRange
from autocompress.errors import AutocompressError
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext

if TYPE_CHECKING:
    import torch
    from torch import nn

    from autocompress.data.schema import FeatureSchema
    from autocompress.data.table import Table

# A remap stores ``row - REMAP_OFFSET`` in int16 when the rows fit in 16 bits, else ``row`` in int32.
REMAP_OFFSET = 32_768
NARROW_REMAP_ROWS = 65_536


def remap_bytes_per_id(rows: int) -> int:
    """Bytes the remap spends on each id of a table hashed into ``rows`` rows: 2 (int16) or 4 (int32)."""
    return 2 if rows <= NARROW_REMAP_ROWS else 4


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """The frequency below which ids share rows, how many shared rows, and which tables."""

    name: ClassVar[str] = "frequency_hashing"
    level: ClassVar[Level] = "torch"

    min_count: int = param(
        3, IntRange(1, 50, log=True), "ids seen fewer times than this in training share hash buckets"
    )
    hash_buckets: int = param(
        256, IntRange(16, 65_536, log=True), "rows shared by the rare ids of a table (id % hash_buckets)"
    )
    min_vocab: int = param(
        1000,
        IntRange(100, 100_000, log=True),
        "hash only tables with more rows than this (when `tables` is empty)",
    )
    tables: tuple[str, ...] = param((), None, "sparse features whose tables are hashed (empty: by min_vocab)")
    table_buckets: tuple[tuple[str, int], ...] = param(
        (),
        None,
        "per-table buckets overriding `hash_buckets`: {table: buckets}; a table named here is hashed",
    )
    finetune_epochs: int = param(1, IntRange(0, 3), "epochs of training after hashing")

    def __post_init__(self) -> None:
        object.__setattr__(self, "table_buckets", self.named_pairs("table_buckets", "table", "buckets"))
        super().__post_init__()

    def check(self) -> None:
        self.require_int("min_count", 1)
        self.require_int("hash_buckets", 1)
        self.require_int("min_vocab", 0)
        self.require_int("finetune_epochs", 0)
        for table, buckets in self.table_buckets:
            if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
                raise self.fail("table_buckets", f"{table!r}: must be an integer >= 1, got {buckets!r}")


def id_counts(train: Table, schema: FeatureSchema, table_name: str) -> np.ndarray:
    """How often each id of a sparse feature's table occurs in ``train``: ``[vocab]`` int64.

    Counts the feature's own column and every sequence feature that shares its table; the
    padding id counts zero.
    """
    from autocompress.data.schema import PAD_ID

    vocab = schema.sparse_feature(table_name).vocab_size
    columns = [table_name, *(s.name for s in schema.sequence if s.shares_embedding_with == table_name)]
    counts = np.zeros(vocab, dtype=np.int64)
    for column in columns:
        ids = np.asarray(train.features[column]).ravel()
        counts += np.bincount(ids[(ids >= 0) & (ids < vocab)], minlength=vocab)
    counts[PAD_ID] = 0
    return counts


def hashed_rows(counts: np.ndarray, min_count: int, hash_buckets: int) -> tuple[np.ndarray, int]:
    """The remap ``old id -> new row`` (int32 ``[vocab]``) and the new table's row count.

    Rows: the padding id, the out-of-vocabulary id, the frequent ids in id order, then the
    ``hash_buckets`` buckets of the rare ids (``id % hash_buckets``).
    """
    from autocompress.data.schema import FIRST_ID

    vocab = len(counts)
    ids = np.arange(vocab)
    frequent = (counts >= min_count) & (ids >= FIRST_ID)
    rare = ~frequent & (ids >= FIRST_ID)
    row_of = ids.astype(np.int32)  # PAD_ID and OOV_ID keep rows 0 and 1
    n_frequent = int(frequent.sum())
    row_of[frequent] = FIRST_ID + np.arange(n_frequent, dtype=np.int32)
    row_of[rare] = (FIRST_ID + n_frequent + ids[rare] % hash_buckets).astype(np.int32)
    return row_of, FIRST_ID + n_frequent + hash_buckets


def apply(model: nn.Module, config: Config, ctx: TechniqueContext) -> nn.Module:
    """Hash the rare ids of every chosen table of every FeatureEmbeddings in ``model``."""
    from torch import nn

    from autocompress.models.layers import FeatureEmbeddings

    groups = [m for m in model.modules() if isinstance(m, FeatureEmbeddings)]
    known = {name for group in groups for name in group.table_names}
    config.check_names("tables", config.tables, known)
    buckets = dict(config.table_buckets)
    config.check_names("table_buckets", buckets, known)
    if ctx.train is None:
        raise AutocompressError(
            f"{config.name}: needs training data (ctx.train) to count how often each id occurs"
        )
    counts: dict[str, np.ndarray] = {}
    for group in groups:
        for i, name in enumerate(group.table_names):
            table = group.tables[i]
            vocab = ctx.schema.sparse_feature(name).vocab_size
            wanted = name in config.tables if config.tables else vocab > config.min_vocab
            if not (wanted or name in buckets) or type(table) is not nn.Embedding:
                continue
            if name not in counts:
                counts[name] = id_counts(ctx.train, ctx.schema, name)
            row_of, rows = hashed_rows(counts[name], config.min_count, buckets.get(name, config.hash_buckets))
            dim = table.weight.shape[1]
            if vocab * remap_bytes_per_id(rows) + rows * dim * 4 >= vocab * dim * 4:
                continue  # narrow tables (e.g. DeepFM first-order weights) would grow
            weights = _hashed_weight(table.weight.detach(), row_of, rows, counts[name])
            group.tables[i] = _hashed_embedding_class()(row_of, weights)
    ctx.finetune(model, config.finetune_epochs)
    return model


def _hashed_weight(weight: torch.Tensor, row_of: np.ndarray, rows: int, counts: np.ndarray) -> torch.Tensor:
    """The smaller table: kept rows copied, each bucket the (count + 1)-weighted mean of its ids' rows."""
    import torch

    index = torch.from_numpy(row_of.astype(np.int64)).to(weight.device)
    mass = torch.from_numpy(counts + 1.0).to(weight.device, torch.float64)
    total = torch.zeros(rows, weight.shape[1], dtype=torch.float64, device=weight.device)
    total.index_add_(0, index, weight.double() * mass[:, None])
    norm = torch.zeros(rows, dtype=torch.float64, device=weight.device).index_add_(0, index, mass)
    # A row reached by a single id (a kept row) is that id's row exactly; an empty bucket stays zero.
    return (total / norm.clamp(min=1e-12)[:, None]).to(weight.dtype)


def __getattr__(name: str) -> Any:
    # HashedEmbedding subclasses torch.nn.Module; it is built on first use so that loading a Config
    # does not import torch, and resolves here so pickle finds it by its module and name.
    if name == "HashedEmbedding":
        return _hashed_embedding_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _hashed_embedding_class() -> type[nn.Module]:
    import torch
    from torch import nn

    from autocompress.data.schema import PAD_ID

    class HashedEmbedding(nn.Module):
        """A ``num_embeddings``-row table stored as a remap into fewer rows: ``table[row_of[id]]``.

        Drop-in for ``nn.Embedding`` in FeatureEmbeddings; the padding id maps to row 0, which
        stays zero. Exports as two ONNX Gathers (with a Cast and an Add between them when the remap
        is int16).
        """

        row_of: torch.Tensor

        def __init__(self, row_of: np.ndarray, weight: torch.Tensor) -> None:
            super().__init__()
            if remap_bytes_per_id(len(weight)) == 2:
                stored = (np.asarray(row_of, dtype=np.int32) - REMAP_OFFSET).astype(np.int16)
            else:
                stored = np.asarray(row_of, dtype=np.int32)
            self.register_buffer("row_of", torch.from_numpy(np.ascontiguousarray(stored)).to(weight.device))
            self.table = nn.Embedding.from_pretrained(weight.float(), freeze=False, padding_idx=PAD_ID)
            self.num_embeddings = len(row_of)
            self.embedding_dim = weight.shape[1]

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            rows = self.row_of[ids]
            if rows.dtype == torch.int16:
                rows = rows.int() + REMAP_OFFSET
            return self.table(rows)

        def extra_repr(self) -> str:
            return f"{self.num_embeddings}, {self.embedding_dim}"

    HashedEmbedding.__module__ = __name__
    HashedEmbedding.__qualname__ = "HashedEmbedding"
    return HashedEmbedding


EXAMPLES = [
    {"min_count": 10, "hash_buckets": 64, "finetune_epochs": 0},
    {"min_count": 1, "hash_buckets": 16, "tables": ["item_id"], "finetune_epochs": 0},
    {"min_count": 10, "table_buckets": {"user_id": 32, "item_id": 64}, "finetune_epochs": 0},
]
INVALID = [
    ({"hash_buckets": 0}, "frequency_hashing.hash_buckets: must be an integer >= 1"),
    ({"min_count": 0}, "frequency_hashing.min_count: must be an integer >= 1"),
    ({"min_vocab": -1}, "frequency_hashing.min_vocab: must be an integer >= 0"),
    ({"finetune_epochs": -2}, "frequency_hashing.finetune_epochs: must be an integer >= 0"),
    ({"tables": ["no_such_table"]}, "frequency_hashing.tables: unknown name(s) ['no_such_table']"),
    (
        {"table_buckets": {"no_such_table": 8}},
        "frequency_hashing.table_buckets: unknown name(s) ['no_such_table']",
    ),
]
