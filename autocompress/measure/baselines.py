"""Baselines every trained model must beat: the popularity-only ranker."""

from __future__ import annotations

import numpy as np

from autocompress.data.schema import FeatureSchema
from autocompress.data.table import Dataset, Table
from autocompress.errors import AutocompressError


def popularity_feature(schema: FeatureSchema) -> str:
    """The item id feature a popularity baseline counts: ``item_id`` or the first item-side table."""
    names = [f.name for f in schema.sparse if f.side == "item"]
    if not names:
        raise AutocompressError(
            "a popularity baseline needs an item-side sparse feature; the schema has none"
        )
    return "item_id" if "item_id" in names else names[0]


def popularity_scores(
    train: Table, table: Table, item_feature: str, prior_weight: float = 10.0
) -> np.ndarray:
    """Score rows of ``table`` by their item's smoothed click-through rate on ``train``.

    The rate is shrunk towards the global CTR with ``prior_weight`` pseudo-impressions, so items
    seen once do not outrank items with a long, solid record.
    """
    train_ids = train.features[item_feature]
    ids = table.features[item_feature]
    vocab = int(max(train_ids.max(), ids.max())) + 1
    clicks = np.bincount(train_ids, weights=train.labels, minlength=vocab)
    impressions = np.bincount(train_ids, minlength=vocab)
    prior = float(train.labels.mean())
    rate = (clicks + prior_weight * prior) / (impressions + prior_weight)
    return rate[ids].astype(np.float32)


def popularity_auc(dataset: Dataset, split: str) -> float:
    """AUC on ``split`` ("valid" or "test") of the popularity-only ranker fitted on the train split."""
    from autocompress.measure.quality import auc

    table: Table = getattr(dataset, split)
    item = popularity_feature(dataset.schema)
    return auc(table.labels, popularity_scores(dataset.train, table, item))


def popularity_warning(model_auc: float, baseline_auc: float, split: str) -> str | None:
    """The warning to give when a model does not beat the popularity-only ranker on ``split``, else None.

    Nobody should compress (or ship) a model that a count of clicks per item beats.
    """
    if model_auc > baseline_auc:
        return None
    return (
        f"the model's {split} AUC {model_auc:.4f} does not beat popularity alone ({baseline_auc:.4f}): "
        "a count of clicks per item ranks better; check the features, the data and the training "
        "recipe before compressing it"
    )
