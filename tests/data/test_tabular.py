import numpy as np
import pandas as pd
import pytest

from autocompress.data.schema import FIRST_ID, OOV_ID, PAD_ID
from autocompress.data.tabular import load_tabular, read_tabular_schema
from autocompress.errors import AutocompressError
from autocompress.measure.quality import auc

SCHEMA_YAML = """
label: clicked
group_id: query_id
timestamp: ts
dense: [price, {name: age, side: user}]
sparse:
  - {name: item_id, side: item}
  - {name: brand, side: item, min_frequency: 2}
  - {name: tags, side: item, separator: "|", max_len: 3}
sequence:
  - {name: clicked_items, shares_embedding_with: item_id, max_len: 4, separator: "|"}
"""
N_ROWS = 300


def _frame(n: int = N_ROWS, seed: int = 0) -> pd.DataFrame:
    """Search sessions whose clicks depend on brand and price; row 0 is hand-made."""
    rng = np.random.default_rng(seed)
    query = np.sort(rng.integers(0, 60, n))
    brands = np.array(["nike", "adidas", "puma"])
    brand = rng.integers(0, 3, n)
    price = rng.uniform(1, 100, n).round(2)
    logit = np.array([1.0, 0.0, -1.0])[brand] + (50 - price) / 25
    frame = pd.DataFrame(
        {
            "query_id": [f"q{q}" for q in query],
            "ts": query * 100 + rng.integers(1, 50, n),
            "price": price,
            "age": rng.integers(18, 70, n),
            "item_id": [f"i{k}" for k in rng.integers(0, 20, n)],
            "brand": brands[brand],
            "tags": [
                "|".join(rng.choice(["red", "blue", "sale", "new"], int(rng.integers(1, 4)), replace=False))
                for _ in range(n)
            ],
            "clicked_items": [
                "|".join(f"i{k}" for k in rng.integers(0, 20, int(rng.integers(0, 6)))) for _ in range(n)
            ],
            "clicked": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int),
            "unused": rng.random(n),
        }
    )
    frame.loc[0, ["ts", "brand", "item_id", "clicked_items", "price"]] = [
        0,
        "rarebrand",
        "i3",
        "i3|i5|never_seen",
        np.nan,
    ]
    frame.loc[n - 5 :, "item_id"] = "i_late"  # only in the last session(s): unseen in train
    return frame


@pytest.fixture
def files(tmp_path):
    frame = _frame()
    frame.to_csv(tmp_path / "events.csv", index=False)
    frame.to_parquet(tmp_path / "events.parquet")
    (tmp_path / "schema.yaml").write_text(SCHEMA_YAML)
    return tmp_path


def _hand_row(dataset):
    """Features of the hand-made row 0 (the only row at time 0, so the first row of train)."""
    assert dataset.train.timestamps[0] == 0
    return {name: column[0] for name, column in dataset.train.features.items()}


def test_csv_loads_a_valid_dataset_as_the_yaml_declares(files):
    dataset = load_tabular(files / "events.csv", files / "schema.yaml")
    schema = dataset.schema
    assert [(f.name, f.side) for f in schema.dense] == [("price", "context"), ("age", "user")]
    assert [(f.name, f.side, f.max_len) for f in schema.sparse] == [
        ("item_id", "item", 1),
        ("brand", "item", 1),
        ("tags", "item", 3),
    ]
    assert schema.label == "clicked" and schema.group_id == "query_id"
    assert schema.sequence[0].shares_embedding_with == "item_id"
    assert "unused" not in dataset.train.features
    for table in (dataset.train, dataset.valid, dataset.test):
        schema.validate_batch(table.features)
    assert dataset.train.features["tags"].shape == (len(dataset.train), 3)
    assert dataset.train.features["clicked_items"].shape == (len(dataset.train), 4)
    assert schema.sparse_feature("tags").vocab_size == 4 + FIRST_ID
    # clicks depend on price: the standardised dense feature ranks them (cheaper -> more clicks)
    assert auc(dataset.train.labels, -dataset.train.features["price"]) > 0.65


def test_vocabularies_are_fitted_on_train_and_sequences_share_the_item_ids(files):
    dataset = load_tabular(files / "events.csv", files / "schema.yaml")
    vocab = dataset.info["vocabularies"]
    assert dataset.schema.sparse_feature("brand").vocab_size == 3 + FIRST_ID  # "rarebrand" seen once
    row = _hand_row(dataset)
    assert row["brand"] == OOV_ID
    assert row["price"] == 0.0  # missing dense value -> the train mean
    items = vocab["item_id"]
    assert row["clicked_items"].tolist() == [PAD_ID, *items.encode(["i3", "i5"]).tolist(), OOV_ID]
    assert "i_late" not in items.values
    assert (dataset.test.features["item_id"][-5:] == OOV_ID).all()


def test_time_split_and_whole_groups(files):
    dataset = load_tabular(files / "events.csv", files / "schema.yaml")
    train, valid, test = dataset.train, dataset.valid, dataset.test
    assert dataset.info["split_method"] == "time"
    assert train.timestamps.max() < valid.timestamps.min() and valid.timestamps.max() < test.timestamps.min()
    groups = [set(t.groups.tolist()) for t in (train, valid, test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])


def test_parquet_gives_the_same_dataset_as_csv(files):
    from_csv = load_tabular(files / "events.csv", files / "schema.yaml")
    from_parquet = load_tabular(files / "events.parquet", files / "schema.yaml")
    assert from_parquet.schema == from_csv.schema
    for split in ("train", "valid", "test"):
        a, b = getattr(from_csv, split), getattr(from_parquet, split)
        np.testing.assert_array_equal(a.labels, b.labels)
        for name in a.features:
            np.testing.assert_array_equal(a.features[name], b.features[name])


def test_yaml_split_section_is_used_and_arguments_override_it(files):
    (files / "session.yaml").write_text(
        SCHEMA_YAML + "split: {method: session, fractions: [0.6, 0.2, 0.2]}\n"
    )
    by_session = load_tabular(files / "events.csv", files / "session.yaml", seed=3)
    assert by_session.info["split_method"] == "session"
    assert 0.5 < len(by_session.train) / N_ROWS < 0.7
    by_time = load_tabular(
        files / "events.csv", files / "session.yaml", split_method="time", fractions=(0.8, 0.1, 0.1)
    )
    assert by_time.info["split_method"] == "time"
    assert 0.7 < len(by_time.train) / N_ROWS < 0.9


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (SCHEMA_YAML + "labels: x\n", r"unknown key\(s\) \['labels'\]"),
        (
            SCHEMA_YAML.replace("min_frequency: 2", "min_freq: 2"),
            r"sparse\[1\]: unknown key\(s\) \['min_freq'\]",
        ),
        (
            SCHEMA_YAML.replace("{name: age, side: user}", "{name: age, side: shop}"),
            r"dense\[1\]\.side: 'shop'",
        ),
        (
            SCHEMA_YAML.replace("shares_embedding_with: item_id", "shares_embedding_with: sku"),
            "'sku' is not a sparse feature",
        ),
        (
            SCHEMA_YAML.replace("{name: item_id, side: item}", "{name: item_id, max_len: 3}"),
            "give a separator too",
        ),
        ("dense: [price]\n", "'label' .* is required"),
    ],
)
def test_yaml_mistakes_are_refused_by_name(files, yaml_text, expected):
    (files / "bad.yaml").write_text(yaml_text)
    with pytest.raises(AutocompressError, match=expected) as error:
        read_tabular_schema(files / "bad.yaml")
    assert "bad.yaml" in str(error.value)


def test_a_yaml_column_missing_from_the_data_is_named(files):
    (files / "colour.yaml").write_text(SCHEMA_YAML.replace("[price,", "[price, colour,"))
    with pytest.raises(AutocompressError) as error:
        load_tabular(files / "events.csv", files / "colour.yaml")
    message = str(error.value)
    assert message.startswith(
        "schema does not match the data: dense feature 'colour' reads column 'colour', which is not in "
    )
    assert "events.csv (columns: [" in message and "'price'" in message


def test_non_numeric_dense_values_are_named_with_column_and_row(files):
    frame = _frame()
    frame["price"] = frame["price"].astype(object)
    frame.loc[6, "price"] = "cheap"
    frame.to_csv(files / "events.csv", index=False)
    with pytest.raises(AutocompressError, match=r"dense feature 'price'.*'cheap' in data row 7"):
        load_tabular(files / "events.csv", files / "schema.yaml")


def test_file_errors_name_the_file_and_the_allowed_formats(files):
    (files / "events.json").write_text("{}")
    with pytest.raises(
        AutocompressError, match=r"unsupported extension; allowed: \['.csv', '.csv.gz', '.parquet'"
    ):
        load_tabular(files / "events.json", files / "schema.yaml")
    with pytest.raises(AutocompressError, match=r"nope\.csv' does not exist"):
        load_tabular(files / "nope.csv", files / "schema.yaml")
    with pytest.raises(AutocompressError, match=r"schema file .*nope\.yaml' does not exist"):
        load_tabular(files / "events.csv", files / "nope.yaml")


# A real export: headers with spaces, dots, capitals and non-ASCII, read through ``column:``.
# "Rating ⭐" feeds two features and "Reviewer ID" both the group and a feature: that is allowed.
REVIEWS_YAML = """
label: {name: recommended, column: "Recommended IND"}
group_id: {name: reviewer, column: "Reviewer ID"}
timestamp: "Review Date"
dense:
  - {name: feedback_count, column: "Positive Feedback Count"}
  - {name: rating, column: "Rating ⭐", side: user}
sparse:
  - {name: clothing_id, column: "Clothing ID", side: item}
  - {name: class_name, column: "Class.Name", side: item}
  - {name: reviewer_id, column: "Reviewer ID", side: user}
  - {name: rating_level, column: "Rating ⭐"}
sequence:
  - {name: recent_items, column: "Recent Items", shares_embedding_with: clothing_id, max_len: 3}
split: {method: time, fractions: [0.5, 0.25, 0.25]}
"""
ITEMS = ["0853", "1077", "1049", "0862"]  # leading zeros: ids, not numbers


def _reviews(n: int = 24) -> pd.DataFrame:
    """One review a day, two per reviewer in a row, so row i is day i and reviewer group i // 2."""
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "Clothing ID": [ITEMS[i % 4] for i in range(n)],
            "Positive Feedback Count": rng.integers(0, 30, n),
            "Class.Name": [("Dresses", "Knits", "Blouses")[i % 3] for i in range(n)],
            "Rating ⭐": [1 + i % 5 for i in range(n)],
            "Reviewer ID": [f"r{i // 2}" for i in range(n)],
            "Review Date": pd.date_range("2024-03-01", periods=n, freq="D").strftime("%Y-%m-%d"),
            "Recent Items": ["|".join(ITEMS[(i + k) % 4] for k in range(i % 5)) for i in range(n)],
            "Recommended IND": rng.integers(0, 2, n),
            "Review Text": ["fits well"] * n,
        }
    )


@pytest.fixture
def reviews(tmp_path):
    frame = _reviews()
    frame.to_csv(tmp_path / "reviews.csv", index=False, encoding="utf-8-sig")  # as Excel saves it
    frame.to_parquet(tmp_path / "reviews.parquet")
    (tmp_path / "reviews.yaml").write_text(REVIEWS_YAML, encoding="utf-8")
    return tmp_path


def _decode(vocabulary, ids) -> list[str]:
    return [vocabulary.values[i - FIRST_ID] for i in ids if i != PAD_ID]


@pytest.mark.parametrize("data_file", ["reviews.csv", "reviews.parquet"])
def test_real_headers_load_through_column_mappings(reviews, data_file):
    from autocompress.serving import FeatureEncoders, RequestEncoder

    dataset = load_tabular(reviews / data_file, reviews / "reviews.yaml")
    schema, train, info = dataset.schema, dataset.train, dataset.info
    assert schema.feature_names == [
        "feedback_count",
        "rating",
        "clothing_id",
        "class_name",
        "reviewer_id",
        "rating_level",
        "recent_items",
    ]
    assert (schema.label, schema.group_id) == ("recommended", "reviewer")
    assert info["columns"]["feedback_count"] == "Positive Feedback Count"
    assert info["columns"]["recommended"] == "Recommended IND"
    assert "Review Text" not in train.features

    day = (train.timestamps - int(pd.Timestamp("2024-03-01", tz="UTC").timestamp())) // 86400
    assert day.tolist() == list(range(12))  # the first half of the days, in order
    raw = _reviews().iloc[day]
    np.testing.assert_array_equal(train.labels, raw["Recommended IND"])
    assert train.groups.tolist() == (day // 2).tolist()
    feedback = info["dense_scalers"]["feedback_count"]
    assert feedback.mean == pytest.approx(raw["Positive Feedback Count"].mean())
    np.testing.assert_allclose(
        train.features["feedback_count"] * feedback.std + feedback.mean,
        raw["Positive Feedback Count"],
        atol=1e-4,
    )
    rating = info["dense_scalers"]["rating"]
    np.testing.assert_allclose(
        train.features["rating"] * rating.std + rating.mean, raw["Rating ⭐"], atol=1e-4
    )

    vocab = info["vocabularies"]
    assert _decode(vocab["clothing_id"], train.features["clothing_id"]) == raw["Clothing ID"].tolist()
    assert _decode(vocab["class_name"], train.features["class_name"]) == raw["Class.Name"].tolist()
    assert _decode(vocab["reviewer_id"], train.features["reviewer_id"]) == raw["Reviewer ID"].tolist()
    assert _decode(vocab["rating_level"], train.features["rating_level"]) == [
        str(r) for r in raw["Rating ⭐"]
    ]
    assert sorted(vocab["rating_level"].values) == ["1", "2", "3", "4", "5"]
    for ids, recent in zip(train.features["recent_items"], raw["Recent Items"], strict=True):
        assert _decode(vocab["clothing_id"], ids) == [v for v in recent.split("|") if v][-3:]

    # serving keeps only feature names: a request keyed by them encodes a row exactly as training did
    encoders = FeatureEncoders.from_dict(FeatureEncoders.from_dataset_info(info).to_dict())
    row = raw.iloc[4]
    request = {
        "feedback_count": int(row["Positive Feedback Count"]),
        "rating": int(row["Rating ⭐"]),
        "clothing_id": row["Clothing ID"],
        "class_name": row["Class.Name"],
        "reviewer_id": row["Reviewer ID"],
        "rating_level": int(row["Rating ⭐"]),
        "recent_items": row["Recent Items"].split("|"),
    }
    served = RequestEncoder(schema, encoders).encode([request])
    for name in schema.feature_names:
        np.testing.assert_allclose(served[name][0], train.features[name][4], atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            '{name: feedback_count, column: "Positive Feedback Count"}',
            '"Positive Feedback Count"',
            r"dense\[0\]\.name: 'Positive Feedback Count' is not allowed as a name: use letters, digits "
            r"and '_'.*column: \{name: my_name, column: 'Positive Feedback Count'\}",
        ),
        ("{name: rating,", '{name: "Rating ⭐",', r"dense\[1\]\.name: 'Rating ⭐' is not allowed as a name"),
        (
            "{name: recent_items,",
            "{name: Recent.Items,",
            r"sequence\[0\]\.name: 'Recent.Items' is not allowed",
        ),
        (
            'label: {name: recommended, column: "Recommended IND"}',
            'label: "Recommended IND"',
            r"label: 'Recommended IND' is not allowed as a name",
        ),
        (
            '{name: reviewer, column: "Reviewer ID"}',
            '{column: "Reviewer ID"}',
            r"group_id: 'name' .* is required",
        ),
        ('column: "Class.Name"', 'columns: "Class.Name"', r"sparse\[1\]: unknown key\(s\) \['columns'\]"),
        ('column: "Class.Name"', 'column: ""', r"sparse\[1\]\.column: expected a non-empty string"),
        (
            "name: rating_level",
            "name: rating",
            r"sparse\[3\]: name 'rating' is already the name of dense\[1\]",
        ),
        (
            "name: class_name",
            "name: recommended",
            r"sparse\[1\]: name 'recommended' is already the name of label",
        ),
        (
            "sequence:",
            '  - {name: recommended_again, column: "Recommended IND"}\nsequence:',
            r"sparse\[4\] reads 'Recommended IND', the label's column",
        ),
        (
            'group_id: {name: reviewer, column: "Reviewer ID"}',
            'group_id: {name: reviewer, column: "Recommended IND"}',
            r"group_id reads 'Recommended IND', the label's column",
        ),
    ],
)
def test_names_must_be_identifiers_and_only_the_label_reads_its_column(reviews, old, new, expected):
    assert old in REVIEWS_YAML
    (reviews / "bad.yaml").write_text(REVIEWS_YAML.replace(old, new), encoding="utf-8")
    with pytest.raises(AutocompressError, match=expected) as error:
        read_tabular_schema(reviews / "bad.yaml")
    assert "bad.yaml" in str(error.value)


@pytest.mark.parametrize("data_file", ["reviews.csv", "reviews.parquet"])
def test_a_mapped_column_missing_from_the_data_names_the_feature_and_the_columns(reviews, data_file):
    (reviews / "spaced.yaml").write_text(
        REVIEWS_YAML.replace('"Class.Name"', '"Class Name"'), encoding="utf-8"
    )
    with pytest.raises(AutocompressError) as error:
        load_tabular(reviews / data_file, reviews / "spaced.yaml")
    message = str(error.value)
    assert message.startswith(
        "schema does not match the data: sparse feature 'class_name' reads column 'Class Name', "
        "which is not in "
    )
    assert f"{data_file} (columns: [" in message
    assert "'Class.Name'" in message and "'Rating ⭐'" in message
