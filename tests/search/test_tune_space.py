from pathlib import Path

import numpy as np
import pytest
from ray.tune.search.sample import Domain

from autocompress.data.synthetic import SyntheticConfig, synthetic_schema
from autocompress.distributions import Categorical, FloatRange, IntRange
from autocompress.models import FAMILIES, build
from autocompress.search.space import decode, list_search_spaces, load_search_space
from autocompress.search.tune_space import to_tune, tune_domain
from autocompress.techniques import Policy

SCHEMA = synthetic_schema(SyntheticConfig.tiny())


def draw(domain, n, seed=0):
    rng = np.random.default_rng(seed)
    return [domain.sample(random_state=rng) for _ in range(n)]


def sample_config(param_space, rng):
    return {k: v.sample(random_state=rng) if isinstance(v, Domain) else v for k, v in param_space.items()}


@pytest.mark.parametrize(
    ("dist", "expected"),
    [
        (IntRange(1, 3), {1, 2, 3}),  # Tune's randint excludes its upper bound; ours includes it
        (IntRange(2, 4, log=True), {2, 3, 4}),
        (IntRange(0, 10, step=5), {0, 5, 10}),
        (IntRange(1, 9, step=4), {1, 5, 9}),  # low off the multiples of step: still low + k * step
        (IntRange(5, 5), {5}),
        (Categorical([8, "a", None, False]), {8, "a", None, False}),
    ],
)
def test_discrete_domains_draw_exactly_the_distributions_values(dist, expected):
    values = draw(tune_domain(dist), 300)
    assert set(values) == expected
    assert all(dist.contains(v) for v in values)
    assert all(type(v) is not np.int64 for v in values)


def test_lists_of_widths_stay_lists():
    dist = Categorical([[64], [128, 64], []])
    values = draw(tune_domain(dist), 60)
    assert all(type(v) is list for v in values)
    assert {tuple(v) for v in values} == {(64,), (128, 64), ()}


@pytest.mark.parametrize("dist", [FloatRange(0.3, 0.85), FloatRange(1e-4, 1e-1, log=True)])
def test_float_domains_stay_in_bounds(dist):
    values = np.array(draw(tune_domain(dist), 500))
    assert values.min() >= dist.low and values.max() <= dist.high
    if dist.log:  # log-uniform: about half the draws fall below the geometric mean
        assert 0.4 < np.mean(values < np.sqrt(dist.low * dist.high)) < 0.6
    else:
        assert 0.4 < np.mean(values < (dist.low + dist.high) / 2) < 0.6


def test_optuna_sees_the_same_inclusive_bounds():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    dists = {
        "a": IntRange(1, 3),
        "b": IntRange(10, 50, log=True),
        "c": IntRange(0, 10, step=5),
        "d": FloatRange(0.3, 0.85),
        "e": Categorical([4, 8]),
    }
    converted = OptunaSearch.convert_search_space({k: tune_domain(v) for k, v in dists.items()})
    assert converted["a"] == optuna.distributions.IntDistribution(1, 3)
    assert converted["b"] == optuna.distributions.IntDistribution(10, 50, log=True)
    assert converted["c"] == optuna.distributions.IntDistribution(0, 10, step=5)
    assert converted["d"] == optuna.distributions.FloatDistribution(0.3, 0.85)
    assert converted["e"] == optuna.distributions.CategoricalDistribution([4, 8])


def test_to_tune_keeps_fixed_values_and_flat_keys():
    # the frozen copy of the DLRM space the mechanics tests share (tests/search/spaces/)
    space = load_search_space("dlrm", "realtime", path=Path(__file__).parent / "spaces" / "dlrm.yaml")
    param_space = to_tune(space)
    assert list(param_space) == list(space.dimensions())
    assert param_space["arch.interaction"] == "dot"
    assert param_space["policy.3.op_types"] == ["MatMul", "Gemm"]
    assert isinstance(param_space["policy.0.enabled"], Domain)
    assert isinstance(param_space["policy.1.sparse_ratio"], Domain)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_samples_decode_to_buildable_models_and_round_tripping_policies(family):
    rng = np.random.default_rng(7)
    presets = [None, *list_search_spaces()[family]]
    seen_lengths = set()
    seen_dims = set()
    for preset in presets:
        space = load_search_space(family, preset)
        param_space = to_tune(space)
        for _ in range(30 if preset is None else 8):
            arch, policy = decode(space, sample_config(param_space, rng))
            model = build(family, SCHEMA, arch)
            assert model.arch.to_dict() == arch
            assert Policy.from_dict(policy.to_dict()) == policy
            seen_lengths.add(len(policy.steps))
            seen_dims.add(arch["embedding_dim"])
    # the optional slots and the arch really vary across samples
    assert len(seen_lengths) >= 3
    assert len(seen_dims) >= 2
