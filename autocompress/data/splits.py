"""Train / valid / test splits by time or by session that never put one session in two splits."""

from __future__ import annotations

from typing import Literal

import numpy as np

from autocompress.data.table import Table
from autocompress.errors import AutocompressError

SplitMethod = Literal["time", "session"]


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise AutocompressError(
            "split fractions must be three positive numbers summing to 1 "
            f"(train, valid, test), got {fractions}"
        )


def split(
    table: Table,
    method: SplitMethod = "session",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> tuple[Table, Table, Table]:
    """Split ``table`` into train / valid / test.

    ``session``: whole groups go to one split at random (rows without groups count as their own
    group). ``time``: groups are ordered by their first timestamp and cut so that train is the
    past and test the future; a group never straddles a cut.
    """
    _check_fractions(fractions)
    n = len(table)
    groups = table.groups if table.groups is not None else np.arange(n)
    unique, inverse = np.unique(groups, return_inverse=True)
    if method == "session":
        order = np.random.default_rng(seed).permutation(len(unique))
    elif method == "time":
        if table.timestamps is None:
            raise AutocompressError(
                "split method 'time' needs timestamps; this data has none (use 'session')"
            )
        first = np.full(len(unique), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, inverse, table.timestamps.astype(np.int64))
        order = np.argsort(first, kind="stable")
    else:
        raise AutocompressError(f"split method {method!r} is not one of ['time', 'session']")
    group_rows = np.bincount(inverse, minlength=len(unique))[order]
    cum = np.cumsum(group_rows) / n
    cut1 = int(np.searchsorted(cum, fractions[0], side="right"))
    cut2 = int(np.searchsorted(cum, fractions[0] + fractions[1], side="right"))
    part = np.empty(len(unique), dtype=np.int8)
    part[order[:cut1]] = 0
    part[order[cut1:cut2]] = 1
    part[order[cut2:]] = 2
    row_part = part[inverse]
    return tuple(table.take(np.flatnonzero(row_part == k)) for k in range(3))  # type: ignore[return-value]
