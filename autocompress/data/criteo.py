"""Criteo display-ads click logs (the DLRM benchmark data): a TSV file of label, I1..I13, C1..C26.

The file is read in blocks of whole lines; each block's field counts are checked with numpy and
its values parsed by pandas' C parser, and categorical columns are kept as codes into the distinct
strings of their block, so a large file never becomes one Python object per cell. Rows are in
chronological order, so the row number is the timestamp and a "time" split puts the past in train.

Dense ``I`` features: missing -> 0, then ``log1p(max(x, 0))``, standardised with train statistics.
Categorical ``C`` features: the vocabulary keeps values seen at least ``min_frequency`` times in
train; the rest, and values unseen in train, are ``OOV_ID``. An empty ``C`` field is the value
``""`` ("missing"): it gets its own id when it is that frequent in train, and is OOV otherwise.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from autocompress.data.splits import SplitMethod, split
from autocompress.data.table import Dataset, Table
from autocompress.data.vocab import DenseEncoding, SparseEncoding, encode_splits
from autocompress.errors import AutocompressError

CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_SPARSE = tuple(f"C{i}" for i in range(1, 27))
_COLUMNS = ("label", *CRITEO_DENSE, *CRITEO_SPARSE)
_TAB, _NEWLINE = 9, 10


def load_criteo(
    path: str | Path,
    *,
    min_frequency: int = 10,
    max_rows: int | None = None,
    split_method: SplitMethod = "time",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    chunk_bytes: int = 32 << 20,
) -> Dataset:
    """Load a Criteo TSV file (``.gz`` too), split it and encode it with train-only vocabularies.

    ``max_rows`` stops reading after that many lines; ``chunk_bytes`` is the size of the blocks
    the file is read in. A malformed line raises ``AutocompressError`` naming the file and the
    1-based line number.
    """
    path = Path(path)
    if not path.is_file():
        raise AutocompressError(f"Criteo file {str(path)!r} does not exist (or is not a file)")
    if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1):
        raise AutocompressError(f"max_rows must be a positive integer or None, got {max_rows!r}")
    if not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise AutocompressError(f"chunk_bytes must be a positive integer, got {chunk_bytes!r}")

    labels: list[np.ndarray] = []
    dense: list[np.ndarray] = []
    sparse: dict[str, list[np.ndarray]] = {name: [] for name in CRITEO_SPARSE}
    for first_line, block in _line_blocks(path, chunk_bytes, max_rows):
        block_labels, block_dense, block_sparse = _parse_block(path, first_line, block)
        labels.append(block_labels)
        dense.append(block_dense)
        for name in CRITEO_SPARSE:
            sparse[name].append(block_sparse[name])
    if not labels:
        raise AutocompressError(f"Criteo file {str(path)!r} has no rows")

    all_dense = np.concatenate(dense)
    features: dict[str, np.ndarray] = {name: all_dense[:, i] for i, name in enumerate(CRITEO_DENSE)}
    features.update({name: np.concatenate(parts) for name, parts in sparse.items()})
    all_labels = np.concatenate(labels)
    raw = Table(features=features, labels=all_labels, timestamps=np.arange(len(all_labels), dtype=np.int64))
    return encode_splits(
        "criteo",
        split(raw, method=split_method, fractions=fractions, seed=seed),
        dense=[DenseEncoding(name, side="context", log1p=True) for name in CRITEO_DENSE],
        sparse=[SparseEncoding(name, side="context", min_frequency=min_frequency) for name in CRITEO_SPARSE],
        info={
            "source": str(path),
            "format": "criteo-tsv",
            "rows": len(all_labels),
            "min_frequency": min_frequency,
        },
    )


def _open(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _line_blocks(path: Path, chunk_bytes: int, max_rows: int | None) -> Iterator[tuple[int, bytes]]:
    """Yield ``(number of the block's first line, bytes of whole lines ending in a newline)``."""
    next_line = 1
    rows_left = max_rows
    carry = b""
    with _open(path) as stream:
        while rows_left is None or rows_left > 0:
            data = stream.read(chunk_bytes)
            if not data:
                if carry:
                    block = carry if carry.endswith(b"\n") else carry + b"\n"
                    yield next_line, _first_lines(block, rows_left)
                return
            buffer = carry + data
            cut = buffer.rfind(b"\n")
            if cut < 0:
                carry = buffer
                continue
            block, carry = _first_lines(buffer[: cut + 1], rows_left), buffer[cut + 1 :]
            count = block.count(b"\n")
            yield next_line, block
            next_line += count
            if rows_left is not None:
                rows_left -= count


def _first_lines(block: bytes, limit: int | None) -> bytes:
    if limit is None:
        return block
    newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == _NEWLINE)
    if len(newlines) <= limit:
        return block
    return block[: int(newlines[limit - 1]) + 1]


def _parse_block(
    path: Path, first_line: int, block: bytes
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Labels ``[n]``, dense matrix ``[n, 13]`` (missing -> 0) and raw categorical columns of a block."""
    bytes_ = np.frombuffer(block, dtype=np.uint8)
    newlines = np.flatnonzero(bytes_ == _NEWLINE)
    tabs_before = np.searchsorted(np.flatnonzero(bytes_ == _TAB), newlines)
    tabs_per_line = np.diff(tabs_before, prepend=0)
    bad = np.flatnonzero(tabs_per_line != len(_COLUMNS) - 1)
    if bad.size:
        k = int(bad[0])
        raise AutocompressError(
            f"{path}: line {first_line + k}: expected {len(_COLUMNS)} tab-separated fields "
            f"(label, I1..I13, C1..C26), found {int(tabs_per_line[k]) + 1}"
        )
    numeric = ("label", *CRITEO_DENSE)
    try:
        frame = pd.read_csv(
            io.BytesIO(block),
            sep="\t",
            header=None,
            names=list(_COLUMNS),
            dtype={**dict.fromkeys(numeric, np.float64), **dict.fromkeys(CRITEO_SPARSE, object)},
            keep_default_na=False,
            na_values={name: [""] for name in numeric},
            quoting=csv.QUOTE_NONE,
            skip_blank_lines=False,
            engine="c",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        _raise_first_bad_line(path, first_line, block)
        last_line = first_line + len(newlines) - 1
        raise AutocompressError(f"{path}: lines {first_line}-{last_line} cannot be parsed: {exc}") from None
    label = frame["label"].to_numpy()
    dense = frame[list(CRITEO_DENSE)].to_numpy()
    bad_rows = ~np.isin(label, (0.0, 1.0)) | (np.isfinite(dense) & (np.mod(dense, 1.0) != 0)).any(axis=1)
    if bad_rows.any():
        _raise_first_bad_line(path, first_line, block)
    sparse: dict[str, np.ndarray] = {}
    for name in CRITEO_SPARSE:
        codes, uniques = pd.factorize(frame[name], use_na_sentinel=False)
        sparse[name] = np.asarray(uniques, dtype=object)[codes]
    return label.astype(np.float32), np.nan_to_num(dense, nan=0.0), sparse


def _raise_first_bad_line(path: Path, first_line: int, block: bytes) -> None:
    """Re-read a block as text and raise the error of its first line with a bad label or I value."""
    frame = pd.read_csv(
        io.BytesIO(block),
        sep="\t",
        header=None,
        names=list(_COLUMNS),
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        quoting=csv.QUOTE_NONE,
        skip_blank_lines=False,
        engine="c",
    )
    bad = ~frame["label"].isin(["0", "1"]).to_numpy()
    first_bad = np.full(len(frame), "", dtype=object)
    first_bad[bad] = "label"
    for name in CRITEO_DENSE:
        column = frame[name]
        wrong = ~(column.str.fullmatch(r"-?\d+") | (column == "")).to_numpy(dtype=bool)
        first_bad[wrong & (first_bad == "")] = name
    rows = np.flatnonzero(first_bad != "")
    if not rows.size:
        return
    k = int(rows[0])
    column_name = str(first_bad[k])
    value = frame[column_name].iloc[k]
    allowed = "0 or 1" if column_name == "label" else "an integer or empty"
    raise AutocompressError(f"{path}: line {first_line + k}: {column_name} is {value!r}, expected {allowed}")
