"""Static int8 quantization of the exported graph in QDQ form, calibrated on representative rows.

Unlike dynamic int8, activation scales are fixed ahead of time from ``calibration_rows`` validation
rows (``ctx.calibration_batch``), so no range is computed per request: the graph carries
QuantizeLinear/DequantizeLinear pairs around MatMul/Gemm (and optionally Gather) that ONNX Runtime
fuses into int8 kernels on CPU, and TensorRT / CUDA read as explicit int8 precision. Only MatMuls
with a constant weight are quantized (DLRM's activation-by-activation interaction stays float).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from autocompress.distributions import Categorical, IntRange
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext

OP_TYPES = ("MatMul", "Gemm", "Gather")
CALIBRATE_METHODS = ("MinMax", "Entropy", "Percentile")
ACTIVATION_TYPES = ("uint8", "int8")
CALIBRATION_BATCH_ROWS = 256
# ONNX Runtime's entropy calibrator defaults to 128 histogram bins for 128 quantized bins, which
# leaves it nothing to choose (it returns the min-max range); 512 bins let it clip outliers.
ENTROPY_HISTOGRAM_BINS = 512


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """What gets int8, how activation ranges are calibrated, on how many rows, and what stays float."""

    name: ClassVar[str] = "static_int8"
    level: ClassVar[Level] = "onnx"

    calibrate_method: str = param(
        "MinMax",
        Categorical(list(CALIBRATE_METHODS)),
        "how activation ranges come from the calibration rows: MinMax, Entropy (KL) or Percentile (99.999)",
    )
    calibration_rows: int = param(
        1024, IntRange(256, 8192, log=True), "validation rows the activation ranges are calibrated on"
    )
    per_channel: bool = param(False, Categorical([False, True]), "one weight scale per output channel")
    activation_type: str = param(
        "uint8",
        Categorical(list(ACTIVATION_TYPES)),
        "activation integer type: uint8 (x86 without VNNI), int8 (ARM, VNNI, TensorRT)",
    )
    op_types: tuple[str, ...] = param(
        ("MatMul", "Gemm"),
        Categorical([["MatMul", "Gemm"], ["MatMul", "Gemm", "Gather"]]),
        "operator types quantized (Gather = embedding tables, one scale per table)",
    )
    exclude_nodes: tuple[str, ...] = param((), None, "ONNX node names kept in float")

    def check(self) -> None:
        if self.calibrate_method not in CALIBRATE_METHODS:
            raise self.fail(
                "calibrate_method",
                f"{self.calibrate_method!r} not allowed; allowed: {list(CALIBRATE_METHODS)}",
            )
        rows = self.calibration_rows
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise self.fail("calibration_rows", f"must be an integer >= 1, got {rows!r}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise self.fail(
                "activation_type", f"{self.activation_type!r} not allowed; allowed: {list(ACTIVATION_TYPES)}"
            )
        if not self.op_types:
            raise self.fail("op_types", f"must name at least one of {list(OP_TYPES)}")
        bad = sorted(set(self.op_types) - set(OP_TYPES))
        if bad:
            raise self.fail("op_types", f"{bad} not allowed; allowed: {list(OP_TYPES)}")


def apply(path: Path, config: Config, ctx: TechniqueContext) -> Path:
    """Calibrate activation ranges on ``ctx.calibration_batch``, write the QDQ int8 copy, return its path."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    header = onnx.load(str(path), load_external_data=False)
    config.check_names("exclude_nodes", config.exclude_nodes, [n.name for n in header.graph.node])
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)
    # ONNX Runtime's QDQ quantizer ignores its MatMulConstBOnly option: keep such MatMuls out by name.
    weights = {t.name for t in header.graph.initializer}
    activation_matmuls = [
        n.name for n in header.graph.node if n.op_type == "MatMul" and n.input[1] not in weights
    ]
    method = getattr(CalibrationMethod, config.calibrate_method)
    op_types = list(config.op_types)
    out = ctx.new_path("static_int8")
    with tempfile.TemporaryDirectory(dir=ctx.work_dir, prefix=".static_int8.") as tmp:
        # Shape inference ahead of quantization (ONNX Runtime's recommended pre-processing); node
        # names are kept (no graph optimisation) so ``exclude_nodes`` still finds its nodes.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(
            str(path),
            str(prepared),
            skip_optimization=True,
            save_as_external_data=external,
            all_tensors_to_one_file=True,
        )
        # Calibrate here rather than inside quantize_static, which cannot set the entropy bins;
        # the ranges reach it through ONNX Runtime's calibration cache file.
        extra: dict[str, Any] = (
            {"num_bins": ENTROPY_HISTOGRAM_BINS} if config.calibrate_method == "Entropy" else {}
        )
        ranges = Path(tmp) / "ranges.json"
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
            calibrator = create_calibrator(
                prepared,
                op_types,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=method,
                use_external_data_format=external,
                providers=["CPUExecutionProvider"],
                extra_options=extra,
            )
            calibrator.collect_data(
                _CalibrationReader(_calibration_feeds(path, ctx, config.calibration_rows))
            )
            save_tensors_data(calibrator.compute_data(), ranges)
        quantize_static(
            str(prepared),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=config.per_channel,
            activation_type=QuantType.QUInt8 if config.activation_type == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[*config.exclude_nodes, *activation_matmuls],
            use_external_data_format=external,
            calibrate_method=method,
            calibration_cache_path=str(ranges),
        )
    return out


def _calibration_feeds(path: Path, ctx: TechniqueContext, rows: int) -> Iterator[dict[str, np.ndarray]]:
    """ONNX Runtime feeds of the calibration rows, in batches, typed for the model's inputs."""
    from autocompress.export import create_session, feed
    from autocompress.spec import Target

    features = feed(create_session(path, Target()), ctx.calibration_batch(rows))
    total = len(next(iter(features.values())))
    for start in range(0, total, CALIBRATION_BATCH_ROWS):
        yield {name: values[start : start + CALIBRATION_BATCH_ROWS] for name, values in features.items()}


class _CalibrationReader:
    """An iterator of feeds as ONNX Runtime's CalibrationDataReader (which only needs ``get_next``)."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


EXAMPLES = [
    {"calibrate_method": "Entropy", "per_channel": True, "activation_type": "int8", "calibration_rows": 256},
    {"calibrate_method": "Percentile", "op_types": ["MatMul", "Gemm", "Gather"]},
]
INVALID = [
    ({"calibrate_method": "KL"}, "static_int8.calibrate_method: 'KL' not allowed"),
    ({"calibration_rows": 0}, "static_int8.calibration_rows: must be an integer >= 1"),
    ({"activation_type": "int4"}, "static_int8.activation_type: 'int4' not allowed"),
    ({"op_types": ["Conv"]}, "static_int8.op_types: ['Conv'] not allowed"),
    ({"op_types": []}, "static_int8.op_types: must name at least one"),
    ({"exclude_nodes": ["no_such_node"]}, "static_int8.exclude_nodes: unknown name(s) ['no_such_node']"),
]
