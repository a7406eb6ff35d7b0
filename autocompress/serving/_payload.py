"""Request payloads -> model inputs: feature values checked against the FeatureSchema.

Three payload forms carry the same values: rows (``[{feature name: value}, ...]``), columns
(``{"columns": {feature name: [value per row, ...]}}``) and the named tensors of the Open
Inference Protocol (``_oip``). Each is first turned into ``Columns`` (the values of each feature,
one per row, and how to name a value's place in the request), and ``RequestEncoder.encode_columns``
is the one path that checks and encodes them.

Without fitted encoders (see ``_encoders``) values are what training fed the model: a dense feature
is a finite number, a single-hot sparse feature an integer id, a multi-hot feature a list of ids
(the first ``max_len`` kept, as the loaders keep them) and a sequence a list of ids, most recent
last (the last ``max_len`` kept, padded on the left with ``PAD_ID``). An id outside
``[0, vocab_size)`` becomes ``OOV_ID``, the bucket training gives every value it never saw. With
encoders, values are raw and are mapped by the vocabulary and scaler fitted on the train split,
exactly as the loader did.

Every refusal is a ``PayloadError`` whose ``field`` names where, in the request's own terms
(``rows[3].item_price``, ``columns.item_price[3]``, ``inputs.item_price[3]``); the API answers it
with 422.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from autocompress.data.schema import OOV_ID, PAD_ID, FeatureSchema
from autocompress.data.vocab import MISSING_VALUE, DenseScaler, Vocabulary, canonical_value
from autocompress.errors import AutocompressError
from autocompress.serving._encoders import FeatureEncoders

MAX_ROWS = 10_000
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_SCALARS = (str, int, float, bool, type(None))
_NUMBERS = frozenset({int, float})
_NUMBERS_OR_NULL = frozenset({int, float, type(None)})
_INTS = frozenset({int})
_SHORT = 64  # columns up to this long are checked in Python: numpy's per-call cost is larger

Kind = Literal["dense", "id", "multi_hot", "sequence"]
Features = dict[str, np.ndarray]
Label = Callable[[str, int], str]
"""Where the value of a feature in a row is, in the request's own terms: (feature, row) -> ``rows[3].x``."""


class PayloadError(AutocompressError):
    """A request body that does not fit the model's schema; ``field`` is where (``rows[3].user_id``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Columns:
    """A request's feature values, one list per feature with one value per row: the form rows,
    columns and Open Inference Protocol tensors are all turned into before they are checked."""

    values: Mapping[str, Sequence[Any]]
    n_rows: int
    where: Label


@dataclass(frozen=True)
class _FeatureSpec:
    """How one feature's JSON values become one model input."""

    name: str
    kind: Kind
    max_len: int
    vocab_size: int
    vocabulary: Vocabulary | None = None
    scaler: DenseScaler | None = None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(value: object) -> str:
    names = {list: "array", dict: "object", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _ids_in_vocabulary(values: Sequence[int], vocab_size: int) -> np.ndarray:
    """Integer ids as int64, those outside ``[0, vocab_size)`` (however large) replaced by ``OOV_ID``."""
    if len(values) <= _SHORT:  # a request's row or two: one numpy call, not four
        return np.array([v if 0 <= v < vocab_size else OOV_ID for v in values], dtype=np.int64)
    try:
        ids = np.array(values, dtype=np.int64)
    except OverflowError:  # an id beyond int64: compare in Python
        return np.array([v if 0 <= v < vocab_size else OOV_ID for v in values], dtype=np.int64)
    return np.where((ids >= 0) & (ids < vocab_size), ids, OOV_ID)


def _rows_label(where: str) -> Label:
    return lambda feature, i: f"{where}[{i}].{feature}"


def _one_row_label(where: str) -> Label:
    return lambda feature, _i: f"{where}.{feature}"


def _column_label(where: str) -> Label:
    return lambda feature, i: f"{where}.{feature}[{i}]"


class RequestEncoder:
    """Validates a request's feature values against one model's ``FeatureSchema`` and builds its ONNX inputs.

    Built once per served model (the per-feature rules are precomputed) and shared by every
    request for it.
    """

    def __init__(self, schema: FeatureSchema, encoders: FeatureEncoders | None = None) -> None:
        if encoders is not None:
            encoders.check(schema)
        vocabularies = dict(encoders.vocabularies) if encoders else {}
        scalers = dict(encoders.dense_scalers) if encoders else {}
        self.schema = schema
        specs: dict[str, _FeatureSpec] = {}
        for d in schema.dense:
            specs[d.name] = _FeatureSpec(d.name, "dense", 1, 0, scaler=scalers.get(d.name))
        for s in schema.sparse:
            specs[s.name] = _FeatureSpec(
                s.name,
                "multi_hot" if s.multi_hot else "id",
                s.max_len,
                s.vocab_size,
                vocabulary=vocabularies.get(s.name),
            )
        for q in schema.sequence:
            specs[q.name] = _FeatureSpec(
                q.name,
                "sequence",
                q.max_len,
                schema.vocab_size_of(q.name),
                vocabulary=vocabularies.get(q.shares_embedding_with),
            )
        self._specs = specs
        self._names = schema.feature_names
        # single-id features given as integer ids: a short request's are checked in one pass
        self._plain_ids = [
            (n, sp.vocab_size) for n, sp in specs.items() if sp.kind == "id" and sp.vocabulary is None
        ]
        # dense features taken as given (no scaler): likewise, one array for all of them
        self._plain_dense = [n for n, sp in specs.items() if sp.kind == "dense" and sp.scaler is None]

    @property
    def feature_names(self) -> list[str]:
        """Every input the model takes, in schema order."""
        return list(self._names)

    def kind(self, feature: str) -> Kind:
        """How the feature's values look: a number, an id, or a list of ids (multi-hot, sequence)."""
        return self._specs[feature].kind

    def max_len(self, feature: str) -> int:
        """The number of ids a multi-hot or sequence feature keeps (1 for the others)."""
        return self._specs[feature].max_len

    def takes_raw_values(self, feature: str) -> bool:
        """Whether the feature's values are raw (mapped by a fitted vocabulary) rather than ids."""
        return self._specs[feature].vocabulary is not None

    def side_features(self, side: Literal["user", "item"]) -> list[str]:
        """Inputs of one tower of a two-tower model: item-side, or user- and context-side features."""
        if side == "item":
            return self.schema.features_on("item")
        item = set(self.schema.features_on("item"))
        return [n for n in self._names if n not in item]

    # -- the payload forms -> Columns ---------------------------------------------------------------

    def encode(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        features: Sequence[str] | None = None,
        where: str = "rows",
        not_here: str = "not an input here",
    ) -> Features:
        """Model inputs (one array per feature, ``len(rows)`` rows) from rows of named values.

        ``features`` are the names every row must give (default: every schema feature); a schema
        feature outside them is refused with ``not_here`` as the reason.
        """
        _check_rows(rows, where)
        wanted = list(features or self._names)
        return self.encode_columns(self._row_columns(rows, wanted, where, not_here))

    def encode_payload(
        self,
        body: object,
        *,
        features: Sequence[str] | None = None,
        not_here: str = "not an input here",
    ) -> tuple[Features, int]:
        """Model inputs and the row count of a body that holds ``rows`` or ``columns`` (and nothing else)."""
        if not isinstance(body, Mapping):
            raise PayloadError("body", f"must be an object with 'rows' or 'columns', got {_type_name(body)}")
        forms = [key for key in ("rows", "columns") if key in body]
        for key in body:
            if key not in ("rows", "columns"):
                raise PayloadError(f"body.{key}", "unknown field; allowed: ['columns', 'rows']")
        if len(forms) != 1:
            raise PayloadError(
                "body", "give 'rows' (a list of objects) or 'columns' (an object of lists), one of them"
            )
        wanted = list(features or self._names)
        if forms[0] == "rows":
            rows = body["rows"]
            _check_rows(rows, "rows")
            columns = self._row_columns(rows, wanted, "rows", not_here)
        else:
            columns = self.columns(body["columns"], features=wanted, where="columns", not_here=not_here)
        return self.encode_columns(columns), columns.n_rows

    def columns(
        self,
        block: object,
        *,
        features: Sequence[str] | None = None,
        where: str = "columns",
        not_here: str = "not an input here",
    ) -> Columns:
        """``Columns`` of a block ``{feature: [value per row, ...]}``: each feature once, equal lengths."""
        if not isinstance(block, Mapping):
            raise PayloadError(where, f"must be an object of feature columns, got {_type_name(block)}")
        wanted = list(features or self._names)
        self._check_names(block, set(wanted), lambda key: f"{where}.{key}", not_here)
        for name in wanted:
            if name not in block:
                raise PayloadError(f"{where}.{name}", f"missing feature {name!r}")
        if not wanted:
            raise PayloadError(where, "no feature is left to give here")
        n_rows = -1
        for name in wanted:
            column = block[name]
            if type(column) is not list:
                raise PayloadError(
                    f"{where}.{name}", f"must be an array of values, one per row, got {_type_name(column)}"
                )
            if n_rows < 0:
                n_rows, first = len(column), name
            elif len(column) != n_rows:
                raise PayloadError(
                    f"{where}.{name}",
                    f"has {len(column)} values, {where}.{first} has {n_rows}; "
                    "every column needs one value per row",
                )
        if not 1 <= n_rows <= MAX_ROWS:
            raise PayloadError(where, f"must hold 1 to {MAX_ROWS} rows, got {n_rows}")
        return Columns({name: block[name] for name in wanted}, n_rows, _column_label(where))

    def encode_ranking(self, context: Mapping[str, Any], candidates: object) -> Features:
        """Inputs for scoring ``candidates`` in one ``context``: the context's features repeated per row.

        Each feature is given once, in the context (the user and query) or for every candidate
        (the items); one given in both is refused. ``candidates`` are rows or ``{"columns": {...}}``.
        """
        if not isinstance(context, Mapping):
            raise PayloadError("context", f"must be an object of feature values, got {_type_name(context)}")
        in_context = [n for n in self._names if n in context]
        shared = self.encode_columns(
            self._row_columns([context], in_context, "context", "not a feature", one_row=True)
        )
        rest = [n for n in self._names if n not in context]
        if isinstance(candidates, Mapping):
            for key in candidates:
                if key != "columns":
                    raise PayloadError(f"candidates.{key}", "unknown field; allowed: ['columns']")
            if "columns" not in candidates:
                raise PayloadError("candidates", "give a list of rows or {'columns': {feature: [values]}}")
            columns = self.columns(
                candidates["columns"],
                features=rest,
                where="candidates.columns",
                not_here="already given in context",
            )
        else:
            _check_rows(candidates, "candidates")
            assert isinstance(candidates, Sequence)
            columns = self._row_columns(candidates, rest, "candidates", "already given in context")
        features = self.encode_columns(columns)
        for name, column in shared.items():
            features[name] = np.repeat(column, columns.n_rows, axis=0)
        return features

    # -- the one check and encoding -----------------------------------------------------------------

    def encode_columns(self, columns: Columns) -> Features:
        """Model inputs from ``Columns``: every value checked against its feature's rule, named on refusal."""
        done = {}
        if columns.n_rows <= _SHORT:
            done = {**self._plain_ids_at_once(columns), **self._plain_dense_at_once(columns)}
        out: Features = {}
        where = columns.where
        for name, column in columns.values.items():
            if name in done:
                out[name] = done[name]
                continue
            spec = self._specs[name]

            def label(i: int, name: str = name) -> str:
                return where(name, i)

            if spec.kind == "dense":
                out[name] = _dense(spec, column, label)
            elif spec.kind == "id":
                out[name] = _single_ids(spec, column, label)
            else:
                out[name] = _id_lists(spec, column, label)
        return out

    def _plain_ids_at_once(self, columns: Columns) -> Features:
        """The integer-id features of a short request as one array (a row each), or nothing when a
        value is not an int: those are then checked feature by feature, and refused by name."""
        values = columns.values
        given = [(name, size) for name, size in self._plain_ids if name in values]
        if len(given) < 2 or set(map(type, (v for name, _ in given for v in values[name]))) != _INTS:
            return {}
        ids = [v if 0 <= v < size else OOV_ID for name, size in given for v in values[name]]
        table = np.array(ids, dtype=np.int64).reshape(len(given), columns.n_rows)
        return {name: table[i] for i, (name, _) in enumerate(given)}

    def _plain_dense_at_once(self, columns: Columns) -> Features:
        """The unscaled dense features of a short request as one array (a row each), or nothing when
        a value is not a finite float32 number: those are then checked feature by feature."""
        values = columns.values
        given = [name for name in self._plain_dense if name in values]
        numbers = [v for name in given for v in values[name]]
        if len(given) < 2 or not set(map(type, numbers)) <= _NUMBERS:
            return {}
        table, bad = _finite_float32(numbers)
        if bad is not None:  # refused feature by feature, by name
            return {}
        out = table.reshape(len(given), columns.n_rows)
        return {name: out[i] for i, name in enumerate(given)}

    # -- internals ----------------------------------------------------------------------------------

    def _check_names(
        self, given: Mapping[str, Any], wanted: set[str], where: Callable[[str], str], not_here: str
    ) -> None:
        for key in given:
            if key not in wanted:
                if key in self._specs:
                    raise PayloadError(where(key), f"feature {key!r} is {not_here}")
                raise PayloadError(where(key), f"unknown feature {key!r}; known features: {self._names}")

    def _row_columns(
        self,
        rows: Sequence[Mapping[str, Any]],
        features: list[str],
        where: str,
        not_here: str,
        *,
        one_row: bool = False,
    ) -> Columns:
        """``Columns`` of rows (``where[i].feature``), or of one object (``where.feature``): ``one_row``."""
        label = _one_row_label(where) if one_row else _rows_label(where)
        wanted = set(features)
        for i, row in enumerate(rows):
            row_where = where if one_row else f"{where}[{i}]"
            if not isinstance(row, Mapping):
                raise PayloadError(row_where, f"must be an object of feature values, got {_type_name(row)}")
            if row.keys() == wanted:
                continue
            self._check_names(row, wanted, f"{row_where}.".__add__, not_here)
            missing = next(n for n in features if n not in row)
            raise PayloadError(label(missing, i), f"missing feature {missing!r}")
        return Columns({name: [row[name] for row in rows] for name in features}, len(rows), label)


def _check_rows(rows: object, where: str) -> None:
    if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
        raise PayloadError(where, f"must be an array of rows, got {_type_name(rows)}")
    if not 1 <= len(rows) <= MAX_ROWS:
        raise PayloadError(where, f"must hold 1 to {MAX_ROWS} rows, got {len(rows)}")


def _dense(spec: _FeatureSpec, column: Sequence[Any], label: Callable[[int], str]) -> np.ndarray:
    numbers = _NUMBERS if spec.scaler is None else _NUMBERS_OR_NULL
    if not set(map(type, column)) <= numbers:
        allowed = "a number" if spec.scaler is None else "a number or null"
        i, v = next((i, v) for i, v in enumerate(column) if type(v) not in numbers)
        raise PayloadError(label(i), f"dense feature must be {allowed}, got {_type_name(v)} {_show(v)}")
    if spec.scaler is not None:
        raw = np.array([np.nan if v is None else v for v in column], dtype=np.float64)
        return spec.scaler.transform(raw)
    values, bad = _finite_float32(column)
    if bad is not None:
        raise PayloadError(
            label(bad), f"dense feature must be a finite float32 number, got {_show(column[bad])}"
        )
    return values


def _finite_float32(numbers: Sequence[float]) -> tuple[np.ndarray, int | None]:
    """``numbers`` (ints and floats) as float32, and the index of the first that is not a finite
    float32 number (None when all are)."""
    try:
        values = np.array(numbers, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        values = np.array([v if abs(v) <= _FLOAT32_MAX else np.inf for v in numbers], dtype=np.float64)
    bad = np.flatnonzero(~(np.abs(values) <= _FLOAT32_MAX))  # NaN and inf fail too
    return values.astype(np.float32), int(bad[0]) if bad.size else None


def _check_id(spec: _FeatureSpec, value: object, where: str) -> None:
    if spec.vocabulary is None:
        if type(value) is not int:
            raise PayloadError(where, f"must be an integer id, got {_type_name(value)} {_show(value)}")
    elif not isinstance(value, _SCALARS):
        raise PayloadError(
            where, f"must be a raw value (string, number, boolean or null), got {_type_name(value)}"
        )


def _single_ids(spec: _FeatureSpec, column: Sequence[Any], label: Callable[[int], str]) -> np.ndarray:
    if spec.vocabulary is None and set(map(type, column)) == _INTS:  # the common case, checked at C speed
        return _ids_in_vocabulary(column, spec.vocab_size)
    for i, v in enumerate(column):
        _check_id(spec, v, label(i))
    if spec.vocabulary is not None:
        return spec.vocabulary.encode(np.array(column, dtype=object))
    return _ids_in_vocabulary(column, spec.vocab_size)


def _id_lists(spec: _FeatureSpec, column: Sequence[Any], label: Callable[[int], str]) -> np.ndarray:
    """Multi-hot lists (first ``max_len`` kept, left-aligned) or sequences (last ones, right-aligned)."""
    if spec.vocabulary is None and len(column) <= _SHORT:
        matrix = _short_int_lists(spec, column)
        if matrix is not None:
            return matrix
    width = spec.max_len
    rows: list[int] = []
    slots: list[int] = []
    values: list[Any] = []
    for i, v in enumerate(column):
        if type(v) is not list:
            what = "a list of ids" if spec.vocabulary is None else "a list of raw values"
            raise PayloadError(
                label(i), f"{spec.kind.replace('_', '-')} feature must be {what}, got {_type_name(v)}"
            )
        if spec.vocabulary is not None or (v and not set(map(type, v)) <= _INTS):
            where = label(i)
            for j, x in enumerate(v):
                _check_id(spec, x, f"{where}[{j}]")
        if spec.vocabulary is not None:  # the loaders drop empty pieces before encoding
            v = [x for x in v if canonical_value(x) != MISSING_VALUE]
        kept = v[:width] if spec.kind == "multi_hot" else v[-width:]
        start = 0 if spec.kind == "multi_hot" else width - len(kept)
        rows.extend([i] * len(kept))
        slots.extend(range(start, start + len(kept)))
        values.extend(kept)
    matrix = np.full((len(column), width), PAD_ID, dtype=np.int64)
    if values:
        if spec.vocabulary is not None:
            ids = spec.vocabulary.encode(np.array(values, dtype=object))
        else:
            ids = _ids_in_vocabulary(values, spec.vocab_size)
        matrix[np.asarray(rows), np.asarray(slots)] = ids
    return matrix


def _short_int_lists(spec: _FeatureSpec, column: Sequence[Any]) -> np.ndarray | None:
    """``_id_lists`` of a short request's lists of integer ids, row by row; None when a value is not a
    list of ints (the caller then checks every value and refuses the first bad one by name)."""
    width, size = spec.max_len, spec.vocab_size
    matrix = np.full((len(column), width), PAD_ID, dtype=np.int64)
    for i, v in enumerate(column):
        if type(v) is not list or (v and not set(map(type, v)) <= _INTS):
            return None
        kept = v[:width] if spec.kind == "multi_hot" else v[-width:]
        if kept:
            start = 0 if spec.kind == "multi_hot" else width - len(kept)
            matrix[i, start : start + len(kept)] = [x if 0 <= x < size else OOV_ID for x in kept]
    return matrix


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Click probabilities (float64) of logits: the sigmoid, without overflow for large |logit|."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(x))  # <= 1: 1 / (1 + e) above zero, e / (1 + e) below
    out: np.ndarray = np.where(x >= 0, 1.0, e) / (1.0 + e)
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; ties keep the candidates' order."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise PayloadError("k", f"must be an integer >= 1, got {_show(k)}")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return order[:k]


def join_features(requests: Sequence[Mapping[str, np.ndarray]]) -> tuple[Features, list[int]]:
    """Several requests' inputs as one batch (rows concatenated, in order) and each request's row count.

    ``split_rows(outputs, counts)`` gives each request its rows back. Requests for one model carry
    the same inputs; ``AutocompressError`` when they do not.
    """
    if not requests:
        raise AutocompressError("features: no requests to join")
    names = list(requests[0])
    for i, request in enumerate(requests[1:], start=1):
        if set(request) != set(names):
            raise AutocompressError(
                f"features: request {i} has inputs {sorted(request)}, request 0 has {sorted(names)}"
            )
    counts = [len(np.asarray(next(iter(r.values())))) if r else 0 for r in requests]
    if len(requests) == 1:
        return dict(requests[0]), counts
    return {n: np.concatenate([np.asarray(r[n]) for r in requests]) for n in names}, counts


def split_rows(outputs: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """The outputs of a joined batch (``join_features``) cut back into each request's rows."""
    return np.split(outputs, np.cumsum(counts)[:-1]) if len(counts) > 1 else [outputs]
