"""The fitted encoders a served model needs to map raw request values exactly as training did.

Real-data loaders (Criteo, MovieLens, Parquet/CSV) encode raw values with vocabularies and dense
scalers fitted on the train split (``Dataset.info``). A model trained on such data is served with
those encoders saved beside its ONNX file as ``encoders.json``; a request then carries raw values
(``"shoes"``, ``12.5``), and a value unseen in training becomes ``OOV_ID``. Without the file (the
synthetic data, whose features are ids already) a request carries ids.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autocompress.data.schema import FeatureSchema
from autocompress.data.vocab import DenseScaler, Vocabulary
from autocompress.errors import AutocompressError, refuse_unknown_fields

ENCODERS_FILE = "encoders.json"
ENCODERS_VERSION = 1


@dataclass(frozen=True)
class FeatureEncoders:
    """Vocabularies of id features and scalers of dense features, by feature name."""

    vocabularies: Mapping[str, Vocabulary] = field(default_factory=dict)
    dense_scalers: Mapping[str, DenseScaler] = field(default_factory=dict)

    @classmethod
    def from_dataset_info(cls, info: Mapping[str, Any]) -> FeatureEncoders | None:
        """The encoders a loader kept in ``Dataset.info``; None when it kept none (ids are given)."""
        vocabularies = dict(info.get("vocabularies") or {})
        scalers = dict(info.get("dense_scalers") or {})
        if not vocabularies and not scalers:
            return None
        return cls(vocabularies=vocabularies, dense_scalers=scalers)

    def check(self, schema: FeatureSchema) -> None:
        """Refuse encoders for features the schema does not have as that kind."""
        dense = {d.name for d in schema.dense}
        sparse = {s.name for s in schema.sparse}
        for name in self.vocabularies:
            if name not in sparse:
                raise AutocompressError(
                    f"{ENCODERS_FILE}: vocabulary {name!r} is not a sparse feature of the schema "
                    f"(sparse features: {sorted(sparse)})"
                )
        for name in self.dense_scalers:
            if name not in dense:
                raise AutocompressError(
                    f"{ENCODERS_FILE}: dense scaler {name!r} is not a dense feature of the schema "
                    f"(dense features: {sorted(dense)})"
                )

    def to_dict(self) -> dict[str, Any]:
        """Versioned, JSON-ready form."""
        return {
            "version": ENCODERS_VERSION,
            "vocabularies": {k: v.to_dict() for k, v in self.vocabularies.items()},
            "dense_scalers": {k: v.to_dict() for k, v in self.dense_scalers.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureEncoders:
        """Strict load of ``to_dict`` output."""
        refuse_unknown_fields(ENCODERS_FILE, data, {"version", "vocabularies", "dense_scalers"})
        if data.get("version") != ENCODERS_VERSION:
            raise AutocompressError(
                f"{ENCODERS_FILE}: version {data.get('version')!r} is not supported "
                f"(supported: {ENCODERS_VERSION})"
            )
        return cls(
            vocabularies={k: Vocabulary.from_dict(v) for k, v in (data.get("vocabularies") or {}).items()},
            dense_scalers={k: DenseScaler.from_dict(v) for k, v in (data.get("dense_scalers") or {}).items()},
        )

    def save(self, folder: str | Path) -> Path:
        """Write ``encoders.json`` into ``folder`` (beside the model's ONNX file); its path."""
        path = Path(folder) / ENCODERS_FILE
        path.write_text(json.dumps(self.to_dict()))
        return path


def load_encoders(model_path: str | Path) -> FeatureEncoders | None:
    """The ``encoders.json`` beside an ONNX file, or None when there is none."""
    path = Path(model_path).with_name(ENCODERS_FILE)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AutocompressError(f"{path}: not valid JSON: {exc.msg}") from None
    return FeatureEncoders.from_dict(data)
