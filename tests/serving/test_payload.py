"""Request rows -> model inputs: the schema's rules, the OOV bucket, and errors that name the feature."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from autocompress.data.schema import (
    OOV_ID,
    PAD_ID,
    DenseFeature,
    FeatureSchema,
    SequenceFeature,
    SparseFeature,
)
from autocompress.data.synthetic import SyntheticConfig, synthetic_schema
from autocompress.data.vocab import DenseScaler, Vocabulary
from autocompress.errors import AutocompressError
from autocompress.serving import (
    MAX_ROWS,
    FeatureEncoders,
    PayloadError,
    RequestEncoder,
    probabilities,
    top_k,
)


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return synthetic_schema(SyntheticConfig.tiny())


def _rows(schema: FeatureSchema, n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    batch = schema.example_batch(n, seed=seed)
    return batch, [{name: batch[name][i].tolist() for name in schema.feature_names} for i in range(n)]


def _multi_hot_schema() -> FeatureSchema:
    return FeatureSchema(
        dense=(DenseFeature("price", side="item"),),
        sparse=(
            SparseFeature("user", vocab_size=10, side="user"),
            SparseFeature("item", vocab_size=20, side="item"),
            SparseFeature("tags", vocab_size=8, side="item", max_len=3),
        ),
        sequence=(SequenceFeature("history", shares_embedding_with="item", max_len=4),),
    )


def test_rows_encode_to_the_arrays_training_feeds(schema: FeatureSchema) -> None:
    batch, rows = _rows(schema, 7)
    encoded = RequestEncoder(schema).encode(rows)
    assert list(encoded) == schema.feature_names
    for name in schema.feature_names:
        assert encoded[name].dtype == batch[name].dtype
        np.testing.assert_array_equal(encoded[name], batch[name])
    schema.validate_batch(encoded)


def test_ids_outside_the_vocabulary_go_to_the_oov_bucket() -> None:
    schema = _multi_hot_schema()
    row = {"price": 1.5, "user": 10, "item": -3, "tags": [1, 0, 2**70, 5], "history": [2, 25, 19]}
    encoded = RequestEncoder(schema).encode([row, {**row, "user": 2**64, "item": 19}])
    assert encoded["user"].tolist() == [OOV_ID, OOV_ID]
    assert encoded["item"].tolist() == [OOV_ID, 19]
    # multi-hot: the first max_len kept, left-aligned; PAD_ID stays padding
    assert encoded["tags"].tolist()[0] == [1, PAD_ID, OOV_ID]
    # sequence: most recent last, left-padded, ids checked against the shared table (item: 20)
    assert encoded["history"].tolist()[0] == [PAD_ID, 2, OOV_ID, 19]


def test_long_sequences_keep_the_most_recent_values() -> None:
    schema = _multi_hot_schema()
    row = {"price": 0.0, "user": 2, "item": 3, "tags": [], "history": [2, 3, 4, 5, 6, 7]}
    encoded = RequestEncoder(schema).encode([row])
    assert encoded["history"].tolist() == [[4, 5, 6, 7]]
    assert encoded["tags"].tolist() == [[PAD_ID] * 3]


def test_short_requests_encode_as_long_ones_do() -> None:
    """Up to 64 rows the integer ids and the dense values go through one-pass paths; beyond, feature
    by feature: same arrays."""
    base = _multi_hot_schema()
    schema = FeatureSchema(
        dense=(*base.dense, DenseFeature("weight", side="item")), sparse=base.sparse, sequence=base.sequence
    )
    rng = np.random.default_rng(0)
    odd = [-1, 10, 20, 2**64, 2**70]  # outside the user (10) and item (20) tables

    def row(i: int) -> dict[str, Any]:
        history = rng.integers(0, 25, size=int(rng.integers(0, 7))).tolist()
        return {
            "price": float(i),
            "weight": [3, -0.25, 2**60, 1e-30][i % 4],  # ints, tiny and huge values: all float32
            "user": int(rng.integers(0, 10)) if i % 3 else odd[i % len(odd)],
            "item": int(rng.integers(0, 20)) if i % 4 else odd[(i + 1) % len(odd)],
            "tags": rng.integers(0, 9, size=int(rng.integers(0, 5))).tolist()
            + ([2**70] if i % 5 == 0 else []),
            "history": history,
        }

    rows = [row(i) for i in range(100)]
    encoder = RequestEncoder(schema)
    long = encoder.encode(rows)  # > 64 rows: feature by feature
    for start in (0, 40):
        short = encoder.encode(rows[start : start + 50])
        for name in schema.feature_names:
            assert short[name].dtype == long[name].dtype
            np.testing.assert_array_equal(short[name], long[name][start : start + 50])
    assert long["weight"].dtype == np.float32 and long["weight"][2] == np.float32(2**60)
    assert (long["user"] == OOV_ID).any() and (long["item"] == OOV_ID).any()
    assert (long["tags"] == OOV_ID).any() and (long["history"] == OOV_ID).any()


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"drop": "user_id"}, "rows[1].user_id", "missing feature 'user_id'"),
        ({"add": ("colour", 3)}, "rows[1].colour", "unknown feature 'colour'"),
        ({"set": ("item_price", "cheap")}, "rows[1].item_price", "must be a number, got string"),
        ({"set": ("item_price", True)}, "rows[1].item_price", "must be a number, got boolean"),
        ({"set": ("item_price", float("nan"))}, "rows[1].item_price", "finite"),
        ({"set": ("item_price", 1e39)}, "rows[1].item_price", "finite"),
        ({"set": ("item_price", -(10**400))}, "rows[1].item_price", "finite"),
        ({"set": ("user_id", 3.0)}, "rows[1].user_id", "must be an integer id, got float"),
        ({"set": ("user_id", "7")}, "rows[1].user_id", "must be an integer id, got string"),
        ({"set": ("user_id", [7])}, "rows[1].user_id", "must be an integer id, got array"),
        ({"set": ("hist_item_ids", 7)}, "rows[1].hist_item_ids", "must be a list of ids, got int"),
        (
            {"set": ("hist_item_ids", [2, None])},
            "rows[1].hist_item_ids[1]",
            "must be an integer id, got null",
        ),
    ],
)
def test_bad_rows_are_refused_naming_the_feature(
    schema: FeatureSchema, change: dict[str, Any], field: str, words: str
) -> None:
    _, rows = _rows(schema, 3)
    bad = dict(rows[1])
    if "drop" in change:
        del bad[change["drop"]]
    else:
        key, value = change.get("add") or change["set"]
        bad[key] = value
    rows[1] = bad
    with pytest.raises(PayloadError, match=words) as info:
        RequestEncoder(schema).encode(rows)
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_the_number_of_rows_is_bounded(schema: FeatureSchema) -> None:
    encoder = RequestEncoder(schema)
    with pytest.raises(PayloadError, match="1 to"):
        encoder.encode([])
    _, rows = _rows(schema, 1)
    with pytest.raises(PayloadError, match=f"1 to {MAX_ROWS} rows"):
        encoder.encode(rows * (MAX_ROWS + 1))
    with pytest.raises(PayloadError, match="must be an object"):
        encoder.encode([rows[0], 5])  # type: ignore[list-item]


def test_ranking_repeats_the_context_for_every_candidate(schema: FeatureSchema) -> None:
    _, rows = _rows(schema, 5)
    context_names = [*schema.features_on("user"), *schema.features_on("context")]
    context = {n: rows[0][n] for n in context_names}
    candidates = [{n: v for n, v in row.items() if n not in context} for row in rows]
    encoder = RequestEncoder(schema)
    ranked = encoder.encode_ranking(context, candidates)
    merged = encoder.encode([{**row, **context} for row in rows])
    for name in schema.feature_names:
        np.testing.assert_array_equal(ranked[name], merged[name])
    assert len(ranked["user_id"]) == 5

    with pytest.raises(PayloadError, match="already given in context") as info:
        encoder.encode_ranking(context, [{**candidates[0], "user_id": 3}])
    assert info.value.field == "candidates[0].user_id"
    with pytest.raises(PayloadError, match="missing feature 'item_id'") as info:
        encoder.encode_ranking(context, [{k: v for k, v in candidates[0].items() if k != "item_id"}])
    assert info.value.field == "candidates[0].item_id"
    with pytest.raises(PayloadError, match="unknown feature") as info:
        encoder.encode_ranking({**context, "mood": 1}, candidates)
    assert info.value.field == "context.mood"


def test_tower_inputs_split_item_side_from_the_rest(schema: FeatureSchema) -> None:
    encoder = RequestEncoder(schema)
    item, user = encoder.side_features("item"), encoder.side_features("user")
    assert set(item) == set(schema.features_on("item"))
    assert set(item) | set(user) == set(schema.feature_names) and not set(item) & set(user)
    _, rows = _rows(schema, 2)
    with pytest.raises(PayloadError, match="not a user-tower input"):
        encoder.encode(rows, features=user, not_here="not a user-tower input")


def test_raw_values_go_through_the_fitted_vocabularies_and_scalers() -> None:
    schema = _multi_hot_schema()
    encoders = FeatureEncoders(
        vocabularies={
            "user": Vocabulary(["alice", "bob"]),
            "item": Vocabulary(["7", "shoes", ""]),
            "tags": Vocabulary(["red", "blue"]),
        },
        dense_scalers={"price": DenseScaler(mean=10.0, std=2.0, log1p=False)},
    )
    encoder = RequestEncoder(schema, encoders)
    rows = [
        {"price": 14, "user": "bob", "item": 7, "tags": ["blue", "", "green"], "history": ["shoes", 7.0]},
        {"price": None, "user": "carol", "item": None, "tags": [], "history": []},
    ]
    encoded = encoder.encode(rows)
    np.testing.assert_allclose(encoded["price"], [2.0, 0.0])  # (14 - 10) / 2; missing -> the mean
    assert encoded["user"].tolist() == [3, OOV_ID]  # ids from FIRST_ID in vocabulary order
    assert encoded["item"].tolist() == [2, 4]  # 7 and 7.0 are one value; null is the value ""
    assert encoded["tags"].tolist() == [[3, OOV_ID, PAD_ID], [PAD_ID] * 3]  # empty pieces dropped
    assert encoded["history"].tolist() == [[PAD_ID, PAD_ID, 3, 2], [PAD_ID] * 4]
    with pytest.raises(PayloadError, match="raw value") as info:
        encoder.encode([{**rows[0], "user": {"name": "bob"}}])
    assert info.value.field == "rows[0].user"

    restored = FeatureEncoders.from_dict(encoders.to_dict())
    np.testing.assert_array_equal(RequestEncoder(schema, restored).encode(rows)["tags"], encoded["tags"])


def test_encoders_for_features_the_schema_lacks_are_refused() -> None:
    with pytest.raises(AutocompressError, match="'colour' is not a sparse feature"):
        RequestEncoder(_multi_hot_schema(), FeatureEncoders(vocabularies={"colour": Vocabulary(["red"])}))


def test_probabilities_and_top_k() -> None:
    logits = np.array([0.0, 2.0, -800.0, 800.0, 2.0], dtype=np.float32)
    probs = probabilities(logits)
    with np.errstate(over="ignore"):
        expected = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    assert np.all(np.isfinite(probs))
    assert top_k(logits, 3).tolist() == [3, 1, 4]  # ties keep the candidates' order
    assert top_k(logits, 50).tolist() == [3, 1, 4, 0, 2]
    with pytest.raises(PayloadError, match="k: must be an integer >= 1"):
        top_k(logits, 0)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in rows[0]}


def test_columns_encode_exactly_as_rows(schema: FeatureSchema) -> None:
    _, rows = _rows(schema, 6, seed=3)
    encoder = RequestEncoder(schema)
    from_rows = encoder.encode(rows)
    from_columns, n_rows = encoder.encode_payload({"columns": _columns(rows)})
    assert n_rows == 6
    for name in schema.feature_names:
        np.testing.assert_array_equal(from_columns[name], from_rows[name])
    again, _ = encoder.encode_payload({"rows": rows})
    for name in schema.feature_names:
        np.testing.assert_array_equal(again[name], from_rows[name])


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda c: c.pop("item_id"), "columns.item_id", "missing feature 'item_id'"),
        (lambda c: c.update(colour=[1, 2, 3]), "columns.colour", "unknown feature 'colour'"),
        (lambda c: c.update(item_id=7), "columns.item_id", "must be an array of values, one per row"),
        (lambda c: c["user_id"].pop(), "columns.user_id", "has 2 values, columns.item_price has 3"),
        (lambda c: c["item_price"].__setitem__(2, "cheap"), "columns.item_price[2]", "must be a number"),
        (
            lambda c: c["user_id"].__setitem__(1, True),
            "columns.user_id[1]",
            "must be an integer id, got boolean",
        ),
        (lambda c: c["hist_item_ids"].__setitem__(0, 4), "columns.hist_item_ids[0]", "must be a list of ids"),
        (
            lambda c: c["hist_item_ids"][2].__setitem__(1, 2.5),
            "columns.hist_item_ids[2][1]",
            "must be an integer id, got float",
        ),
    ],
)
def test_bad_columns_are_refused_naming_the_feature_and_row(
    schema: FeatureSchema, edit: Any, field: str, words: str
) -> None:
    _, rows = _rows(schema, 3)
    columns = _columns(rows)
    columns = {"item_price": columns.pop("item_price"), **columns}  # the first column counted
    edit(columns)
    with pytest.raises(PayloadError, match=words) as info:
        RequestEncoder(schema).encode_payload({"columns": columns})
    assert info.value.field == field


def test_a_body_holds_rows_or_columns(schema: FeatureSchema) -> None:
    _, rows = _rows(schema, 2)
    encoder = RequestEncoder(schema)
    for body, field in (
        ({"rows": rows, "columns": _columns(rows)}, "body"),
        ({}, "body"),
        ({"row": rows}, "body.row"),
        ([rows], "body"),
        ({"columns": {name: [] for name in schema.feature_names}}, "columns"),
    ):
        with pytest.raises(PayloadError) as info:
            encoder.encode_payload(body)
        assert info.value.field == field


def test_ranking_takes_candidates_as_columns(schema: FeatureSchema) -> None:
    _, rows = _rows(schema, 5, seed=2)
    context_names = [*schema.features_on("user"), *schema.features_on("context")]
    context = {n: rows[0][n] for n in context_names}
    candidates = [{n: v for n, v in row.items() if n not in context} for row in rows]
    encoder = RequestEncoder(schema)
    by_rows = encoder.encode_ranking(context, candidates)
    by_columns = encoder.encode_ranking(context, {"columns": _columns(candidates)})
    for name in schema.feature_names:
        np.testing.assert_array_equal(by_columns[name], by_rows[name])
    with pytest.raises(PayloadError, match="already given in context") as info:
        encoder.encode_ranking(context, {"columns": {**_columns(candidates), "user_id": [1] * 5}})
    assert info.value.field == "candidates.columns.user_id"
    with pytest.raises(PayloadError, match="unknown field") as info:
        encoder.encode_ranking(context, {"cols": _columns(candidates)})
    assert info.value.field == "candidates.cols"
