"""Elastic weight-sharing supernets of every family and their sandwich-rule training.

``Supernet.for_family(schema, largest_arch)`` holds the largest model of a family; any smaller
architecture of the family runs on the leading slices of its weights (``supernet(batch, arch)``)
and comes out as a standalone model with those weights (``supernet.extract(arch)``), ready for
export and post-training compression. ``train_supernet`` trains it once per job;
``supernet_archs(space)`` gives the largest and smallest architecture of a search space and
``arch_sampler(space)`` draws the architectures in between.
"""

from autocompress.supernet.elastic import SUPERNET_FAMILIES, Supernet, supernet_class
from autocompress.supernet.sandwich import (
    SampleArch,
    SandwichEpoch,
    SandwichResult,
    train_supernet,
    valid_auc,
)
from autocompress.supernet.space import arch_sampler, supernet_archs

__all__ = [
    "SUPERNET_FAMILIES",
    "SampleArch",
    "SandwichEpoch",
    "SandwichResult",
    "Supernet",
    "arch_sampler",
    "supernet_archs",
    "supernet_class",
    "train_supernet",
    "valid_auc",
]
