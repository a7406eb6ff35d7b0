"""The KServe Open Inference Protocol (v2) over JSON: infer requests in, answers and model metadata out.

An infer request names one tensor per model input (``{"name", "shape", "datatype", "data"}``): a
dense or single-id feature is ``[rows]`` (or ``[rows, 1]``), a multi-hot or sequence feature
``[rows, width]`` (padded with ``PAD_ID``, most recent id last for a sequence). ``data`` is flat in
row-major order, or nested. The tensors become ``Columns`` and go through the same checks as
rows and columns (``RequestEncoder.encode_columns``), so a bad value is refused naming it
(``inputs.item_price[3]``). The answer has the outputs asked for (default both): ``logits``
(FP32) and ``probabilities`` (FP64), shape ``[rows]``. Only JSON tensors are read; the binary data
extension is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from autocompress.serving._payload import MAX_ROWS, Columns, PayloadError, RequestEncoder, probabilities

PLATFORM = "onnxruntime_onnx"
OUTPUTS = ("logits", "probabilities")
_OUTPUT_DATATYPES = {"logits": "FP32", "probabilities": "FP64"}
INTEGER_DATATYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
DATATYPES = INTEGER_DATATYPES | FLOAT_DATATYPES | {"BOOL", "BYTES"}
_REQUEST_FIELDS = ("id", "inputs", "outputs", "parameters")
_TENSOR_FIELDS = ("data", "datatype", "name", "parameters", "shape")


def _kind_of(value: object) -> str:
    names = {list: "array", dict: "object", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _refuse_unknown(given: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in given:
        if key not in allowed:
            raise PayloadError(f"{where}.{key}" if where else key, f"unknown field; allowed: {list(allowed)}")


def input_datatype(encoder: RequestEncoder, feature: str) -> str:
    """The tensor datatype a feature is described with: FP32 (dense), INT64 (ids), BYTES (raw values)."""
    if encoder.kind(feature) == "dense":
        return "FP32"
    return "BYTES" if encoder.takes_raw_values(feature) else "INT64"


def _allowed_datatypes(encoder: RequestEncoder, feature: str) -> frozenset[str]:
    if encoder.kind(feature) == "dense":
        return INTEGER_DATATYPES | FLOAT_DATATYPES
    return INTEGER_DATATYPES | {"BYTES"} if encoder.takes_raw_values(feature) else INTEGER_DATATYPES


def input_shape(encoder: RequestEncoder, feature: str) -> list[int]:
    """The tensor shape a feature is described with; -1 is the number of rows."""
    if encoder.kind(feature) in ("multi_hot", "sequence"):
        return [-1, encoder.max_len(feature)]
    return [-1]


def _flat(data: list[Any]) -> list[Any]:
    """Row-major values of nested lists (flat data comes back as it is)."""
    while data and any(type(x) is list for x in data):
        data = [y for x in data for y in (x if type(x) is list else [x])]
    return data


def infer_columns(
    encoder: RequestEncoder, body: object, features: Sequence[str] | None = None
) -> tuple[Columns, list[str], str | None]:
    """An infer request's tensors as ``Columns``, the outputs it asks for, and its ``id`` (or None)."""
    if not isinstance(body, Mapping):
        raise PayloadError("body", f"must be an inference request object, got {_kind_of(body)}")
    _refuse_unknown(body, _REQUEST_FIELDS, "")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise PayloadError("id", f"must be a string, got {_kind_of(request_id)}")
    tensors = body.get("inputs")
    if type(tensors) is not list or not tensors:
        raise PayloadError("inputs", f"must be a non-empty array of tensors, got {_kind_of(tensors)}")
    wanted = list(features or encoder.feature_names)
    values: dict[str, list[Any]] = {}
    n_rows = -1
    for i, tensor in enumerate(tensors):
        name, column = _tensor_column(encoder, tensor, i, set(wanted))
        if name in values:
            raise PayloadError(f"inputs.{name}", f"input {name!r} is given twice")
        if n_rows < 0:
            n_rows, first = len(column), name
        elif len(column) != n_rows:
            raise PayloadError(
                f"inputs.{name}.shape",
                f"has {len(column)} rows, inputs.{first} has {n_rows}; every input needs one value per row",
            )
        values[name] = column
    for name in wanted:
        if name not in values:
            raise PayloadError(f"inputs.{name}", f"missing feature {name!r}")
    if not 1 <= n_rows <= MAX_ROWS:
        raise PayloadError("inputs", f"must hold 1 to {MAX_ROWS} rows, got {n_rows}")
    columns = Columns({name: values[name] for name in wanted}, n_rows, lambda f, i: f"inputs.{f}[{i}]")
    return columns, _requested_outputs(body.get("outputs")), request_id


def _tensor_column(
    encoder: RequestEncoder, tensor: object, index: int, wanted: set[str]
) -> tuple[str, list[Any]]:
    where = f"inputs[{index}]"
    if not isinstance(tensor, Mapping):
        raise PayloadError(where, f"must be a tensor object, got {_kind_of(tensor)}")
    _refuse_unknown(tensor, _TENSOR_FIELDS, where)
    name = tensor.get("name")
    if not isinstance(name, str):
        raise PayloadError(f"{where}.name", f"must be a string, got {_kind_of(name)}")
    if name not in wanted:
        if name in encoder.feature_names:
            raise PayloadError(f"inputs.{name}", f"feature {name!r} is not an input here")
        raise PayloadError(
            f"inputs.{name}", f"unknown feature {name!r}; known features: {encoder.feature_names}"
        )
    where = f"inputs.{name}"
    for field in ("shape", "datatype", "data"):
        if field not in tensor:
            raise PayloadError(f"{where}.{field}", "required")
    datatype = tensor["datatype"]
    allowed = _allowed_datatypes(encoder, name)
    if datatype not in allowed:
        raise PayloadError(
            f"{where}.datatype",
            f"{datatype!r} does not fit a {encoder.kind(name).replace('_', '-')} feature; "
            f"allowed: {sorted(allowed)}",
        )
    shape = tensor["shape"]
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise PayloadError(f"{where}.shape", f"must be an array of non-negative integers, got {shape!r}")
    lists = encoder.kind(name) in ("multi_hot", "sequence")
    if lists and len(shape) != 2:
        raise PayloadError(f"{where}.shape", f"must be [rows, ids per row] for this feature, got {shape}")
    if not lists and not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise PayloadError(f"{where}.shape", f"must be [rows] or [rows, 1] for this feature, got {shape}")
    data = tensor["data"]
    if type(data) is not list:
        raise PayloadError(f"{where}.data", f"must be an array of values, got {_kind_of(data)}")
    flat = _flat(data)
    if len(flat) != math.prod(shape):
        raise PayloadError(f"{where}.data", f"has {len(flat)} values; shape {shape} holds {math.prod(shape)}")
    if not lists:
        return name, flat
    width = shape[1]
    return name, [flat[i * width : (i + 1) * width] for i in range(shape[0])]


def _requested_outputs(outputs: object) -> list[str]:
    if outputs is None:
        return list(OUTPUTS)
    if type(outputs) is not list:
        raise PayloadError("outputs", f"must be an array of {{'name': ...}} objects, got {_kind_of(outputs)}")
    names = []
    for i, output in enumerate(outputs):
        if not isinstance(output, Mapping):
            raise PayloadError(f"outputs[{i}]", f"must be an object, got {_kind_of(output)}")
        _refuse_unknown(output, ("name", "parameters"), f"outputs[{i}]")
        if output.get("name") not in OUTPUTS:
            raise PayloadError(
                f"outputs[{i}].name", f"unknown output {output.get('name')!r}; outputs: {list(OUTPUTS)}"
            )
        names.append(output["name"])
    return names or list(OUTPUTS)


def infer_response(
    model_name: str, model_version: str, logits: np.ndarray, outputs: Sequence[str], request_id: str | None
) -> dict[str, Any]:
    """The infer answer: the requested outputs as named tensors; the request's ``id`` echoed."""
    data = {"logits": lambda: logits.tolist(), "probabilities": lambda: probabilities(logits).tolist()}
    answer: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        answer["id"] = request_id
    answer["outputs"] = [
        {"name": name, "datatype": _OUTPUT_DATATYPES[name], "shape": [len(logits)], "data": data[name]()}
        for name in outputs
    ]
    return answer


def model_metadata(model_name: str, model_version: str, encoder: RequestEncoder) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's inputs (its features) and outputs, as tensors."""
    return {
        "name": model_name,
        "versions": [model_version],
        "platform": PLATFORM,
        "inputs": [
            {"name": f, "datatype": input_datatype(encoder, f), "shape": input_shape(encoder, f)}
            for f in encoder.feature_names
        ],
        "outputs": [{"name": name, "datatype": _OUTPUT_DATATYPES[name], "shape": [-1]} for name in OUTPUTS],
    }
