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
    assert message.startswith("schema does not match the data: column 'colour' is not in ")
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
