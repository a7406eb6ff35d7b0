"""Search: typed search-space distributions (later: YAML spaces, the trial, the Tuner, Pareto)."""

from autocompress.search.distributions import Categorical, Distribution, FloatRange, IntRange

__all__ = ["Categorical", "Distribution", "FloatRange", "IntRange"]
