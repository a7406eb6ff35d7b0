"""Choose a dataset by name: the synthetic default or a real-data loader reading files from disk."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autocompress.data.table import Dataset
from autocompress.errors import AutocompressError

DATASET_KINDS = ("synthetic", "criteo", "movielens", "tabular")


class DatasetSpec(BaseModel):
    """Which data a job trains on: ``kind`` plus its files and loader options.

    ``synthetic`` needs no file (``options`` are SyntheticConfig fields, ``scale`` picks a
    preset); ``criteo`` and ``movielens`` read ``path``; ``tabular`` reads ``path`` (CSV or
    Parquet) with the YAML ``schema_path``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["synthetic", "criteo", "movielens", "tabular"] = "synthetic"
    scale: Literal["tiny", "default"] = "default"
    path: str | None = None
    schema_path: str | None = None
    split_method: Literal["time", "session"] | None = None
    fractions: tuple[float, float, float] | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _files_given(self) -> DatasetSpec:
        if self.kind != "synthetic" and not self.path:
            raise ValueError(f"dataset.path is required for kind {self.kind!r}")
        if self.kind == "tabular" and not self.schema_path:
            raise ValueError("dataset.schema_path (a YAML schema file) is required for kind 'tabular'")
        return self


def _existing(path: str | None, field: str) -> Path:
    if path is None:
        raise AutocompressError(f"dataset.{field} is required")
    p = Path(path)
    if not p.exists():
        raise AutocompressError(f"dataset.{field}: {p} does not exist")
    return p


def _call(loader: Callable[..., Dataset], kind: str, *args: Any, **kwargs: Any) -> Dataset:
    """Call a loader, refusing option names it does not take (listing the ones it does)."""
    params = inspect.signature(loader).parameters
    allowed = sorted(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise AutocompressError(
            f"dataset.options {unknown} not accepted for kind {kind!r}; allowed: {allowed}"
        )
    return loader(*args, **{k: v for k, v in kwargs.items() if v is not None})


def load_dataset(spec: DatasetSpec) -> Dataset:
    """Load and split the dataset ``spec`` names; errors name the field or file that is wrong."""
    options = {"split_method": spec.split_method, "fractions": spec.fractions, **spec.options}
    if spec.kind == "synthetic":
        from autocompress.data.synthetic import SyntheticConfig, load_synthetic

        generator = dict(spec.options)
        config = (
            SyntheticConfig.tiny(**generator)
            if spec.scale == "tiny"
            else SyntheticConfig.from_dict(generator)
        )
        return load_synthetic(
            config, split_method=spec.split_method or "time", fractions=spec.fractions or (0.8, 0.1, 0.1)
        )
    if spec.kind == "criteo":
        from autocompress.data.criteo import load_criteo

        return _call(load_criteo, spec.kind, _existing(spec.path, "path"), **options)
    if spec.kind == "movielens":
        from autocompress.data.movielens import load_movielens

        return _call(load_movielens, spec.kind, _existing(spec.path, "path"), **options)
    from autocompress.data.tabular import load_tabular

    return _call(
        load_tabular,
        spec.kind,
        _existing(spec.path, "path"),
        _existing(spec.schema_path, "schema_path"),
        **options,
    )
