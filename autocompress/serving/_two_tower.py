"""User and item embeddings of a served two-tower model, cut out of its exported ONNX graph.

The exported graph outputs only the logit, ``sum(user * item) * exp(-log_temperature)``, and a
compressed winner has no torch module left to export the towers from. The two tower outputs are
still tensors of that graph: walking back from the logit through the scale (a Mul or Div by a
constant), casts and reshapes reaches the ``ReduceSum`` over ``Mul(user, item)``. The operand that
reads only item-side inputs is the item tower, the one that reads none is the user tower, and
``onnx.utils.Extractor`` cuts each into a model of its own with only the inputs it reads.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from autocompress.data.schema import FeatureSchema
from autocompress.store import ConflictError

if TYPE_CHECKING:
    import onnx

Side = Literal["user", "item"]
SIDES: tuple[Side, ...] = ("user", "item")
_PASS_THROUGH = {"Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten"}
_MAX_WALK = 64


@dataclass(frozen=True)
class TowerTensors:
    """Names of the two tower outputs in the graph and the graph inputs each one reads."""

    user: str
    item: str
    user_inputs: tuple[str, ...]
    item_inputs: tuple[str, ...]

    def output(self, side: Side) -> str:
        return self.user if side == "user" else self.item

    def inputs(self, side: Side) -> tuple[str, ...]:
        return self.user_inputs if side == "user" else self.item_inputs


def find_towers(model: onnx.ModelProto, schema: FeatureSchema, model_id: str = "model") -> TowerTensors:
    """Locate the user and item tower outputs of an exported two-tower graph.

    Raises ``ConflictError`` (the model cannot give embeddings) when the graph does not end in
    a scaled dot product of one item-side and one user-side tensor.
    """
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    producers = {out: node for node in graph.node for out in node.output}

    @functools.cache
    def reads(tensor: str) -> frozenset[str]:
        if tensor in graph_inputs:
            return frozenset((tensor,))
        node = producers.get(tensor)
        if node is None:
            return frozenset()
        found: set[str] = set()
        for name in node.input:
            if name:
                found |= reads(name)
        return frozenset(found)

    def refuse(why: str) -> ConflictError:
        return ConflictError(
            f"model {model_id!r} has no user and item embeddings: {why}; "
            "embeddings are served for two_tower models only"
        )

    name = graph.output[0].name
    summed = False
    for _ in range(_MAX_WALK):
        node = producers.get(name)
        if node is None:
            break
        dynamic = [x for x in node.input if x and reads(x)]
        if node.op_type in _PASS_THROUGH:
            name = node.input[0]
        elif node.op_type == "ReduceSum" and not summed:
            name, summed = node.input[0], True
        elif node.op_type in ("Mul", "Div") and len(dynamic) == 1:
            name = dynamic[0]
        elif node.op_type == "Mul" and summed and len(dynamic) == 2:
            item_side = set(schema.features_on("item"))
            a, b = dynamic
            if reads(b) <= item_side and not reads(a) & item_side:
                user, item = a, b
            elif reads(a) <= item_side and not reads(b) & item_side:
                user, item = b, a
            else:
                raise refuse("the dot product's operands do not split into user-side and item-side inputs")
            return TowerTensors(
                user=user,
                item=item,
                user_inputs=tuple(n for n in graph_inputs if n in reads(user)),
                item_inputs=tuple(n for n in graph_inputs if n in reads(item)),
            )
        else:
            break
    raise refuse("its graph does not end in a dot product of two towers")


def extract_towers(
    onnx_path: str | Path, schema: FeatureSchema, out_dir: str | Path, model_id: str
) -> dict[Side, Path]:
    """Write ``user_tower.onnx`` and ``item_tower.onnx`` into ``out_dir`` (each atomically); their paths."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(onnx_path))
    towers = find_towers(model, schema, model_id)
    try:
        model = onnx.shape_inference.infer_shapes(model)
        known = {v.name for v in model.graph.value_info}
        for name in (towers.user, towers.item):
            if name not in known:  # shape inference stopped short of it: declare it float, any shape
                model.graph.value_info.append(
                    onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                )
        extractor = Extractor(model)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        paths: dict[Side, Path] = {}
        for side in SIDES:
            tower = extractor.extract_model(list(towers.inputs(side)), [towers.output(side)])
            path = Path(out_dir) / f"{side}_tower.onnx"
            partial = path.with_name(f".{path.name}.{os.getpid()}")  # replicas may cut the same model
            onnx.save_model(tower, str(partial))
            os.replace(partial, path)
            paths[side] = path
    except Exception as exc:  # shape inference or extraction of an unusual graph
        raise ConflictError(f"model {model_id!r}: its towers cannot be cut out of the graph: {exc}") from exc
    return paths
