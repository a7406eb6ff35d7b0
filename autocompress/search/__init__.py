"""Search vocabulary: typed distributions, search spaces, budgets, the Pareto front, Tune domains.

A leaf below the techniques and the models (which declare their search spaces with the
distributions) and below ``autocompress.engine``, which runs the search (trials, the Tune
layer, recording, cancel). Nothing here runs a trial.
"""

from autocompress.search.budget import Budget, Feasibility
from autocompress.search.distributions import Categorical, Distribution, FloatRange, IntRange

__all__ = ["Budget", "Categorical", "Distribution", "Feasibility", "FloatRange", "IntRange"]
