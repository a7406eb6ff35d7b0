"""Quality of an exported model on a split, computed from ONNX Runtime's own outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from autocompress.data.table import Table
from autocompress.measure.quality import auc, gauc, logloss, ndcg_at_k

if TYPE_CHECKING:
    import onnxruntime


def onnx_logits(session: onnxruntime.InferenceSession, table: Table, batch_size: int = 8192) -> np.ndarray:
    """Logits of every row of ``table`` from an ONNX Runtime session, in batches."""
    from autocompress.export import feed

    out = np.empty(len(table), dtype=np.float32)
    start = 0
    for features, _ in table.batches(batch_size):
        stop = start + len(next(iter(features.values())))
        out[start:stop] = np.asarray(session.run(None, feed(session, features))[0]).reshape(-1)
        start = stop
    return out


def quality_report(table: Table, logits: np.ndarray, k: int = 10) -> dict[str, float]:
    """AUC and logloss, plus GAUC and NDCG@K per session when the table has groups."""
    report = {"auc": auc(table.labels, logits), "logloss": logloss(table.labels, logits)}
    if table.groups is not None:
        report["gauc"] = gauc(table.labels, logits, table.groups)
        report[f"ndcg@{k}"] = ndcg_at_k(table.labels, logits, table.groups, k)
    return report
