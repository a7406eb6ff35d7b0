"""TechniqueConfig: a compression technique's frozen, versioned, JSON round-tripping config.

A technique is one module in this package holding a ``Config`` (a subclass of
``TechniqueConfig``) and ``apply(model_or_onnx_path, config, ctx)``. Each parameter is declared
once with ``param(default, search, help)``: its default, the values a search may try, and what it
means (Olive's pass-config style), so the search space lives next to the technique.

Life cycle: ``Config(...)`` or ``Config.from_dict(...)`` validates values that need no model
(``check``); ``apply`` then validates names against the model (``check_names``), transforms it,
and returns the smaller module (torch level) or the path of a rewritten ONNX file (ONNX level).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Literal

from autocompress.distributions import Distribution
from autocompress.errors import AutocompressError

Level = Literal["torch", "onnx"]


def param(default: Any, search: Distribution | None = None, help: str = "") -> Any:
    """Declare a config parameter: its default, the distribution a search draws it from, its meaning."""
    if isinstance(default, list | dict):
        raise TypeError("use a tuple (or a None default) for collection parameters")
    return field(default=default, metadata={"search": search, "help": help})


@dataclass(frozen=True)
class Parameter:
    """One declared parameter of a technique: what ``describe()`` returns."""

    name: str
    default: Any
    search: Distribution | None
    help: str


@dataclass(frozen=True, kw_only=True)
class TechniqueConfig:
    """Base of every technique config; subclasses set ``name``, ``level`` and ``VERSION``."""

    name: ClassVar[str] = ""
    level: ClassVar[Level] = "torch"
    VERSION: ClassVar[int] = 1

    version: int = -1

    def __post_init__(self) -> None:
        if self.version == -1:
            object.__setattr__(self, "version", self.VERSION)
        if self.version != self.VERSION:
            raise AutocompressError(
                f"{self.name}: config version {self.version!r} is not supported (supported: {self.VERSION})"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        self.check()

    def check(self) -> None:
        """Validate values that need no model; raise AutocompressError naming the field."""

    def named_pairs(self, field_name: str, what: str, value: str) -> tuple[tuple[str, Any], ...]:
        """A per-name field (``{table: bits}``, ``{group: ratio}``) as (name, value) pairs, from a
        mapping or a JSON list of pairs; names are non-empty strings, each given once."""
        raw: Any = getattr(self, field_name)
        if isinstance(raw, Mapping):
            pairs = tuple(raw.items())
        elif isinstance(raw, list | tuple) and all(isinstance(e, list | tuple) and len(e) == 2 for e in raw):
            pairs = tuple((e[0], e[1]) for e in raw)
        else:
            raise self.fail(
                field_name, f"expected {{{what}: {value}}} or [[{what}, {value}], ...], got {raw!r}"
            )
        names = [name for name, _ in pairs]
        for name in names:
            if not isinstance(name, str) or not name:
                raise self.fail(field_name, f"{what} names must be non-empty strings, got {name!r}")
            if names.count(name) > 1:
                raise self.fail(field_name, f"{what} {name!r} is given twice")
        return pairs

    def fail(self, field_name: str, message: str) -> AutocompressError:
        """An error naming this technique and one of its fields."""
        return AutocompressError(f"{self.name}.{field_name}: {message}")

    def require_int(self, field_name: str, minimum: int) -> None:
        """Refuse a field that is not an integer (bools excluded) of at least ``minimum``."""
        value = getattr(self, field_name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(field_name, f"must be an integer >= {minimum}, got {value!r}")

    def check_names(self, field_name: str, names: Iterable[str], known: Iterable[str]) -> None:
        """Refuse names (tables, layers) the model does not have, listing the ones it has."""
        known_list = sorted(known)
        unknown = sorted(set(names) - set(known_list))
        if unknown:
            raise self.fail(field_name, f"unknown name(s) {unknown}; the model has {known_list}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"technique": self.name}
        for f in fields(self):
            out[f.name] = _json_value(getattr(self, f.name))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TechniqueConfig:
        """Strict load of this technique's config; unknown keys are refused by name."""
        if not isinstance(data, Mapping):
            raise AutocompressError(f"{cls.name}: expected a mapping, got {type(data).__name__}")
        body = dict(data)
        technique = body.pop("technique", cls.name)
        if technique != cls.name:
            raise AutocompressError(f"{cls.name}: config is for technique {technique!r}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise AutocompressError(f"{cls.name}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        try:
            return cls(**body)
        except TypeError as exc:
            raise AutocompressError(f"{cls.name}: {exc}") from None

    @classmethod
    def describe(cls) -> list[Parameter]:
        """Every declared parameter with its default, search distribution and meaning."""
        out = []
        for f in fields(cls):
            if f.name == "version":
                continue
            default = f.default if f.default is not MISSING else None
            out.append(Parameter(f.name, default, f.metadata.get("search"), f.metadata.get("help", "")))
        return out

    @classmethod
    def search_space(cls) -> dict[str, Distribution]:
        """The parameters a search varies, each with its distribution."""
        return {p.name: p.search for p in cls.describe() if p.search is not None}


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _json_value(v) for k, v in value.items()}
    return value
