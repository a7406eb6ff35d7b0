"""The one boundary to Ray Tune's search-space types: a SearchSpace becomes a flat dict of Tune domains.

Keys are the space's flat dimension names (``arch.embedding_dim``, ``policy.2.enabled``,
``policy.2.sparse_ratio``); fixed values pass through unchanged, so a sampled config holds every
key ``autocompress.search.space.decode`` reads. Integer bounds are inclusive here and in
``IntRange``, while Tune's ``randint``/``lograndint`` exclude the upper bound: this module adds the 1.
"""

from __future__ import annotations

from typing import Any

from autocompress.distributions import Categorical, Distribution, FloatRange, IntRange
from autocompress.search.space import SearchSpace


def to_tune(space: SearchSpace) -> dict[str, Any]:
    """Flat key -> Tune domain (searched dimensions) or plain JSON value (fixed ones)."""
    return {
        key: tune_domain(spec) if isinstance(spec, Distribution) else spec
        for key, spec in space.dimensions().items()
    }


def tune_domain(dist: Distribution) -> Any:
    """The Tune domain drawing exactly the values ``dist`` contains (lists of widths stay lists)."""
    from ray import tune

    if isinstance(dist, Categorical):
        return tune.choice(dist.to_dict()["choices"])
    if isinstance(dist, IntRange):
        if dist.log:
            return tune.lograndint(dist.low, dist.high + 1)
        if dist.step == 1:
            return tune.randint(dist.low, dist.high + 1)
        if dist.low % dist.step == 0:
            # qrandint draws multiples of q with both bounds inclusive: the same grid as low + k * step
            return tune.qrandint(dist.low, dist.high, dist.step)
        return tune.choice(list(range(dist.low, dist.high + 1, dist.step)))
    if isinstance(dist, FloatRange):
        return tune.loguniform(dist.low, dist.high) if dist.log else tune.uniform(dist.low, dist.high)
    raise TypeError(f"no Tune domain for {type(dist).__name__}")
