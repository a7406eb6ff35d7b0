import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from autocompress.distributions import Categorical, FloatRange, IntRange
from autocompress.errors import AutocompressError
from autocompress.models import FAMILIES
from autocompress.search.budget import Budget
from autocompress.search.space import (
    SearchSpace,
    decode,
    default_search_space_dir,
    list_search_spaces,
    load_search_space,
)
from autocompress.techniques import Policy, config_class

SPACES = list_search_spaces()
ALL = [(family, preset) for family, presets in SPACES.items() for preset in [None, *presets]]

MINIMAL = {
    "version": 1,
    "family": "dlrm",
    "arch": {
        "embedding_dim": {"kind": "categorical", "choices": [8, 16]},
        "bottom_mlp": {"kind": "categorical", "choices": [[], [32]]},
        "top_mlp": [16],
    },
    "arch_rules": {"bottom_mlp": {"append": "embedding_dim"}},
    "policy": [
        {
            "technique": "structured_pruning",
            "optional": True,
            "params": {"sparse_ratio": {"kind": "float", "low": 0.3, "high": 0.8}, "importance": "taylor"},
        },
        {"technique": "dynamic_int8", "params": {"op_types": ["MatMul", "Gemm"]}},
    ],
    "budget": {"latency_ms": 1.0, "size_mb": 5.0, "max_auc_drop": 0.002},
    "presets": {"fast": {"arch": {"embedding_dim": 8}, "budget": {"latency_ms": 0.5}}},
}


def write_space(tmp_path, doc, name="dlrm"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def edited(**changes):
    doc = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = value
    return doc


FROZEN = Path(__file__).parent / "spaces" / "dlrm.yaml"


def test_every_family_has_a_space_with_the_three_presets():
    assert set(SPACES) == set(FAMILIES)
    for family, presets in SPACES.items():
        assert presets == ["accuracy", *(["per_table"] if family == "dlrm" else []), "realtime", "small"]


@pytest.mark.parametrize(("family", "preset"), ALL)
def test_every_space_and_preset_loads_and_round_trips(family, preset):
    space = load_search_space(family, preset)
    assert (space.family, space.preset) == (family, preset)
    assert space.description
    data = json.loads(json.dumps(space.to_dict()))
    assert SearchSpace.from_dict(data) == space
    # the searched part is real: several arch dimensions and at least one policy slot vary
    assert (
        sum(
            key.startswith("arch.") and isinstance(v, Categorical | IntRange | FloatRange)
            for key, v in space.dimensions().items()
        )
        >= 2
    )
    levels = [slot.level for slot in space.policy]
    assert levels == sorted(levels, key=lambda level: level == "onnx"), "torch-level slots come first"
    assert space.budget.batch_size == 256 and space.budget.percentile == 99


def test_the_shipped_realtime_preset_hashes_prunes_and_quantizes_under_a_tight_budget():
    realtime = load_search_space("dlrm", "realtime")
    assert realtime.arch["embedding_dim"] == Categorical([32, 64])
    assert [(s.technique, s.optional) for s in realtime.policy] == [
        ("frequency_hashing", False),
        ("structured_pruning", False),
        ("dynamic_int8", False),
    ]
    # relative to the job's own fp32 baseline, so it means the same on any dataset
    assert realtime.budget == Budget.from_dict(
        {
            "latency": {"speedup_vs": "onnx_fp32", "factor": 4.5},
            "size": {"smaller_than": "onnx_fp32", "factor": 16},
            "max_auc_drop": 0.002,
        }
    )


@pytest.mark.parametrize("family", ["dlrm", "deepfm", "dcn_v2", "two_tower", "din"])
def test_every_shipped_preset_states_its_budget_against_the_fp32_baseline(family):
    for preset in (None, "realtime", "accuracy", "small"):
        budget = load_search_space(family, preset).budget
        assert budget.latency is not None and budget.latency.speedup_vs == "onnx_fp32", (family, preset)
        assert budget.latency_ms is None and budget.size_mb is None, (family, preset)
        assert budget.relative and budget.max_auc_drop is not None


def test_a_mapping_or_list_holding_distributions_is_searched_entry_by_entry():
    widths = {"kind": "categorical", "choices": [4, 8]}
    doc = edited(
        arch__embedding_dims={"item_id": widths, "user_id": 4},
        arch__top_mlp=[{"kind": "categorical", "choices": [16, 32]}, 8],
        policy__1__technique="embedding_quantization",
        policy__1__params={"table_bits": {"item_id": {"kind": "categorical", "choices": [4, 8, 32]}}},
    )
    space = SearchSpace.from_dict({k: v for k, v in doc.items() if k != "presets"})
    dims = space.dimensions()
    # each entry is a dimension of its own, a fixed entry beside a searched one included
    assert (
        dims["arch.embedding_dims.item_id"] == Categorical([4, 8])
        and dims["arch.embedding_dims.user_id"] == 4
    )
    assert dims["arch.top_mlp.0"] == Categorical([16, 32]) and dims["arch.top_mlp.1"] == 8
    assert dims["policy.1.table_bits.item_id"] == Categorical([4, 8, 32])
    assert "arch.embedding_dims" not in dims and "arch.top_mlp" not in dims

    flat = {k: v for k, v in dims.items() if not isinstance(v, Categorical | IntRange | FloatRange)}
    flat |= {
        "arch.embedding_dim": 8,
        "arch.bottom_mlp": [32],
        "arch.embedding_dims.item_id": 4,
        "arch.top_mlp.0": 32,
        "policy.0.enabled": False,
        "policy.0.sparse_ratio": 0.5,
        "policy.1.table_bits.item_id": 32,
    }
    arch, policy = decode(space, flat)
    assert arch["embedding_dims"] == {"item_id": 4, "user_id": 4} and arch["top_mlp"] == [32, 8]
    assert dict(policy.steps[0].table_bits) == {"item_id": 32}
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    with pytest.raises(AutocompressError, match=r"arch.embedding_dims.item_id = 5 is not in"):
        decode(space, {**flat, "arch.embedding_dims.item_id": 5})


def test_the_per_table_preset_searches_each_large_table_layer_and_group():
    dims = load_search_space("dlrm", "per_table").dimensions()
    searched = {k for k, v in dims.items() if isinstance(v, Categorical | IntRange | FloatRange)}
    tables = ("user_id", "item_id", "item_brand")
    assert {f"arch.embedding_dims.{t}" for t in tables} <= searched
    assert {"arch.top_mlp.0", "arch.top_mlp.1", "arch.bottom_mlp.0"} <= searched
    assert {"policy.0.table_buckets.user_id", "policy.0.table_buckets.item_id"} <= searched
    assert {"policy.1.group_ratios.bottom", "policy.1.group_ratios.top"} <= searched
    assert {f"policy.2.table_bits.{t}" for t in tables} <= searched


def test_presets_override_arch_policy_and_budget():
    base = load_search_space("dlrm", path=FROZEN)
    realtime = load_search_space("dlrm", "realtime", path=FROZEN)
    small = load_search_space("dlrm", "small", path=FROZEN)
    accuracy = load_search_space("dlrm", "accuracy", path=FROZEN)
    # arch: overridden dimension by dimension, the rest inherited
    assert realtime.arch["embedding_dim"] == Categorical([16, 32])
    assert realtime.arch["interaction"] == base.arch["interaction"] == "dot"
    assert small.arch["top_mlp"] == base.arch["top_mlp"]
    # policy: replaced as a whole; realtime always quantizes the matmuls, accuracy always distills
    assert [s.technique for s in realtime.policy][-1] == "dynamic_int8"
    assert not realtime.policy[-1].optional
    assert accuracy.policy[0].technique == "distillation" and not accuracy.policy[0].optional
    assert small.policy[0].technique == "frequency_hashing"
    assert small.policy[2].params["bits"] == 4
    # budget: field by field
    assert realtime.budget == Budget(
        latency_ms=0.7, batch_size=256, percentile=99, size_mb=5.0, max_auc_drop=0.002
    )
    assert accuracy.budget.size_mb is None and accuracy.budget.max_auc_drop == 0.0005


def test_dimensions_are_flat_with_optional_slots_as_booleans():
    space = load_search_space("dlrm", "realtime", path=FROZEN)
    dims = space.dimensions()
    assert dims["arch.embedding_dim"] == Categorical([16, 32])
    assert dims["arch.interaction"] == "dot"
    assert dims["policy.0.enabled"] == Categorical([False, True])
    assert "policy.1.enabled" not in dims  # structured_pruning is not optional there
    assert dims["policy.1.sparse_ratio"] == FloatRange(0.5, 0.85)
    assert dims["policy.3.op_types"] == ["MatMul", "Gemm"]


def test_decode_applies_the_arch_rule_and_skips_disabled_slots():
    space = load_search_space("dlrm", "realtime", path=FROZEN)
    flat = {
        "arch.embedding_dim": 32,
        "arch.bottom_mlp": [64],
        "arch.top_mlp": [128, 64],
        "policy.0.enabled": False,
        "policy.0.min_count": 20,
        "policy.1.sparse_ratio": 0.7,
        "policy.2.enabled": True,
        "policy.2.bits": 4,
        "trial_seed": 3,  # keys outside arch. / policy. are left alone
    }
    arch, policy = decode(space, flat)
    assert arch["family"] == "dlrm"
    assert arch["embedding_dim"] == 32 and arch["bottom_mlp"] == [64, 32] and arch["top_mlp"] == [128, 64]
    assert [s.name for s in policy.steps] == ["structured_pruning", "embedding_quantization", "dynamic_int8"]
    pruning = policy.steps[0]
    assert (pruning.sparse_ratio, pruning.importance) == (0.7, "taylor")
    assert policy.steps[0].finetune_epochs == config_class("structured_pruning")().finetune_epochs
    assert policy.steps[1].bits == 4 and policy.steps[2].op_types == ("MatMul", "Gemm")
    assert Policy.from_dict(policy.to_dict()) == policy


def test_decode_refuses_missing_unknown_and_out_of_range_values():
    space = load_search_space("dlrm", "realtime", path=FROZEN)
    good = {
        "arch.embedding_dim": 16,
        "arch.bottom_mlp": [],
        "arch.top_mlp": [64],
        "policy.0.enabled": True,
        "policy.0.min_count": 10,
        "policy.1.sparse_ratio": 0.5,
        "policy.2.enabled": True,
        "policy.2.bits": 8,
    }
    arch, _ = decode(space, good)
    assert arch["bottom_mlp"] == [16]
    arch, _ = decode(space, {**good, "arch.embedding_dim": np.int64(32), "policy.0.min_count": np.int64(12)})
    assert arch["embedding_dim"] == 32 and type(arch["embedding_dim"]) is int
    with pytest.raises(AutocompressError, match=r"policy.1.sparse_ratio is missing"):
        decode(space, {k: v for k, v in good.items() if k != "policy.1.sparse_ratio"})
    with pytest.raises(AutocompressError, match=r"unknown key\(s\) \['arch.width'\]"):
        decode(space, {**good, "arch.width": 3})
    with pytest.raises(AutocompressError, match=r"arch.embedding_dim = 64 is not in"):
        decode(space, {**good, "arch.embedding_dim": 64})
    with pytest.raises(AutocompressError, match=r"arch.interaction is fixed at 'dot', got 'cat'"):
        decode(space, {**good, "arch.interaction": "cat"})
    assert decode(space, {**good, "arch.interaction": "dot"})[0]["interaction"] == "dot"
    with pytest.raises(AutocompressError, match=r"policy.0.min_count = 60 is not in"):
        decode(space, {**good, "policy.0.min_count": 60})


def test_explicit_path_as_file_or_folder(tmp_path):
    path = write_space(tmp_path, MINIMAL)
    for where in (path, tmp_path, str(path)):
        space = load_search_space("dlrm", path=where)
        assert space.arch["top_mlp"] == [16]
    fast = load_search_space("dlrm", "fast", path=tmp_path)
    assert fast.arch["embedding_dim"] == 8
    assert fast.budget.latency_ms == 0.5 and fast.budget.size_mb == 5.0
    assert list_search_spaces(tmp_path) == {"dlrm": ["fast"]}
    assert default_search_space_dir().name == "search_spaces"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (edited(searcher="tpe"), r"dlrm.yaml: unknown key\(s\) \['searcher'\]; allowed: \['version'"),
        (
            edited(arch__width=[8]),
            r"dlrm.yaml: arch: unknown arch dimension\(s\) \['width'\] for dlrm; allowed: "
            r"\['embedding_dim', 'embedding_dims', 'bottom_mlp', 'top_mlp', 'interaction'\]",
        ),
        (
            edited(arch__embedding_dim={"kind": "categorical", "choices": []}),
            r"dlrm.yaml: arch.embedding_dim: categorical choices must not be empty",
        ),
        (
            edited(policy__0__params__sparse_ratio={"kind": "float", "low": 0.9, "high": 0.3}),
            r"dlrm.yaml: policy\[0\].params.sparse_ratio: range low \(0.9\) > high \(0.3\)",
        ),
        (
            edited(policy__1__technique="magic_pruning"),
            r"policy\[1\].technique: unknown technique 'magic_pruning'; known: \['structured_pruning'",
        ),
        (
            edited(policy__0__params__ratio=0.5),
            r"policy\[0\].params: unknown parameter\(s\) \['ratio'\] of structured_pruning; "
            r"allowed: \['sparse_ratio', 'importance'",
        ),
        (
            edited(policy=[{"technique": "dynamic_int8"}, {"technique": "low_rank"}]),
            r"policy\[1\]: low_rank works on the torch model but comes after .*policy\[0\] \(dynamic_int8\)",
        ),
        (
            edited(presets__fast__arch={"depth": 2}),
            r"presets.fast.arch: unknown arch dimension\(s\) \['depth'\]",
        ),
        (edited(presets__fast__policy=[{"technique": "x"}]), r"presets.fast.policy\[0\].technique: unknown"),
        (edited(presets__fast__searcher="tpe"), r"presets.fast: unknown key\(s\) \['searcher'\]"),
        (edited(budget__percentile=90), r"dlrm.yaml: budget.percentile: Input should be 50, 95 or 99"),
        (edited(budget__latency_ms=-1), r"dlrm.yaml: budget.latency_ms: Input should be greater than 0"),
        (edited(presets__fast__budget={"sizes": 1}), r"dlrm.yaml: presets.fast.budget.sizes: unknown field"),
        (
            edited(presets__fast__budget={"size": {"smaller_than": "onnx_fp32", "factor": -2}}),
            r"dlrm.yaml: presets.fast.budget.size.factor: Input should be greater than 0",
        ),
        (edited(family="xgboost"), r"family 'xgboost' is not one of \['dlrm'"),
        (edited(version=2), r"version must be 1, got 2"),
        (edited(policy__0__optional="yes"), r"policy\[0\].optional: must be true or false"),
        (
            edited(arch_rules={"bottom_mlp": {"append": "depth"}}),
            r"arch_rules.bottom_mlp.append: 'depth' is not another arch field",
        ),
    ],
)
def test_invalid_files_name_the_file_and_key(tmp_path, doc, message):
    path = write_space(tmp_path, doc)
    with pytest.raises(AutocompressError, match=message):
        load_search_space("dlrm", path=path)


def test_unknown_preset_lists_the_presets(tmp_path):
    path = write_space(tmp_path, MINIMAL)
    with pytest.raises(AutocompressError, match=r"dlrm.yaml: unknown preset 'turbo'; presets: \['fast'\]"):
        load_search_space("dlrm", "turbo", path=path)
    with pytest.raises(AutocompressError, match=r"presets: \['accuracy', 'per_table', 'realtime', 'small'\]"):
        load_search_space("dlrm", "turbo")


def test_points_that_cannot_build_are_refused_at_load(tmp_path):
    # without the arch rule a bottom MLP that does not end at embedding_dim is reachable
    doc = edited(arch_rules={}, arch__bottom_mlp={"kind": "categorical", "choices": [[8], [32, 8]]})
    with pytest.raises(
        AutocompressError,
        match=r"dlrm.yaml: the space yields an invalid configuration at arch.embedding_dim = 16: "
        r"dlrm arch: bottom_mlp must end at embedding_dim \(16\)",
    ):
        load_search_space("dlrm", path=write_space(tmp_path, doc))
    doc = edited(arch__bottom_mlp=32)
    with pytest.raises(AutocompressError, match=r"arch.bottom_mlp must be a list of widths for the rule"):
        load_search_space("dlrm", path=write_space(tmp_path, doc))
    # a choice the technique refuses, caught even though it is not the first choice
    doc = edited(policy__1__params__op_types={"kind": "categorical", "choices": [["MatMul"], ["Conv"]]})
    with pytest.raises(
        AutocompressError, match=r"invalid configuration at policy.1.op_types = \['Conv'\]: .*op_types"
    ):
        load_search_space("dlrm", path=write_space(tmp_path, doc))


def test_missing_family_and_wrong_family(tmp_path):
    with pytest.raises(AutocompressError, match=r"no search space for family 'din' in .*; spaces: \[\]"):
        load_search_space("din", path=tmp_path)
    path = write_space(tmp_path, MINIMAL)
    with pytest.raises(AutocompressError, match=r"the file is for 'dlrm', not 'deepfm'"):
        load_search_space("deepfm", path=path)
    write_space(tmp_path, MINIMAL, name="deepfm")
    with pytest.raises(AutocompressError, match=r"family 'dlrm' must live in dlrm.yaml"):
        list_search_spaces(tmp_path)


def test_from_dict_is_strict():
    data = load_search_space("deepfm").to_dict()
    with pytest.raises(AutocompressError, match=r"search space: unknown key\(s\) \['presets'\]"):
        SearchSpace.from_dict({**data, "presets": {}})
    with pytest.raises(
        AutocompressError, match=r"search space: arch: unknown arch dimension\(s\) \['cross_layers'\]"
    ):
        SearchSpace.from_dict({**data, "arch": {**data["arch"], "cross_layers": 2}})
