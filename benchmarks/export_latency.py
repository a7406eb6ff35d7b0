"""Eager PyTorch vs exported ONNX Runtime, per model family, measured side by side in one run.

Each family's reference architecture on the default synthetic schema (200k items, 100k users),
untrained (latency does not depend on the weights), 1 intra-op thread on both sides. Prints a
table of p50 latencies and the speed-up ratio, and writes ``benchmarks/results/export_latency.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autocompress.data.synthetic import SyntheticConfig, synthetic_schema
from autocompress.export import create_session, export_onnx
from autocompress.measure import measure_latency, measure_torch_latency, onnx_size_bytes, torch_size_bytes
from autocompress.models import FAMILIES, build
from autocompress.spec import Target

RESULTS = Path(__file__).parent / "results" / "export_latency.json"


def run(max_seconds: float = 3.0) -> dict[str, object]:
    """Measure every family; bounded by ``max_seconds`` per batch size and side."""
    schema = synthetic_schema(SyntheticConfig())
    target = Target(batch_sizes=[1, 256], warmup=10, repetitions=200, max_seconds=max_seconds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            model = build(family, schema).eval()
            path = export_onnx(model, schema, Path(tmp) / f"{family}.onnx").path
            onnx_report = measure_latency(create_session(path, target), schema, target)
            torch_report = measure_torch_latency(model, schema, target)
            for batch_size in target.batch_sizes:
                torch_ms, onnx_ms = torch_report.at(batch_size, 50), onnx_report.at(batch_size, 50)
                rows.append(
                    {
                        "family": family,
                        "batch_size": batch_size,
                        "torch_p50_ms": torch_ms,
                        "onnx_p50_ms": onnx_ms,
                        "onnx_p99_ms": onnx_report.at(batch_size, 99),
                        "speedup": torch_ms / onnx_ms,
                        "torch_mb": torch_size_bytes(model) / 1e6,
                        "onnx_mb": onnx_size_bytes(path) / 1e6,
                    }
                )
    return {"rows": rows, "target": target.to_dict()}


def main() -> int:
    result = run()
    table = Table(title="eager PyTorch vs ONNX Runtime (reference archs, 1 thread)")
    for col in (
        "family",
        "batch",
        "torch p50 ms",
        "ONNX p50 ms",
        "ONNX p99 ms",
        "speed-up",
        "MB torch / ONNX",
    ):
        table.add_column(col, justify="right")
    for r in result["rows"]:  # type: ignore[attr-defined]
        table.add_row(
            r["family"],
            str(r["batch_size"]),
            f"{r['torch_p50_ms']:.3f}",
            f"{r['onnx_p50_ms']:.3f}",
            f"{r['onnx_p99_ms']:.3f}",
            f"{r['speedup']:.2f}x",
            f"{r['torch_mb']:.1f} / {r['onnx_mb']:.1f}",
        )
    Console(width=140).print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
