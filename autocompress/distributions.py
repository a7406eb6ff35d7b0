"""Search-space distributions as typed objects that round-trip through JSON.

Techniques and model families declare them next to their defaults; ``autocompress.search`` (which
composes the techniques' spaces, so it sits above them) turns them into Ray Tune domains at one
boundary, so nothing else depends on Tune's types. A module of its own, below both, as
``optuna.distributions`` is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from autocompress.errors import AutocompressError


@dataclass(frozen=True)
class Distribution:
    """Base of the search-space distributions; ``kind`` names the subclass in JSON."""

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value this distribution can produce."""
        raise NotImplementedError

    @staticmethod
    def from_dict(data: Mapping[str, Any], where: str = "distribution") -> Distribution:
        """Strict load: the ``kind`` key picks the class; unknown keys and bad bounds are refused."""
        if not isinstance(data, Mapping) or "kind" not in data:
            raise AutocompressError(f"{where}: expected a mapping with a 'kind' ({sorted(_KINDS)})")
        kind = data["kind"]
        if kind not in _KINDS:
            raise AutocompressError(f"{where}: kind {kind!r} is not one of {sorted(_KINDS)}")
        cls = _KINDS[kind]
        allowed = {"kind", *cls.__dataclass_fields__}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise AutocompressError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        body = {k: v for k, v in data.items() if k != "kind"}
        try:
            return cls(**body)
        except TypeError as exc:
            raise AutocompressError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Categorical(Distribution):
    """One of a fixed list of JSON values (numbers, strings, booleans, lists, null)."""

    kind: ClassVar[str] = "categorical"
    choices: Sequence[Any]

    def __post_init__(self) -> None:
        if isinstance(self.choices, str | bytes) or not isinstance(self.choices, Sequence):
            raise AutocompressError(f"categorical choices must be a list, got {self.choices!r}")
        object.__setattr__(self, "choices", tuple(_freeze(c) for c in self.choices))
        if not self.choices:
            raise AutocompressError("categorical choices must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "choices": [_thaw(c) for c in self.choices]}

    def contains(self, value: Any) -> bool:
        return _freeze(value) in self.choices


@dataclass(frozen=True)
class IntRange(Distribution):
    """An integer in ``[low, high]`` (inclusive), optionally log-uniform or on a ``step`` grid."""

    kind: ClassVar[str] = "int"
    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise AutocompressError(f"int range: {name} must be an integer, got {value!r}")
        _check_bounds(self.low, self.high, self.log)
        if self.step < 1:
            raise AutocompressError(f"int range: step must be >= 1, got {self.step}")
        if self.log and self.step != 1:
            raise AutocompressError("int range: a log range cannot have a step")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high, "step": self.step, "log": self.log}

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )


@dataclass(frozen=True)
class FloatRange(Distribution):
    """A real number in ``[low, high]``, uniform or log-uniform."""

    kind: ClassVar[str] = "float"
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise AutocompressError(f"float range: {name} must be a finite number, got {value!r}")
        _check_bounds(self.low, self.high, self.log)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log}

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high
        )


def _check_bounds(low: float, high: float, log: bool) -> None:
    if low > high:
        raise AutocompressError(f"range low ({low}) > high ({high})")
    if log and low <= 0:
        raise AutocompressError(f"a log range needs low > 0, got {low}")


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


_KINDS: dict[str, type[Distribution]] = {c.kind: c for c in (Categorical, IntRange, FloatRange)}
