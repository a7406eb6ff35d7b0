"""Request payloads -> model inputs: JSON rows of named features checked against the FeatureSchema.

A row is an object ``{feature name: value}``. Without fitted encoders (see ``_encoders``) values are
what training fed the model: a dense feature is a finite number, a single-hot sparse feature an
integer id, a multi-hot feature a list of ids (the first ``max_len`` kept, as the loaders keep
them) and a sequence a list of ids, most recent last (the last ``max_len`` kept, padded on the
left with ``PAD_ID``). An id outside ``[0, vocab_size)`` becomes ``OOV_ID``, the bucket training
gives every value it never saw. With encoders, values are raw and are mapped by the vocabulary
and scaler fitted on the train split, exactly as the loader did.

Every refusal is a ``PayloadError`` whose ``field`` names the row and the feature
(``rows[3].item_price``); the API answers it with 422.
"""

from __future__ import annotations

import math
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

Kind = Literal["dense", "id", "multi_hot", "sequence"]
Features = dict[str, np.ndarray]
PackedFeatures = tuple[tuple[tuple[str, str, tuple[int, ...]], ...], bytes]


class PayloadError(AutocompressError):
    """A request body that does not fit the model's schema; ``field`` is where (``rows[3].user_id``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


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
    return np.array([v if 0 <= v < vocab_size else OOV_ID for v in values], dtype=np.int64)


class RequestEncoder:
    """Validates JSON rows against one model's ``FeatureSchema`` and builds its ONNX inputs.

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

    def side_features(self, side: Literal["user", "item"]) -> list[str]:
        """Inputs of one tower of a two-tower model: item-side, or user- and context-side features."""
        if side == "item":
            return self.schema.features_on("item")
        item = set(self.schema.features_on("item"))
        return [n for n in self._names if n not in item]

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
        return self._encode(rows, list(features or self._names), lambda i: f"{where}[{i}]", not_here)

    def encode_ranking(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> Features:
        """Inputs for scoring ``candidates`` in one ``context``: the context's features repeated per row.

        Each feature is given once, in the context (the user and query) or in every candidate
        (the items); one given in both is refused.
        """
        if not isinstance(context, Mapping):
            raise PayloadError("context", f"must be an object of feature values, got {_type_name(context)}")
        _check_rows(candidates, "candidates")
        in_context = [n for n in self._names if n in context]
        shared = self._encode([context], in_context, lambda _i: "context", "not a feature")
        features = self._encode(
            candidates,
            [n for n in self._names if n not in context],
            lambda i: f"candidates[{i}]",
            "already given in context",
        )
        n = len(candidates)
        for name, column in shared.items():
            features[name] = np.repeat(column, n, axis=0)
        return features

    # -- internals --------------------------------------------------------------------------------

    def _encode(
        self,
        rows: Sequence[Mapping[str, Any]],
        features: list[str],
        label: Callable[[int], str],
        not_here: str,
    ) -> Features:
        wanted = set(features)
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise PayloadError(label(i), f"must be an object of feature values, got {_type_name(row)}")
            if row.keys() == wanted:
                continue
            for key in row:
                if key not in wanted:
                    if key in self._specs:
                        raise PayloadError(f"{label(i)}.{key}", f"feature {key!r} is {not_here}")
                    raise PayloadError(
                        f"{label(i)}.{key}", f"unknown feature {key!r}; known features: {self._names}"
                    )
            missing = next(n for n in features if n not in row)
            raise PayloadError(f"{label(i)}.{missing}", f"missing feature {missing!r}")
        out: Features = {}
        for name in features:
            spec = self._specs[name]
            column = [row[name] for row in rows]
            if spec.kind == "dense":
                out[name] = _dense(spec, column, label)
            elif spec.kind == "id":
                out[name] = _single_ids(spec, column, label)
            else:
                out[name] = _id_lists(spec, column, label)
        return out


def _check_rows(rows: object, where: str) -> None:
    if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
        raise PayloadError(where, f"must be an array of rows, got {_type_name(rows)}")
    if not 1 <= len(rows) <= MAX_ROWS:
        raise PayloadError(where, f"must hold 1 to {MAX_ROWS} rows, got {len(rows)}")


def _dense(spec: _FeatureSpec, column: list[Any], label: Callable[[int], str]) -> np.ndarray:
    numbers = (int, float) if spec.scaler is None else (int, float, type(None))
    for i, v in enumerate(column):
        if type(v) not in numbers:
            allowed = "a number" if spec.scaler is None else "a number or null"
            raise PayloadError(
                f"{label(i)}.{spec.name}", f"dense feature must be {allowed}, got {_type_name(v)} {_show(v)}"
            )
    if spec.scaler is not None:
        raw = np.array([np.nan if v is None else v for v in column], dtype=np.float64)
        return spec.scaler.transform(raw)
    try:
        values = np.array(column, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        values = np.array([v if abs(v) <= _FLOAT32_MAX else np.inf for v in column], dtype=np.float64)
    bad = np.flatnonzero(~(np.abs(values) <= _FLOAT32_MAX))  # NaN and inf fail too
    if bad.size:
        i = int(bad[0])
        raise PayloadError(
            f"{label(i)}.{spec.name}",
            f"dense feature must be a finite float32 number, got {_show(column[i])}",
        )
    return values.astype(np.float32)


def _check_id(spec: _FeatureSpec, value: object, where: str) -> None:
    if spec.vocabulary is None:
        if type(value) is not int:
            raise PayloadError(where, f"must be an integer id, got {_type_name(value)} {_show(value)}")
    elif not isinstance(value, _SCALARS):
        raise PayloadError(
            where, f"must be a raw value (string, number, boolean or null), got {_type_name(value)}"
        )


def _single_ids(spec: _FeatureSpec, column: list[Any], label: Callable[[int], str]) -> np.ndarray:
    for i, v in enumerate(column):
        _check_id(spec, v, f"{label(i)}.{spec.name}")
    if spec.vocabulary is not None:
        return spec.vocabulary.encode(np.array(column, dtype=object))
    return _ids_in_vocabulary(column, spec.vocab_size)


def _id_lists(spec: _FeatureSpec, column: list[Any], label: Callable[[int], str]) -> np.ndarray:
    """Multi-hot lists (first ``max_len`` kept, left-aligned) or sequences (last ones, right-aligned)."""
    width = spec.max_len
    rows: list[int] = []
    slots: list[int] = []
    values: list[Any] = []
    for i, v in enumerate(column):
        where = f"{label(i)}.{spec.name}"
        if type(v) is not list:
            what = "a list of ids" if spec.vocabulary is None else "a list of raw values"
            raise PayloadError(
                where, f"{spec.kind.replace('_', '-')} feature must be {what}, got {_type_name(v)}"
            )
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


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Click probabilities (float64) of logits: the sigmoid, without overflow for large |logit|."""
    x = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    e = np.exp(x[~positive])
    out[~positive] = e / (1.0 + e)
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


def pack_features(features: Features) -> PackedFeatures:
    """Model inputs as one bytes buffer plus (name, dtype, shape) per input, for sending to a replica.

    One buffer travels between Ray actors much cheaper than a dict of small arrays, each of which
    Ray would serialise on its own.
    """
    arrays = [(name, np.ascontiguousarray(a)) for name, a in features.items()]
    spec = tuple((name, a.dtype.str, tuple(a.shape)) for name, a in arrays)
    return spec, b"".join(a.tobytes() for _, a in arrays)


def unpack_features(packed: PackedFeatures) -> Features:
    """The inputs ``pack_features`` packed (read-only views of the buffer)."""
    spec, buffer = packed
    features: Features = {}
    offset = 0
    for name, dtype, shape in spec:
        array = np.frombuffer(buffer, dtype=np.dtype(dtype), count=math.prod(shape), offset=offset)
        features[name] = array.reshape(shape)
        offset += array.nbytes
    if offset != len(buffer):
        raise AutocompressError(f"packed features: {len(buffer) - offset} bytes left over")
    return features
