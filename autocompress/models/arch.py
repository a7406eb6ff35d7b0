"""ArchConfig: the versioned, JSON round-tripping architecture of one model family.

Every dimension the architecture search varies is a field of a family's ArchConfig, so a trial's
architecture is fully described by ``arch.to_dict()`` and rebuilt by ``models.load_arch()``
(the registry picks the family's class) or by the family class's ``from_dict()``.
This module does not import torch: specs and the API can validate architectures without it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from autocompress.errors import AutocompressError

if TYPE_CHECKING:
    from autocompress.data.schema import FeatureSchema

ARCH_VERSION = 1

A = TypeVar("A", bound="ArchConfig")


@dataclass(frozen=True, kw_only=True)
class ArchConfig:
    """Base of every family's architecture: version plus the embedding widths all families share.

    ``embedding_dim`` is the common width every feature vector is read out at; ``embedding_dims``
    overrides the table width of single sparse features (a narrower table is projected up to
    ``embedding_dim``). Values are checked on construction; ``check_schema`` checks them against
    a dataset's FeatureSchema.
    """

    family: ClassVar[str] = ""

    version: int = ARCH_VERSION
    embedding_dim: int = 16
    embedding_dims: dict[str, int] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.version != ARCH_VERSION:
            raise AutocompressError(
                f"{self._where}: version {self.version!r} is not supported (supported: {ARCH_VERSION})"
            )
        self._check_positive_int("embedding_dim")
        dims = self.embedding_dims
        if not isinstance(dims, Mapping):
            raise AutocompressError(
                f"{self._where}: embedding_dims must be a mapping of sparse feature name to a "
                f"positive integer, got {type(dims).__name__}"
            )
        for name, dim in dims.items():
            if not isinstance(name, str) or not _is_positive_int(dim):
                raise AutocompressError(
                    f"{self._where}: embedding_dims[{name!r}] must be a positive integer, got {dim!r}"
                )
        object.__setattr__(self, "embedding_dims", dict(sorted(dims.items())))

    @property
    def _where(self) -> str:
        return f"{self.family or 'model'} arch"

    def check_schema(self, schema: FeatureSchema) -> None:
        """Raise AutocompressError when this architecture cannot be built for ``schema``."""
        sparse = [f.name for f in schema.sparse]
        unknown = sorted(set(self.embedding_dims) - set(sparse))
        if unknown:
            raise AutocompressError(
                f"{self._where}: embedding_dims key(s) {unknown} are not sparse features of the schema "
                f"(sparse features: {sparse}; a sequence feature uses the table it shares)"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-native dict with the family name, suitable for the store and for ``from_dict``."""
        out: dict[str, Any] = {"family": self.family}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[A], data: Mapping[str, Any]) -> A:
        """Strict load of a family's architecture: unknown keys are refused naming the allowed ones.

        ``family`` may be omitted but must match the class when given. A dict of any family is
        loaded by ``autocompress.models.load_arch``, where the registry picks the class.
        """
        if not isinstance(data, Mapping):
            raise AutocompressError(f"arch: expected a mapping, got {type(data).__name__}")
        if not cls.family:
            raise AutocompressError("arch: ArchConfig is the base class; load with models.load_arch")
        values = dict(data)
        family = values.pop("family", None)
        if family is not None and family != cls.family:
            raise AutocompressError(
                f"{cls.family} arch: family {family!r} does not match (expected {cls.family!r})"
            )
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise AutocompressError(
                f"{cls.family} arch: unknown field(s) {unknown}; allowed: {sorted(allowed | {'family'})}"
            )
        return cls(**values)

    @classmethod
    def from_json(cls: type[A], text: str) -> A:
        return cls.from_dict(json.loads(text))

    # Checks used by the families' __post_init__; each names the field it refuses.

    def _check_positive_int(self, name: str, allow_zero: bool = False) -> None:
        value = getattr(self, name)
        if not (_is_positive_int(value) or (allow_zero and type(value) is int and value == 0)):
            bound = ">= 0" if allow_zero else "> 0"
            raise AutocompressError(f"{self._where}: {name} must be an integer {bound}, got {value!r}")

    def _check_widths(self, name: str) -> None:
        """A non-empty list of positive layer widths, stored as a tuple."""
        value = getattr(self, name)
        if (
            isinstance(value, str)
            or not isinstance(value, Sequence)
            or not value
            or not all(_is_positive_int(w) for w in value)
        ):
            raise AutocompressError(
                f"{self._where}: {name} must be a non-empty list of positive layer widths, got {value!r}"
            )
        object.__setattr__(self, name, tuple(value))

    def _check_choice(self, name: str, allowed: Sequence[str]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise AutocompressError(f"{self._where}: {name} must be one of {list(allowed)}, got {value!r}")

    def _check_bool(self, name: str) -> None:
        value = getattr(self, name)
        if not isinstance(value, bool):
            raise AutocompressError(f"{self._where}: {name} must be true or false, got {value!r}")

    def _check_positive_float(self, name: str) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise AutocompressError(f"{self._where}: {name} must be a number > 0, got {value!r}")
        object.__setattr__(self, name, float(value))


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
