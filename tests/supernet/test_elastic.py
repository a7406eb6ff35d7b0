"""Sub-networks of a supernet equal standalone models of the family holding the sliced weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.errors import AutocompressError
from autocompress.models import ArchConfig, build, model_class
from autocompress.models.dcn_v2 import DCNv2Arch
from autocompress.models.deepfm import DeepFMArch
from autocompress.models.din import DINArch
from autocompress.models.dlrm import DLRMArch
from autocompress.models.two_tower import TwoTowerArch
from autocompress.supernet import Supernet
from tests.models.tiny import make_schema, to_tensors

SCHEMA = make_schema(history_len=6)

LARGEST: dict[str, ArchConfig] = {
    "dlrm": DLRMArch(embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(32, 16), embedding_dims={"user_id": 6}),
    "dcn_v2": DCNv2Arch(embedding_dim=8, cross_layers=3, deep_mlp=(16, 8)),
    "din": DINArch(embedding_dim=8, attention_mlp=(16, 8), mlp=(16, 8)),
    "deepfm": DeepFMArch(embedding_dim=8, deep_mlp=(16, 8), embedding_dims={"item_id": 6}),
    "two_tower": TwoTowerArch(embedding_dim=8, tower_mlp=(16, 8), output_dim=12, learn_temperature=True),
}

# per family: the smallest, the largest, and mixed ones (per-table widths, shallower, history)
SUBNETS: list[tuple[str, ArchConfig]] = [
    ("dlrm", DLRMArch(embedding_dim=2, bottom_mlp=(2,), top_mlp=(2,))),
    ("dlrm", LARGEST["dlrm"]),
    ("dlrm", DLRMArch(embedding_dim=4, bottom_mlp=(8, 4), top_mlp=(8,), embedding_dims={"tags": 2})),
    ("dlrm", DLRMArch(embedding_dim=6, bottom_mlp=(4, 6), top_mlp=(20, 5), embedding_dims={"user_id": 3})),
    ("dcn_v2", DCNv2Arch(embedding_dim=2, cross_layers=0, deep_mlp=(2,))),
    ("dcn_v2", LARGEST["dcn_v2"]),
    ("dcn_v2", DCNv2Arch(embedding_dim=5, cross_layers=2, deep_mlp=(12, 3), embedding_dims={"category": 2})),
    ("din", DINArch(embedding_dim=2, attention_mlp=(2,), mlp=(2,), history_length=1)),
    ("din", LARGEST["din"]),
    ("din", DINArch(embedding_dim=4, attention_mlp=(8, 3), mlp=(6,), history_length=4)),
    ("din", DINArch(embedding_dim=6, attention_mlp=(5,), mlp=(8, 8), embedding_dims={"item_id": 3})),
    ("deepfm", DeepFMArch(embedding_dim=2, deep_mlp=(2,))),
    ("deepfm", LARGEST["deepfm"]),
    ("deepfm", DeepFMArch(embedding_dim=5, deep_mlp=(9, 3), embedding_dims={"item_id": 4, "tags": 2})),
    ("two_tower", TwoTowerArch(embedding_dim=2, tower_mlp=(2,), output_dim=1)),
    ("two_tower", LARGEST["two_tower"]),
    (
        "two_tower",
        TwoTowerArch(embedding_dim=6, tower_mlp=(7,), output_dim=4, temperature=0.5, l2_normalize=True),
    ),
    (
        "two_tower",
        TwoTowerArch(
            embedding_dim=4,
            tower_mlp=(12, 5),
            output_dim=12,
            learn_temperature=True,
            embedding_dims={"tags": 2},
        ),
    ),
]


def supernet(family: str, largest: ArchConfig | None = None) -> Supernet:
    torch.manual_seed(0)
    return Supernet.for_family(SCHEMA, largest or LARGEST[family])


def batch(rows: int = 16) -> dict[str, torch.Tensor]:
    return to_tensors(SCHEMA.example_batch(rows, seed=3))


@pytest.mark.parametrize(("family", "sub"), SUBNETS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(SUBNETS)])
def test_a_subnetwork_equals_its_extracted_standalone_model(family: str, sub: ArchConfig) -> None:
    net = supernet(family)
    extracted = net.extract(sub)
    assert type(extracted) is model_class(family)
    assert extracted.arch == sub and extracted.schema == SCHEMA

    # exactly the parameter shapes of a model built from (schema, arch) on its own
    standalone = build(family, SCHEMA, sub)
    assert {k: v.shape for k, v in extracted.state_dict().items()} == {
        k: v.shape for k, v in standalone.state_dict().items()
    }
    standalone.load_state_dict(extracted.state_dict())
    standalone.eval()

    full = batch()
    with torch.no_grad():
        elastic = net(full, sub)
        alone = standalone(full)
    assert elastic.shape == (16,)
    np.testing.assert_allclose(elastic.numpy(), alone.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(LARGEST))
def test_the_largest_subnetwork_is_the_supernet_model(family: str) -> None:
    net = supernet(family)
    with torch.no_grad():
        assert torch.equal(net(batch(), LARGEST[family]), net.model(batch()))


def test_gradients_of_a_subnetwork_reach_only_the_weights_it_reads() -> None:
    net = supernet("dlrm")
    net(batch(), DLRMArch(embedding_dim=4, bottom_mlp=(8, 4), top_mlp=(8,))).sum().backward()
    table = net.model.embeddings.tables[1].weight.grad
    assert table is not None and table[:, :4].abs().sum() > 0 and torch.all(table[:, 4:] == 0)
    top_out = net.model.top[-1].weight.grad  # the output layer reads the first 8 units of layer 0
    assert top_out is not None and top_out[:, :8].abs().sum() > 0 and torch.all(top_out[:, 8:] == 0)
    assert net.model.top[2].weight.grad is None  # the skipped second hidden layer


def test_slices_follow_the_stated_rules() -> None:
    """Leading columns of tables, first layers then the output layer, first entries of each block."""
    dlrm = supernet(
        "dlrm", DLRMArch(embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(32, 16), interaction="cat")
    )
    small_arch = DLRMArch(
        embedding_dim=4, bottom_mlp=(4,), top_mlp=(8,), interaction="cat", embedding_dims={"tags": 2}
    )
    small = dlrm.extract(small_arch)
    large = dlrm.model
    assert torch.equal(small.embeddings.tables[0].weight, large.embeddings.tables[0].weight[:, :4])
    assert torch.equal(small.embeddings.tables[3].weight, large.embeddings.tables[3].weight[:, :2])
    # a narrower table than embedding_dim reads out zero-padded where the largest has no projection
    assert torch.equal(small.embeddings.projections[3].weight, torch.eye(8)[:4, :2])
    # bottom depth 1: its only layer is the largest's last (the one whose units meet the embeddings)
    assert torch.equal(small.bottom[0].weight, large.bottom[2].weight[:4, :3])
    # top input "cat": the first 4 of each of the 7 vectors of 8
    columns = torch.cat([torch.arange(8 * v, 8 * v + 4) for v in range(7)])
    assert torch.equal(small.top[0].weight, large.top[0].weight[:8, columns])
    assert torch.equal(small.top[-1].weight, large.top[-1].weight[:, :8])

    dcn = supernet("dcn_v2", DCNv2Arch(embedding_dim=8, cross_layers=3, cross_rank=4, deep_mlp=(16, 8)))
    sub = dcn.extract(DCNv2Arch(embedding_dim=2, cross_layers=1, cross_rank=3, deep_mlp=(4,)))
    # x0: 3 dense values, then 6 id fields of 8, of which the sub-network keeps 2 each
    x0 = torch.cat([torch.arange(3), *(3 + 8 * f + torch.arange(2) for f in range(6))])
    cross = dcn.model.cross[0].weight
    assert torch.equal(sub.cross[0].weight[0].weight, cross[0].weight[:3, x0])
    assert torch.equal(sub.cross[0].weight[1].weight, cross[1].weight[x0, :3])
    assert torch.equal(sub.head.weight, dcn.model.head.weight[:, :4])

    din = supernet("din")
    sub_din = din.extract(DINArch(embedding_dim=3, attention_mlp=(4,), mlp=(4,), history_length=2))
    assert sub_din.history_length == 2
    query_key = torch.cat([8 * b + torch.arange(3) for b in range(4)])
    assert torch.equal(sub_din.attention[0].weight, din.model.attention[0].weight[:4, query_key])


def test_both_towers_share_alike_and_the_logit_scale_is_the_subnetworks_own() -> None:
    net = supernet("two_tower")  # learns its temperature
    with torch.no_grad():
        net.model.log_temperature.fill_(0.7)  # as if trained
    large = net.model
    fixed = net.extract(TwoTowerArch(embedding_dim=3, tower_mlp=(4,), output_dim=5, temperature=0.5))
    # item tower input: 1 dense value (price), then item_id, category, tags (8 wide, 3 kept each)
    columns = torch.cat([torch.arange(1), *(1 + 8 * f + torch.arange(3) for f in range(3))])
    assert torch.equal(fixed.item_tower[0].weight, large.item_tower[0].weight[:4, columns])
    # the output layer: the first output_dim units, reading the first units of the last hidden layer
    for tower in ("user_tower", "item_tower"):
        assert torch.equal(getattr(fixed, tower)[-1].weight, getattr(large, tower)[-1].weight[:5, :4])
    assert fixed.log_temperature.item() == pytest.approx(np.log(0.5))  # its own, not the supernet's
    learning = net.extract(
        TwoTowerArch(embedding_dim=3, tower_mlp=(4,), output_dim=5, learn_temperature=True)
    )
    assert learning.log_temperature.item() == pytest.approx(0.7)  # starts from the supernet's


def test_a_shorter_history_keeps_the_most_recent_positions() -> None:
    """Reading the last 3 positions equals reading all 6 with the older ones padded (id 0)."""
    net = supernet("din")
    rows = SCHEMA.example_batch(4, seed=7)
    rows["clicked_items"] = np.array([[1, 2, 5, 6, 7, 8], [0, 0, 3, 4, 9, 1], [0, 0, 0, 0, 0, 2], [0] * 6])
    padded = {**rows, "clicked_items": np.where(np.arange(6) < 3, 0, rows["clicked_items"])}
    short = replace(LARGEST["din"], history_length=3)
    with torch.no_grad():
        np.testing.assert_allclose(
            net(to_tensors(rows), short).numpy(), net(to_tensors(padded), LARGEST["din"]).numpy(), atol=1e-6
        )
        assert not torch.allclose(net(to_tensors(rows), short), net(to_tensors(rows), LARGEST["din"]))


def test_an_extracted_subnetwork_exports_to_onnx_and_onnx_runtime_agrees(tmp_path: Path) -> None:
    from autocompress.export import create_session, export_onnx, feed
    from autocompress.spec import Target

    net = supernet("din")
    sub = DINArch(embedding_dim=4, attention_mlp=(8,), mlp=(8, 4), history_length=3)
    model = net.extract(sub)
    result = export_onnx(model, model.schema, tmp_path / "din.onnx")
    session = create_session(result.path, Target())
    (scores,) = session.run(None, feed(session, SCHEMA.example_batch(32, seed=5)))
    with torch.no_grad():
        expected = net(to_tensors(SCHEMA.example_batch(32, seed=5)), sub).numpy()
    np.testing.assert_allclose(np.asarray(scores).reshape(-1), expected, atol=1e-5, rtol=0)


def test_save_and_load_give_identical_outputs(tmp_path: Path) -> None:
    net = supernet("dcn_v2")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)  # not the weights a fresh build would draw
    net.save(tmp_path / "supernet.pt")
    loaded = Supernet.load(tmp_path / "supernet.pt")
    assert type(loaded) is type(net) and loaded.largest_arch == net.largest_arch and loaded.schema == SCHEMA
    sub = DCNv2Arch(embedding_dim=4, cross_layers=1, deep_mlp=(8,))
    with torch.no_grad():
        for arch in (sub, LARGEST["dcn_v2"]):
            assert torch.equal(loaded(batch(), arch), net(batch(), arch))


def test_a_file_that_is_not_a_supernet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"format": 99}, path)
    with pytest.raises(AutocompressError, match=r"format 99 is not supported \(supported: 1\)"):
        Supernet.load(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(AutocompressError, match=r"supernet file .*other.pt' cannot be read"):
        Supernet.load(path)


REFUSALS: list[tuple[str, ArchConfig, str]] = [
    ("dlrm", DLRMArch(embedding_dim=16, bottom_mlp=(16,), top_mlp=(8,)), r"embedding_dim 16 .*allowed: <= 8"),
    ("dlrm", DLRMArch(embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,)), r"table 'user_id' would be 8 wide"),
    (
        "dlrm",
        DLRMArch(embedding_dim=6, bottom_mlp=(6,), top_mlp=(8,), embedding_dims={"user_id": 7}),
        r"embedding_dims\['user_id'\].*<= 6",
    ),
    ("dlrm", DLRMArch(embedding_dim=6, bottom_mlp=(6,), top_mlp=(8, 8, 8)), r"top_mlp \[8, 8, 8\].*3 layers"),
    ("dlrm", DLRMArch(embedding_dim=6, bottom_mlp=(6,), top_mlp=(64,)), r"top_mlp \[64\].*layer 0 has 64"),
    (
        "dlrm",
        DLRMArch(embedding_dim=6, bottom_mlp=(6,), top_mlp=(20,)),
        r"top_mlp.*output layer reads at most 16",
    ),
    ("dlrm", DLRMArch(embedding_dim=6, bottom_mlp=(32, 6), top_mlp=(8,)), r"bottom_mlp \[32, 6\].*layer 0"),
    (
        "dlrm",
        DLRMArch(embedding_dim=6, bottom_mlp=(6,), top_mlp=(8,), interaction="cat"),
        r"interaction 'cat'",
    ),
    ("dlrm", TwoTowerArch(embedding_dim=4), r"arch must be a DLRMArch, got TwoTowerArch"),
    ("dcn_v2", DCNv2Arch(embedding_dim=8, cross_layers=4), r"cross_layers 4 .*allowed: <= 3"),
    (
        "dcn_v2",
        DCNv2Arch(embedding_dim=8, cross_rank=2, deep_mlp=(8,)),
        r"cross_rank 2 .*allowed: 0 \(full rank\)",
    ),
    (
        "dcn_v2",
        DCNv2Arch(embedding_dim=8, deep_mlp=(8,), structure="parallel"),
        r"structure 'parallel' differs",
    ),
    ("din", replace(LARGEST["din"], history_length=7), r"history_length 7 .*allowed: 1\.\.6"),
    (
        "din",
        DINArch(embedding_dim=8, attention_mlp=(16, 8, 4), mlp=(8,)),
        r"attention_mlp \[16, 8, 4\].*3 layers",
    ),
]


@pytest.mark.parametrize(("family", "sub", "message"), REFUSALS, ids=[m[:24] for _, _, m in REFUSALS])
def test_what_is_not_a_subnetwork_is_refused_naming_the_field(
    family: str, sub: ArchConfig, message: str
) -> None:
    net = supernet(family)
    assert not net.contains(sub)
    for call in (net.check, net.extract, lambda arch: net(batch(), arch)):
        with pytest.raises(AutocompressError, match=message):
            call(sub)


def test_a_history_longer_than_the_largest_is_refused() -> None:
    net = supernet("din", replace(LARGEST["din"], history_length=4))
    assert net.contains(replace(LARGEST["din"], history_length=4))
    for length in (5, None):  # None reads all 6 positions
        with pytest.raises(AutocompressError, match=r"history_length 6|history_length 5"):
            net.check(replace(LARGEST["din"], history_length=length))


def test_every_listed_subnetwork_is_contained() -> None:
    nets = {family: supernet(family) for family in LARGEST}
    assert all(nets[family].contains(sub) for family, sub in SUBNETS)


def test_every_family_has_a_supernet_and_another_name_is_refused_listing_them() -> None:
    from autocompress.models import FAMILIES
    from autocompress.supernet import SUPERNET_FAMILIES, supernet_class

    assert sorted(SUPERNET_FAMILIES) == sorted(FAMILIES) == sorted(LARGEST)
    with pytest.raises(AutocompressError, match=r"'gbdt' has no elastic supernet; supported: \['dlrm'"):
        supernet_class("gbdt")
