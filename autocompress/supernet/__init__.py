"""Elastic weight-sharing supernets (dlrm, dcn_v2, din) and their sandwich-rule training.

``Supernet.for_family(schema, largest_arch)`` holds the largest model of a family; any smaller
architecture of the family runs on the leading slices of its weights (``supernet(batch, arch)``)
and comes out as a standalone model with those weights (``supernet.extract(arch)``), ready for
export and post-training compression. ``train_supernet`` trains it once per job.
"""

from autocompress.supernet.elastic import SUPERNET_FAMILIES, Subnet, Supernet, truncate_sequences
from autocompress.supernet.sandwich import SandwichEpoch, SandwichResult, train_supernet, valid_auc

__all__ = [
    "SUPERNET_FAMILIES",
    "SandwichEpoch",
    "SandwichResult",
    "Subnet",
    "Supernet",
    "train_supernet",
    "truncate_sequences",
    "valid_auc",
]
