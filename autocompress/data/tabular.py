"""Any CSV or Parquet table, described by a small YAML schema file.

The YAML file names the columns and what they are::

    label: clicked                    # required
    group_id: query_id                # optional: query/session, for GAUC/NDCG and whole-group splits
    timestamp: ts                     # optional: numbers or dates, for "time" splits
    dense: [price, {name: age, side: user}]
    sparse:
      - {name: item_id, side: item, min_frequency: 2}
      - {name: tags, side: item, separator: "|", max_len: 5}   # separator: multi-hot
    sequence:
      - {name: clicked_items, shares_embedding_with: item_id, max_len: 20, separator: "|"}
    split: {method: time, fractions: [0.8, 0.1, 0.1]}

Loading is strict: unknown keys are refused by name, and every column the YAML names must be in
the data. Vocabularies and dense statistics are fitted on the train split only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autocompress.data.schema import Side
from autocompress.data.splits import SplitMethod, split
from autocompress.data.table import Dataset, Table
from autocompress.data.vocab import (
    DenseEncoding,
    SequenceEncoding,
    SparseEncoding,
    canonical_strings,
    encode_splits,
    split_delimited,
)
from autocompress.errors import AutocompressError

DATA_EXTENSIONS = (".csv", ".csv.gz", ".parquet", ".pq")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
_SIDES = ("user", "item", "context")
_TOP_KEYS = ("label", "group_id", "timestamp", "dense", "sparse", "sequence", "split")
_DENSE_KEYS = ("name", "side")
_SPARSE_KEYS = ("name", "side", "min_frequency", "max_size", "max_len", "separator")
_SEQUENCE_KEYS = ("name", "shares_embedding_with", "max_len", "separator", "side")
_SPLIT_KEYS = ("method", "fractions")


@dataclass(frozen=True)
class TabularSparse:
    """A ``sparse`` entry: one id per row, or with ``separator`` a multi-hot list of ids."""

    name: str
    side: Side = "context"
    min_frequency: int = 1
    max_size: int | None = None
    max_len: int | None = None  # multi-hot only; None: the longest list in the data
    separator: str | None = None


@dataclass(frozen=True)
class TabularSequence:
    """A ``sequence`` entry: a delimited list of values (most recent last) in a sparse feature's ids."""

    name: str
    shares_embedding_with: str
    max_len: int
    separator: str = "|"
    side: Side = "user"


@dataclass(frozen=True)
class TabularSchema:
    """The parsed YAML schema file: which column is what, and how to encode and split them."""

    label: str
    group_id: str | None = None
    timestamp: str | None = None
    dense: tuple[DenseEncoding, ...] = ()
    sparse: tuple[TabularSparse, ...] = ()
    sequence: tuple[TabularSequence, ...] = ()
    split_method: SplitMethod | None = None
    fractions: tuple[float, float, float] | None = None

    @property
    def columns(self) -> list[str]:
        """Every data column the schema reads (label first), each once."""
        names = [self.label, self.group_id, self.timestamp]
        names += (
            [d.name for d in self.dense] + [s.name for s in self.sparse] + [q.name for q in self.sequence]
        )
        return list(dict.fromkeys(n for n in names if n is not None))


def load_tabular(
    data_path: str | Path,
    schema_path: str | Path,
    *,
    split_method: SplitMethod | None = None,
    fractions: tuple[float, float, float] | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a CSV or Parquet file described by a YAML schema file, split it and encode it.

    ``split_method`` and ``fractions`` override the YAML ``split`` section; without either the
    split is by time when the schema names a timestamp column, else by session (group).
    """
    data_path, schema_path = Path(data_path), Path(schema_path)
    schema = read_tabular_schema(schema_path)
    frame = _read_data(data_path, schema)
    where = str(data_path)

    features: dict[str, np.ndarray] = {}
    for d in schema.dense:
        features[d.name] = _numbers(frame[d.name], where, f"dense feature {d.name!r}", allow_missing=True)
    sparse: list[SparseEncoding] = []
    for s in schema.sparse:
        raw = frame[s.name].to_numpy(dtype=object)
        width = 1
        if s.separator is not None:
            lists = split_delimited(raw, s.separator, s.max_len)
            width = lists.shape[1]
            raw = lists if width > 1 else lists[:, 0]  # lists of at most one value: single-hot
        features[s.name] = raw
        sparse.append(SparseEncoding(s.name, s.side, s.min_frequency, s.max_size, max_len=width))
    sequence: list[SequenceEncoding] = []
    for q in schema.sequence:
        raw = frame[q.name].to_numpy(dtype=object)
        features[q.name] = split_delimited(raw, q.separator, q.max_len, keep="last")
        sequence.append(SequenceEncoding(q.name, q.shares_embedding_with, q.max_len, side=q.side))

    labels = _numbers(frame[schema.label], where, f"label {schema.label!r}", allow_missing=False)
    groups = None
    if schema.group_id is not None:
        groups = pd.factorize(canonical_strings(frame[schema.group_id].to_numpy()))[0].astype(np.int64)
    timestamps = None
    if schema.timestamp is not None:
        timestamps = _timestamps(frame[schema.timestamp], where, schema.timestamp)
    raw_table = Table(features=features, labels=labels, groups=groups, timestamps=timestamps)

    method = split_method or schema.split_method or ("time" if timestamps is not None else "session")
    chosen = tuple(fractions or schema.fractions or DEFAULT_FRACTIONS)
    return encode_splits(
        data_path.name,
        split(raw_table, method=method, fractions=chosen, seed=seed),  # type: ignore[arg-type]
        dense=schema.dense,
        sparse=sparse,
        sequence=sequence,
        label=schema.label,
        group_id=schema.group_id,
        info={
            "source": str(data_path),
            "schema_file": str(schema_path),
            "format": "tabular",
            "rows": len(raw_table),
            "split_method": method,
        },
    )


def read_tabular_schema(schema_path: str | Path) -> TabularSchema:
    """Parse and check a YAML schema file; every error names the file and the offending key."""
    import yaml

    path = Path(schema_path)
    if not path.is_file():
        raise AutocompressError(f"schema file {str(path)!r} does not exist (or is not a file)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AutocompressError(f"{path}: not a readable YAML file: {exc}") from None
    where = str(path)
    top = _mapping(data, where, _TOP_KEYS)
    if "label" not in top:
        raise AutocompressError(f"{where}: 'label' (the label column) is required")
    label = _text(top["label"], f"{where}: label")
    group_id = None if top.get("group_id") is None else _text(top["group_id"], f"{where}: group_id")
    timestamp = None if top.get("timestamp") is None else _text(top["timestamp"], f"{where}: timestamp")

    dense: list[DenseEncoding] = []
    for i, entry in enumerate(_entries(top.get("dense"), f"{where}: dense")):
        at = f"{where}: dense[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        item = _mapping(entry, at, _DENSE_KEYS)
        dense.append(DenseEncoding(_name(item, at), side=_side(item, at, "context")))

    sparse: list[TabularSparse] = []
    for i, entry in enumerate(_entries(top.get("sparse"), f"{where}: sparse")):
        at = f"{where}: sparse[{i}]"
        item = _mapping({"name": entry} if isinstance(entry, str) else entry, at, _SPARSE_KEYS)
        separator = None if item.get("separator") is None else _text(item["separator"], f"{at}.separator")
        max_len = None if item.get("max_len") is None else _count(item["max_len"], f"{at}.max_len")
        if max_len is not None and separator is None:
            raise AutocompressError(f"{at}.max_len is only for multi-hot columns: give a separator too")
        max_size = None if item.get("max_size") is None else _count(item["max_size"], f"{at}.max_size")
        sparse.append(
            TabularSparse(
                _name(item, at),
                side=_side(item, at, "context"),
                min_frequency=_count(item.get("min_frequency", 1), f"{at}.min_frequency"),
                max_size=max_size,
                max_len=max_len,
                separator=separator,
            )
        )

    sparse_names = [s.name for s in sparse]
    sequence: list[TabularSequence] = []
    for i, entry in enumerate(_entries(top.get("sequence"), f"{where}: sequence")):
        at = f"{where}: sequence[{i}]"
        item = _mapping(entry, at, _SEQUENCE_KEYS)
        for key in ("shares_embedding_with", "max_len"):
            if key not in item:
                raise AutocompressError(f"{at}: {key!r} is required")
        shared = _text(item["shares_embedding_with"], f"{at}.shares_embedding_with")
        if shared not in sparse_names:
            raise AutocompressError(
                f"{at}.shares_embedding_with: {shared!r} is not a sparse feature (sparse: {sparse_names})"
            )
        sequence.append(
            TabularSequence(
                _name(item, at),
                shares_embedding_with=shared,
                max_len=_count(item["max_len"], f"{at}.max_len"),
                separator=_text(item.get("separator", "|"), f"{at}.separator"),
                side=_side(item, at, "user"),
            )
        )

    split_method: SplitMethod | None = None
    split_fractions: tuple[float, float, float] | None = None
    if top.get("split") is not None:
        section = _mapping(top["split"], f"{where}: split", _SPLIT_KEYS)
        if section.get("method") is not None:
            if section["method"] not in ("time", "session"):
                raise AutocompressError(
                    f"{where}: split.method {section['method']!r} is not one of ['time', 'session']"
                )
            split_method = section["method"]
        if section.get("fractions") is not None:
            values = section["fractions"]
            if (
                not isinstance(values, list | tuple)
                or len(values) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            ):
                raise AutocompressError(
                    f"{where}: split.fractions must be three numbers (train, valid, test), got {values!r}"
                )
            split_fractions = (float(values[0]), float(values[1]), float(values[2]))
    return TabularSchema(
        label=label,
        group_id=group_id,
        timestamp=timestamp,
        dense=tuple(dense),
        sparse=tuple(sparse),
        sequence=tuple(sequence),
        split_method=split_method,
        fractions=split_fractions,
    )


def _mapping(data: Any, where: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise AutocompressError(f"{where}: expected a mapping with keys {list(allowed)}, got {data!r}")
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise AutocompressError(f"{where}: unknown key(s) {unknown}; allowed: {list(allowed)}")
    return data


def _entries(data: Any, where: str) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise AutocompressError(f"{where}: expected a list, got {data!r}")
    return data


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise AutocompressError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _name(item: Mapping[str, Any], where: str) -> str:
    if "name" not in item:
        raise AutocompressError(f"{where}: 'name' (the column) is required")
    return _text(item["name"], f"{where}.name")


def _side(item: Mapping[str, Any], where: str, default: Side) -> Side:
    side = item.get("side", default)
    if side not in _SIDES:
        raise AutocompressError(f"{where}.side: {side!r} is not one of {list(_SIDES)}")
    return side


def _count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise AutocompressError(f"{where}: expected an integer >= 1, got {value!r}")
    return value


def _read_data(path: Path, schema: TabularSchema) -> pd.DataFrame:
    """Read the columns the schema names; id-like columns of a CSV stay strings (``007`` is not 7)."""
    if not path.is_file():
        raise AutocompressError(f"data file {str(path)!r} does not exist (or is not a file)")
    name = path.name.lower()
    if not name.endswith(DATA_EXTENSIONS):
        raise AutocompressError(
            f"data file {str(path)!r}: unsupported extension; allowed: {list(DATA_EXTENSIONS)}"
        )
    is_csv = name.endswith((".csv", ".csv.gz"))
    try:
        if is_csv:
            available = list(pd.read_csv(path, nrows=0).columns)
        else:
            import pyarrow.parquet as pq

            available = list(pq.read_schema(path).names)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise AutocompressError(f"{path}: cannot be read: {exc}") from None
    for column in schema.columns:
        if column not in available:
            raise AutocompressError(
                f"schema does not match the data: column {column!r} is not in {path} (columns: {available})"
            )
    id_columns = [schema.group_id] + [s.name for s in schema.sparse] + [q.name for q in schema.sequence]
    try:
        if is_csv:
            return pd.read_csv(
                path, usecols=schema.columns, dtype=dict.fromkeys((c for c in id_columns if c), object)
            )
        return pd.read_parquet(path, columns=schema.columns)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise AutocompressError(f"{path}: cannot be read: {exc}") from None


def _numbers(column: pd.Series, where: str, what: str, *, allow_missing: bool) -> np.ndarray:
    """A column as float64; a value that is not a number is reported with its 1-based data row."""
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    missing = column.isna().to_numpy()
    bad = np.isnan(numbers) & ~missing
    if not allow_missing:
        bad |= missing
    bad |= np.isinf(numbers)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise AutocompressError(
            f"{where}: {what} (column {column.name!r}) has value {column.iloc[k]!r} in data row {k + 1}, "
            "which is not a number"
        )
    return numbers


def _timestamps(column: pd.Series, where: str, name: str) -> np.ndarray:
    """Timestamps as int64: numbers as they are, dates and datetimes as seconds since 1970 (UTC)."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return _numbers(column, where, f"timestamp {name!r}", allow_missing=False).astype(np.int64)
    try:
        moments = pd.to_datetime(column, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise AutocompressError(
            f"{where}: timestamp column {name!r} holds values that are neither numbers nor dates: {exc}"
        ) from None
    if moments.isna().any():
        k = int(np.flatnonzero(moments.isna().to_numpy())[0])
        raise AutocompressError(f"{where}: timestamp column {name!r} is empty in data row {k + 1}")
    return ((moments - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
