"""Test support shipped with the library: tiny trained setups, the technique conformance suite and
the quality check every technique's output must pass."""

from autocompress.testing.conformance import check_keeps_quality, run_conformance
from autocompress.testing.fixtures import ConvergedSetup, TinySetup, converged_setup, tiny_job, tiny_setup
from autocompress.testing.quality import AucComparison, check_keeps_auc, table_zeroed

__all__ = [
    "AucComparison",
    "ConvergedSetup",
    "TinySetup",
    "check_keeps_auc",
    "check_keeps_quality",
    "converged_setup",
    "run_conformance",
    "table_zeroed",
    "tiny_job",
    "tiny_setup",
]
