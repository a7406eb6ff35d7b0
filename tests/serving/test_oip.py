"""The Open Inference Protocol v2: named tensors encode as rows do; answers and metadata are tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from autocompress.data.schema import FeatureSchema
from autocompress.data.synthetic import SyntheticConfig, synthetic_schema
from autocompress.data.vocab import Vocabulary
from autocompress.serving import (
    FeatureEncoders,
    PayloadError,
    RequestEncoder,
    infer_columns,
    infer_response,
    model_metadata,
)


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return synthetic_schema(SyntheticConfig.tiny())


def _tensors(
    schema: FeatureSchema, batch: dict[str, np.ndarray], *, nested: bool = False
) -> list[dict[str, Any]]:
    dense = {d.name for d in schema.dense}
    tensors = []
    for name in schema.feature_names:
        array = batch[name]
        tensors.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": "FP32" if name in dense else "INT64",
                "data": array.tolist() if nested else array.reshape(-1).tolist(),
            }
        )
    return tensors


@pytest.mark.parametrize("nested", [False, True])
def test_tensors_encode_exactly_as_rows(schema: FeatureSchema, nested: bool) -> None:
    batch = schema.example_batch(4, seed=6)
    rows = [{n: batch[n][i].tolist() for n in schema.feature_names} for i in range(4)]
    encoder = RequestEncoder(schema)
    body = {"id": "r-1", "inputs": _tensors(schema, batch, nested=nested), "outputs": [{"name": "logits"}]}
    columns, outputs, request_id = infer_columns(encoder, body)
    assert (columns.n_rows, outputs, request_id) == (4, ["logits"], "r-1")
    from_tensors, from_rows = encoder.encode_columns(columns), encoder.encode(rows)
    for name in schema.feature_names:
        np.testing.assert_array_equal(from_tensors[name], from_rows[name])


def _named(body: dict[str, Any], name: str) -> dict[str, Any]:
    tensor: dict[str, Any] = next(t for t in body["inputs"] if t["name"] == name)
    return tensor


def _named(body: dict[str, Any], name: str) -> dict[str, Any]:
    tensor: dict[str, Any] = next(t for t in body["inputs"] if t["name"] == name)
    return tensor


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda b: b["inputs"].remove(_named(b, "user_id")), "inputs.user_id", "missing feature 'user_id'"),
        (lambda b: _named(b, "user_id").update(name="colour"), "inputs.colour", "unknown feature 'colour'"),
        (lambda b: b["inputs"].append(dict(_named(b, "user_gender"))), "inputs.user_gender", "given twice"),
        (lambda b: _named(b, "user_id").update(datatype="FP32"), "inputs.user_id.datatype", "allowed"),
        (
            lambda b: _named(b, "user_id").update(shape=[2]),
            "inputs.user_id.data",
            "has 3 values; shape [2] holds 2",
        ),
        (lambda b: _named(b, "user_id").update(shape=[3, 2]), "inputs.user_id.shape", "[rows] or [rows, 1]"),
        (
            lambda b: _named(b, "user_id")["data"].__setitem__(1, "x"),
            "inputs.user_id[1]",
            "must be an integer id",
        ),
        (
            lambda b: _named(b, "hist_item_ids").update(shape=[60]),
            "inputs.hist_item_ids.shape",
            "[rows, ids per",
        ),
        (
            lambda b: _named(b, "item_price")["data"].__setitem__(2, None),
            "inputs.item_price[2]",
            "must be a number",
        ),
        (lambda b: _named(b, "user_id").pop("data"), "inputs.user_id.data", "required"),
        (lambda b: b.update(inputs=[]), "inputs", "non-empty array"),
        (lambda b: b.update(outputs=[{"name": "ctr"}]), "outputs[0].name", "unknown output 'ctr'"),
        (lambda b: b.update(model="x"), "model", "unknown field"),
    ],
)
def test_bad_requests_are_refused_naming_the_tensor(
    schema: FeatureSchema, edit: Any, field: str, words: str
) -> None:
    batch = schema.example_batch(3, seed=1)
    body: dict[str, Any] = {"inputs": _tensors(schema, batch)}
    edit(body)
    encoder = RequestEncoder(schema)
    with pytest.raises(PayloadError, match=words.replace("[", r"\[").replace("]", r"\]")) as info:
        columns, _, _ = infer_columns(encoder, body)
        encoder.encode_columns(columns)
    assert info.value.field == field


def test_the_answer_and_the_metadata_are_protocol_tensors(schema: FeatureSchema) -> None:
    logits = np.array([0.5, -1.0], dtype=np.float32)
    answer = infer_response("ranking-prod", "m1", logits, ["logits", "probabilities"], "r-9")
    assert (
        answer["model_name"] == "ranking-prod" and answer["model_version"] == "m1" and answer["id"] == "r-9"
    )
    by_name = {o["name"]: o for o in answer["outputs"]}
    assert by_name["logits"] == {"name": "logits", "datatype": "FP32", "shape": [2], "data": [0.5, -1.0]}
    np.testing.assert_allclose(by_name["probabilities"]["data"], 1 / (1 + np.exp(-logits.astype(np.float64))))
    assert "id" not in infer_response("m", "m1", logits, ["logits"], None)

    encoders = FeatureEncoders(vocabularies={"user_id": Vocabulary(["alice"])})
    metadata = model_metadata("ranking-prod", "m1", RequestEncoder(schema, encoders))
    inputs = {i["name"]: i for i in metadata["inputs"]}
    assert list(inputs) == schema.feature_names
    assert inputs["item_price"] == {"name": "item_price", "datatype": "FP32", "shape": [-1]}
    assert inputs["user_id"]["datatype"] == "BYTES"  # raw values through the fitted vocabulary
    assert inputs["hist_item_ids"] == {"name": "hist_item_ids", "datatype": "INT64", "shape": [-1, 20]}
    assert metadata["versions"] == ["m1"] and [o["name"] for o in metadata["outputs"]] == [
        "logits",
        "probabilities",
    ]
