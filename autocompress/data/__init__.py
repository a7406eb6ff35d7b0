"""Data: the FeatureSchema contract, splits, the synthetic e-commerce generator and real-data loaders."""

from autocompress.data.schema import (
    FIRST_ID,
    OOV_ID,
    PAD_ID,
    DenseFeature,
    FeatureSchema,
    SequenceFeature,
    SparseFeature,
)
from autocompress.data.splits import split
from autocompress.data.table import Dataset, Table

__all__ = [
    "FIRST_ID",
    "OOV_ID",
    "PAD_ID",
    "Dataset",
    "DenseFeature",
    "FeatureSchema",
    "SequenceFeature",
    "SparseFeature",
    "Table",
    "split",
]
