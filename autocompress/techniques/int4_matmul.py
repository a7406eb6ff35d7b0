"""4-bit weight-only quantization of the dense layers in the exported graph (ONNX Runtime MatMulNBits).

Weights of MatMul and Gemm nodes with a constant weight are quantized to 4 bits in blocks of
``block_size`` input features, each block with its own scale (and zero point), and run as the
contrib op ``MatMulNBits`` (com.microsoft; CPU, CUDA), which dequantizes on the fly: ~7x smaller
weights, activations stay float. The legacy exporter writes ``nn.Linear`` as Gemm, which
MatMulNBits does not cover, so each such Gemm becomes MatMul (+ Add of its bias) first. Layers
whose 4-bit form would not be smaller (few input features: the block padding and scales outweigh
the weights) and activation-by-activation MatMuls stay float.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from autocompress.distributions import Categorical
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext

if TYPE_CHECKING:
    import onnx

BITS = 4
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """Block size and scheme of the 4-bit weights, the compute precision, and the layers kept float."""

    name: ClassVar[str] = "int4_matmul"
    level: ClassVar[Level] = "onnx"

    block_size: int = param(
        32, Categorical([16, 32, 64, 128]), "input features sharing one scale: a power of two >= 16"
    )
    symmetric: bool = param(
        False, Categorical([False, True]), "a scale per block only, no zero point (a bit smaller, coarser)"
    )
    accuracy_level: int = param(
        0,
        Categorical([0, 4]),
        "MatMulNBits compute precision of the activations: 0 unset (float), 1 fp32, 2 fp16, 3 bf16, "
        "4 int8 (fastest on CPU)",
    )
    exclude_nodes: tuple[str, ...] = param((), None, "ONNX node names (MatMul or Gemm) kept in float")

    def check(self) -> None:
        size = self.block_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 16 or size & (size - 1):
            raise self.fail("block_size", f"must be a power of two >= 16, got {size!r}")
        if self.accuracy_level not in ACCURACY_LEVELS or isinstance(self.accuracy_level, bool):
            raise self.fail(
                "accuracy_level", f"{self.accuracy_level!r} not allowed; allowed: {list(ACCURACY_LEVELS)}"
            )


def apply(path: Path, config: Config, ctx: TechniqueContext) -> Path:
    """Write a copy of ``path`` whose constant-weight MatMul/Gemm layers run on 4-bit weights."""
    import onnx

    quantizer_class = _quantizer_class()
    model = onnx.load(str(path))
    graph = model.graph
    config.check_names("exclude_nodes", config.exclude_nodes, [n.name for n in graph.node])
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
    kept_float = _to_matmuls(graph, config)
    quantizer = quantizer_class(
        model,
        bits=BITS,
        block_size=config.block_size,
        is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level,
        nodes_to_exclude=kept_float,
        op_types_to_quantize=("MatMul",),
    )
    # The quantizer logs every node at INFO; only its warnings are worth a user's attention.
    ort_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = ort_log.level
    ort_log.setLevel(logging.WARNING)
    try:
        quantizer.process()
    finally:
        ort_log.setLevel(level)
    out = ctx.new_path("int4_matmul")
    quantizer.model.save_model_to_file(str(out), use_external_data_format=external)
    return out


def _quantizer_class() -> type:
    """ONNX Runtime's MatMulNBitsQuantizer, without the root logging its module sets up on import."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # Importing the module runs logging.basicConfig(level=INFO), which would turn on every INFO
    # message of the process (Ray's, the service's); undo that on the root logger.
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    for handler in root.handlers[len(handlers) :]:
        root.removeHandler(handler)
    root.setLevel(level)
    quantizer: type = MatMulNBitsQuantizer
    return quantizer


def packed_bytes(rows: int, cols: int, block_size: int, symmetric: bool) -> int:
    """Bytes of a [rows (K), cols (N)] float weight as MatMulNBits 4-bit blocks, scales and zero points."""
    blocks = -(-rows // block_size)
    zero_points = 0 if symmetric else cols * -(-blocks // 2)
    return cols * blocks * (block_size * BITS // 8) + cols * blocks * 4 + zero_points


def _to_matmuls(graph: onnx.GraphProto, config: Config) -> list[str]:
    """Turn each Gemm worth quantizing into MatMul + Add; return the MatMul names to keep in float.

    A layer is worth quantizing with a constant 2-D weight whose 4-bit form is smaller than the
    float one (a Gemm also needs an untransposed input and a bias it can scale); the MatMul keeps
    the Gemm's name. Excluded MatMuls and those not worth quantizing are returned.
    """
    weights = {t.name: t for t in graph.initializer}
    kept_float: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            nodes.append(node)
            continue
        quantize = node.name not in config.exclude_nodes and _shrinks(node, weights, config)
        if node.op_type == "MatMul" and not quantize:
            kept_float.append(node.name)
        if node.op_type == "MatMul" or not quantize:
            nodes.append(node)
            continue
        nodes.extend(_gemm_as_matmul(node, weights, graph))
    graph.ClearField("node")
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    return kept_float


def _shrinks(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto], config: Config) -> bool:
    """Whether the node has a constant 2-D weight that MatMulNBits can hold in fewer bytes."""
    weight = weights.get(node.input[1])
    if weight is None or len(weight.dims) != 2:
        return False
    k, n = weight.dims
    if node.op_type == "Gemm":
        bias = node.input[2] if len(node.input) > 2 else ""
        if _attr(node, "transA", 0) or (_attr(node, "beta", 1.0) != 1.0 and bias and bias not in weights):
            return False
        if _attr(node, "transB", 0):
            k, n = n, k
    return packed_bytes(k, n, config.block_size, config.symmetric) < 4 * k * n


def _gemm_as_matmul(
    node: onnx.NodeProto, weights: dict[str, onnx.TensorProto], graph: onnx.GraphProto
) -> list[onnx.NodeProto]:
    """MatMul by the [K, N] weight (alpha folded in), then Add of the bias (beta folded in)."""
    from onnx import helper, numpy_helper

    matrix = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
    if _attr(node, "transB", 0):
        matrix = matrix.T
    matrix_name = f"{node.input[1]}_matmul"
    graph.initializer.append(
        numpy_helper.from_array(
            np.ascontiguousarray(matrix * np.float32(_attr(node, "alpha", 1.0))), matrix_name
        )
    )
    bias = node.input[2] if len(node.input) > 2 else ""
    if not bias:
        return [helper.make_node("MatMul", [node.input[0], matrix_name], list(node.output), name=node.name)]
    beta = _attr(node, "beta", 1.0)
    if beta != 1.0:
        scaled = numpy_helper.to_array(weights[bias]).astype(np.float32) * np.float32(beta)
        bias = f"{bias}_beta"
        graph.initializer.append(numpy_helper.from_array(scaled, bias))
    product = f"{node.output[0]}_matmul"
    return [
        helper.make_node("MatMul", [node.input[0], matrix_name], [product], name=node.name),
        helper.make_node("Add", [product, bias], list(node.output), name=f"{node.name}_bias"),
    ]


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            value: float = helper.get_attribute_value(attribute)
            return value
    return default


EXAMPLES = [
    {"block_size": 16, "symmetric": True, "accuracy_level": 4},
    {"block_size": 128, "exclude_nodes": ["/top/top.4/Gemm"]},
]
INVALID = [
    ({"block_size": 24}, "int4_matmul.block_size: must be a power of two >= 16, got 24"),
    ({"block_size": 8}, "int4_matmul.block_size: must be a power of two >= 16, got 8"),
    ({"accuracy_level": 5}, "int4_matmul.accuracy_level: 5 not allowed"),
    ({"exclude_nodes": ["no_such_node"]}, "int4_matmul.exclude_nodes: unknown name(s) ['no_such_node']"),
    ({"bits": 2}, "unknown field(s) ['bits']"),
]
