"""Every registered technique passes the conformance suite on a tiny trained DLRM, and its default
config keeps the test AUC of the converged DLRM (a check shown to fail on a broken technique)."""

import importlib
import re

import pytest

from autocompress.techniques import technique_names
from autocompress.techniques.registry import _MODULES
from autocompress.testing import (
    check_keeps_quality,
    converged_setup,
    run_conformance,
    table_zeroed,
    tiny_setup,
)
from autocompress.testing.quality import max_auc_drop


def skip_without_extras(name):
    for package in getattr(importlib.import_module(_MODULES[name]), "REQUIRES", ()):
        pytest.importorskip(package, reason=f"{name} needs the optional extra {package!r}")


@pytest.mark.slow
@pytest.mark.parametrize("name", technique_names())
def test_technique_conforms(name, tmp_path):
    skip_without_extras(name)
    run_conformance(name, tiny_setup("dlrm"), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", technique_names())
def test_default_config_keeps_the_auc_of_the_converged_model(name, tmp_path):
    skip_without_extras(name)
    check_keeps_quality(name, converged_setup("dlrm"), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", technique_names())
def test_the_quality_check_fails_when_the_technique_zeroes_a_table(name, tmp_path):
    # the same technique, then its output's item_category table set to zeros: -0.077 to -0.108 AUC
    skip_without_extras(name)
    setup = converged_setup("dlrm")
    with pytest.raises(AssertionError, match=re.escape(f"loses more than {max_auc_drop(name)} AUC")):
        check_keeps_quality(name, setup, tmp_path, sabotage=table_zeroed(setup, "item_category"))
