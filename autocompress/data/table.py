"""Columnar in-memory splits: what loaders produce and what training and evaluation consume."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autocompress.data.schema import FeatureSchema
from autocompress.errors import AutocompressError


@dataclass
class Table:
    """One split: feature columns keyed by name, labels, and optional group ids and timestamps.

    Columns follow the batch layout in ``autocompress.data.schema``; ``groups`` identifies the
    query/session a row belongs to (for GAUC and NDCG), ``timestamps`` orders rows in time.
    """

    features: dict[str, np.ndarray]
    labels: np.ndarray
    groups: np.ndarray | None = None
    timestamps: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.float32)
        n = len(self.labels)
        for name, col in self.features.items():
            if len(col) != n:
                raise AutocompressError(f"column {name!r} has {len(col)} rows, labels have {n}")
        for name, extra in (("groups", self.groups), ("timestamps", self.timestamps)):
            if extra is not None and len(extra) != n:
                raise AutocompressError(f"{name} has {len(extra)} rows, labels have {n}")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Table:
        """Rows at ``index`` (an integer array or a boolean mask), as a new table."""
        return Table(
            features={k: v[index] for k, v in self.features.items()},
            labels=self.labels[index],
            groups=None if self.groups is None else self.groups[index],
            timestamps=None if self.timestamps is None else self.timestamps[index],
        )

    def head(self, n: int) -> Table:
        return self.take(np.arange(min(n, len(self))))

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Yield ``(features, labels)`` mini-batches; a shuffle is deterministic by ``seed``."""
        if batch_size <= 0:
            raise AutocompressError(f"batch_size must be > 0, got {batch_size}")
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else None
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
            yield {k: v[idx] for k, v in self.features.items()}, self.labels[idx]

    def check(self, schema: FeatureSchema, where: str) -> None:
        """Raise a clear error when the columns do not match ``schema``."""
        schema.validate_batch(self.features, where=where)
        if self.groups is None and schema.group_id is not None:
            raise AutocompressError(
                f"{where}: schema names group_id {schema.group_id!r} but no groups were loaded"
            )


@dataclass
class Dataset:
    """A loaded dataset: its schema, three splits, and what its source knows about it.

    ``oracle_test_scores`` holds the hidden ground-truth logit of every test row when the data
    is synthetic; its AUC is the quality ceiling every report shows.
    """

    name: str
    schema: FeatureSchema
    train: Table
    valid: Table
    test: Table
    oracle_test_scores: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "valid", "test"):
            table: Table = getattr(self, split)
            table.check(self.schema, where=f"{self.name}.{split}")
            if len(table) == 0:
                raise AutocompressError(
                    f"{self.name}.{split} is empty: use more rows or other split fractions"
                )

    @property
    def oracle_auc(self) -> float | None:
        if self.oracle_test_scores is None:
            return None
        from autocompress.measure.quality import auc

        return auc(self.test.labels, self.oracle_test_scores)
