"""Model size: bytes on disk, parameter counts, and multiply-accumulates per example from the ONNX graph."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from autocompress.errors import AutocompressError

if TYPE_CHECKING:
    import onnx
    import torch


def _load_header(path: str | Path) -> onnx.ModelProto:
    """The graph without external weights (dims and data locations only), cheap for any model size."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise AutocompressError(f"ONNX model file {str(path)!r} does not exist")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise AutocompressError(f"{str(path)!r} is not a readable ONNX model: {exc}") from None


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and every subgraph (If/Loop/Scan bodies) inside it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for graph in _graphs(model.graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def external_data_files(path: str | Path) -> list[Path]:
    """The external-data files an ONNX file references (sorted by name); a missing one is an error."""
    import onnx

    path = Path(path)
    model = _load_header(path)
    locations: set[str] = set()
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    files = []
    for location in sorted(locations):
        data = path.parent / location
        if not data.is_file():
            raise AutocompressError(f"{str(path)!r} references external data {location!r}, which is missing")
        files.append(data)
    return files


def onnx_size_bytes(path: str | Path) -> int:
    """Bytes of the ONNX file plus every external-data file it references (what a deployment ships)."""
    path = Path(path)
    external = external_data_files(path)  # first: it names a missing or unreadable file
    return path.stat().st_size + sum(f.stat().st_size for f in external)


def onnx_parameter_count(path: str | Path) -> int:
    """Elements in the graph's initializers (weights, biases, and quantization scales/zero points)."""
    total = 0
    for graph in _graphs(_load_header(path).graph):
        for init in graph.initializer:
            total += _numel(init.dims)
        for sparse in graph.sparse_initializer:
            total += _numel(sparse.values.dims)
    return total


def parameter_count(module: torch.nn.Module) -> int:
    """Elements in the module's parameters, each shared parameter counted once."""
    return sum(p.numel() for p in module.parameters())


def torch_size_bytes(module: torch.nn.Module) -> int:
    """Bytes of the module's parameters and buffers in memory, each shared tensor counted once."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _numel(dims: object) -> int:
    total = 1
    for d in dims:  # type: ignore[attr-defined]
        total *= int(d)
    return total


def macs_per_example(path: str | Path) -> int:
    """Multiply-accumulates for one example, summed over the graph's matrix products and convolutions.

    The batch axis is fixed to 1 and ONNX shape inference run; MatMul, Gemm, MatMulInteger,
    QLinearMatMul, MatMulNBits, Conv, ConvInteger and QLinearConv count M*K*N (Conv: output size
    times kernel size times input channels per group); embedding lookups (Gather) and elementwise
    ops count 0, so the figure compares float and quantized graphs of one model. Where shape
    inference fails or leaves a needed shape unknown (some contrib-op graphs), the shapes come from
    one ONNX Runtime run at batch 1 instead.
    """
    try:
        model, shapes = _inferred_shapes(path)
        return sum(_node_macs(node, shapes, str(path)) for node in model.graph.node)
    except AutocompressError:
        model, shapes = _run_shapes(path)
        return sum(_node_macs(node, shapes, str(path)) for node in model.graph.node)


def _inferred_shapes(path: str | Path) -> tuple[onnx.ModelProto, dict[str, list[int | None]]]:
    model = _load_header(path)
    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    for value in graph.input:
        if value.name in initializer_names or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_value = 1
    del graph.value_info[:]
    for value in graph.output:
        value.type.tensor_type.ClearField("shape")
    inferred = _infer_shapes(model, str(path))
    shapes: dict[str, list[int | None]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            ]
    for init in inferred.graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]
    return inferred, shapes


def _run_shapes(path: str | Path) -> tuple[onnx.ModelProto, dict[str, list[int | None]]]:
    """Every tensor's shape from one ONNX Runtime run at batch 1, zeros fed (index 0 is padding)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    _load_header(path)  # the clear errors for a missing or unreadable file
    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        model.graph.output.extend(
            onnx.helper.make_empty_tensor_value_info(name)
            for name in node.output
            if name and name not in known
        )
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feed = {
            i.name: np.zeros(
                [d if isinstance(d, int) else 1 for d in i.shape],
                dtype=np.int64 if i.type == "tensor(int64)" else np.float32,
            )
            for i in session.get_inputs()
        }
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, feed)
    except Exception as exc:
        raise AutocompressError(f"{str(path)!r}: cannot run the graph to find its shapes: {exc}") from None
    shapes: dict[str, list[int | None]] = {
        name: list(np.shape(v)) for name, v in zip(names, values, strict=True)
    }
    for init in model.graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]
    return model, shapes


def _infer_shapes(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """ONNX shape inference; graphs with ONNX Runtime contrib ops (int4 MatMulNBits...) use ORT's own."""
    import onnx

    if any(node.domain not in ("", "ai.onnx") for node in model.graph.node):
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        try:
            inferred: onnx.ModelProto = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
            return inferred
        except Exception as exc:
            raise AutocompressError(f"ONNX Runtime shape inference failed on {where!r}: {exc}") from None
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise AutocompressError(f"ONNX shape inference failed on {where!r}: {exc}") from None


_MATMULS = ("MatMul", "MatMulInteger", "QLinearMatMul")  # input 0 is A in each
_CONV_W = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}


def _known(shapes: dict[str, list[int | None]], name: str, node: onnx.NodeProto, where: str) -> list[int]:
    shape = shapes.get(name)
    if shape is None or any(d is None for d in shape):
        raise AutocompressError(
            f"{where}: cannot count MACs of {node.op_type} node {node.name!r}: "
            f"shape of {name!r} is unknown after shape inference (got {shape})"
        )
    return [int(d) for d in shape if d is not None]


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int | None]], where: str) -> int:
    if node.op_type in _MATMULS:
        a = _known(shapes, node.input[0], node, where)
        out = _known(shapes, node.output[0], node, where)
        # every output element (batch..., M, N) is one dot product of length K
        return _numel(out) * a[-1]
    if node.op_type == "Gemm":
        a = _known(shapes, node.input[0], node, where)
        b = _known(shapes, node.input[1], node, where)
        attrs = {a_.name: a_.i for a_ in node.attribute if a_.name in ("transA", "transB")}
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
        n = b[0] if attrs.get("transB", 0) else b[1]
        return m * k * n
    if node.op_type == "MatMulNBits":
        a = _known(shapes, node.input[0], node, where)
        attrs = {a_.name: a_.i for a_ in node.attribute if a_.name in ("K", "N")}
        return _numel(a[:-1]) * attrs["K"] * attrs["N"]
    if node.op_type in _CONV_W:
        w = _known(shapes, node.input[_CONV_W[node.op_type]], node, where)
        out = _known(shapes, node.output[0], node, where)
        # out = [N, C_out, *spatial]; w = [C_out, C_in / group, *kernel]
        return _numel(out) * _numel(w[1:])
    return 0
