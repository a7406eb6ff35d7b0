"""Model zoo: one registry of families (dlrm, deepfm, dcn_v2, two_tower, din), each with its ArchConfig.

``build(family, schema, arch)`` returns a ``RankingModel`` (``autocompress.models.base``) whose
``forward(batch)`` maps a dict of feature tensors to logits [B]. Importing this package does not
import torch; the family modules are loaded on first use.
"""

from autocompress.models.arch import ARCH_VERSION, ArchConfig
from autocompress.models.registry import (
    FAMILIES,
    arch_class,
    build,
    load_arch,
    model_class,
    reference_arch,
)

__all__ = [
    "ARCH_VERSION",
    "FAMILIES",
    "ArchConfig",
    "arch_class",
    "build",
    "load_arch",
    "model_class",
    "reference_arch",
]
