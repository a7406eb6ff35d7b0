"""One model end to end: build, train, export to ONNX, and measure it on the target.

This is what ``autocompress train`` does with a family's reference on a dataset; a search trial
goes through the same steps with a sampled architecture and a compression policy (``trial``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autocompress.data.table import Dataset
from autocompress.errors import AutocompressError
from autocompress.models.arch import ArchConfig
from autocompress.spec import Target
from autocompress.train import EpochReport, TrainConfig, TrainResult

__all__ = ["ModelReport", "train_and_measure"]


@dataclass
class ModelReport:
    """What one trained and exported model achieved: quality, size, speed, and where it lies."""

    family: str
    dataset: str
    arch: dict[str, Any]
    test: dict[str, float]
    oracle_auc: float | None
    popularity_auc: float
    size_bytes: int
    parameters: int
    macs_per_example: int
    latency: dict[str, Any]
    export_max_abs_diff: float
    train: dict[str, Any]
    onnx_path: str
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. a model that popularity alone beats

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=float)


def train_and_measure(
    dataset: Dataset,
    family: str,
    arch: ArchConfig | dict[str, Any] | None,
    train_config: TrainConfig,
    target: Target,
    out_dir: str | Path,
    *,
    on_step: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[EpochReport], bool | None] | None = None,
) -> ModelReport:
    """Train ``family`` on ``dataset``, export it, and measure quality, size and latency.

    Quality is computed on the test split from ONNX Runtime's outputs (what will be served);
    latency is measured on ``target``. Writes ``model.onnx``, ``model.pt`` (state dict),
    ``schema.json``, ``arch.json`` and ``report.json`` into ``out_dir``.
    """
    import torch

    from autocompress.export import create_session, export_onnx
    from autocompress.measure import macs_per_example, measure_latency, onnx_size_bytes, parameter_count
    from autocompress.measure.baselines import popularity_auc, popularity_warning
    from autocompress.measure.evaluation import onnx_logits, quality_report
    from autocompress.models import build
    from autocompress.train import fit

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AutocompressError(f"output folder {str(out)!r} cannot be created: {exc.strerror}") from None
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    model = build(family, dataset.schema, arch, seed=train_config.seed)
    result: TrainResult = fit(
        model, dataset.train, dataset.valid, train_config, on_step=on_step, on_epoch=on_epoch
    )
    model = model.cpu().eval()
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    exported = export_onnx(model, dataset.schema, out / "model.onnx")
    torch.save(model.state_dict(), out / "model.pt")
    (out / "schema.json").write_text(dataset.schema.to_json())
    (out / "arch.json").write_text(model.arch.to_json())
    seconds["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    session = create_session(exported.path, target)
    test_quality = quality_report(dataset.test, onnx_logits(session, dataset.test))
    baseline_auc = popularity_auc(dataset, "test")
    warning = popularity_warning(test_quality["auc"], baseline_auc, "test")
    seconds["evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    latency = measure_latency(session, dataset.schema, target)
    seconds["latency"] = time.perf_counter() - t0

    report = ModelReport(
        family=family,
        dataset=dataset.name,
        arch=model.arch.to_dict(),
        test=test_quality,
        oracle_auc=dataset.oracle_auc,
        popularity_auc=baseline_auc,
        size_bytes=onnx_size_bytes(exported.path),
        parameters=parameter_count(model),
        macs_per_example=macs_per_example(exported.path),
        latency=latency.to_dict(),
        export_max_abs_diff=exported.max_abs_diff,
        train={
            "best_epoch": result.best_epoch,
            "best_valid_auc": result.best_valid_auc,
            "stopped_early": result.stopped_early,
            "device": result.device,
            "history": [asdict(h) for h in result.history],
            "config": train_config.to_dict(),
        },
        onnx_path=str(exported.path),
        seconds=seconds,
        warnings=[warning] if warning else [],
    )
    (out / "report.json").write_text(report.to_json())
    return report
