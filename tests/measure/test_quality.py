from __future__ import annotations

import math

import numpy as np
import pytest

from autocompress.errors import AutocompressError
from autocompress.measure import auc, gauc, logloss, ndcg_at_k, recall_at_k


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Brute force: share of (positive, negative) pairs ordered right, ties counting one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_the_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=60)
    scores = np.round(rng.random(60), 1)  # few distinct values: many ties
    assert auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


def test_auc_extremes_and_one_class() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(labels, np.zeros(4)) == 0.5
    assert math.isnan(auc(np.ones(4), np.arange(4.0)))


def test_logloss_matches_the_formula_and_is_stable() -> None:
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    logits = np.array([2.0, -1.0, -0.5, 0.3])
    p = 1 / (1 + np.exp(-logits))
    expected = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert logloss(labels, logits) == pytest.approx(expected, rel=1e-12)
    assert logloss(np.array([1.0, 0.0]), np.array([1000.0, -1000.0])) == pytest.approx(0.0, abs=1e-12)
    assert logloss(np.array([0.0]), np.array([1000.0])) == pytest.approx(1000.0)


def _sessions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # session 7: AUC 1 over 3 rows; session 3: AUC 0.5 over 4 rows; session 5: one class, skipped.
    rows = [
        (7, 1, 0.9),
        (3, 0, 0.8),
        (5, 0, 0.3),
        (7, 0, 0.1),
        (3, 1, 0.2),
        (3, 1, 0.6),
        (5, 0, 0.7),
        (7, 0, 0.5),
        (3, 0, 0.1),
    ]
    groups, labels, scores = (np.array(col) for col in zip(*rows, strict=True))
    return labels, scores, groups


def test_gauc_weights_session_auc_by_session_size() -> None:
    labels, scores, groups = _sessions()
    assert gauc(labels, scores, groups) == pytest.approx((1.0 * 3 + 0.5 * 4) / 7)
    assert math.isnan(gauc(np.zeros(3), np.arange(3.0), np.array([1, 1, 2])))


def test_ndcg_and_recall_on_hand_made_sessions() -> None:
    # session 1: positives at ranks 2 and 4; session 2: positive at rank 1; session 3: no positive.
    groups = np.array([1, 1, 1, 1, 2, 2, 3, 3])
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 0])
    scores = np.array([0.4, 0.3, 0.2, 0.1, 0.9, 0.1, 0.5, 0.4])

    first = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(labels, scores, groups, k=2) == pytest.approx((first + 1.0) / 2)
    full = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(labels, scores, groups, k=10) == pytest.approx((full + 1.0) / 2)

    assert recall_at_k(labels, scores, groups, k=1) == pytest.approx((0.0 + 1.0) / 2)
    assert recall_at_k(labels, scores, groups, k=2) == pytest.approx((0.5 + 1.0) / 2)
    assert recall_at_k(labels, scores, groups, k=4) == pytest.approx(1.0)


def test_quality_errors_name_the_problem() -> None:
    with pytest.raises(AutocompressError, match="labels have 3 rows but scores have 2"):
        auc(np.array([0, 1, 0]), np.array([0.1, 0.2]))
    with pytest.raises(AutocompressError, match="NaN or infinity"):
        logloss(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(AutocompressError, match="k must be > 0"):
        ndcg_at_k(np.array([1]), np.array([0.1]), np.array([1]), k=0)
    with pytest.raises(AutocompressError, match="k must be > 0"):
        recall_at_k(np.array([1]), np.array([0.1]), np.array([1]), k=0)


def test_popularity_warning_only_when_the_model_does_not_beat_the_count(tiny_dataset):
    from autocompress.measure.baselines import popularity_auc, popularity_warning

    baseline = popularity_auc(tiny_dataset, "valid")
    assert 0.55 < baseline < 1  # the count itself ranks: a bar worth clearing
    assert popularity_warning(baseline + 0.01, baseline, "valid") is None
    for weaker in (baseline, baseline - 0.05):
        warning = popularity_warning(weaker, baseline, "valid")
        assert warning is not None and f"{weaker:.4f}" in warning and f"({baseline:.4f})" in warning
