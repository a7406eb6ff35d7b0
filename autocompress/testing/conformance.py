"""The conformance suite every registered technique must pass.

A technique module may declare ``EXAMPLES`` (valid config dicts to exercise besides the default)
and must declare ``INVALID``: ``(config dict, message fragment)`` pairs that are refused with an
AutocompressError whose message contains the fragment, either when the config is built or when it
is applied to the tiny model (unknown table or layer names).

``check_keeps_quality`` is the quality half: a technique's default config, applied to the converged
tiny model with the production recipe, must keep the test AUC (``autocompress.testing.quality``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from autocompress.distributions import Categorical, Distribution, FloatRange, IntRange
from autocompress.errors import AutocompressError
from autocompress.techniques.base import TechniqueConfig
from autocompress.techniques.policy import Policy, apply_policy
from autocompress.techniques.registry import _MODULES, config_class, config_from_dict
from autocompress.testing.fixtures import ConvergedSetup, TinySetup
from autocompress.testing.quality import AucComparison, Sabotage, check_keeps_auc, max_auc_drop


def check_round_trip(name: str) -> None:
    """Default and example configs survive JSON exactly, through the registry's allow-list."""
    for config in _configs(name):
        again = config_from_dict(config.to_dict())
        assert again == config, (config, again)
        assert config_from_dict(__import__("json").loads(config.to_json())) == config


def check_search_space(name: str) -> None:
    """Every distribution round-trips through JSON and its edge values build valid configs."""
    cls = config_class(name)
    space = cls.search_space()
    assert space, f"{name} declares no search space"
    for param, dist in space.items():
        assert Distribution.from_dict(dist.to_dict()) == dist
        for value in _edge_values(dist):
            config = cls.from_dict({param: value})
            assert getattr(config, param) == (tuple(value) if isinstance(value, list) else value)


def check_applies(name: str, setup: TinySetup, work_dir: Path) -> None:
    """Each config compresses the tiny model into an ONNX file that runs and keeps the output shape."""
    from autocompress.export import create_session, feed
    from autocompress.measure import onnx_size_bytes

    module = importlib.import_module(_MODULES[name])
    for i, config in enumerate(_configs(name)):
        ctx = setup.context(work_dir / f"{i}")
        baseline = apply_policy(setup.model(), Policy(()), ctx)
        result = apply_policy(setup.model(), Policy((config,)), ctx)
        session = create_session(result.onnx_path, ctx.target)
        batch = ctx.calibration_batch(7)
        out = np.asarray(session.run(None, feed(session, batch))[0])
        assert out.shape == (7,), (config, out.shape)
        assert np.isfinite(out).all(), config
        if getattr(module, "SHRINKS", True):
            before, after = onnx_size_bytes(baseline.onnx_path), onnx_size_bytes(result.onnx_path)
            assert after < before, f"{config} did not shrink the model: {before} -> {after} bytes"


def check_refuses_bad_configs(name: str, setup: TinySetup, work_dir: Path) -> None:
    """Every INVALID config is refused with a clear error naming what is wrong."""
    module = importlib.import_module(_MODULES[name])
    invalid: list[tuple[dict[str, Any], str]] = module.INVALID
    assert invalid, f"{name} declares no INVALID configs"
    for i, (data, fragment) in enumerate(invalid):
        try:
            config = config_class(name).from_dict(data)
            apply_policy(setup.model(), Policy((config,)), setup.context(work_dir / f"bad{i}"))
        except AutocompressError as exc:
            assert fragment in str(exc), f"{data}: message {str(exc)!r} lacks {fragment!r}"
        else:
            raise AssertionError(f"{name}: {data} was accepted")


def check_keeps_quality(
    name: str, setup: ConvergedSetup, work_dir: Path, *, sabotage: Sabotage | None = None
) -> AucComparison:
    """The default config keeps the converged model's test AUC, within ``max_auc_drop(name)``.

    The defaults are what a search starts from and what a user gets by naming the technique alone;
    examples may skip fine-tuning on purpose, so they are not held to it. ``sabotage`` breaks the
    compressed file first (tests of this check).
    """
    return check_keeps_auc(
        setup, work_dir, config_class(name)(), max_drop=max_auc_drop(name), sabotage=sabotage
    )


def run_conformance(name: str, setup: TinySetup, work_dir: Path) -> None:
    """All checks for one technique."""
    check_round_trip(name)
    check_search_space(name)
    check_applies(name, setup, work_dir)
    check_refuses_bad_configs(name, setup, work_dir)


def _configs(name: str) -> list[TechniqueConfig]:
    module = importlib.import_module(_MODULES[name])
    cls = config_class(name)
    return [cls(), *(cls.from_dict(e) for e in getattr(module, "EXAMPLES", []))]


def _edge_values(dist: Distribution) -> list[Any]:
    if isinstance(dist, Categorical):
        return [list(c) if isinstance(c, tuple) else c for c in dist.choices]
    if isinstance(dist, IntRange | FloatRange):
        return [dist.low, dist.high]
    raise AssertionError(f"unknown distribution {dist!r}")
