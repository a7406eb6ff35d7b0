"""Row-wise int8 / 4-bit quantization of the embedding tables in the exported graph.

Each embedding table (a float initializer that only Gather nodes read) becomes uint8 codes with one
scale (and zero point) per row block, and its Gathers become ONNX Runtime's ``GatherBlockQuantized``
(com.microsoft; CPU kernel, tested here, and a CUDA one): it gathers the quantized rows and
dequantizes only those, so a request never dequantizes a whole table. 4-bit codes are packed two
per byte: at embedding_dim 64 a table's bytes shrink ~7x (8-bit: ~3.7x), less for narrow rows,
where the per-row scale weighs more (dim 16: ~4.9x and ~3x).

Tables are named after their feature (``item_id``; DeepFM's first-order tables ``first_order.item_id``);
``table_bits`` gives single tables their own width (mixed precision), 32 keeping one in float.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from autocompress.data.schema import FeatureSchema
from autocompress.distributions import Categorical
from autocompress.techniques.base import Level, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

BITS = (4, 8)
FLOAT_BITS = 32  # in ``table_bits``: leave this table in float32
TABLE_BITS = (*BITS, FLOAT_BITS)
QUANTIZED_OP = "GatherBlockQuantized"
MS_DOMAIN = "com.microsoft"
# FeatureEmbeddings keeps one table per sparse feature, in schema order: "<module>.tables.<i>.weight",
# or "<module>.tables.<i>.table.weight" once frequency hashing has put the table behind its remap.
_TABLE_PATH = re.compile(r"^(?:(?P<module>.+)\.)?tables\.(?P<index>\d+)(?:\.table)?\.weight$")


@dataclass(frozen=True, kw_only=True)
class Config(TechniqueConfig):
    """How many bits each embedding table keeps, how rows are scaled, and which tables stay float."""

    name: ClassVar[str] = "embedding_quantization"
    level: ClassVar[Level] = "onnx"

    bits: int = param(8, Categorical([8, 4]), "bits per value of every quantized table: 8, or 4 (packed)")
    table_bits: tuple[tuple[str, int], ...] = param(
        (),
        None,
        "per-table bits overriding `bits` and `min_rows`: {table: 4 | 8 | 32} (32 keeps it float32)",
    )
    min_rows: int = param(
        1000, Categorical([0, 1000, 100_000]), "tables with fewer rows stay float32 (little to gain)"
    )
    symmetric: bool = param(
        False, Categorical([False, True]), "a scale per block only, no zero point (a bit smaller, coarser)"
    )
    block_size: int = param(
        0,
        Categorical([0, 16, 32]),
        "values of a row sharing one scale: 0 = the whole row, else a power of two >= 16",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "table_bits", self.named_pairs("table_bits", "table", "bits"))
        super().__post_init__()

    def check(self) -> None:
        if not _is_int(self.bits) or self.bits not in BITS:
            raise self.fail("bits", f"{self.bits!r} not allowed; allowed: {list(BITS)}")
        for table, bits in self.table_bits:
            if not _is_int(bits) or bits not in TABLE_BITS:
                raise self.fail(
                    "table_bits", f"{bits!r} not allowed for {table!r}; allowed: {list(TABLE_BITS)}"
                )
        self.require_int("min_rows", 0)
        if not _is_int(self.block_size) or (
            self.block_size != 0 and (self.block_size < 16 or self.block_size & (self.block_size - 1))
        ):
            raise self.fail(
                "block_size", f"must be 0 (whole row) or a power of two >= 16, got {self.block_size!r}"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def embedding_tables(graph: onnx.GraphProto, schema: FeatureSchema) -> dict[str, str]:
    """The graph's embedding tables, user-facing name -> initializer name.

    A table is a 2-D float32 initializer that only Gather nodes read, as data on axis 0. Tables
    exported from ``FeatureEmbeddings`` are named after their feature (prefixed by the module
    when it is not ``embeddings``); any other table keeps its initializer name.
    """
    import onnx

    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    floats -= {i.name for i in graph.input}  # an initializer that is also an input can be overridden
    gathered: set[str] = set()
    other_use: set[str] = set()
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name not in floats:
                continue
            if (
                node.op_type == "Gather"
                and node.domain in ("", "ai.onnx")
                and position == 0
                and _axis(node) == 0
            ):
                gathered.add(name)
            else:
                other_use.add(name)
    initializers = sorted(gathered - other_use)
    names = [_table_name(init, schema) for init in initializers]
    return {
        (name if names.count(name) == 1 else init): init
        for name, init in zip(names, initializers, strict=True)
    }


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _table_name(initializer: str, schema: FeatureSchema) -> str:
    match = _TABLE_PATH.match(initializer)
    sparse = [f.name for f in schema.sparse]
    if match is None or int(match["index"]) >= len(sparse):
        return initializer
    feature = sparse[int(match["index"])]
    module = match["module"]
    return feature if module in (None, "embeddings") else f"{module}.{feature}"


def apply(path: Path, config: Config, ctx: TechniqueContext) -> Path:
    """Write a copy of ``path`` whose embedding tables are row-wise quantized and return its path."""
    import onnx

    from autocompress.export.torch_to_onnx import EXTERNAL_DATA_THRESHOLD_BYTES

    model = onnx.load(str(path))
    graph = model.graph
    tables = embedding_tables(graph, ctx.schema)
    config.check_names("table_bits", [table for table, _ in config.table_bits], tables)
    overrides = dict(config.table_bits)
    initializers = {i.name: i for i in graph.initializer}
    quantized = 0
    for table, init_name in tables.items():
        weight = onnx.numpy_helper.to_array(initializers[init_name])
        default = config.bits if weight.shape[0] >= config.min_rows else FLOAT_BITS
        bits = overrides.get(table, default)
        if bits == FLOAT_BITS:
            continue
        block_size = config.block_size or max(16, 1 << (weight.shape[1] - 1).bit_length())
        codes, scales, zero_points = quantize_rows(weight, bits, block_size, config.symmetric)
        new_bytes = codes.nbytes + scales.nbytes + (0 if zero_points is None else zero_points.nbytes)
        if new_bytes >= weight.nbytes:
            log.info("%s: table %s stays float32: %d bits would not shrink it", config.name, table, bits)
            continue
        _rewrite_gathers(graph, init_name, weight.shape[1], codes, scales, zero_points, bits, block_size)
        quantized += 1
    if quantized and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    out = ctx.new_path("embedding_quantization")
    if model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES:
        onnx.save_model(model, str(out), save_as_external_data=True, location=f"{out.name}.data")
    else:
        onnx.save_model(model, str(out))
    return out


def quantize_rows(
    weight: np.ndarray, bits: int, block_size: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Quantize a [rows, dim] table in blocks of ``block_size`` values along each row.

    Returns GatherBlockQuantized's uint8 inputs: codes [rows, ceil(dim * bits / 8)] (4-bit: two per
    byte, low nibble first, an odd row padded by one value), float32 scales [rows, blocks] and
    zero points [rows, ceil(blocks * bits / 8)] (None when symmetric: the op's default zero point
    2^(bits-1) applies). Ranges include 0, so an all-zero (padding) row dequantizes to exact zeros.
    """
    rows, dim = weight.shape
    blocks = -(-dim // block_size)
    padded = np.zeros((rows, blocks * block_size), dtype=np.float32)
    padded[:, :dim] = weight
    values = padded.reshape(rows, blocks, block_size)
    levels = (1 << bits) - 1
    if symmetric:
        middle = 1 << (bits - 1)
        scales = np.abs(values).max(axis=2) / (middle - 1)
        zero = np.full_like(scales, middle)
    else:
        low = np.minimum(values.min(axis=2), 0.0)
        high = np.maximum(values.max(axis=2), 0.0)
        scales = (high - low) / levels
        zero = np.clip(np.round(-low / np.where(scales == 0, 1.0, scales)), 0, levels)
    scales = np.where(scales == 0, 1.0, scales).astype(np.float32)
    codes = np.clip(np.round(values / scales[:, :, None]) + zero[:, :, None], 0, levels).astype(np.uint8)
    codes = codes.reshape(rows, -1)[:, :dim]
    zero_points = None if symmetric else zero.astype(np.uint8)
    if bits == 4:
        codes = _pack_nibbles(codes)
        zero_points = None if zero_points is None else _pack_nibbles(zero_points)
    return codes, scales, zero_points


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte along the last axis, the first in the low nibble."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), np.uint8)], axis=-1)
    packed: np.ndarray = (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)
    return packed


def _rewrite_gathers(
    graph: onnx.GraphProto,
    table: str,
    dim: int,
    codes: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    bits: int,
    block_size: int,
) -> None:
    """Replace the float table by its quantized form and every Gather of it by GatherBlockQuantized."""
    from onnx import helper, numpy_helper

    (old,) = [i for i in graph.initializer if i.name == table]
    graph.initializer.remove(old)
    quantized_inputs = [numpy_helper.from_array(codes, f"{table}_q{bits}")]
    quantized_inputs.append(numpy_helper.from_array(scales, f"{table}_scales"))
    if zero_points is not None:
        quantized_inputs.append(numpy_helper.from_array(zero_points, f"{table}_zero_points"))
    graph.initializer.extend(quantized_inputs)
    # Packed 4-bit codes of an odd-width row carry one padding value, sliced off the gathered rows.
    trim = bits == 4 and dim % 2 == 1
    if trim:
        graph.initializer.extend(
            numpy_helper.from_array(np.array([value], dtype=np.int64), f"{table}_trim_{key}")
            for key, value in (("starts", 0), ("ends", dim), ("axes", -1))
        )
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "Gather" or node.input[0] != table:
            nodes.append(node)
            continue
        output = f"{node.output[0]}_padded" if trim else node.output[0]
        inputs = [quantized_inputs[0].name, node.input[1], *(t.name for t in quantized_inputs[1:])]
        nodes.append(
            helper.make_node(
                QUANTIZED_OP,
                inputs,
                [output],
                name=f"{node.name}_q{bits}",
                domain=MS_DOMAIN,
                bits=bits,
                block_size=block_size,
                gather_axis=0,
                quantize_axis=1,
            )
        )
        if trim:
            trim_inputs = [f"{table}_trim_{key}" for key in ("starts", "ends", "axes")]
            nodes.append(
                helper.make_node("Slice", [output, *trim_inputs], [node.output[0]], name=f"{node.name}_trim")
            )
    graph.ClearField("node")
    graph.node.extend(nodes)


EXAMPLES = [
    {"bits": 4, "symmetric": True},
    {"bits": 8, "table_bits": [["item_id", 4], ["user_id", 8]], "min_rows": 0, "block_size": 16},
    {"bits": 4, "table_bits": {"user_id": 32}},
]
INVALID = [
    ({"bits": 3}, "embedding_quantization.bits: 3 not allowed"),
    ({"table_bits": {"item_id": 3}}, "embedding_quantization.table_bits: 3 not allowed for 'item_id'"),
    (
        {"table_bits": {"no_such_table": 4}},
        "embedding_quantization.table_bits: unknown name(s) ['no_such_table']",
    ),
    ({"table_bits": "item_id"}, "embedding_quantization.table_bits: expected {table: bits}"),
    ({"min_rows": -1}, "embedding_quantization.min_rows: must be an integer >= 0"),
    ({"block_size": 24}, "embedding_quantization.block_size: must be 0 (whole row) or a power of two >= 16"),
    ({"scale": 2}, "unknown field(s) ['scale']"),
]
