"""Every family exports with the legacy ONNX exporter; ORT matches torch at other batch sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.data.schema import FeatureSchema
from autocompress.models import FAMILIES, ArchConfig, build
from autocompress.models.dcn_v2 import DCNv2Arch
from autocompress.models.dlrm import DLRMArch
from autocompress.models.two_tower import TwoTowerArch
from tests.models.tiny import make_schema, small_arch, to_tensors

# The legacy exporter is what our export module uses on purpose; its deprecation notices are expected.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.onnx"),
]

VARIANTS: list[tuple[str, ArchConfig]] = [
    *((family, small_arch(family)) for family in FAMILIES),
    ("dlrm", DLRMArch(embedding_dim=8, bottom_mlp=(8,), top_mlp=(8,), interaction="cat")),
    ("dcn_v2", DCNv2Arch(embedding_dim=4, cross_layers=2, deep_mlp=(8,), structure="parallel")),
    ("two_tower", TwoTowerArch(embedding_dim=4, tower_mlp=(8,), output_dim=4, l2_normalize=True)),
]


def export(model: torch.nn.Module, schema: FeatureSchema, path: Path) -> None:
    """The call our export module makes (dict input, dynamic batch axis, opset 17)."""
    batch = to_tensors(schema.example_batch(8, seed=0))
    batch = {name: batch[name] for name in schema.feature_names}
    torch.onnx.export(
        model,
        (batch, {}),
        str(path),
        input_names=schema.feature_names,
        output_names=["logit"],
        dynamic_axes={n: {0: "batch"} for n in [*schema.feature_names, "logit"]},
        dynamo=False,
        opset_version=17,
    )


@pytest.mark.parametrize(("family", "arch"), VARIANTS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(VARIANTS)])
def test_onnx_runtime_matches_torch_at_other_batch_sizes(
    family: str, arch: ArchConfig, tmp_path: Path
) -> None:
    import onnxruntime as ort

    schema = make_schema()
    torch.manual_seed(0)
    model = build(family, schema, arch).eval()
    path = tmp_path / f"{family}.onnx"
    export(model, schema, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == schema.feature_names  # no feature dropped
    for batch_size in (3, 13):
        batch = schema.example_batch(batch_size, seed=batch_size)
        (onnx_logits,) = session.run(["logit"], batch)
        with torch.no_grad():
            torch_logits = model(to_tensors(batch)).numpy()
        assert onnx_logits.shape == (batch_size,)
        np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=0)
