"""Every compression technique and combined policies on the reference DLRM, next to the baselines.

One run, side by side: the reference DLRM (embedding dim 64, bottom 256-128-64, top 512-512-256-1)
trained on the default synthetic log, then

- baselines a user would pick instead: ONNX Runtime fp32 (``onnx_fp32``), ONNX Runtime dynamic
  int8 over MatMul + Gather (``ort_dynamic_int8``), torch dynamic int8 of the Linear layers
  (``torch_dynamic_int8``);
- one row per registered technique (its default config);
- combined policies.

Columns: test AUC, delta AUC vs the reference, size MB and ratio vs fp32 ONNX, p50/p99 latency at
batch 1 and 256 (ONNX Runtime, 1 intra-op thread) and speed-up at batch 256 vs fp32 ONNX.
Writes ``benchmarks/results/techniques.json``. ``--quick`` runs on the tiny data (a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import io
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from autocompress.data.synthetic import SyntheticConfig, load_synthetic
from autocompress.data.table import Dataset
from autocompress.export import create_session
from autocompress.measure import measure_latency, measure_torch_latency, onnx_size_bytes
from autocompress.measure.evaluation import onnx_logits
from autocompress.measure.quality import auc
from autocompress.models import build
from autocompress.spec import Target
from autocompress.techniques import Policy, TechniqueContext, apply_policy, technique_names
from autocompress.techniques.registry import _MODULES
from autocompress.train import TrainConfig, fit, predict

RESULTS = Path(__file__).parent / "results" / "techniques.json"
TARGET = Target(batch_sizes=[1, 256], warmup=10, repetitions=200, max_seconds=3)

# Combined policies: what the search will explore, written out by hand as its starting points.
HASHING = {"technique": "frequency_hashing", "min_count": 20, "hash_buckets": 2048}
INT8_MLP = {"technique": "dynamic_int8", "op_types": ["MatMul", "Gemm"]}
POLICIES: dict[str, list[dict[str, Any]]] = {
    "small: hashing + 4-bit tables + int8 MLP": [
        HASHING,
        {"technique": "embedding_quantization", "bits": 4},
        INT8_MLP,
    ],
    "fast: hashing + 70%-pruned MLP + int8 MLP": [
        HASHING,
        {"technique": "structured_pruning", "sparse_ratio": 0.7, "importance": "taylor"},
        INT8_MLP,
    ],
    "faster: hashing + 80%-pruned MLP + int8 MLP": [
        HASHING,
        {"technique": "structured_pruning", "sparse_ratio": 0.8, "importance": "taylor"},
        INT8_MLP,
    ],
    "small+fast: hashing + 70%-pruned MLP + 4-bit tables + int8 MLP": [
        HASHING,
        {"technique": "structured_pruning", "sparse_ratio": 0.7, "importance": "taylor"},
        {"technique": "embedding_quantization", "bits": 4},
        INT8_MLP,
    ],
}


def reference_model(dataset: Dataset, config: TrainConfig) -> torch.nn.Module:
    model = build("dlrm", dataset.schema)
    fit(model, dataset.train, dataset.valid, config)
    return model.cpu().eval()


def onnx_row(name: str, path: Path, dataset: Dataset) -> dict[str, Any]:
    session = create_session(path, TARGET)
    latency = measure_latency(session, dataset.schema, TARGET)
    return {
        "name": name,
        "test_auc": auc(dataset.test.labels, onnx_logits(session, dataset.test)),
        "size_mb": onnx_size_bytes(path) / 1e6,
        "p50_ms_b1": latency.at(1, 50),
        "p99_ms_b1": latency.at(1, 99),
        "p50_ms_b256": latency.at(256, 50),
        "p99_ms_b256": latency.at(256, 99),
    }


def torch_dynamic_int8_row(model: torch.nn.Module, dataset: Dataset) -> dict[str, Any]:
    quantized = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
    )
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    latency = measure_torch_latency(quantized, dataset.schema, TARGET)
    return {
        "name": "torch_dynamic_int8",
        "test_auc": auc(dataset.test.labels, predict(quantized, dataset.test)),
        "size_mb": buffer.getbuffer().nbytes / 1e6,
        "p50_ms_b1": latency.at(1, 50),
        "p99_ms_b1": latency.at(1, 99),
        "p50_ms_b256": latency.at(256, 50),
        "p99_ms_b256": latency.at(256, 99),
    }


def run(quick: bool = False) -> dict[str, Any]:
    config = SyntheticConfig.tiny() if quick else SyntheticConfig()
    dataset = load_synthetic(config)
    train_config = TrainConfig(epochs=1 if quick else 2, batch_size=2048, lr=2e-3, early_stopping_patience=1)
    started = time.perf_counter()
    reference = reference_model(dataset, train_config)
    print(f"reference DLRM trained in {time.perf_counter() - started:.0f} s")
    # fine-tuning inside techniques (distilling from the reference at a tenth of its learning
    # rate): one epoch on a random 300k-row sample of the train split keeps the run bounded
    rows_ = len(dataset.train)
    sample = np.sort(np.random.default_rng(0).choice(rows_, min(rows_, 300_000), replace=False))
    finetune = replace(dataset, train=dataset.train.take(sample))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:

        def context(tag: str) -> TechniqueContext:
            return TechniqueContext(
                schema=dataset.schema,
                work_dir=Path(tmp) / tag,
                train=finetune.train,
                valid=dataset.valid,
                train_config=replace(train_config, epochs=1, early_stopping_patience=None),
                teacher=reference,
                target=TARGET,
            )

        def policy_row(name: str, steps: list[dict[str, Any]]) -> None:
            started = time.perf_counter()
            try:
                result = apply_policy(
                    copy.deepcopy(reference), Policy.from_dict({"steps": steps}), context(name)
                )
            except Exception as exc:  # a failing technique is a row that says so, not a lost run
                print(f"{name}: failed: {exc}")
                rows.append({"name": name, "error": str(exc)})
                return
            rows.append(onnx_row(name, result.onnx_path, dataset))
            print(f"{name}: {time.perf_counter() - started:.0f} s")

        policy_row("onnx_fp32", [])
        policy_row(
            "ort_dynamic_int8", [{"technique": "dynamic_int8", "op_types": ["MatMul", "Gemm", "Gather"]}]
        )
        rows.append(torch_dynamic_int8_row(reference, dataset))
        for name in technique_names():
            if name == "distillation":
                continue  # distillation needs a smaller student; it runs inside combined policies
            if not _installed(name):
                print(f"{name}: skipped, its optional extra is not installed")
                continue
            policy_row(name, [{"technique": name}])
        for name, steps in POLICIES.items():
            policy_row(name, steps)

    base = next(r for r in rows if r["name"] == "onnx_fp32")
    for r in rows:
        if "error" in r:
            continue
        r["delta_auc"] = r["test_auc"] - base["test_auc"]
        r["size_ratio"] = base["size_mb"] / r["size_mb"]
        r["speedup_b256"] = base["p50_ms_b256"] / r["p50_ms_b256"]
    return {"rows": rows, "oracle_auc": dataset.oracle_auc, "data": "tiny" if quick else "default"}


def _installed(technique: str) -> bool:
    module = importlib.import_module(_MODULES[technique])
    return all(importlib.util.find_spec(p) is not None for p in getattr(module, "REQUIRES", ()))


def print_table(result: dict[str, Any]) -> None:
    table = Table(title=f"compression techniques on the reference DLRM ({result['data']} data, 1 thread)")
    for col in (
        "name",
        "test AUC",
        "ΔAUC",
        "MB",
        "x smaller",
        "b1 p50/p99 ms",
        "b256 p50/p99 ms",
        "b256 speed-up",
    ):
        table.add_column(col, justify="right" if col != "name" else "left")
    for r in result["rows"]:
        if "error" in r:
            table.add_row(r["name"], "[red]failed", r["error"][:60], "", "", "", "", "")
            continue
        table.add_row(
            r["name"],
            f"{r['test_auc']:.4f}",
            f"{r['delta_auc']:+.4f}",
            f"{r['size_mb']:.2f}",
            f"{r['size_ratio']:.1f}x",
            f"{r['p50_ms_b1']:.3f} / {r['p99_ms_b1']:.3f}",
            f"{r['p50_ms_b256']:.2f} / {r['p99_ms_b256']:.2f}",
            f"{r['speedup_b256']:.2f}x",
        )
    Console(width=160).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny data: a smoke run in about a minute")
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = run(quick=args.quick)
    print_table(result)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=float))
        print(f"wrote {RESULTS}")
    failed = [r["name"] for r in result["rows"] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
