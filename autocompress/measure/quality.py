"""Quality metrics for ranking and retrieval: AUC, logloss, GAUC, NDCG@K, Recall@K.

All take numpy arrays; ``scores`` may be logits or probabilities unless a metric says otherwise
(AUC and the ranking metrics only use the order of the scores).
"""

from __future__ import annotations

import numpy as np

from autocompress.errors import AutocompressError


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise AutocompressError(f"labels have {y.size} rows but scores have {s.size}")
    if not np.isfinite(s).all():
        raise AutocompressError("scores contain NaN or infinity")
    return y, s


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class."""
    y, s = _check(labels, scores)
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(y.size, dtype=np.float64)
    # average rank within runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [y.size]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy computed from logits (numerically stable)."""
    y, z = _check(labels, logits)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def _group_slices(groups: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    g = np.asarray(groups).ravel()
    order = np.argsort(g, kind="mergesort")
    cuts = np.flatnonzero(np.diff(g[order])) + 1
    return order, np.split(order, cuts)


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: per-session AUC weighted by session size, over sessions with both classes."""
    y, s = _check(labels, scores)
    _, parts = _group_slices(groups)
    total, weight = 0.0, 0
    for idx in parts:
        yy = y[idx]
        if 0 < yy.sum() < len(yy):
            total += auc(yy, s[idx]) * len(idx)
            weight += len(idx)
    return total / weight if weight else float("nan")


def ndcg_at_k(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@K over sessions with at least one positive (labels are the gains)."""
    if k <= 0:
        raise AutocompressError(f"k must be > 0, got {k}")
    y, s = _check(labels, scores)
    _, parts = _group_slices(groups)
    values = []
    for idx in parts:
        yy = y[idx]
        if yy.sum() <= 0:
            continue
        top = np.argsort(-s[idx], kind="mergesort")[:k]
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        dcg = float((yy[top] * discounts[: len(top)]).sum())
        ideal = np.sort(yy)[::-1][:k]
        idcg = float((ideal * discounts[: len(ideal)]).sum())
        values.append(dcg / idcg)
    return float(np.mean(values)) if values else float("nan")


def recall_at_k(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean fraction of a session's positives found in its top K (retrieval quality)."""
    if k <= 0:
        raise AutocompressError(f"k must be > 0, got {k}")
    y, s = _check(labels, scores)
    _, parts = _group_slices(groups)
    values = []
    for idx in parts:
        yy = y[idx]
        n_pos = (yy > 0.5).sum()
        if n_pos == 0:
            continue
        top = np.argsort(-s[idx], kind="mergesort")[:k]
        values.append(float((yy[top] > 0.5).sum()) / n_pos)
    return float(np.mean(values)) if values else float("nan")
