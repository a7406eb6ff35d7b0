"""Dynamic int8 quantization of the exported graph (onnxruntime.quantization.quantize_dynamic).

Weights of MatMul/Gemm (and optionally Gather: embedding tables) become int8 with a scale;
activations are quantized on the fly per batch. No calibration data is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from autocompress.distributions import Categorical
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext

OP_TYPES = ("MatMul", "Gemm", "Gather")


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """Which operator types get int8 weights, how, and which nodes stay in float."""

    name: ClassVar[str] = "dynamic_int8"
    level: ClassVar[Level] = "onnx"

    op_types: tuple[str, ...] = param(
        ("MatMul", "Gemm"),
        Categorical([["MatMul", "Gemm"], ["MatMul", "Gemm", "Gather"]]),
        "operator types whose weights are quantized (Gather = embedding tables)",
    )
    per_channel: bool = param(False, Categorical([False, True]), "one scale per output channel")
    exclude_nodes: tuple[str, ...] = param((), None, "ONNX node names kept in float")

    def check(self) -> None:
        if not self.op_types:
            raise self.fail("op_types", f"must name at least one of {list(OP_TYPES)}")
        bad = sorted(set(self.op_types) - set(OP_TYPES))
        if bad:
            raise self.fail("op_types", f"{bad} not allowed; allowed: {list(OP_TYPES)}")


def apply(path: Path, config: Config, ctx: TechniqueContext) -> Path:
    """Write a dynamically quantized copy of ``path`` and return its path."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node]
    config.check_names("exclude_nodes", config.exclude_nodes, nodes)
    out = ctx.new_path("dynamic_int8")
    # DefaultTensorType: a MatMul fed by another rewrite's output (e.g. quantized tables gathered
    # into DIN's attention) has no inferred type, which the quantizer otherwise cannot handle
    extra: dict[str, Any] = {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT}
    quantize_dynamic(
        str(path),
        str(out),
        op_types_to_quantize=list(config.op_types),
        per_channel=config.per_channel,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(config.exclude_nodes),
        extra_options=extra,
    )
    return out


EXAMPLES = [{"op_types": ["MatMul", "Gemm", "Gather"], "per_channel": True}]
INVALID = [
    ({"op_types": ["Conv2d"]}, "dynamic_int8.op_types: ['Conv2d'] not allowed"),
    ({"op_types": []}, "dynamic_int8.op_types: must name at least one"),
    ({"exclude_nodes": ["no_such_layer"]}, "dynamic_int8.exclude_nodes: unknown name(s) ['no_such_layer']"),
    ({"bits": 3}, "unknown field(s) ['bits']"),
]
