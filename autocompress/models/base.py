"""RankingModel: what every model family is, whatever its architecture."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from autocompress.data.schema import FeatureSchema
from autocompress.models.arch import ArchConfig


class RankingModel(nn.Module):
    """A model built from ``(schema, arch)`` whose ``forward(batch)`` returns float32 logits [B].

    ``batch`` is a dict of tensors keyed by feature name (layout in ``autocompress.data.schema``);
    every feature of the schema is used, so every one is an input of the exported ONNX graph.
    The schema and arch stay attached so techniques and exporters can read them.
    """

    family: ClassVar[str] = ""

    def __init__(self, schema: FeatureSchema, arch: ArchConfig) -> None:
        super().__init__()
        arch.check_schema(schema)
        self.schema = schema
        self.arch = arch
        self.dense_names: list[str] = [f.name for f in schema.dense]
        self.id_names: list[str] = [*(f.name for f in schema.sparse), *(f.name for f in schema.sequence)]

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError
