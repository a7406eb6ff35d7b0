"""Search vocabulary: search spaces, budgets, the Pareto front, Tune domains.

A search space composes the techniques' and the families' spaces (their distributions are
``autocompress.distributions``, below them), so this package sits above the techniques and the
models and below ``autocompress.engine``, which runs the search (trials, the Tune layer,
recording, cancel). Nothing here runs a trial.
"""

from autocompress.search.budget import Budget, Feasibility

__all__ = ["Budget", "Feasibility"]
