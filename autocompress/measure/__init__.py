"""Measure: quality (AUC, logloss, GAUC, NDCG@K, Recall@K), latency on a target, and model size/MACs."""

from autocompress.measure.busy import BusyPolicy, NodeLoad
from autocompress.measure.latency import LatencyReport, LatencyRow, measure_latency, measure_torch_latency
from autocompress.measure.latency_cache import measure_exclusively
from autocompress.measure.quality import auc, gauc, logloss, ndcg_at_k, recall_at_k
from autocompress.measure.size import (
    macs_per_example,
    onnx_parameter_count,
    onnx_size_bytes,
    parameter_count,
    torch_size_bytes,
)

__all__ = [
    "BusyPolicy",
    "LatencyReport",
    "LatencyRow",
    "NodeLoad",
    "auc",
    "gauc",
    "logloss",
    "macs_per_example",
    "measure_exclusively",
    "measure_latency",
    "measure_torch_latency",
    "ndcg_at_k",
    "onnx_parameter_count",
    "onnx_size_bytes",
    "parameter_count",
    "recall_at_k",
    "torch_size_bytes",
]
