"""Every registered technique passes the conformance suite on a tiny trained DLRM."""

import importlib

import pytest

from autocompress.techniques import technique_names
from autocompress.techniques.registry import _MODULES
from autocompress.testing import run_conformance, tiny_setup


@pytest.mark.slow
@pytest.mark.parametrize("name", technique_names())
def test_technique_conforms(name, tmp_path):
    for package in getattr(importlib.import_module(_MODULES[name]), "REQUIRES", ()):
        pytest.importorskip(package, reason=f"{name} needs the optional extra {package!r}")
    run_conformance(name, tiny_setup("dlrm"), tmp_path)
