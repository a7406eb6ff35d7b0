"""FeatureSchema: the contract every loader, model, exporter and served endpoint speaks.

Conventions for id features (sparse, multi-hot and sequence):

* ids are int64 in ``[0, vocab_size)``;
* ``PAD_ID`` (0) means "no value": padding in multi-hot lists and behaviour sequences, masked
  out by every model;
* ``OOV_ID`` (1) is the out-of-vocabulary bucket: a value never seen in training, or one below a
  loader's frequency threshold;
* real values start at ``FIRST_ID`` (2).

A batch is a ``dict`` keyed by feature name: a dense feature is float32 ``[B]``, a single-hot
sparse feature int64 ``[B]``, a multi-hot sparse feature or a sequence int64 ``[B, max_len]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from autocompress.errors import AutocompressError, refuse_unknown_fields

PAD_ID = 0
OOV_ID = 1
FIRST_ID = 2
SCHEMA_VERSION = 1

Side = Literal["user", "item", "context"]
_SIDES = ("user", "item", "context")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
NAME_RULE = "use letters, digits and '_' (max 64), starting with a letter or '_'"


def is_valid_name(name: object) -> bool:
    """Whether ``name`` may name a feature, the label or the group id.

    Names become ONNX input names and JSON keys, so they are identifiers (``NAME_RULE``); a
    loader that reads columns with other headers maps them to such names.
    """
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def _check_name(kind: str, name: str) -> None:
    if not is_valid_name(name):
        raise AutocompressError(f"{kind} name {name!r} is not allowed: {NAME_RULE}")


def _check_side(name: str, side: str) -> None:
    if side not in _SIDES:
        raise AutocompressError(f"feature {name!r}: side {side!r} is not one of {list(_SIDES)}")


@dataclass(frozen=True)
class DenseFeature:
    """A real-valued feature, already normalised by its loader."""

    name: str
    side: Side = "context"

    def __post_init__(self) -> None:
        _check_name("dense feature", self.name)
        _check_side(self.name, self.side)


@dataclass(frozen=True)
class SparseFeature:
    """A categorical feature with its own embedding table of ``vocab_size`` rows.

    ``max_len > 1`` makes it multi-hot: a padded list of up to ``max_len`` ids per row.
    """

    name: str
    vocab_size: int
    side: Side = "context"
    max_len: int = 1

    def __post_init__(self) -> None:
        _check_name("sparse feature", self.name)
        _check_side(self.name, self.side)
        if not isinstance(self.vocab_size, int) or self.vocab_size <= FIRST_ID:
            raise AutocompressError(
                f"sparse feature {self.name!r}: vocab_size must be an integer > {FIRST_ID} "
                f"(ids 0 and 1 are padding and out-of-vocabulary), got {self.vocab_size!r}"
            )
        if not isinstance(self.max_len, int) or self.max_len < 1:
            raise AutocompressError(
                f"sparse feature {self.name!r}: max_len must be an integer >= 1, got {self.max_len!r}"
            )

    @property
    def multi_hot(self) -> bool:
        return self.max_len > 1


@dataclass(frozen=True)
class SequenceFeature:
    """A behaviour sequence (most recent last), padded with ``PAD_ID`` to ``max_len``.

    Its ids index the embedding table of the sparse feature named by ``shares_embedding_with``
    (for example the user's last clicked ``item_id`` values), so sequence models such as DIN
    can attend from the candidate item to the history in one embedding space.
    """

    name: str
    shares_embedding_with: str
    max_len: int
    side: Side = "user"

    def __post_init__(self) -> None:
        _check_name("sequence feature", self.name)
        _check_side(self.name, self.side)
        if not isinstance(self.max_len, int) or self.max_len < 1:
            raise AutocompressError(
                f"sequence feature {self.name!r}: max_len must be an integer >= 1, got {self.max_len!r}"
            )


@dataclass(frozen=True)
class FeatureSchema:
    """All features of a dataset, the label column and the optional group (query/session) id."""

    dense: tuple[DenseFeature, ...] = ()
    sparse: tuple[SparseFeature, ...] = ()
    sequence: tuple[SequenceFeature, ...] = ()
    label: str = "label"
    group_id: str | None = None
    version: int = field(default=SCHEMA_VERSION)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dense", tuple(self.dense))
        object.__setattr__(self, "sparse", tuple(self.sparse))
        object.__setattr__(self, "sequence", tuple(self.sequence))
        if self.version != SCHEMA_VERSION:
            raise AutocompressError(
                f"schema version {self.version!r} is not supported (supported: {SCHEMA_VERSION})"
            )
        if not self.dense and not self.sparse:
            raise AutocompressError("schema has no features: give at least one dense or sparse feature")
        _check_name("label", self.label)
        if self.group_id is not None:
            _check_name("group_id", self.group_id)
        seen: set[str] = set()
        for name in self.feature_names:
            if name in seen:
                raise AutocompressError(f"feature name {name!r} appears twice in the schema")
            seen.add(name)
        for reserved in (self.label, self.group_id):
            if reserved is not None and reserved in seen:
                raise AutocompressError(f"{reserved!r} is both a feature and the label/group_id")
        sparse_names = {f.name for f in self.sparse}
        for seq in self.sequence:
            if seq.shares_embedding_with not in sparse_names:
                raise AutocompressError(
                    f"sequence feature {seq.name!r}: shares_embedding_with "
                    f"{seq.shares_embedding_with!r} is not a sparse feature "
                    f"(known: {sorted(sparse_names)})"
                )

    @property
    def feature_names(self) -> list[str]:
        """Every feature name, in the order dense, sparse, sequence (the model input order)."""
        return [f.name for f in self.dense] + [f.name for f in self.sparse] + [f.name for f in self.sequence]

    def sparse_feature(self, name: str) -> SparseFeature:
        for f in self.sparse:
            if f.name == name:
                return f
        raise AutocompressError(f"unknown sparse feature {name!r}; known: {[f.name for f in self.sparse]}")

    def vocab_size_of(self, name: str) -> int:
        """Vocabulary of a sparse feature, or of the table a sequence feature shares."""
        for seq in self.sequence:
            if seq.name == name:
                return self.sparse_feature(seq.shares_embedding_with).vocab_size
        return self.sparse_feature(name).vocab_size

    def features_on(self, side: Side) -> list[str]:
        """Names of the features on one side (user, item, context), in model input order."""
        every: tuple[DenseFeature | SparseFeature | SequenceFeature, ...] = (
            *self.dense,
            *self.sparse,
            *self.sequence,
        )
        return [f.name for f in every if f.side == side]

    def input_shape(self, name: str) -> tuple[int, ...]:
        """Per-example shape of one input: () for dense and single-hot, (max_len,) otherwise."""
        for d in self.dense:
            if d.name == name:
                return ()
        for s in self.sparse:
            if s.name == name:
                return (s.max_len,) if s.multi_hot else ()
        for q in self.sequence:
            if q.name == name:
                return (q.max_len,)
        raise AutocompressError(f"unknown feature {name!r}; known: {self.feature_names}")

    def example_batch(self, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """A random but valid batch (for export, latency measurement and tests)."""
        if batch_size <= 0:
            raise AutocompressError(f"batch_size must be > 0, got {batch_size}")
        rng = np.random.default_rng(seed)
        batch: dict[str, np.ndarray] = {}
        for d in self.dense:
            batch[d.name] = rng.standard_normal(batch_size).astype(np.float32)
        for s in self.sparse:
            shape = (batch_size, s.max_len) if s.multi_hot else (batch_size,)
            batch[s.name] = rng.integers(FIRST_ID, s.vocab_size, size=shape, dtype=np.int64)
        for q in self.sequence:
            vocab = self.vocab_size_of(q.name)
            ids = rng.integers(FIRST_ID, vocab, size=(batch_size, q.max_len), dtype=np.int64)
            lengths = rng.integers(0, q.max_len + 1, size=batch_size)
            ids[np.arange(q.max_len)[None, :] < (q.max_len - lengths)[:, None]] = PAD_ID
            batch[q.name] = ids
        return batch

    def validate_batch(self, batch: Mapping[str, np.ndarray], where: str = "data") -> int:
        """Check names, dtypes, shapes and id ranges of a batch; return its row count.

        Raises ``AutocompressError`` naming the first feature that does not match, so a schema
        that does not fit the data is reported before any training starts.
        """
        missing = [n for n in self.feature_names if n not in batch]
        if missing:
            raise AutocompressError(f"{where}: missing feature(s) {missing} required by the schema")
        rows: int | None = None
        for name in self.feature_names:
            arr = np.asarray(batch[name])
            shape = self.input_shape(name)
            if arr.shape[1:] != shape:
                raise AutocompressError(
                    f"{where}: feature {name!r} has per-row shape {arr.shape[1:]}, schema says {shape}"
                )
            if rows is None:
                rows = arr.shape[0]
            elif arr.shape[0] != rows:
                raise AutocompressError(
                    f"{where}: feature {name!r} has {arr.shape[0]} rows, others have {rows}"
                )
            is_dense = any(d.name == name for d in self.dense)
            if is_dense:
                if not np.issubdtype(arr.dtype, np.floating):
                    raise AutocompressError(f"{where}: dense feature {name!r} must be float, got {arr.dtype}")
            else:
                if not np.issubdtype(arr.dtype, np.integer):
                    raise AutocompressError(f"{where}: id feature {name!r} must be integer, got {arr.dtype}")
                vocab = self.vocab_size_of(name)
                if arr.size and (arr.min() < 0 or arr.max() >= vocab):
                    raise AutocompressError(
                        f"{where}: feature {name!r} has ids in [{arr.min()}, {arr.max()}], "
                        f"outside its vocabulary [0, {vocab})"
                    )
        return int(rows or 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        """Strict load: unknown keys anywhere are refused with their name."""
        allowed = {"dense", "sparse", "sequence", "label", "group_id", "version"}
        refuse_unknown_fields("schema", data, allowed)
        try:
            dense = tuple(_build(DenseFeature, "dense", d) for d in data.get("dense", ()))
            sparse = tuple(_build(SparseFeature, "sparse", d) for d in data.get("sparse", ()))
            sequence = tuple(_build(SequenceFeature, "sequence", d) for d in data.get("sequence", ()))
        except TypeError as exc:
            raise AutocompressError(f"schema: {exc}") from None
        return cls(
            dense=dense,
            sparse=sparse,
            sequence=sequence,
            label=data.get("label", "label"),
            group_id=data.get("group_id"),
            version=data.get("version", SCHEMA_VERSION),
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureSchema:
        return cls.from_dict(json.loads(text))


def _build(cls: Any, where: str, data: Mapping[str, Any]) -> Any:
    refuse_unknown_fields(
        f"schema.{where}[{data.get('name', '?') if isinstance(data, Mapping) else '?'}]",
        data,
        set(cls.__dataclass_fields__),
    )
    return cls(**data)
