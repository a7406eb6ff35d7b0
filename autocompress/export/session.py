"""ONNX Runtime sessions configured for a ``Target``, and the one place that builds their input feeds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autocompress.data.schema import FeatureSchema
from autocompress.errors import AutocompressError
from autocompress.spec import Target

if TYPE_CHECKING:
    import onnxruntime

# ONNX Runtime type strings of graph inputs -> the numpy dtype to feed them with.
_ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

# Providers ONNX Runtime may hand nodes to when the target's provider cannot run them.
_FALLBACKS = {
    "CPUExecutionProvider": (),
    "CUDAExecutionProvider": ("CPUExecutionProvider",),
    "TensorrtExecutionProvider": ("CUDAExecutionProvider", "CPUExecutionProvider"),
}


def create_session(path: str | Path, target: Target) -> onnxruntime.InferenceSession:
    """Open an ONNX model with the target's provider, threads and graph optimisation level.

    Execution is sequential so a measurement sees exactly ``target.intra_op_threads`` threads;
    a provider this machine does not have is refused rather than silently replaced by the CPU.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise AutocompressError(f"ONNX model file {str(path)!r} does not exist")
    available = ort.get_available_providers()
    if target.execution_provider not in available:
        raise AutocompressError(
            f"target.execution_provider {target.execution_provider!r} is not available on this machine; "
            f"available: {available}"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = target.intra_op_threads
    options.inter_op_num_threads = target.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[target.graph_optimization]
    providers = [target.execution_provider] + [
        p for p in _FALLBACKS[target.execution_provider] if p in available
    ]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    # ONNX Runtime falls back to the next provider with only a log line when one fails to start.
    if session.get_providers()[0] != target.execution_provider:
        raise AutocompressError(
            f"target.execution_provider {target.execution_provider!r} failed to start "
            f"(session runs on {session.get_providers()}); check the drivers on this machine"
        )
    return session


def feed(
    session_or_schema: onnxruntime.InferenceSession | FeatureSchema, features: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Build the ONNX Runtime feed: the model's inputs, each as a contiguous array of the right dtype.

    With a session, its graph inputs decide names and dtypes (an exported model drops features it
    never reads); with a schema, every feature is fed (dense float32, ids int64). Extra keys such
    as the label are ignored; a missing input raises ``AutocompressError`` naming it.
    """
    if isinstance(session_or_schema, FeatureSchema):
        schema = session_or_schema
        dense = {d.name for d in schema.dense}
        wanted: dict[str, type[np.generic]] = {
            n: (np.float32 if n in dense else np.int64) for n in schema.feature_names
        }
    else:
        wanted = {}
        for arg in session_or_schema.get_inputs():
            if arg.type not in _ORT_DTYPES:
                raise AutocompressError(
                    f"model input {arg.name!r} has type {arg.type}; supported: {sorted(_ORT_DTYPES)}"
                )
            wanted[arg.name] = _ORT_DTYPES[arg.type]
    missing = [n for n in wanted if n not in features]
    if missing:
        raise AutocompressError(
            f"features: missing input(s) {missing} required by the model; got {sorted(features)}"
        )
    result: dict[str, np.ndarray] = {}
    for name, dtype in wanted.items():
        values = np.asarray(features[name])
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(values.dtype, np.integer):
            raise AutocompressError(f"features: id input {name!r} must be integer, got {values.dtype}")
        result[name] = np.ascontiguousarray(values, dtype=dtype)
    return result
