"""A search space's supernet: its largest architecture holds every architecture the space yields."""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest
import torch

from autocompress.errors import AutocompressError
from autocompress.models.dlrm import DLRMArch
from autocompress.search.space import SearchSpace, load_search_space
from autocompress.supernet import Supernet, arch_sampler, supernet_archs
from tests.models.tiny import make_schema, to_tensors

SCHEMA = make_schema(history_len=6)


def space(family: str, arch: dict[str, Any], **more: Any) -> SearchSpace:
    return SearchSpace.from_dict({"version": 1, "family": family, "arch": arch, "policy": [], **more})


def test_the_largest_covers_every_choice_layer_by_layer_and_the_smallest_is_the_narrowest() -> None:
    dlrm = space(
        "dlrm",
        {
            "embedding_dim": {"kind": "categorical", "choices": [4, 8]},
            "bottom_mlp": {"kind": "categorical", "choices": [[], [16], [8, 12]]},
            "top_mlp": {"kind": "categorical", "choices": [[32], [8, 16], [24, 4, 4]]},
        },
        arch_rules={"bottom_mlp": {"append": "embedding_dim"}},
    )
    largest, smallest = supernet_archs(dlrm)
    # per layer the widest; the last at least every choice's last (the output layer reads it)
    assert largest == DLRMArch(embedding_dim=8, bottom_mlp=(16, 16, 8), top_mlp=(32, 16, 32))
    assert smallest == DLRMArch(embedding_dim=4, bottom_mlp=(4,), top_mlp=(8, 16))
    net = Supernet.for_family(SCHEMA, largest)
    sample, rng = arch_sampler(dlrm), random.Random(0)
    drawn = [sample(rng) for _ in range(100)]
    assert len({a.to_json() for a in drawn}) > 10 and all(net.contains(a) for a in [smallest, *drawn])


SHIPPED = [("dlrm", None), ("dlrm", "realtime"), ("din", None), ("deepfm", None), ("two_tower", None)]


@pytest.mark.parametrize(("family", "preset"), SHIPPED)
def test_every_architecture_of_a_shipped_space_is_inside_its_supernet(
    family: str, preset: str | None
) -> None:
    shipped = load_search_space(family, preset)
    largest, smallest = supernet_archs(shipped)
    with torch.device("meta"):
        net = Supernet.for_family(SCHEMA, largest)
    sample, rng = arch_sampler(shipped), random.Random(1)
    assert all(net.contains(a) for a in [smallest, *(sample(rng) for _ in range(50))])


def test_tables_and_layers_searched_one_by_one_are_covered_entry_by_entry() -> None:
    widths = {"kind": "categorical", "choices": [2, 4, 8]}
    dlrm = space(
        "dlrm",
        {
            "embedding_dim": 8,
            "embedding_dims": {"item_id": widths, "user_id": widths},
            "bottom_mlp": [{"kind": "categorical", "choices": [4, 16]}],
            "top_mlp": [
                {"kind": "int", "low": 8, "high": 32, "step": 8},
                {"kind": "categorical", "choices": [4, 12]},
            ],
        },
        arch_rules={"bottom_mlp": {"append": "embedding_dim"}},
    )
    largest, smallest = supernet_archs(dlrm)
    assert largest == DLRMArch(
        embedding_dim=8, embedding_dims={"item_id": 8, "user_id": 8}, bottom_mlp=(16, 8), top_mlp=(32, 12)
    )
    assert smallest == DLRMArch(
        embedding_dim=8, embedding_dims={"item_id": 2, "user_id": 2}, bottom_mlp=(4, 8), top_mlp=(8, 4)
    )
    net = Supernet.for_family(SCHEMA, largest)
    sample, rng = arch_sampler(dlrm), random.Random(0)
    drawn = [sample(rng) for _ in range(60)]
    assert len({tuple(a.embedding_dims.values()) for a in drawn}) > 4  # type: ignore[attr-defined]
    assert len({a.top_mlp for a in drawn}) > 4  # type: ignore[attr-defined]
    assert all(net.contains(a) for a in [smallest, *drawn])


def test_a_shorter_history_is_shared_and_none_is_the_longest() -> None:
    din = space(
        "din",
        {
            "embedding_dim": 4,
            "attention_mlp": [8],
            "mlp": [8],
            "history_length": {"kind": "categorical", "choices": [2, None, 4]},
        },
    )
    largest, smallest = supernet_archs(din)
    assert largest.history_length is None and smallest.history_length == 2  # type: ignore[attr-defined]


def test_a_dimension_no_supernet_shares_is_refused_naming_it() -> None:
    dcn = load_search_space("dcn_v2")
    with pytest.raises(AutocompressError, match=r"arch\.structure varies in dcn_v2 .*fix arch\.structure"):
        supernet_archs(dcn)


def test_a_pickled_supernet_computes_what_it_did() -> None:
    """Ray ships the supernet to its trials by pickle; its cached plans stay behind."""
    torch.manual_seed(0)
    net = Supernet.for_family(SCHEMA, DLRMArch(embedding_dim=8, bottom_mlp=(8,), top_mlp=(16,)))
    sub = DLRMArch(embedding_dim=4, bottom_mlp=(4,), top_mlp=(8,))
    batch = to_tensors(SCHEMA.example_batch(8, seed=0))
    with torch.no_grad():
        before = net(batch, sub)
        copy = pickle.loads(pickle.dumps(net))
        assert not copy._plans and torch.equal(copy(batch, sub), before)
