"""The family table: name -> (module, model class, arch class), imported only when first asked for.

Adding a family is one module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autocompress.errors import AutocompressError
from autocompress.models.arch import ArchConfig

if TYPE_CHECKING:
    from autocompress.data.schema import FeatureSchema
    from autocompress.models.base import RankingModel

_FAMILY_TABLE: dict[str, tuple[str, str, str]] = {
    "dlrm": ("autocompress.models.dlrm", "DLRM", "DLRMArch"),
    "deepfm": ("autocompress.models.deepfm", "DeepFM", "DeepFMArch"),
    "dcn_v2": ("autocompress.models.dcn_v2", "DCNv2", "DCNv2Arch"),
    "two_tower": ("autocompress.models.two_tower", "TwoTower", "TwoTowerArch"),
    "din": ("autocompress.models.din", "DIN", "DINArch"),
}

FAMILIES: tuple[str, ...] = tuple(_FAMILY_TABLE)


def _lookup(family: str, slot: int) -> Any:
    if family not in _FAMILY_TABLE:
        raise AutocompressError(f"unknown model family {family!r}; known families: {list(FAMILIES)}")
    entry = _FAMILY_TABLE[family]
    return getattr(importlib.import_module(entry[0]), entry[slot])


def arch_class(family: str) -> type[ArchConfig]:
    """The ArchConfig class of a family (raises AutocompressError listing the families if unknown)."""
    cls: type[ArchConfig] = _lookup(family, 2)
    return cls


def load_arch(data: Mapping[str, Any]) -> ArchConfig:
    """Strict load of an architecture dict of any family: its ``family`` key picks the class."""
    if not isinstance(data, Mapping):
        raise AutocompressError(f"arch: expected a mapping, got {type(data).__name__}")
    family = data.get("family")
    if family is None:
        raise AutocompressError(f"arch: 'family' is required (one of {list(FAMILIES)})")
    return arch_class(family).from_dict(data)


def model_class(family: str) -> type[RankingModel]:
    """The torch module class of a family."""
    cls: type[RankingModel] = _lookup(family, 1)
    return cls


def reference_arch(family: str) -> ArchConfig:
    """The default architecture of a family: the reference model every compressed one is compared to."""
    return arch_class(family)()


def build(
    family: str,
    schema: FeatureSchema,
    arch: ArchConfig | Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
) -> RankingModel:
    """Build a family's model for ``schema``.

    ``arch`` is the family's ArchConfig, a dict of one (strictly loaded), or None for the reference.
    With ``seed`` torch is seeded first, so one seed gives one set of initial weights (a training
    run seeds only its own shuffling and dropout).
    """
    cls = arch_class(family)
    if arch is None:
        arch = cls()
    elif isinstance(arch, Mapping):
        arch = cls.from_dict(arch)
    if type(arch) is not cls:
        raise AutocompressError(
            f"{family}: arch must be a {cls.__name__} (family {family!r}), got {type(arch).__name__}"
        )
    model_cls = model_class(family)
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    return model_cls(schema, arch)
