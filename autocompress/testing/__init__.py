"""Test support shipped with the library: a tiny trained setup and the technique conformance suite."""

from autocompress.testing.conformance import run_conformance
from autocompress.testing.fixtures import TinySetup, tiny_setup

__all__ = ["TinySetup", "run_conformance", "tiny_setup"]
