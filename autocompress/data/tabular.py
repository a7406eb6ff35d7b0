"""Any CSV or Parquet table, described by a small YAML schema file.

The YAML file names the columns and what they are::

    label: clicked                    # required
    group_id: query_id                # optional: query/session, for GAUC/NDCG and whole-group splits
    timestamp: ts                     # optional: numbers or dates, for "time" splits
    dense: [price, {name: age, side: user}]
    sparse:
      - {name: item_id, side: item, min_frequency: 2}
      - {name: tags, side: item, separator: "|", max_len: 5}   # separator: multi-hot
      - {name: clothing_id, column: "Clothing ID", side: item}  # a header that is not a name
    sequence:
      - {name: clicked_items, shares_embedding_with: item_id, max_len: 20, separator: "|"}
    split: {method: time, fractions: [0.8, 0.1, 0.1]}

Every feature, the label and the group id has a ``name`` that is an identifier (letters, digits,
``_``), because it becomes an ONNX input name and the key of a served request. It reads the column
of that name, or the one ``column`` gives: real exports have headers such as ``Positive Feedback
Count`` or ``Rating ⭐``, read as ``{name: rating, column: "Rating ⭐"}``; the label and the group id
take the same form (``label: {name: recommended, column: "Recommended IND"}``). The timestamp is
no feature and names its column directly. Several features may read one column (a price as a
dense feature and as ids, a user id as the group and as a feature); nothing but the label may read
the label's column, since a feature made of the answer would only teach the model to copy it.

Loading is strict: unknown keys are refused by name, and every column the YAML reads must be in
the data. Vocabularies and dense statistics are fitted on the train split only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autocompress.data.schema import NAME_RULE, Side, is_valid_name
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
_NAMED_COLUMN_KEYS = ("name", "column")
_DENSE_KEYS = ("name", "column", "side")
_SPARSE_KEYS = ("name", "column", "side", "min_frequency", "max_size", "max_len", "separator")
_SEQUENCE_KEYS = ("name", "column", "shares_embedding_with", "max_len", "separator", "side")
_SPLIT_KEYS = ("method", "fractions")


@dataclass(frozen=True)
class TabularDense:
    """A ``dense`` entry: the feature ``name`` read as numbers from the data column ``column``."""

    name: str
    column: str
    side: Side = "context"


@dataclass(frozen=True)
class TabularSparse:
    """A ``sparse`` entry: one id per row, or with ``separator`` a multi-hot list of ids."""

    name: str
    column: str
    side: Side = "context"
    min_frequency: int = 1
    max_size: int | None = None
    max_len: int | None = None  # multi-hot only; None: the longest list in the data
    separator: str | None = None


@dataclass(frozen=True)
class TabularSequence:
    """A ``sequence`` entry: a delimited list of values (most recent last) in a sparse feature's ids."""

    name: str
    column: str
    shares_embedding_with: str
    max_len: int
    separator: str = "|"
    side: Side = "user"


@dataclass(frozen=True)
class TabularSchema:
    """The parsed YAML schema file: which column is what, and how to encode and split them.

    ``label`` and ``group_id`` are names (identifiers); ``label_column`` and ``group_id_column``
    the data columns they are read from. ``timestamp`` is a data column.
    """

    label: str
    label_column: str
    group_id: str | None = None
    group_id_column: str | None = None
    timestamp: str | None = None
    dense: tuple[TabularDense, ...] = ()
    sparse: tuple[TabularSparse, ...] = ()
    sequence: tuple[TabularSequence, ...] = ()
    split_method: SplitMethod | None = None
    fractions: tuple[float, float, float] | None = None

    @property
    def column_of(self) -> dict[str, str]:
        """The data column each name reads: label, group id, then the features in input order."""
        pairs = [(self.label, self.label_column)]
        if self.group_id is not None:
            pairs.append((self.group_id, self.group_id_column or self.group_id))
        pairs += [(f.name, f.column) for f in self.features]
        return dict(pairs)

    @property
    def features(self) -> tuple[TabularDense | TabularSparse | TabularSequence, ...]:
        """Every feature entry in model input order: dense, sparse, sequence."""
        return (*self.dense, *self.sparse, *self.sequence)

    @property
    def readers(self) -> list[tuple[str, str]]:
        """``(who, column)`` for every use of a data column, label first: ``("label 'y'", "Y")``."""
        uses = [(f"label {self.label!r}", self.label_column)]
        if self.group_id is not None:
            uses.append((f"group_id {self.group_id!r}", self.group_id_column or self.group_id))
        if self.timestamp is not None:
            uses.append(("timestamp", self.timestamp))
        uses += [(f"dense feature {d.name!r}", d.column) for d in self.dense]
        uses += [(f"sparse feature {s.name!r}", s.column) for s in self.sparse]
        uses += [(f"sequence feature {q.name!r}", q.column) for q in self.sequence]
        return uses

    @property
    def columns(self) -> list[str]:
        """Every data column the schema reads (label first), each once."""
        return list(dict.fromkeys(column for _, column in self.readers))


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
        features[d.name] = _numbers(frame[d.column], where, f"dense feature {d.name!r}", allow_missing=True)
    sparse: list[SparseEncoding] = []
    for s in schema.sparse:
        raw = frame[s.column].to_numpy(dtype=object)
        width = 1
        if s.separator is not None:
            lists = split_delimited(raw, s.separator, s.max_len)
            width = lists.shape[1]
            raw = lists if width > 1 else lists[:, 0]  # lists of at most one value: single-hot
        features[s.name] = raw
        sparse.append(SparseEncoding(s.name, s.side, s.min_frequency, s.max_size, max_len=width))
    sequence: list[SequenceEncoding] = []
    for q in schema.sequence:
        raw = frame[q.column].to_numpy(dtype=object)
        features[q.name] = split_delimited(raw, q.separator, q.max_len, keep="last")
        sequence.append(SequenceEncoding(q.name, q.shares_embedding_with, q.max_len, side=q.side))

    labels = _numbers(frame[schema.label_column], where, f"label {schema.label!r}", allow_missing=False)
    groups = None
    if schema.group_id_column is not None:
        group_values = frame[schema.group_id_column].to_numpy()
        groups = pd.factorize(canonical_strings(group_values))[0].astype(np.int64)
    timestamps = None
    if schema.timestamp is not None:
        timestamps = _timestamps(frame[schema.timestamp], where, schema.timestamp)
    raw_table = Table(features=features, labels=labels, groups=groups, timestamps=timestamps)

    method = split_method or schema.split_method or ("time" if timestamps is not None else "session")
    chosen = tuple(fractions or schema.fractions or DEFAULT_FRACTIONS)
    return encode_splits(
        data_path.name,
        split(raw_table, method=method, fractions=chosen, seed=seed),  # type: ignore[arg-type]
        dense=[DenseEncoding(d.name, side=d.side) for d in schema.dense],
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
            "columns": schema.column_of,  # name -> data column; served requests use the names
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
    label, label_column = _named_column(top["label"], f"{where}: label")
    group_id = group_id_column = None
    if top.get("group_id") is not None:
        group_id, group_id_column = _named_column(top["group_id"], f"{where}: group_id")
    timestamp = None if top.get("timestamp") is None else _text(top["timestamp"], f"{where}: timestamp")

    dense: list[TabularDense] = []
    for i, entry in enumerate(_entries(top.get("dense"), f"{where}: dense")):
        at = f"{where}: dense[{i}]"
        item = _mapping({"name": entry} if isinstance(entry, str) else entry, at, _DENSE_KEYS)
        name = _name(item, at)
        dense.append(TabularDense(name, _column(item, at, name), side=_side(item, at, "context")))

    sparse: list[TabularSparse] = []
    for i, entry in enumerate(_entries(top.get("sparse"), f"{where}: sparse")):
        at = f"{where}: sparse[{i}]"
        item = _mapping({"name": entry} if isinstance(entry, str) else entry, at, _SPARSE_KEYS)
        separator = None if item.get("separator") is None else _text(item["separator"], f"{at}.separator")
        max_len = None if item.get("max_len") is None else _count(item["max_len"], f"{at}.max_len")
        if max_len is not None and separator is None:
            raise AutocompressError(f"{at}.max_len is only for multi-hot columns: give a separator too")
        max_size = None if item.get("max_size") is None else _count(item["max_size"], f"{at}.max_size")
        name = _name(item, at)
        sparse.append(
            TabularSparse(
                name,
                _column(item, at, name),
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
        name = _name(item, at)
        sequence.append(
            TabularSequence(
                name,
                _column(item, at, name),
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
    schema = TabularSchema(
        label=label,
        label_column=label_column,
        group_id=group_id,
        group_id_column=group_id_column,
        timestamp=timestamp,
        dense=tuple(dense),
        sparse=tuple(sparse),
        sequence=tuple(sequence),
        split_method=split_method,
        fractions=split_fractions,
    )
    _check_names_and_columns(schema, where)
    return schema


def _check_names_and_columns(schema: TabularSchema, where: str) -> None:
    """Names are unique; columns may be shared, except the label's, which no feature may read."""
    owners = [("label", schema.label, schema.label_column)]
    if schema.group_id is not None:
        owners.append(("group_id", schema.group_id, schema.group_id_column or schema.group_id))
    for kind in ("dense", "sparse", "sequence"):
        entries: tuple[TabularDense | TabularSparse | TabularSequence, ...] = getattr(schema, kind)
        owners += [(f"{kind}[{i}]", f.name, f.column) for i, f in enumerate(entries)]
    first: dict[str, str] = {}
    for field, name, column in owners:
        if name in first:
            raise AutocompressError(
                f"{where}: {field}: name {name!r} is already the name of {first[name]}; "
                "the features, the label and the group_id each need their own name"
            )
        first[name] = field
        if field != "label" and column == schema.label_column:
            raise AutocompressError(
                f"{where}: {field} reads {column!r}, the label's column; a feature or group made of "
                "the label would give the model the answer"
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
        raise AutocompressError(
            f"{where}: 'name' (an identifier; also the column unless 'column' is given) is required"
        )
    return _identifier(item["name"], f"{where}.name")


def _identifier(value: Any, where: str) -> str:
    """A name that becomes an ONNX input and a JSON key; a header that is not one goes in ``column``."""
    name = _text(value, where)
    if not is_valid_name(name):
        raise AutocompressError(
            f"{where}: {name!r} is not allowed as a name: {NAME_RULE}; to read a column with this "
            f"header, name it and give the header as column: {{name: my_name, column: {name!r}}}"
        )
    return name


def _column(item: Mapping[str, Any], where: str, name: str) -> str:
    """The data column an entry reads: its ``column``, any header at all, or else its name."""
    return name if item.get("column") is None else _text(item["column"], f"{where}.column")


def _named_column(value: Any, where: str) -> tuple[str, str]:
    """``label`` or ``group_id``: a column whose header is a valid name, or ``{name, column}``."""
    if isinstance(value, Mapping):
        item = _mapping(value, where, _NAMED_COLUMN_KEYS)
        name = _name(item, where)
        return name, _column(item, where, name)
    name = _identifier(value, where)
    return name, name


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
    for reader, column in schema.readers:
        if column not in available:
            raise AutocompressError(
                f"schema does not match the data: {reader} reads column {column!r}, which is not in "
                f"{path} (columns: {available})"
            )
    id_columns = (
        [schema.group_id_column] + [s.column for s in schema.sparse] + [q.column for q in schema.sequence]
    )
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
