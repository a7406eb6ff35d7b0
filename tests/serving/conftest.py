"""A real SQLite store and an artifact root holding exported tiny models (untrained: outputs are outputs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autocompress.data.schema import FeatureSchema
from autocompress.data.synthetic import SyntheticConfig, synthetic_schema
from autocompress.store import ModelRecord, Store


class Registry:
    """Exports tiny models of a family into the artifact root and registers them in the store."""

    def __init__(self, store: Store, root: Path) -> None:
        self.store = store
        self.root = root
        self.schema: FeatureSchema = synthetic_schema(SyntheticConfig.tiny())

    def register(self, family: str, *, seed: int = 0, spec: dict[str, Any] | None = None) -> ModelRecord:
        import torch

        from autocompress.export import export_onnx
        from autocompress.models import build
        from autocompress.testing.fixtures import TINY_ARCHS

        torch.manual_seed(seed)
        model = build(family, self.schema, TINY_ARCHS[family]).eval()
        path = export_onnx(model, self.schema, self.root / f"{family}-{seed}" / "model.onnx").path
        job_id = self.store.create_job(spec).id if spec is not None else None
        return self.store.register_model(f"{family}-{seed}", path, self.schema.to_dict(), {}, job_id=job_id)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    monkeypatch.setattr("autocompress.serving._runner.TOWER_CACHE", tmp_path / "towers")
    with Store(tmp_path / "serving.db") as store:
        yield Registry(store, tmp_path / "artifacts")
