"""Declarative search spaces: one YAML per model family in ``search_spaces/``, with scenario presets.

A space has three parts: ``arch`` (ArchConfig field -> a distribution or a fixed value),
``policy`` (an ordered list of technique slots; an optional slot is a boolean dimension of its
own) and ``budget`` defaults. ``arch_rules`` keep sampled architectures valid: the rule
``bottom_mlp: {append: embedding_dim}`` means the sampled ``bottom_mlp`` lists the hidden widths
and its last layer is always ``embedding_dim`` (DLRM's bottom MLP must end at the embedding width).
A preset overrides arch dimensions one by one, replaces the whole policy list when it gives one,
and overrides budget fields one by one.

A value may also be a mapping or a list holding distributions, searched entry by entry: per-table
widths (``embedding_dims: {item_id: {kind: categorical, choices: [16, 32, 64]}}``), a width per
layer (``top_mlp: [{kind: ...}, {kind: ...}]``), per-table bits (``table_bits: {user_id: {...}}``).
Each entry is a dimension of its own (``arch.embedding_dims.item_id``, ``arch.top_mlp.1``,
``policy.3.table_bits.user_id``), so every searcher sees them, and ``decode`` puts them back
together.

Everything here is Tune-free: ``SearchSpace.dimensions()`` gives the flat keys
(``arch.embedding_dim``, ``policy.2.enabled``, ``policy.2.sparse_ratio``) with their typed
distributions, ``autocompress.search.tune_space`` turns them into Tune domains, and ``decode``
turns one sampled flat config back into an ArchConfig dict and a ``Policy``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.distributions import Categorical, Distribution, FloatRange, IntRange
from autocompress.errors import AutocompressError
from autocompress.search.budget import Budget, merge_budgets

if TYPE_CHECKING:
    from autocompress.techniques import Policy

SPACE_VERSION = 1
RULE_KINDS = ("append",)

_FILE_KEYS = ("version", "family", "description", "arch", "arch_rules", "policy", "budget", "presets")
_RESOLVED_KEYS = ("version", "family", "preset", "description", "arch", "arch_rules", "policy", "budget")
_PRESET_KEYS = ("description", "arch", "policy", "budget")
_SLOT_KEYS = ("technique", "optional", "params")


def default_search_space_dir() -> Path:
    """The search spaces shipped in the package (``search_spaces/`` at the top of the repository)."""
    from importlib.resources import files

    return Path(str(files("autocompress") / "search_spaces"))


@dataclass(frozen=True)
class PolicySlot:
    """One technique in a policy: its parameters (distribution or fixed value) and whether it may be off.

    Parameters not given keep the technique's default; an optional slot adds the boolean
    dimension ``policy.<i>.enabled``.
    """

    technique: str
    optional: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> str:
        """``torch`` or ``onnx``: where in the pipeline the technique runs."""
        from autocompress.techniques import config_class

        return config_class(self.technique).level

    def to_dict(self) -> dict[str, Any]:
        return {
            "technique": self.technique,
            "optional": self.optional,
            "params": {k: spec_json(v) for k, v in self.params.items()},
        }


@dataclass(frozen=True)
class SearchSpace:
    """A family's resolved search space (base or one preset applied): arch dims, policy slots, budget."""

    family: str
    arch: dict[str, Any]
    policy: tuple[PolicySlot, ...]
    budget: Budget = field(default_factory=Budget)
    arch_rules: dict[str, str] = field(default_factory=dict)
    preset: str | None = None
    description: str = ""
    version: int = SPACE_VERSION

    @property
    def name(self) -> str:
        """``family`` or ``family/preset``: how errors and listings refer to this space."""
        return self.family if self.preset is None else f"{self.family}/{self.preset}"

    def dimensions(self) -> dict[str, Any]:
        """Flat key -> Distribution (searched) or JSON value (fixed), in a stable order."""
        out: dict[str, Any] = {}
        for name, spec in self.arch.items():
            _flatten(f"arch.{name}", spec, out)
        for i, slot in enumerate(self.policy):
            if slot.optional:
                out[f"policy.{i}.enabled"] = Categorical([False, True])
            for name, spec in slot.params.items():
                _flatten(f"policy.{i}.{name}", spec, out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form; ``SearchSpace.from_dict`` reads it back."""
        return {
            "version": self.version,
            "family": self.family,
            "preset": self.preset,
            "description": self.description,
            "arch": {k: spec_json(v) for k, v in self.arch.items()},
            "arch_rules": {k: {"append": v} for k, v in self.arch_rules.items()},
            "policy": [s.to_dict() for s in self.policy],
            "budget": self.budget.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "search space") -> SearchSpace:
        """Strict load of the JSON form (one resolved space, no presets)."""
        data = _mapping(data, where)
        _check_keys(data, _RESOLVED_KEYS, where)
        family = _family(data, where)
        preset = data.get("preset")
        if preset is not None and not isinstance(preset, str):
            raise AutocompressError(f"{where}: preset must be a name or null, got {preset!r}")
        arch = _parse_arch(family, data.get("arch", {}), f"{where}: arch")
        space = SearchSpace(
            family=family,
            arch=arch,
            policy=_parse_policy(data.get("policy", []), f"{where}: policy"),
            budget=_parse_budget(data.get("budget", {}), f"{where}: budget"),
            arch_rules=_parse_rules(family, data.get("arch_rules", {}), arch, f"{where}: arch_rules"),
            preset=preset,
            description=_description(data, where),
        )
        _check_points(space, where)
        return space


def load_search_space(family: str, preset: str | None = None, path: str | Path | None = None) -> SearchSpace:
    """Load ``<family>.yaml`` from ``path`` (a YAML file or a folder; default: ``search_spaces/``).

    The whole file is validated, every preset included; ``preset`` picks one of them (None: the
    base space). Errors name the file and the key.
    """
    file = _space_file(family, path)
    spaces = _parse_file(file)
    found = next(iter(spaces.values())).family
    if found != family:
        raise AutocompressError(f"{file}: family: the file is for {found!r}, not {family!r}")
    if preset not in spaces:
        presets = sorted(p for p in spaces if p is not None)
        raise AutocompressError(f"{file}: unknown preset {preset!r}; presets: {presets}")
    return spaces[preset]


def list_search_spaces(path: str | Path | None = None) -> dict[str, list[str]]:
    """Family -> its preset names, for every ``*.yaml`` in ``path`` (default: ``search_spaces/``).

    Every file is fully validated, so a broken one is reported here rather than at search time.
    """
    directory = Path(path) if path is not None else default_search_space_dir()
    if not directory.is_dir():
        raise AutocompressError(f"search spaces folder {directory} does not exist")
    out: dict[str, list[str]] = {}
    for file in sorted(directory.glob("*.yaml")):
        spaces = _parse_file(file)
        family = next(iter(spaces.values())).family
        if file.stem != family:
            raise AutocompressError(f"{file}: family {family!r} must live in {family}.yaml")
        out[family] = sorted(p for p in spaces if p is not None)
    return out


def decode(space: SearchSpace, flat: Mapping[str, Any]) -> tuple[dict[str, Any], Policy]:
    """Turn one sampled flat config into (ArchConfig dict, ``Policy``), skipping disabled optional slots.

    Keys outside ``arch.`` and ``policy.`` are ignored (a trial config may carry more); a missing
    searched key, an unknown ``arch.``/``policy.`` key or a value outside its distribution raises.
    """
    from autocompress.techniques import Policy, config_class

    where = f"search space {space.name}"
    dims = space.dimensions()
    unknown = sorted(k for k in flat if (k.startswith("arch.") or k.startswith("policy.")) and k not in dims)
    if unknown:
        raise AutocompressError(f"{where}: unknown key(s) {unknown}; known: {list(dims)}")
    values: dict[str, Any] = {}
    for key, spec in dims.items():
        if isinstance(spec, Distribution):
            if key not in flat:
                raise AutocompressError(f"{where}: {key} is missing from the sampled config")
            value = _native(flat[key])
            if not spec.contains(value):
                raise AutocompressError(f"{where}: {key} = {value!r} is not in {spec.to_dict()}")
            values[key] = _json(value)
        else:
            if key in flat and _json(_native(flat[key])) != spec:
                raise AutocompressError(f"{where}: {key} is fixed at {spec!r}, got {flat[key]!r}")
            values[key] = spec

    arch_dict = arch_from_values(space, arch_values(space, values))

    steps = []
    for i, slot in enumerate(space.policy):
        if slot.optional and not values[f"policy.{i}.enabled"]:
            continue
        params = {name: _assemble(f"policy.{i}.{name}", spec, values) for name, spec in slot.params.items()}
        steps.append(config_class(slot.technique).from_dict(params))
    return arch_dict, Policy(steps=tuple(steps))


def arch_values(space: SearchSpace, flat: Mapping[str, Any]) -> dict[str, Any]:
    """One value per arch dimension (no ``arch.`` prefix) from a flat config's ``arch.`` keys: the
    entries of a mapping or list searched entry by entry put back together."""
    return {name: _assemble(f"arch.{name}", spec, flat) for name, spec in space.arch.items()}


def arch_from_values(space: SearchSpace, values: Mapping[str, Any]) -> dict[str, Any]:
    """The ArchConfig dict of one value per arch dimension (no ``arch.`` prefix), ``arch_rules`` applied.

    The values are not checked against the space's distributions (``decode`` does that), only by
    the family's ArchConfig: what builds a supernet's largest architecture, which covers every
    choice without being one.
    """
    from autocompress.models import arch_class

    where = f"search space {space.name}"
    arch = dict(values)
    cls = arch_class(space.family)
    for target, source in space.arch_rules.items():
        width = arch[source] if source in arch else _field_default(cls, source)
        if not isinstance(arch[target], list):
            raise AutocompressError(
                f"{where}: arch.{target} must be a list of widths for the rule 'append: {source}', "
                f"got {arch[target]!r}"
            )
        arch[target] = [*arch[target], width]
    return cls.from_dict(arch).to_dict()


# -- parsing --------------------------------------------------------------------------------------


def _space_file(family: str, path: str | Path | None) -> Path:
    if path is not None and Path(path).is_file():
        return Path(path)
    directory = Path(path) if path is not None else default_search_space_dir()
    file = directory / f"{family}.yaml"
    if not file.is_file():
        known = sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []
        raise AutocompressError(f"no search space for family {family!r} in {directory}; spaces: {known}")
    return file


def _parse_file(file: Path) -> dict[str | None, SearchSpace]:
    """Every space a file defines: the base (key None) and each preset, all validated.

    Parsed once per version of the file in a process (~0.2 s of YAML and point checks for
    ``dlrm.yaml``: what each job submission to the API paid).
    """
    stat = file.stat()
    return _parse_version(file, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _parse_version(file: Path, _mtime_ns: int, _size: int) -> dict[str | None, SearchSpace]:
    import yaml

    where = str(file)
    try:
        doc = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise AutocompressError(f"{where}: not valid YAML: {exc}") from None
    doc = _mapping(doc, where)
    _check_keys(doc, _FILE_KEYS, where)
    family = _family(doc, where)
    for key in ("arch", "policy"):
        if key not in doc:
            raise AutocompressError(f"{where}: {key} is required")
    arch = _parse_arch(family, doc["arch"], f"{where}: arch")
    rules_raw = doc.get("arch_rules", {})
    budget_raw = _mapping(doc.get("budget", {}), f"{where}: budget")
    policy = _parse_policy(doc["policy"], f"{where}: policy")
    base = SearchSpace(
        family=family,
        arch=arch,
        policy=policy,
        budget=_parse_budget(budget_raw, f"{where}: budget"),
        arch_rules=_parse_rules(family, rules_raw, arch, f"{where}: arch_rules"),
        description=_description(doc, where),
    )
    _check_points(base, where)
    spaces: dict[str | None, SearchSpace] = {None: base}
    presets = _mapping(doc.get("presets", {}), f"{where}: presets")
    for name, body in presets.items():
        at = f"{where}: presets.{name}"
        if not isinstance(name, str) or not name.isidentifier():
            raise AutocompressError(f"{at}: a preset name must be a plain identifier, got {name!r}")
        body = _mapping(body, at)
        _check_keys(body, _PRESET_KEYS, at)
        merged_arch = {**arch, **_parse_arch(family, body.get("arch", {}), f"{at}.arch")}
        preset_budget = _mapping(body.get("budget", {}), f"{at}.budget")
        space = SearchSpace(
            family=family,
            arch=merged_arch,
            policy=_parse_policy(body["policy"], f"{at}.policy") if "policy" in body else policy,
            budget=_parse_budget(merge_budgets(budget_raw, preset_budget), f"{at}.budget"),
            arch_rules=_parse_rules(family, rules_raw, merged_arch, f"{at}.arch_rules"),
            preset=name,
            description=_description(body, at) or base.description,
        )
        _check_points(space, at)
        spaces[name] = space
    return spaces


def _mapping(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise AutocompressError(f"{where}: expected a mapping, got {type(data).__name__}")
    return data


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in set(data) - set(allowed))
    if unknown:
        raise AutocompressError(f"{where}: unknown key(s) {unknown}; allowed: {list(allowed)}")


def _family(data: Mapping[str, Any], where: str) -> str:
    from autocompress.models import FAMILIES

    version = data.get("version")
    if version != SPACE_VERSION:
        raise AutocompressError(f"{where}: version must be {SPACE_VERSION}, got {version!r}")
    family = data.get("family")
    if family not in FAMILIES:
        raise AutocompressError(f"{where}: family {family!r} is not one of {list(FAMILIES)}")
    return str(family)


def _description(data: Mapping[str, Any], where: str) -> str:
    text = data.get("description", "")
    if not isinstance(text, str):
        raise AutocompressError(f"{where}: description must be text, got {text!r}")
    return text


def _spec(raw: Any, where: str) -> Any:
    """A mapping with a ``kind`` is a distribution; a mapping or list holding one is searched entry
    by entry; anything else is a fixed value."""
    if (isinstance(raw, Mapping) and "kind" not in raw) or isinstance(raw, list):
        items = raw.items() if isinstance(raw, Mapping) else enumerate(raw)
        parsed = {key: _spec(value, f"{where}.{key}") for key, value in items}
        if not any(searched(v) for v in parsed.values()):
            return raw
        for key in parsed:
            if not isinstance(key, int) and not (isinstance(key, str) and key and "." not in key):
                raise AutocompressError(f"{where}: {key!r} cannot name a searched entry (no dots, not empty)")
        return parsed if isinstance(raw, Mapping) else list(parsed.values())
    if isinstance(raw, Mapping) and "kind" in raw:
        try:
            return Distribution.from_dict(raw, where)
        except AutocompressError as exc:
            message = str(exc)
            raise AutocompressError(message if message.startswith(where) else f"{where}: {message}") from None
    return raw


def _parse_arch(family: str, raw: Any, where: str) -> dict[str, Any]:
    from autocompress.models import arch_class

    raw = _mapping(raw, where)
    allowed = [f.name for f in fields(arch_class(family)) if f.name != "version"]
    unknown = sorted(str(k) for k in set(raw) - set(allowed))
    if unknown:
        raise AutocompressError(
            f"{where}: unknown arch dimension(s) {unknown} for {family}; allowed: {allowed}"
        )
    return {name: _spec(value, f"{where}.{name}") for name, value in raw.items()}


def _parse_rules(family: str, raw: Any, arch: Mapping[str, Any], where: str) -> dict[str, str]:
    from autocompress.models import arch_class

    raw = _mapping(raw, where)
    allowed = [f.name for f in fields(arch_class(family)) if f.name != "version"]
    rules: dict[str, str] = {}
    for target, rule in raw.items():
        at = f"{where}.{target}"
        if target not in arch:
            raise AutocompressError(f"{at}: the rule needs arch.{target} (dimensions: {list(arch)})")
        rule = _mapping(rule, at)
        _check_keys(rule, RULE_KINDS, at)
        source = rule.get("append")
        if source not in allowed or source == target:
            raise AutocompressError(f"{at}.append: {source!r} is not another arch field; allowed: {allowed}")
        rules[str(target)] = str(source)
    return rules


def _parse_policy(raw: Any, where: str) -> tuple[PolicySlot, ...]:
    from autocompress.techniques import config_class, technique_names

    if not isinstance(raw, list):
        raise AutocompressError(f"{where}: expected a list of technique slots, got {type(raw).__name__}")
    slots = []
    first_onnx: str | None = None
    for i, body in enumerate(raw):
        at = f"{where}[{i}]"
        body = _mapping(body, at)
        _check_keys(body, _SLOT_KEYS, at)
        technique = body.get("technique")
        if technique not in technique_names():
            raise AutocompressError(
                f"{at}.technique: unknown technique {technique!r}; known: {technique_names()}"
            )
        optional = body.get("optional", False)
        if not isinstance(optional, bool):
            raise AutocompressError(f"{at}.optional: must be true or false, got {optional!r}")
        cls = config_class(technique)
        params_raw = _mapping(body.get("params", {}), f"{at}.params")
        allowed = [p.name for p in cls.describe()]
        unknown = sorted(str(k) for k in set(params_raw) - set(allowed))
        if unknown:
            raise AutocompressError(
                f"{at}.params: unknown parameter(s) {unknown} of {technique}; allowed: {allowed}"
            )
        if cls.level == "onnx":
            first_onnx = first_onnx or f"{where}[{i}] ({technique})"
        elif first_onnx is not None:
            raise AutocompressError(
                f"{at}: {technique} works on the torch model but comes after {first_onnx}, which works "
                "on the exported ONNX graph; put torch-level slots first"
            )
        params = {name: _spec(value, f"{at}.params.{name}") for name, value in params_raw.items()}
        slots.append(PolicySlot(technique=technique, optional=optional, params=params))
    return tuple(slots)


def _parse_budget(raw: Any, where: str) -> Budget:
    return Budget.from_dict(_mapping(raw, where), where)


def _check_points(space: SearchSpace, where: str) -> None:
    """Decode the space's corner points: every categorical choice and both ends of every range.

    Each point is tried with the other dimensions at their first value and every optional slot
    on, so a fixed value or choice that can never build (a bottom MLP not ending at the
    embedding width, a parameter the technique refuses) is reported when the file loads.
    """
    dims = space.dimensions()
    base = {k: _points(v)[0] if isinstance(v, Distribution) else v for k, v in dims.items()}
    base.update({k: True for k in dims if k.endswith(".enabled")})
    tried = [(None, None)] + [
        (key, point)
        for key, spec in dims.items()
        if isinstance(spec, Distribution)
        for point in _points(spec)
    ]
    for key, point in tried:
        flat = dict(base) if key is None else {**base, key: point}
        try:
            decode(space, flat)
        except AutocompressError as exc:
            at = "" if key is None else f" at {key} = {point!r}"
            raise AutocompressError(
                f"{where}: the space yields an invalid configuration{at}: {exc}"
            ) from None


def searched(spec: Any) -> bool:
    """Whether ``spec`` is a distribution or a mapping / list holding one (at any depth)."""
    if isinstance(spec, Distribution):
        return True
    if isinstance(spec, Mapping):
        return any(searched(v) for v in spec.values())
    if isinstance(spec, list):
        return any(searched(v) for v in spec)
    return False


def _entries(spec: Mapping[str, Any] | list[Any]) -> list[tuple[str | int, Any]]:
    return list(spec.items()) if isinstance(spec, Mapping) else list(enumerate(spec))


def _flatten(key: str, spec: Any, out: dict[str, Any]) -> None:
    """``out[key]`` = a distribution or a fixed value; a searched mapping / list gives a key per entry."""
    if isinstance(spec, Distribution) or not searched(spec):
        out[key] = _json(spec)
        return
    for entry, value in _entries(spec):
        _flatten(f"{key}.{entry}", value, out)


def _assemble(key: str, spec: Any, flat: Mapping[str, Any]) -> Any:
    """The value of dimension ``key`` read back from a flat config (``_flatten``'s inverse)."""
    if isinstance(spec, Distribution) or not searched(spec):
        return flat[key]
    parts = {entry: _assemble(f"{key}.{entry}", value, flat) for entry, value in _entries(spec)}
    return parts if isinstance(spec, Mapping) else list(parts.values())


def _points(dist: Distribution) -> list[Any]:
    if isinstance(dist, Categorical):
        return [_json(c) for c in dist.choices]
    if isinstance(dist, IntRange):
        return [dist.low, dist.low + (dist.high - dist.low) // dist.step * dist.step]
    if isinstance(dist, FloatRange):
        return [dist.low, dist.high]
    raise TypeError(f"unknown distribution {dist!r}")


def _field_default(cls: type, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name)


def _json(value: Any) -> Any:
    """Tuples become lists (recursively); distributions and scalars stay as they are."""
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    return value


def spec_json(spec: Any) -> Any:
    """A distribution as its ``to_dict`` form (also inside a mapping or list), a fixed value as JSON."""
    if isinstance(spec, Distribution):
        return spec.to_dict()
    if isinstance(spec, list) and searched(spec):
        return [spec_json(v) for v in spec]
    if isinstance(spec, Mapping) and searched(spec):
        return {k: spec_json(v) for k, v in spec.items()}
    return _json(spec)


def _native(value: Any) -> Any:
    """numpy scalars (as some searchers hand them out) become Python scalars."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_native(v) for v in value]
    return value
