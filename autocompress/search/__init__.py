"""Search: typed search-space distributions and budgets.

The trial pipeline lives in ``autocompress.search.trial`` and is not re-exported here: techniques
import the distributions from this package, and the trial imports the techniques.
"""

from autocompress.search.budget import Budget, Feasibility
from autocompress.search.distributions import Categorical, Distribution, FloatRange, IntRange

__all__ = ["Budget", "Categorical", "Distribution", "Feasibility", "FloatRange", "IntRange"]
