"""Compression techniques: one module each (``Config`` + ``apply``), one registry, one Policy."""

from autocompress.techniques.base import Parameter, TechniqueConfig, param
from autocompress.techniques.context import TechniqueContext
from autocompress.techniques.policy import CompressedModel, Policy, apply_policy
from autocompress.techniques.registry import apply_technique, config_class, config_from_dict, technique_names

__all__ = [
    "CompressedModel",
    "Parameter",
    "Policy",
    "TechniqueConfig",
    "TechniqueContext",
    "apply_policy",
    "apply_technique",
    "config_class",
    "config_from_dict",
    "param",
    "technique_names",
]
