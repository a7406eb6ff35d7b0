"""torch -> ONNX export with a dynamic batch axis, checked against torch before anyone uses it."""

from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autocompress.data.schema import FeatureSchema
from autocompress.errors import AutocompressError
from autocompress.export.session import create_session, feed
from autocompress.spec import Target

if TYPE_CHECKING:
    import onnx
    import torch

OUTPUT_NAME = "logit"
# Protobuf caps a file at 2 GiB; well below that, initializers move to a "<file>.data" next to it.
EXTERNAL_DATA_THRESHOLD_BYTES = int(1.5 * 2**30)


class ExportError(AutocompressError):
    """The exported graph does not compute what the torch model computes (or could not be exported)."""


@dataclass(frozen=True)
class ExportResult:
    """Where the ONNX file went and how closely ONNX Runtime reproduces the torch model on it.

    ``input_names`` are the graph's inputs (features the model never reads are dropped by the
    exporter); ``external_data`` says the initializers live in ``<path>.data`` beside the file.
    """

    path: Path
    max_abs_diff: float
    input_names: list[str]
    output_name: str
    opset: int
    seconds: float
    external_data: bool = False


def export_onnx(
    model: torch.nn.Module,
    schema: FeatureSchema,
    path: str | Path,
    *,
    sample_rows: int = 64,
    atol: float = 1e-4,
    opset: int = 17,
    external_data: bool | None = None,
) -> ExportResult:
    """Export ``model`` (``forward(batch) -> logits [B]``) to ONNX and check it with ONNX Runtime.

    The model is exported in eval mode on CPU (a copy if it lives elsewhere; its train/eval modes
    are restored). ONNX Runtime must match torch within ``atol`` on ``sample_rows`` rows and on a
    batch of another size, else ``ExportError`` is raised and no file is left at ``path``.
    ``external_data=None`` stores initializers beside the file only above 1.5 GiB.
    """
    import torch

    if sample_rows < 1:
        raise AutocompressError(f"sample_rows must be >= 1, got {sample_rows}")
    started = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_path = path.with_name(path.name + ".data")
    for stale in (path, data_path):
        stale.unlink(missing_ok=True)

    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        model = copy.deepcopy(model).cpu()
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        batch = schema.example_batch(sample_rows, seed=0)
        other_rows = 1 if sample_rows > 1 else 2
        other = schema.example_batch(other_rows, seed=1)
        with torch.no_grad():
            expected = [_torch_logits(model, schema, b) for b in (batch, other)]
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
            traced = Path(tmp) / path.name
            _trace_to_onnx(model, schema, batch, traced, opset)
            external = _save(traced, path, data_path, external_data)
    finally:
        for module, training in modes.items():
            module.training = training

    try:
        max_abs_diff, input_names = _check_against_torch(path, schema, (batch, other), expected, atol)
    except ExportError:
        path.unlink(missing_ok=True)
        data_path.unlink(missing_ok=True)
        raise
    return ExportResult(
        path=path,
        max_abs_diff=max_abs_diff,
        input_names=input_names,
        output_name=OUTPUT_NAME,
        opset=opset,
        seconds=time.perf_counter() - started,
        external_data=external,
    )


def _torch_logits(model: torch.nn.Module, schema: FeatureSchema, batch: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    rows = len(next(iter(batch.values())))
    try:
        out = model({n: torch.from_numpy(batch[n]) for n in schema.feature_names})
    except Exception as exc:
        raise ExportError(f"{type(model).__name__} forward failed on a batch of {rows} rows: {exc}") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (rows,):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ExportError(f"model returned {shape} for a batch of {rows} rows; logits must have shape [B]")
    result: np.ndarray = out.detach().cpu().numpy()
    return result


def _trace_to_onnx(
    model: torch.nn.Module, schema: FeatureSchema, batch: dict[str, np.ndarray], path: Path, opset: int
) -> None:
    import torch

    names = schema.feature_names
    inputs = {n: torch.from_numpy(batch[n]) for n in names}
    dynamic_axes = {n: {0: "batch"} for n in [*names, OUTPUT_NAME]}
    # The legacy TorchScript exporter (dynamo=False): the torch.export-based one fails on a dict
    # argument in torch 2.13. Its deprecation warnings are expected and silenced here only.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        try:
            torch.onnx.export(
                model,
                (inputs, {}),
                str(path),
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc


def _initializer_bytes(model: onnx.ModelProto) -> int:
    import onnx

    total = 0
    for init in model.graph.initializer:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        total += int(np.prod(init.dims, dtype=np.int64)) * itemsize
    return total


def _save(traced: Path, path: Path, data_path: Path, external_data: bool | None) -> bool:
    """Move the traced file to ``path``, with its initializers in ``data_path`` when large or asked."""
    import onnx

    header = onnx.load(str(traced), load_external_data=False)
    if external_data is None:
        external_data = _initializer_bytes(header) > EXTERNAL_DATA_THRESHOLD_BYTES
    if (
        not external_data
        and header.ByteSize() < 2**31
        and not any(init.data_location == onnx.TensorProto.EXTERNAL for init in header.graph.initializer)
    ):
        os.replace(traced, path)
        return False
    if not external_data:
        raise ExportError(
            f"model is too large for one ONNX file ({_initializer_bytes(header)} bytes of weights); "
            "export with external_data=True"
        )
    full = onnx.load(str(traced), load_external_data=True)
    onnx.save_model(
        full,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_path.name,
        size_threshold=1024,
    )
    return True


def _check_against_torch(
    path: Path,
    schema: FeatureSchema,
    batches: tuple[dict[str, np.ndarray], ...],
    expected: list[np.ndarray],
    atol: float,
) -> tuple[float, list[str]]:
    session = create_session(path, Target())
    input_names = [arg.name for arg in session.get_inputs()]
    worst = 0.0
    for batch, want in zip(batches, expected, strict=True):
        rows = len(want)
        try:
            (got,) = session.run([OUTPUT_NAME], feed(session, batch))
        except Exception as exc:
            raise ExportError(
                f"ONNX Runtime cannot run the exported model on a batch of {rows} rows "
                f"(is the batch axis dynamic?): {exc}"
            ) from exc
        if got.shape != (rows,):
            raise ExportError(
                f"exported model returns shape {got.shape} for a batch of {rows} rows (torch: "
                f"{want.shape}); the traced graph does not keep the batch axis dynamic"
            )
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        if not np.isfinite(diff) or diff > atol:
            raise ExportError(
                f"ONNX Runtime output differs from torch by up to {diff:.3g} on a batch of {rows} rows "
                f"(allowed atol={atol:g}); the model's forward does not trace faithfully"
            )
        worst = max(worst, diff)
    return worst, input_names
