import itertools

import numpy as np
import pytest
import torch

from autocompress.errors import AutocompressError
from autocompress.export import create_session
from autocompress.measure import onnx_size_bytes, parameter_count
from autocompress.measure.evaluation import onnx_logits
from autocompress.models import build
from autocompress.techniques import Policy, apply_policy
from autocompress.techniques.structured_pruning import Config, dependency_graph, prunable_layers
from autocompress.testing import check_keeps_auc, converged_setup, table_zeroed, tiny_setup
from autocompress.train import predict, to_tensors


def linear_params(widths):
    """Weights and biases of a chain of Linears through ``widths``."""
    return sum(i * o + o for i, o in itertools.pairwise(widths))


def shape(model, name):
    return tuple(model.get_submodule(name).weight.shape)


def prune(setup, tmp_path, **config):
    return apply_policy(setup.model(), Policy((Config(**config),)), setup.context(tmp_path))


def kept_units(original, pruned):
    """Which output units of ``original`` survive in ``pruned`` (a layer whose inputs were not pruned)."""
    rows = original.weight.detach()
    return {int(torch.nonzero((rows == row).all(dim=1))[0]) for row in pruned.weight.detach()}


def test_per_layer_pruning_halves_every_hidden_layer_and_exports(tmp_path):
    setup = tiny_setup("dlrm")
    before = apply_policy(setup.model(), Policy(()), setup.context(tmp_path / "plain"))
    result = prune(setup, tmp_path / "pruned", sparse_ratio=0.5, finetune_epochs=0)
    model = result.model
    # hidden widths halve; the Linears reading them lose the same input columns
    assert shape(model, "bottom.0") == (16, 2)
    assert shape(model, "top.0") == (32, 107)
    assert shape(model, "top.2") == (16, 32)
    # widths the model relies on stay: DLRM's bottom output (= embedding_dim) and the one logit
    assert shape(model, "bottom.2") == (16, 16)
    assert shape(model, "top.4") == (1, 16)
    dropped = linear_params([2, 32, 16]) + linear_params([107, 64, 32, 1])
    kept = linear_params([2, 16, 16]) + linear_params([107, 32, 16, 1])
    assert parameter_count(before.model) - parameter_count(model) == dropped - kept == 5328
    assert onnx_size_bytes(result.onnx_path) < onnx_size_bytes(before.onnx_path) - 4 * 5000
    session = create_session(result.onnx_path, setup.context(tmp_path).target)
    test = setup.dataset.test
    np.testing.assert_allclose(onnx_logits(session, test), predict(model, test), atol=1e-4)


def test_a_layer_group_keeps_its_own_ratio(tmp_path):
    setup = tiny_setup("dlrm")
    model = prune(
        setup, tmp_path, sparse_ratio=0.25, group_ratios={"top": 0.5, "bottom": 0.0}, finetune_epochs=0
    ).model
    assert shape(model, "bottom.0") == (32, 2)  # its group's 0: untouched
    assert shape(model, "top.0") == (32, 107) and shape(model, "top.2") == (16, 32)  # halved
    assert Config.from_dict(Config(group_ratios={"top": 0.5}).to_dict()).group_ratios == (("top", 0.5),)


@pytest.mark.slow
def test_finetuned_pruned_model_keeps_the_auc_of_the_converged_model(tmp_path):
    # half of every hidden layer, one epoch of the production fine-tuning; measured: -0.0007 +- 0.0005
    # against the baseline given the same fine-tuning (limit -0.01)
    check_keeps_auc(converged_setup("dlrm"), tmp_path, Config(sparse_ratio=0.5, finetune_epochs=1))


@pytest.mark.slow
def test_the_auc_check_fails_on_a_pruning_that_zeroes_a_table(tmp_path):
    setup = converged_setup("dlrm")
    with pytest.raises(AssertionError, match=r"loses more than 0\.01 AUC"):
        check_keeps_auc(
            setup,
            tmp_path,
            Config(sparse_ratio=0.5, finetune_epochs=1),
            sabotage=table_zeroed(setup, "item_category"),
        )


def test_taylor_and_l1_remove_different_units(tmp_path):
    setup = tiny_setup("dlrm")
    original = setup.model()
    kept = {}
    for importance in ("l1", "taylor"):
        model = prune(setup, tmp_path / importance, importance=importance, finetune_epochs=0).model
        kept[importance] = {
            name: kept_units(original.get_submodule(name), model.get_submodule(name))
            for name in ("bottom.0", "top.0")
        }
        assert [len(units) for units in kept[importance].values()] == [16, 32]
    assert kept["l1"] != kept["taylor"]


def test_l1_keeps_the_units_with_the_largest_weights(tmp_path):
    setup = tiny_setup("dlrm")
    original = setup.model().get_submodule("bottom.0")
    model = prune(setup, tmp_path, importance="l1", layers=["bottom.0"], finetune_epochs=0).model
    # a unit's group is its weight row in bottom.0 and its input column in bottom.2: L1 norms summed
    rows = original.weight.detach().abs().sum(1)
    columns = setup.model().get_submodule("bottom.2").weight.detach().abs().sum(0)
    score = rows + columns
    assert kept_units(original, model.get_submodule("bottom.0")) == set(
        torch.topk(score, 16).indices.tolist()
    )
    assert shape(model, "top.0") == (64, 107)  # layers not named stay whole


def test_global_scope_ranks_units_across_layers(tmp_path):
    setup = tiny_setup("dlrm")
    names = ("bottom.0", "top.0", "top.2")
    widths = {}
    for scope in ("per_layer", "global"):
        model = prune(setup, tmp_path / scope, importance="l2", scope=scope, finetune_epochs=0).model
        widths[scope] = [model.get_submodule(name).out_features for name in names]
    assert widths["per_layer"] == [16, 32, 16]
    assert widths["global"] != widths["per_layer"]
    assert sum(widths["global"]) == sum(widths["per_layer"]) == 64  # the same number of units go


def test_iterative_steps_reach_the_same_widths(tmp_path):
    setup = tiny_setup("dlrm")
    model = prune(setup, tmp_path, sparse_ratio=0.75, iterative_steps=3, finetune_epochs=0).model
    assert [model.get_submodule(n).out_features for n in ("bottom.0", "top.0", "top.2")] == [8, 16, 8]


def test_dcn_v2_prunes_the_deep_mlp_but_not_the_full_rank_cross(tmp_path):
    setup = tiny_setup("dcn_v2")
    result = prune(setup, tmp_path, sparse_ratio=0.5, finetune_epochs=0)
    model = result.model
    assert shape(model, "cross.0.weight") == shape(model, "cross.1.weight") == (106, 106)
    assert shape(model, "deep.0") == (32, 106)
    assert shape(model, "deep.2") == (16, 32)
    assert shape(model, "head") == (1, 16)
    assert model.deep.out_dim == 16
    assert parameter_count(model) == parameter_count(setup.model()) - (
        linear_params([106, 64, 32, 1]) - linear_params([106, 32, 16, 1])
    )


def test_low_rank_cross_loses_rank_and_the_parallel_deep_output_stays(tmp_path):
    setup = tiny_setup("dlrm")  # its data; the DCN-v2 below needs no training to check shapes
    arch = {
        "embedding_dim": 8,
        "cross_layers": 2,
        "cross_rank": 4,
        "deep_mlp": [64, 32],
        "structure": "parallel",
    }
    model = build("dcn_v2", setup.dataset.schema, arch)
    ctx = setup.context(tmp_path)
    graph = dependency_graph(model, to_tensors(ctx.calibration_batch(8)))
    # the deep MLP output is concatenated with the cross output: Torch-Pruning 1.6 mis-maps it
    assert list(prunable_layers(model, graph)) == ["cross.0.weight.0", "cross.1.weight.0", "deep.0"]
    pruned = apply_policy(model, Policy((Config(sparse_ratio=0.5, finetune_epochs=0),)), ctx).model
    assert shape(pruned, "cross.0.weight.0") == (2, 106)
    assert shape(pruned, "cross.0.weight.1") == (106, 2)
    assert shape(pruned, "deep.0") == (32, 106)
    assert shape(pruned, "deep.2") == (32, 32)
    assert shape(pruned, "head") == (1, 106 + 32)


def test_din_prunes_the_attention_mlp(tmp_path):
    setup = tiny_setup("din")
    model = prune(setup, tmp_path, sparse_ratio=0.5, finetune_epochs=0).model
    assert shape(model, "attention.0") == (16, 32)
    assert shape(model, "attention.2") == (1, 16)
    assert shape(model, "mlp.0") == (32, 106)
    assert shape(model, "mlp.2") == (16, 32)
    assert shape(model, "mlp.4") == (1, 16)


def test_two_tower_outputs_keep_output_dim(tmp_path):
    setup = tiny_setup("two_tower")
    model = prune(setup, tmp_path, sparse_ratio=0.5, finetune_epochs=0).model
    assert shape(model, "user_tower.0")[0] == shape(model, "item_tower.0")[0] == 32
    assert shape(model, "user_tower.2") == (32, 32)
    assert shape(model, "item_tower.2") == (32, 32)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"sparse_ratio": 1.0}, "structured_pruning.sparse_ratio: must be in [0, 1), got 1.0"),
        ({"sparse_ratio": -0.1}, "structured_pruning.sparse_ratio: must be in [0, 1), got -0.1"),
        ({"sparse_ratio": "half"}, "structured_pruning.sparse_ratio"),
        (
            {"importance": "fpgm"},
            "structured_pruning.importance: 'fpgm' is not one of ['l1', 'l2', 'taylor']",
        ),
        ({"scope": "layer"}, "structured_pruning.scope: 'layer' is not one of ['global', 'per_layer']"),
        ({"iterative_steps": 0}, "structured_pruning.iterative_steps: must be an integer >= 1"),
    ],
)
def test_bad_values_are_refused(config, message):
    with pytest.raises(AutocompressError) as error:
        Config.from_dict(config)
    assert message in str(error.value)


@pytest.mark.parametrize("layer", ["no_such_layer", "bottom.2", "top.4", "embeddings.tables.0"])
def test_layers_that_cannot_be_pruned_are_refused_with_the_prunable_ones(tmp_path, layer):
    setup = tiny_setup("dlrm")
    with pytest.raises(AutocompressError) as error:
        prune(setup, tmp_path, layers=[layer])
    assert str(error.value) == (
        f"structured_pruning.layers: unknown name(s) ['{layer}']; "
        "the model has ['bottom.0', 'top.0', 'top.2']"
    )


def test_taylor_without_labelled_data_is_refused(tmp_path):
    setup = tiny_setup("dlrm")
    ctx = setup.context(tmp_path, train=None, valid=None)
    with pytest.raises(
        AutocompressError, match=r"structured_pruning\.importance: 'taylor' needs labelled data"
    ):
        apply_policy(setup.model(), Policy((Config(importance="taylor"),)), ctx)
