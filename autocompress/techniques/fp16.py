"""float16 weights and compute in the exported graph, for GPU targets (CUDA / TensorRT providers).

ONNX Runtime's converter (``onnxruntime.transformers.float16``) stores every float initializer in
float16 (half the bytes) and runs the graph in float16, with Casts at the edges: inputs and
outputs keep their float32 / int64 types, so callers feed and read the model as before. On CUDA
the float16 kernels use tensor cores; the CPU provider runs the result too (as the tests here do),
but slower than float32, so a CPU target should prefer int8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from autocompress.distributions import Categorical
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """Which operator types and nodes stay float32, and whether inputs/outputs keep their types."""

    name: ClassVar[str] = "fp16"
    level: ClassVar[Level] = "onnx"

    op_block_list: tuple[str, ...] = param(
        (),
        Categorical([[], ["ReduceSum", "ReduceMean", "Softmax"]]),
        "operator types kept in float32 besides ONNX Runtime's default list (reductions and softmax "
        "are where float16 overflows or loses precision first)",
    )
    node_block_list: tuple[str, ...] = param((), None, "ONNX node names kept in float32")
    keep_io_types: bool = param(
        True, None, "graph inputs and outputs keep float32 (False: float16 dense inputs)"
    )

    def check(self) -> None:
        bad = [op for op in self.op_block_list if not isinstance(op, str) or not op]
        if bad:
            raise self.fail("op_block_list", f"operator types must be non-empty strings, got {bad}")
        if not isinstance(self.keep_io_types, bool):
            raise self.fail("keep_io_types", f"must be true or false, got {self.keep_io_types!r}")


def apply(path: Path, config: Config, ctx: TechniqueContext) -> Path:
    """Write a float16 copy of ``path`` and return its path."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from autocompress.export.torch_to_onnx import EXTERNAL_DATA_THRESHOLD_BYTES

    model = onnx.load(str(path))
    config.check_names("node_block_list", config.node_block_list, [n.name for n in model.graph.node])
    converted = convert_float_to_float16(
        model,
        keep_io_types=config.keep_io_types,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *config.op_block_list],
        node_block_list=list(config.node_block_list),
    )
    out = ctx.new_path("fp16")
    if converted.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES:
        onnx.save_model(converted, str(out), save_as_external_data=True, location=f"{out.name}.data")
    else:
        onnx.save_model(converted, str(out))
    return out


EXAMPLES = [
    {"op_block_list": ["ReduceSum", "ReduceMean", "Softmax"], "node_block_list": ["/top/top.4/Gemm"]},
    {"keep_io_types": False},
]
INVALID = [
    ({"node_block_list": ["no_such_node"]}, "fp16.node_block_list: unknown name(s) ['no_such_node']"),
    ({"op_block_list": [""]}, "fp16.op_block_list: operator types must be non-empty strings"),
    ({"keep_io_types": "yes"}, "fp16.keep_io_types: must be true or false"),
    ({"precision": "bf16"}, "unknown field(s) ['precision']"),
]
