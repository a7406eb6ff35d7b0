"""Data: the FeatureSchema contract, splits, the synthetic e-commerce generator and real-data loaders."""

from autocompress.data.criteo import load_criteo
from autocompress.data.movielens import load_movielens
from autocompress.data.registry import DatasetSpec, load_dataset
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
from autocompress.data.synthetic import SyntheticConfig, load_synthetic
from autocompress.data.table import Dataset, Table
from autocompress.data.tabular import load_tabular
from autocompress.data.vocab import DenseScaler, Vocabulary, encode_splits

__all__ = [
    "FIRST_ID",
    "OOV_ID",
    "PAD_ID",
    "Dataset",
    "DatasetSpec",
    "DenseFeature",
    "DenseScaler",
    "FeatureSchema",
    "SequenceFeature",
    "SparseFeature",
    "SyntheticConfig",
    "Table",
    "Vocabulary",
    "encode_splits",
    "load_criteo",
    "load_dataset",
    "load_movielens",
    "load_synthetic",
    "load_tabular",
    "split",
]
