import numpy as np
import pytest

from autocompress.data import PAD_ID, DenseFeature, FeatureSchema, SequenceFeature, SparseFeature
from autocompress.errors import AutocompressError


def _schema() -> FeatureSchema:
    return FeatureSchema(
        dense=(DenseFeature("price", side="item"),),
        sparse=(
            SparseFeature("user_id", 50, side="user"),
            SparseFeature("item_id", 100, side="item"),
            SparseFeature("tags", 20, side="item", max_len=4),
        ),
        sequence=(SequenceFeature("hist", "item_id", 6),),
        group_id="session",
    )


def test_json_round_trip_is_exact():
    schema = _schema()
    assert FeatureSchema.from_json(schema.to_json()) == schema


def test_example_batch_validates_and_pads_sequences():
    schema = _schema()
    batch = schema.example_batch(64, seed=3)
    assert schema.validate_batch(batch) == 64
    assert batch["tags"].shape == (64, 4)
    assert (batch["hist"] == PAD_ID).any()
    assert batch["hist"].max() < schema.vocab_size_of("hist") == 100


def test_features_by_side_in_input_order():
    schema = _schema()
    assert schema.features_on("item") == ["price", "item_id", "tags"]
    assert schema.features_on("user") == ["user_id", "hist"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("price"), "missing feature(s) ['price']"),
        (lambda b: b.update(item_id=np.full(64, 100)), "'item_id' has ids in [100, 100]"),
        (lambda b: b.update(price=np.zeros(64, dtype=np.int64)), "dense feature 'price' must be float"),
        (lambda b: b.update(tags=np.zeros((64, 3), dtype=np.int64)), "'tags' has per-row shape (3,)"),
    ],
)
def test_a_batch_that_does_not_match_is_refused_naming_the_feature(change, message):
    schema = _schema()
    batch = schema.example_batch(64)
    change(batch)
    with pytest.raises(AutocompressError) as err:
        schema.validate_batch(batch)
    assert message in str(err.value)


def test_bad_schemas_are_refused():
    with pytest.raises(AutocompressError, match="vocab_size must be an integer > 2"):
        SparseFeature("x", 2)
    with pytest.raises(AutocompressError, match="appears twice"):
        FeatureSchema(dense=(DenseFeature("a"), DenseFeature("a")))
    with pytest.raises(AutocompressError, match="shares_embedding_with 'nope'"):
        FeatureSchema(sparse=(SparseFeature("a", 10),), sequence=(SequenceFeature("h", "nope", 3),))
    with pytest.raises(AutocompressError, match=r"unknown field\(s\) \['colour'\]"):
        FeatureSchema.from_dict({"dense": [{"name": "a", "colour": "red"}]})
    with pytest.raises(AutocompressError, match="side 'shop'"):
        DenseFeature("a", side="shop")  # type: ignore[arg-type]
