"""ArchConfig: JSON round-trip, strict loading, and refusal of bad values naming the field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from autocompress.errors import AutocompressError
from autocompress.models import FAMILIES, ArchConfig, arch_class, load_arch, reference_arch
from autocompress.models.dcn_v2 import DCNv2Arch
from autocompress.models.dlrm import DLRMArch
from autocompress.models.two_tower import TwoTowerArch
from tests.models.tiny import SMALL_ARCHS, small_arch


@pytest.mark.parametrize("family", FAMILIES)
def test_json_round_trip_of_reference_and_small_arch(family: str) -> None:
    for arch in (reference_arch(family), small_arch(family)):
        text = json.dumps(arch.to_dict())
        assert arch_class(family).from_dict(json.loads(text)) == arch
        assert load_arch(json.loads(text)) == arch  # the registry dispatches on "family"
        assert type(load_arch(json.loads(text))) is arch_class(family)
        assert json.loads(text)["family"] == family


def test_every_family_is_registered_with_its_own_arch_class() -> None:
    assert set(FAMILIES) == {"dlrm", "deepfm", "dcn_v2", "two_tower", "din"}
    assert set(SMALL_ARCHS) == set(FAMILIES)
    for family in FAMILIES:
        assert arch_class(family).family == family


def test_reference_dlrm_mirrors_production() -> None:
    arch = reference_arch("dlrm")
    assert isinstance(arch, DLRMArch)
    assert (arch.embedding_dim, arch.embedding_dims) == (64, {})
    assert arch.bottom_mlp == (256, 128, 64)
    assert arch.top_mlp == (512, 512, 256)
    assert arch.interaction == "dot"


def test_lists_become_tuples_and_configs_stay_hashable() -> None:
    arch = DLRMArch.from_dict({"embedding_dim": 8, "bottom_mlp": [16, 8], "embedding_dims": {"a": 4}})
    assert arch.bottom_mlp == (16, 8)
    assert hash(arch) == hash(DLRMArch.from_dict(arch.to_dict()))
    assert dataclasses.replace(arch, top_mlp=[32]).top_mlp == (32,)  # type: ignore[arg-type]


def test_unknown_key_is_refused_naming_it_and_the_allowed_ones() -> None:
    with pytest.raises(
        AutocompressError, match=r"unknown field\(s\) \['embed_dim'\].*allowed: .*'embedding_dim'"
    ):
        DLRMArch.from_dict({"embed_dim": 32})


def test_load_arch_needs_a_known_family() -> None:
    with pytest.raises(AutocompressError, match="'family' is required"):
        load_arch({"embedding_dim": 8})
    with pytest.raises(AutocompressError, match=r"unknown model family 'nope'; known families: \['dlrm'"):
        load_arch({"family": "nope"})
    with pytest.raises(AutocompressError, match="base class"):
        ArchConfig.from_dict({"family": "dlrm"})
    with pytest.raises(AutocompressError, match="family 'din' does not match"):
        DLRMArch.from_dict({"family": "din"})


@pytest.mark.parametrize(
    ("cls", "values", "field"),
    [
        (DLRMArch, {"embedding_dim": 0, "bottom_mlp": [0]}, "embedding_dim must be an integer > 0"),
        (DLRMArch, {"top_mlp": []}, "top_mlp must be a non-empty list"),
        (DLRMArch, {"bottom_mlp": [256, 32]}, r"bottom_mlp must end at embedding_dim \(64\)"),
        (DLRMArch, {"bottom_mlp": [128, -64]}, "bottom_mlp must be a non-empty list of positive"),
        (DLRMArch, {"interaction": "mul"}, r"interaction must be one of \['dot', 'cat'\]"),
        (DLRMArch, {"embedding_dims": {"item_id": 0}}, r"embedding_dims\['item_id'\] must be a positive"),
        (DLRMArch, {"version": 2}, "version 2 is not supported"),
        (DCNv2Arch, {"cross_layers": -1}, "cross_layers must be an integer >= 0"),
        (DCNv2Arch, {"cross_rank": 2.5}, "cross_rank must be an integer >= 0"),
        (DCNv2Arch, {"structure": "mixed"}, "structure must be one of"),
        (TwoTowerArch, {"temperature": 0}, "temperature must be a number > 0"),
        (TwoTowerArch, {"learn_temperature": "yes"}, "learn_temperature must be true or false"),
        (TwoTowerArch, {"output_dim": True}, "output_dim must be an integer > 0"),
    ],
)
def test_bad_values_are_refused_naming_the_field(
    cls: type[ArchConfig], values: dict[str, object], field: str
) -> None:
    with pytest.raises(AutocompressError, match=field):
        cls.from_dict(values)


def test_zero_cross_layers_is_allowed() -> None:
    assert DCNv2Arch(cross_layers=0).cross_layers == 0
