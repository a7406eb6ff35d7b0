import numpy as np
import pytest
import torch

from autocompress.errors import AutocompressError
from autocompress.export import export_onnx
from autocompress.measure import auc, onnx_size_bytes, parameter_count
from autocompress.testing import tiny_setup
from autocompress.train import predict

pytest.importorskip("nni")

from autocompress.techniques.nni_pruning import Config, apply, prunable_layers


def test_prunable_layers_are_the_hidden_linears_of_the_mlps():
    model = tiny_setup("dlrm").model()
    layers = prunable_layers(model)
    # bottom.2 ends the bottom MLP (its width joins the dot interaction); top.4 is the output logit
    assert sorted(layers) == ["bottom.0", "top.0", "top.2"]
    assert layers["top.0"] == (model.top[0], model.top[2])


def test_l1_keeps_the_units_with_the_largest_weight_norms_and_removes_the_rest(tmp_path):
    setup = tiny_setup("dlrm")
    original = setup.trained
    pruned = apply(
        setup.model(), Config(criterion="l1", sparse_ratio=0.5, finetune_epochs=0), setup.context(tmp_path)
    )
    assert (pruned.bottom[0].out_features, pruned.bottom[2].in_features) == (16, 16)
    assert (pruned.top[0].out_features, pruned.top[2].in_features) == (32, 32)
    assert (pruned.top[2].out_features, pruned.top[4].in_features) == (16, 16)
    # removed: rows (+ bias) of bottom.0, top.0, top.2; the matching columns of bottom.2, top.2, top.4
    rows = 16 * (2 + 1) + 32 * (107 + 1) + 16 * (32 + 1)
    columns = 16 * 16 + 32 * 32 + 16 * 1
    assert parameter_count(original) - parameter_count(pruned) == rows + columns == 5328

    # the kept rows of top.0 are its 32 rows of largest L1 norm, in their original order
    norms = original.top[0].weight.detach().abs().sum(dim=1)
    kept = torch.sort(torch.topk(norms, 32).indices).values
    assert torch.equal(pruned.top[0].weight, original.top[0].weight[kept])

    # physical removal computes exactly what the masked original computes
    masked = setup.model()
    with torch.no_grad():
        for name in ("bottom.0", "top.0", "top.2"):
            layer = masked.get_submodule(name)
            norms = layer.weight.abs().sum(dim=1)
            drop = norms < torch.sort(norms).values[layer.out_features // 2]
            layer.weight[drop] = 0.0
            layer.bias[drop] = 0.0
    test = setup.dataset.test
    assert np.abs(predict(pruned, test) - predict(masked, test)).max() < 1e-5


def test_taylor_pruning_then_fine_tuning_keeps_auc_and_exports_smaller(tmp_path):
    setup = tiny_setup("dlrm")
    test = setup.dataset.test
    ctx = setup.context(tmp_path)
    config = Config(criterion="taylor", sparse_ratio=0.5, taylor_steps=10, finetune_epochs=1)
    pruned = apply(setup.model(), config, ctx).cpu().eval()
    assert pruned.top[0].out_features == 32
    auc_before = auc(test.labels, predict(setup.trained, test))
    assert auc(test.labels, predict(pruned, test)) >= auc_before - 0.02
    # export_onnx checks ONNX Runtime against torch within 1e-4
    plain = export_onnx(setup.model(), ctx.schema, ctx.new_path("plain")).path
    smaller = export_onnx(pruned, ctx.schema, ctx.new_path("pruned")).path
    saved = parameter_count(setup.trained) - parameter_count(pruned)
    assert saved == 5328
    assert onnx_size_bytes(plain) - onnx_size_bytes(smaller) > 0.9 * 4 * saved


def test_unknown_or_unprunable_layer_and_bad_values_are_refused(tmp_path):
    setup = tiny_setup("dlrm")
    with pytest.raises(AutocompressError) as err:
        apply(setup.model(), Config(layers=("top.4",)), setup.context(tmp_path))
    assert (
        "nni_pruning.layers: unknown name(s) ['top.4']; the model has ['bottom.0', 'top.0', 'top.2']"
        in str(err.value)
    )
    with pytest.raises(AutocompressError, match=r"nni_pruning\.criterion: 'random' is not one of"):
        Config(criterion="random")
    with pytest.raises(AutocompressError, match=r"nni_pruning\.sparse_ratio: must be in \(0, 1\)"):
        Config(sparse_ratio=0.0)
