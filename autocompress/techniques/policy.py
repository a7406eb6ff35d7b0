"""Policy: an ordered list of technique configs, applied by one function."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.errors import AutocompressError
from autocompress.techniques.base import TechniqueConfig
from autocompress.techniques.registry import apply_technique, config_from_dict

if TYPE_CHECKING:
    from torch import nn

    from autocompress.techniques.context import TechniqueContext

POLICY_VERSION = 1


@dataclass(frozen=True)
class Policy:
    """Techniques in the order they run: torch-level ones first, then ONNX-level ones after export."""

    steps: tuple[TechniqueConfig, ...] = ()
    version: int = POLICY_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if self.version != POLICY_VERSION:
            raise AutocompressError(f"policy version {self.version!r} is not supported ({POLICY_VERSION})")
        seen_onnx = None
        for i, step in enumerate(self.steps):
            if step.level == "onnx":
                seen_onnx = seen_onnx or step.name
            elif seen_onnx is not None:
                raise AutocompressError(
                    f"policy.steps[{i}] ({step.name}) works on the torch model but comes after "
                    f"{seen_onnx}, which works on the exported ONNX graph: put torch-level steps first"
                )

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        if not isinstance(data, Mapping):
            raise AutocompressError(f"policy: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"version", "steps"})
        if unknown:
            raise AutocompressError(f"policy: unknown field(s) {unknown}; allowed: ['steps', 'version']")
        return cls(
            steps=tuple(config_from_dict(s) for s in data.get("steps", ())),
            version=data.get("version", POLICY_VERSION),
        )


@dataclass
class CompressedModel:
    """The outcome of a policy: the final torch module and the deployable ONNX file."""

    model: nn.Module
    onnx_path: Path
    applied: list[str] = field(default_factory=list)


def apply_policy(model: nn.Module, policy: Policy, ctx: TechniqueContext) -> CompressedModel:
    """Run torch-level steps on ``model``, export it to ONNX (checked against torch), then ONNX steps."""
    from torch import nn

    from autocompress.export import export_onnx

    applied = []
    for step in policy.steps:
        if step.level != "torch":
            break
        result = apply_technique(model, step, ctx)
        assert isinstance(result, nn.Module)
        model = result
        applied.append(step.name)
    model = model.cpu().eval()
    path: Path = export_onnx(model, ctx.schema, ctx.new_path("exported")).path
    for step in policy.steps[len(applied) :]:
        result = apply_technique(path, step, ctx)
        assert isinstance(result, Path)
        path = result
        applied.append(step.name)
    return CompressedModel(model=model, onnx_path=path, applied=applied)
