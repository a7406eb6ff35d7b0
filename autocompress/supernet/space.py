"""The supernet of a search space: its largest architecture, its smallest, and a sampler of the rest.

A two-stage search trains one supernet for the whole space, so the largest architecture must hold
every architecture the space can yield as a sub-network (``Supernet.check``): the widest value of
every dimension that may shrink, and for an MLP width list the deepest list whose every layer is the
widest any choice has at that depth (and whose last layer is at least every choice's last, since
the output layer reads a sub-network's last layer). Dimensions a supernet cannot share weights
across (DLRM's ``interaction``, DCN-v2's ``structure``) must be fixed in the space. The smallest
architecture (the sandwich rule's other end) takes the narrowest value of every dimension and the
MLP choice with the fewest units.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from autocompress.distributions import Categorical, Distribution, FloatRange, IntRange
from autocompress.errors import AutocompressError
from autocompress.models import ArchConfig, load_arch
from autocompress.search.space import SearchSpace, arch_from_values, arch_values, searched, spec_json
from autocompress.supernet.elastic import supernet_class
from autocompress.supernet.sandwich import SampleArch


def supernet_archs(space: SearchSpace) -> tuple[ArchConfig, ArchConfig]:
    """The largest and the smallest architecture of ``space`` (see the module docstring).

    Raises AutocompressError naming the dimension when one varies that a supernet cannot share.
    """
    cls = supernet_class(space.family)
    largest: dict[str, Any] = {}
    smallest: dict[str, Any] = {}
    for name, spec in space.arch.items():
        if isinstance(spec, Mapping | list) and name in ("embedding_dims", *cls.width_fields):
            # searched entry by entry (a table's width, a layer's width): the widest of each entry,
            # and the narrowest; a fixed entry is both
            largest[name], smallest[name] = _entrywise(spec, max), _entrywise(spec, min)
            continue
        if not searched(spec):
            largest[name] = smallest[name] = spec
            continue
        values = _extremes(spec) if isinstance(spec, Distribution) else []
        if name in cls.width_fields:
            ends_at_output = cls.width_fields[name][1] and name not in space.arch_rules
            largest[name] = _covering_widths(values, ends_at_output)
            smallest[name] = min(values, key=lambda widths: (sum(widths), len(widths)))
        elif values and (name in cls.shrinking_fields or name in cls.own_fields):
            sized = [v for v in values if v is not None]
            largest[name] = None if None in values or not sized else max(sized)  # None: the whole length
            smallest[name] = min(sized) if sized else None
        else:
            shared = sorted({*cls.shrinking_fields, *cls.own_fields, *cls.width_fields})
            raise AutocompressError(
                f"search.strategy two_stage: arch.{name} varies in {space.name} ({spec_json(spec)}), but a "
                f"{space.family} supernet shares weights only across {shared}; fix arch.{name} in the "
                "search space or use search.strategy per_trial"
            )
    return load_arch(arch_from_values(space, largest)), load_arch(arch_from_values(space, smallest))


def arch_sampler(space: SearchSpace) -> SampleArch:
    """``sample(rng)``: an architecture drawn from the space's arch distributions (its rules applied)."""
    dims = {k: v for k, v in space.dimensions().items() if k.startswith("arch.")}

    def sample(rng: random.Random) -> ArchConfig:
        flat = {k: _draw(v, rng) if isinstance(v, Distribution) else v for k, v in dims.items()}
        return load_arch(arch_from_values(space, arch_values(space, flat)))

    return sample


def _extremes(spec: Distribution) -> list[Any]:
    """The values that bound a dimension: every choice of a categorical, both ends of a range."""
    if isinstance(spec, Categorical):
        return list(spec.to_dict()["choices"])
    if isinstance(spec, IntRange):
        return [spec.low, spec.low + (spec.high - spec.low) // spec.step * spec.step]
    if isinstance(spec, FloatRange):
        return [spec.low, spec.high]
    raise TypeError(f"unknown distribution {spec!r}")


def _entrywise(spec: Any, pick: Any) -> Any:
    """``spec`` with each distribution replaced by ``pick`` (max or min) of its bounding values."""
    if isinstance(spec, Distribution):
        return pick(_extremes(spec))
    if isinstance(spec, Mapping):
        return {k: _entrywise(v, pick) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_entrywise(v, pick) for v in spec]
    return spec


def _covering_widths(choices: Sequence[Sequence[int]], ends_at_output: bool) -> list[int]:
    """The narrowest width list that every choice is a sub-MLP of (``Supernet._check_widths``)."""
    lists = [list(c) for c in choices]
    hidden = [c[:-1] for c in lists] if ends_at_output else lists
    depth = max(len(h) for h in hidden)
    cover = [max(h[i] for h in hidden if len(h) > i) for i in range(depth)]
    if cover:  # the output layer reads a sub-network's last hidden layer from the largest's last
        cover[-1] = max(cover[-1], *(h[-1] for h in hidden if h))
    return [*cover, max(c[-1] for c in lists)] if ends_at_output else cover


def _draw(spec: Distribution, rng: random.Random) -> Any:
    if isinstance(spec, Categorical):
        return rng.choice(spec.to_dict()["choices"])
    if isinstance(spec, IntRange):
        if spec.log:
            value = round(math.exp(rng.uniform(math.log(spec.low), math.log(spec.high))))
            return min(spec.high, max(spec.low, value))
        return spec.low + spec.step * rng.randint(0, (spec.high - spec.low) // spec.step)
    if isinstance(spec, FloatRange):
        if spec.log:
            return math.exp(rng.uniform(math.log(spec.low), math.log(spec.high)))
        return rng.uniform(spec.low, spec.high)
    raise TypeError(f"unknown distribution {spec!r}")
