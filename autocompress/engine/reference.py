"""A job's reference model and the baselines a user would ship without autocompress.

The reference is trained once per job: it is the teacher of every trial and the fp32 baseline;
the baselines are its fp32 ONNX export and ONNX Runtime dynamic int8 of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autocompress.data.table import Dataset
from autocompress.train import TrainConfig

__all__ = ["Reference", "baseline_models", "train_reference"]


@dataclass
class Reference:
    """The job's reference model: trained once, the teacher of every trial and the fp32 baseline."""

    model: Any
    valid_auc: float
    onnx_path: Path


def train_reference(family: str, dataset: Dataset, train_config: TrainConfig, work: Path) -> Reference:
    """Train the family's reference architecture on the full train split and export it (fp32 ONNX).

    A reference this job already trained (a resumed job: its driver was relaunched) is loaded from
    ``work`` instead: ``reference.pt`` (the weights), ``reference.onnx`` and ``reference.json`` (its
    valid AUC and the training config, written last, so a half-written reference is trained again).
    """
    import torch

    from autocompress.export import export_onnx
    from autocompress.models import build
    from autocompress.train import fit

    weights, onnx_path, meta = work / "reference.pt", work / "reference.onnx", work / "reference.json"
    model = build(family, dataset.schema, seed=train_config.seed)  # same spec, same reference
    if meta.is_file() and weights.is_file() and onnx_path.is_file():
        saved = json.loads(meta.read_text())
        if saved.get("train_config") == json.loads(json.dumps(train_config.to_dict())):
            model.load_state_dict(torch.load(weights, weights_only=True))  # tensors only: no pickled code
            return Reference(model=model.eval(), valid_auc=float(saved["valid_auc"]), onnx_path=onnx_path)
    result = fit(model, dataset.train, dataset.valid, train_config)
    model = model.cpu().eval()
    path = export_onnx(model, dataset.schema, onnx_path).path
    torch.save(model.state_dict(), weights)
    meta.write_text(json.dumps({"valid_auc": result.best_valid_auc, "train_config": train_config.to_dict()}))
    return Reference(model=model, valid_auc=result.best_valid_auc, onnx_path=path)


def baseline_models(reference: Reference, dataset: Dataset, work: Path) -> dict[str, Path]:
    """What a user would ship without autocompress: fp32 ONNX and ONNX Runtime dynamic int8 of it."""
    import copy

    from autocompress.techniques import Policy, TechniqueContext, apply_policy

    int8 = Policy.from_dict(
        {"steps": [{"technique": "dynamic_int8", "op_types": ["MatMul", "Gemm", "Gather"]}]}
    )
    int8_path = apply_policy(
        copy.deepcopy(reference.model),
        int8,
        TechniqueContext(schema=dataset.schema, work_dir=work / "ort-dynamic-int8"),
    ).onnx_path
    return {"onnx_fp32": reference.onnx_path, "ort_dynamic_int8": int8_path}
