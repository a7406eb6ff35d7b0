"""Feature columns to tensors, and batched no-grad scoring: shared by training, validation and evaluation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from autocompress.data.table import Table
from autocompress.errors import AutocompressError

DEFAULT_PREDICT_BATCH_SIZE = 16384


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"`` into CUDA when available (else CPU) and refuse CUDA where there is none."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif device in ("cpu", "cuda"):
        resolved = torch.device(device)
    else:
        raise AutocompressError(f"device {device!r} is not one of ['auto', 'cpu', 'cuda']")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AutocompressError(
            "device 'cuda' was asked for but CUDA is not available here; use 'auto' or 'cpu'"
        )
    return resolved


def to_tensors(
    features: Mapping[str, np.ndarray], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Columns as tensors in the batch layout: floats as float32, ids as int64.

    On the CPU a column that already has that dtype and is contiguous and writable is shared,
    not copied (``torch.from_numpy``), so a million-row table costs no extra memory.
    """
    target = resolve_device(device)
    tensors: dict[str, torch.Tensor] = {}
    for name, column in features.items():
        arr = np.asarray(column)
        if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.floating):
            dtype: type = np.float32
        elif np.issubdtype(arr.dtype, np.integer):
            dtype = np.int64
        else:
            raise AutocompressError(
                f"feature {name!r} has dtype {arr.dtype}; expected a float (dense) or integer (id) column"
            )
        arr = np.ascontiguousarray(arr, dtype=dtype)
        if not arr.flags.writeable:
            # torch.from_numpy cannot promise read-only memory stays untouched; one copy per column
            arr = arr.copy()
        tensors[name] = torch.from_numpy(arr).to(target)
    return tensors


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def count_rows(tensors: Mapping[str, torch.Tensor | np.ndarray]) -> int:
    """Row count shared by every column; a clear error when columns disagree or there are none."""
    if not tensors:
        raise AutocompressError("no feature columns given: expected a dict keyed by feature name")
    rows = {name: len(col) for name, col in tensors.items()}
    if len(set(rows.values())) != 1:
        raise AutocompressError(f"feature columns have different row counts: {rows}")
    return next(iter(rows.values()))


def forward_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], rows: int) -> torch.Tensor:
    """Call ``model(batch)`` and return its logits as ``[rows]`` (a ``[rows, 1]`` output is flattened)."""
    logits = model(batch)
    if not isinstance(logits, torch.Tensor) or logits.numel() != rows:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise AutocompressError(
            f"model {type(model).__name__} returned {shape} for a batch of {rows} rows; expected logits [B]"
        )
    return logits.reshape(rows)


def predict_tensors(
    model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], batch_size: int
) -> np.ndarray:
    """Logits for columns already on the model's device, in batches of ``batch_size`` (slices, no copies)."""
    if batch_size < 1:
        raise AutocompressError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    rows = count_rows(tensors)
    out = np.empty(rows, dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, rows, batch_size):
                stop = min(start + batch_size, rows)
                batch = {name: col[start:stop] for name, col in tensors.items()}
                out[start:stop] = forward_logits(model, batch, stop - start).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def predict(
    model: torch.nn.Module,
    features_or_table: Table | Mapping[str, np.ndarray],
    batch_size: int = DEFAULT_PREDICT_BATCH_SIZE,
) -> np.ndarray:
    """Float32 logits ``[N]`` of a model for a Table or a dict of feature columns.

    Runs in eval mode without gradients on the model's own device; the model's train/eval mode
    is restored afterwards.
    """
    features = features_or_table.features if isinstance(features_or_table, Table) else features_or_table
    count_rows(features)
    return predict_tensors(model, to_tensors(features, model_device(model)), batch_size)
