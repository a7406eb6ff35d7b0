"""Encoders fitted on the train split: vocabularies for id features, standardisation for dense ones.

Every real-data loader parses its files into a table of raw values, splits it, and calls
``encode_splits``, which fits each encoder on the train split only and encodes all three splits, so
nothing from valid or test leaks into a vocabulary or a mean. ``Vocabulary`` and ``DenseScaler``
round-trip through JSON because a served model must map raw request values exactly the same way.

Raw values are compared by their canonical string (``canonical_value``): ``5``, ``5.0``, ``"5"`` and
``np.int64(5)`` are one value, and a missing value (``None``, NaN, ``""``) is the value ``""``, which
gets an id of its own when it is frequent enough in train, like any other value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from autocompress.data.schema import (
    FIRST_ID,
    OOV_ID,
    PAD_ID,
    DenseFeature,
    FeatureSchema,
    SequenceFeature,
    Side,
    SparseFeature,
)
from autocompress.data.table import Dataset, Table
from autocompress.errors import AutocompressError, refuse_unknown_fields

MISSING_VALUE = ""
VOCABULARY_VERSION = 1


def canonical_value(value: object) -> str:
    """The string a raw value is known by: integers (and integral floats) as digits, missing as ``""``.

    One canonical form lets a pandas int column, the same column read as float because it has
    gaps, and a JSON request body all map to the same id.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return MISSING_VALUE
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return MISSING_VALUE
        return str(int(number)) if number.is_integer() else repr(number)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def canonical_strings(values: Any) -> np.ndarray:
    """Canonical strings of many raw values (any shape, result flattened to an object array).

    Only the distinct values are converted one by one, so this stays fast on millions of rows.
    """
    codes, uniques = _factorize(values)
    names = _canonical_uniques(uniques)
    return np.append(names, MISSING_VALUE).astype(object)[codes]


def _factorize(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the flattened values into their distinct values; missing values get code -1."""
    if isinstance(values, pd.Series | pd.Index):
        arr = values.to_numpy()
    elif isinstance(values, np.ndarray):
        arr = values
    else:  # a list: numpy would turn [5, "5.0"] into strings before we see the numbers
        arr = np.asarray(values, dtype=object)
    if arr.dtype.kind in "US":
        arr = arr.astype(object)
    codes, uniques = pd.factorize(arr.ravel(), use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), np.asarray(uniques)


def _canonical_uniques(uniques: np.ndarray) -> np.ndarray:
    if uniques.dtype.kind in "iu":
        return uniques.astype(str).astype(object)
    if pd.api.types.infer_dtype(uniques, skipna=False) == "string":
        return uniques.astype(object)
    return np.array([canonical_value(v) for v in uniques.tolist()], dtype=object)


def _check_count(what: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise AutocompressError(f"{what} must be an integer >= {minimum}, got {value!r}")


class Vocabulary:
    """Maps raw categorical values to ids: ``FIRST_ID`` for the most frequent train value, and so on.

    Values not in the vocabulary (unseen in train, or rarer than ``min_frequency``) encode to
    ``OOV_ID``; ``size`` counts the two reserved ids, so it is the embedding table's row count.
    """

    def __init__(self, values: Iterable[str]) -> None:
        self._values = tuple(str(v) for v in values)
        self._index = pd.Index(self._values, dtype=object)
        if not self._index.is_unique:
            duplicated = sorted(set(self._index[self._index.duplicated()]))
            raise AutocompressError(f"vocabulary: values {duplicated[:5]} appear more than once")

    @classmethod
    def fit(
        cls,
        values: Any,
        *,
        min_frequency: int = 1,
        max_size: int | None = None,
        padding: object = None,
    ) -> Vocabulary:
        """Count ``values`` (any shape) and keep those seen at least ``min_frequency`` times.

        Most frequent first, ties by value, at most ``max_size`` real values; elements whose canonical
        form equals ``padding`` (empty slots of a multi-hot or sequence column) are not counted.
        """
        _check_count("min_frequency", min_frequency, 1)
        if max_size is not None:
            _check_count("max_size", max_size, 1)
        codes, uniques = _factorize(values)
        counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
        names = np.append(_canonical_uniques(uniques), MISSING_VALUE)
        counts = np.append(counts, np.count_nonzero(codes < 0))
        totals = pd.Series(counts, index=pd.Index(names, dtype=object)).groupby(level=0, sort=False).sum()
        if padding is not None:
            totals = totals.drop(canonical_value(padding), errors="ignore")
        frame = pd.DataFrame({"value": totals.index.to_numpy(dtype=object), "count": totals.to_numpy()})
        frame = frame[frame["count"] >= min_frequency]
        frame = frame.sort_values(["count", "value"], ascending=[False, True], kind="stable")
        kept = frame["value"].tolist()
        return cls(kept if max_size is None else kept[:max_size])

    @property
    def values(self) -> tuple[str, ...]:
        """The known values in id order: ``values[i]`` has id ``FIRST_ID + i``."""
        return self._values

    @property
    def size(self) -> int:
        """Number of ids including ``PAD_ID`` and ``OOV_ID`` (the embedding table's row count)."""
        return len(self._values) + FIRST_ID

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._values == other._values

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Vocabulary(size={self.size})"

    def encode(self, values: Any, *, padding: object = None) -> np.ndarray:
        """Ids (int64, same shape as ``values``) of raw values; unknown values become ``OOV_ID``.

        Elements whose canonical form equals ``padding`` become ``PAD_ID``: that is how the empty
        slots of a raw multi-hot or sequence matrix are marked.
        """
        shape = np.shape(values.to_numpy() if isinstance(values, pd.Series | pd.Index) else values)
        codes, uniques = _factorize(values)
        names = np.append(_canonical_uniques(uniques), MISSING_VALUE).astype(object)
        positions = self._index.get_indexer(pd.Index(names, dtype=object))
        ids = np.where(positions >= 0, positions + FIRST_ID, OOV_ID).astype(np.int64)
        if padding is not None:
            ids[names == canonical_value(padding)] = PAD_ID
        # code -1 (a missing value) picks the last entry, the id of MISSING_VALUE
        return ids[codes].reshape(shape)

    def to_dict(self) -> dict[str, Any]:
        """Versioned, JSON-ready form: the values in id order."""
        return {"version": VOCABULARY_VERSION, "values": list(self._values)}

    def to_json(self) -> str:
        """``to_dict`` as JSON text, stored next to a served model."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        """Strict load of ``to_dict`` output: unknown keys or another version are refused."""
        refuse_unknown_fields("vocabulary", data, {"version", "values"})
        if data.get("version") != VOCABULARY_VERSION:
            raise AutocompressError(
                f"vocabulary: version {data.get('version')!r} is not supported "
                f"(supported: {VOCABULARY_VERSION})"
            )
        values = data.get("values")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise AutocompressError("vocabulary: 'values' must be a list of strings")
        return cls(values)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        """Strict load of ``to_json`` output."""
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class DenseScaler:
    """Standardises one dense feature with train mean and std, after ``log1p(max(x, 0))`` if asked.

    A missing value (NaN) becomes 0 after scaling, which is the train mean.
    """

    mean: float
    std: float
    log1p: bool = False

    @classmethod
    def fit(cls, values: Any, *, log1p: bool = False) -> DenseScaler:
        """Fit on train values; NaN is ignored, and a constant column gets ``std=1``."""
        x = _dense_input(np.asarray(values, dtype=np.float64), log1p)
        finite = x[np.isfinite(x)]
        mean = float(finite.mean()) if finite.size else 0.0
        std = float(finite.std()) if finite.size else 1.0
        return cls(mean=mean, std=std if std > 1e-12 else 1.0, log1p=log1p)

    def transform(self, values: Any) -> np.ndarray:
        """Scaled float32 values, NaN replaced by 0."""
        x = (_dense_input(np.asarray(values, dtype=np.float64), self.log1p) - self.mean) / self.std
        return np.nan_to_num(x, nan=0.0).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the fitted statistics."""
        return {"mean": self.mean, "std": self.std, "log1p": self.log1p}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DenseScaler:
        """Strict load of ``to_dict`` output."""
        refuse_unknown_fields("dense scaler", data, {"mean", "std", "log1p"})
        return cls(mean=float(data["mean"]), std=float(data["std"]), log1p=bool(data.get("log1p", False)))


def _dense_input(x: np.ndarray, log1p: bool) -> np.ndarray:
    return np.log1p(np.maximum(x, 0.0)) if log1p else x


def split_delimited(
    values: Any,
    separator: str,
    max_len: int | None = None,
    *,
    keep: Literal["first", "last"] = "first",
) -> np.ndarray:
    """Split delimited strings (``"a|b|c"``) into an object matrix ``[rows, max_len]`` padded with ``""``.

    ``keep="first"`` keeps the first ``max_len`` values left-aligned (multi-hot); ``keep="last"``
    keeps the last ones right-aligned, so the most recent value of a sequence is the last column.
    Empty pieces are dropped; ``max_len=None`` uses the longest row.
    """
    if not separator:
        raise AutocompressError("separator must be a non-empty string")
    if max_len is not None:
        _check_count("max_len", max_len, 1)
    strings = pd.Series(canonical_strings(values), dtype=object)
    pieces = strings.str.split(separator, regex=False).explode().str.strip()
    present = (pieces.notna() & (pieces != "")).to_numpy()
    rows = pieces.index.to_numpy()[present]
    found = pieces.to_numpy(dtype=object)[present]
    n = len(strings)
    lengths = np.bincount(rows, minlength=n)
    width = max_len if max_len is not None else max(1, int(lengths.max(initial=0)))
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(rows)) - starts[rows]
    column = position if keep == "first" else position - lengths[rows] + width
    inside = (column >= 0) & (column < width)
    out = np.full((n, width), MISSING_VALUE, dtype=object)
    out[rows[inside], column[inside]] = found[inside]
    return out


@dataclass(frozen=True)
class DenseEncoding:
    """How ``encode_splits`` turns one raw numeric column into a dense feature."""

    name: str
    side: Side = "context"
    log1p: bool = False


@dataclass(frozen=True)
class SparseEncoding:
    """How one raw categorical column becomes a sparse feature with a vocabulary fitted on train.

    With ``max_len > 1`` the raw column is a matrix ``[rows, max_len]`` whose empty slots equal
    ``padding`` (as ``split_delimited`` builds it) and the feature is multi-hot.
    """

    name: str
    side: Side = "context"
    min_frequency: int = 1
    max_size: int | None = None
    max_len: int = 1
    padding: object = MISSING_VALUE


@dataclass(frozen=True)
class SequenceEncoding:
    """How one raw matrix ``[rows, max_len]`` (most recent last) becomes a sequence feature.

    Its values are encoded with the vocabulary of the sparse feature ``shares_embedding_with``;
    slots equal to ``padding`` become ``PAD_ID``.
    """

    name: str
    shares_embedding_with: str
    max_len: int
    side: Side = "user"
    padding: object = MISSING_VALUE


@dataclass
class _FittedEncoders:
    vocabularies: dict[str, Vocabulary] = field(default_factory=dict)
    dense_scalers: dict[str, DenseScaler] = field(default_factory=dict)


def encode_splits(
    name: str,
    splits: Sequence[Table],
    *,
    dense: Sequence[DenseEncoding] = (),
    sparse: Sequence[SparseEncoding] = (),
    sequence: Sequence[SequenceEncoding] = (),
    label: str = "label",
    group_id: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> Dataset:
    """Fit vocabularies and dense scalers on the train split and encode train, valid and test.

    ``splits`` are raw tables (train, valid, test) holding the columns the encodings name. The
    fitted encoders are kept in ``info["vocabularies"]`` and ``info["dense_scalers"]`` (by feature
    name) so the same mapping can be applied to raw values at serving time.
    """
    train, valid, test = splits
    fitted = _FittedEncoders()
    for d in dense:
        fitted.dense_scalers[d.name] = DenseScaler.fit(_raw_column(train, d.name, 1), log1p=d.log1p)
    for s in sparse:
        raw = _raw_column(train, s.name, s.max_len)
        fitted.vocabularies[s.name] = Vocabulary.fit(
            raw,
            min_frequency=s.min_frequency,
            max_size=s.max_size,
            padding=s.padding if s.max_len > 1 else None,
        )
    for q in sequence:
        if q.shares_embedding_with not in fitted.vocabularies:
            raise AutocompressError(
                f"sequence feature {q.name!r}: shares_embedding_with {q.shares_embedding_with!r} is not "
                f"a sparse feature (known: {sorted(fitted.vocabularies)})"
            )
    schema = FeatureSchema(
        dense=tuple(DenseFeature(d.name, side=d.side) for d in dense),
        sparse=tuple(
            # a column whose values are all rarer than min_frequency still needs a valid table size
            SparseFeature(
                s.name,
                vocab_size=max(fitted.vocabularies[s.name].size, FIRST_ID + 1),
                side=s.side,
                max_len=s.max_len,
            )
            for s in sparse
        ),
        sequence=tuple(
            SequenceFeature(
                q.name, shares_embedding_with=q.shares_embedding_with, max_len=q.max_len, side=q.side
            )
            for q in sequence
        ),
        label=label,
        group_id=group_id,
    )
    encoded = [_encode_table(table, fitted, dense, sparse, sequence) for table in (train, valid, test)]
    return Dataset(
        name=name,
        schema=schema,
        train=encoded[0],
        valid=encoded[1],
        test=encoded[2],
        info={
            **(info or {}),
            "vocabularies": dict(fitted.vocabularies),
            "dense_scalers": dict(fitted.dense_scalers),
        },
    )


def _raw_column(table: Table, name: str, width: int) -> np.ndarray:
    if name not in table.features:
        raise AutocompressError(f"raw table has no column {name!r} (columns: {sorted(table.features)})")
    column = np.asarray(table.features[name])
    expected = (width,) if width > 1 else ()
    if column.shape[1:] != expected:
        raise AutocompressError(
            f"raw column {name!r} has per-row shape {column.shape[1:]}, expected {expected}"
        )
    return column


def _encode_table(
    table: Table,
    fitted: _FittedEncoders,
    dense: Sequence[DenseEncoding],
    sparse: Sequence[SparseEncoding],
    sequence: Sequence[SequenceEncoding],
) -> Table:
    features: dict[str, np.ndarray] = {}
    for d in dense:
        features[d.name] = fitted.dense_scalers[d.name].transform(_raw_column(table, d.name, 1))
    for s in sparse:
        raw = _raw_column(table, s.name, s.max_len)
        vocab = fitted.vocabularies[s.name]
        features[s.name] = vocab.encode(raw, padding=s.padding if s.max_len > 1 else None)
    for q in sequence:
        raw = _raw_column(table, q.name, q.max_len)
        features[q.name] = fitted.vocabularies[q.shares_embedding_with].encode(raw, padding=q.padding)
    return Table(features=features, labels=table.labels, groups=table.groups, timestamps=table.timestamps)
