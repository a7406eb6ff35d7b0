"""The allow-list of techniques: name -> module holding ``Config`` and ``apply``. Lazy imports."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from autocompress.errors import AutocompressError
from autocompress.techniques.base import TechniqueConfig

if TYPE_CHECKING:
    from torch import nn

    from autocompress.techniques.context import TechniqueContext

# One line per technique. Configs load only from this list (never from a class path in the data).
_MODULES: dict[str, str] = {
    # torch level: change the module, which really gets smaller
    "structured_pruning": "autocompress.techniques.structured_pruning",
    "embedding_dim_pruning": "autocompress.techniques.embedding_dim_pruning",
    "mixed_dim_embedding": "autocompress.techniques.mixed_dim_embedding",
    "qr_embedding": "autocompress.techniques.qr_embedding",
    "frequency_hashing": "autocompress.techniques.frequency_hashing",
    "low_rank": "autocompress.techniques.low_rank",
    "distillation": "autocompress.techniques.distillation",
    "nni_pruning": "autocompress.techniques.nni_pruning",  # needs the optional extra `nni`
    # ONNX level: rewrite the exported graph
    "dynamic_int8": "autocompress.techniques.dynamic_int8",
    "static_int8": "autocompress.techniques.static_int8",
    "embedding_quantization": "autocompress.techniques.embedding_quantization",
    "int4_matmul": "autocompress.techniques.int4_matmul",
    "fp16": "autocompress.techniques.fp16",
}


def technique_names() -> list[str]:
    """Every registered technique, in registry order."""
    return list(_MODULES)


def _module(name: str) -> ModuleType:
    if name not in _MODULES:
        raise AutocompressError(f"unknown technique {name!r}; known: {technique_names()}")
    return importlib.import_module(_MODULES[name])


def config_class(name: str) -> type[TechniqueConfig]:
    """The Config class of a registered technique."""
    cls: type[TechniqueConfig] = _module(name).Config
    return cls


def config_from_dict(data: Mapping[str, Any]) -> TechniqueConfig:
    """Load any technique's config from JSON data; its ``technique`` key must be registered."""
    if not isinstance(data, Mapping) or "technique" not in data:
        raise AutocompressError(f"a technique config needs a 'technique' key (one of {technique_names()})")
    return config_class(str(data["technique"])).from_dict(data)


def apply_technique(
    model_or_path: nn.Module | Path, config: TechniqueConfig, ctx: TechniqueContext
) -> nn.Module | Path:
    """Apply one technique: a torch-level one to a module, an ONNX-level one to an ONNX file."""
    from torch import nn

    module = _module(config.name)
    if not isinstance(config, module.Config):
        raise AutocompressError(f"config {type(config).__name__} is not the config of {config.name!r}")
    if config.level == "torch" and not isinstance(model_or_path, nn.Module):
        raise AutocompressError(f"{config.name} works on a torch model, got {type(model_or_path).__name__}")
    if config.level == "onnx" and not isinstance(model_or_path, Path):
        raise AutocompressError(
            f"{config.name} works on an exported ONNX file, got {type(model_or_path).__name__}"
        )
    result: nn.Module | Path = module.apply(model_or_path, config, ctx)
    return result
