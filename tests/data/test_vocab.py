import json
import math

import numpy as np
import pytest

from autocompress.data.schema import FIRST_ID, OOV_ID, PAD_ID
from autocompress.data.table import Table
from autocompress.data.vocab import (
    DenseEncoding,
    DenseScaler,
    SequenceEncoding,
    SparseEncoding,
    Vocabulary,
    canonical_value,
    encode_splits,
    split_delimited,
)
from autocompress.errors import AutocompressError


def test_ids_follow_train_frequency_and_unknown_values_are_oov():
    vocab = Vocabulary.fit(["b", "a", "b", "c", "b", "a"])
    assert vocab.values == ("b", "a", "c")
    assert vocab.size == 3 + FIRST_ID
    assert vocab.encode(["a", "b", "c", "zzz"]).tolist() == [3, 2, 4, OOV_ID]
    assert vocab.encode(np.array(["a"])).dtype == np.int64


def test_ties_are_broken_by_value_so_fitting_is_deterministic():
    assert Vocabulary.fit(["y", "x", "z", "x", "y"]).values == ("x", "y", "z")


def test_min_frequency_and_max_size_drop_rare_values_to_oov():
    values = ["b"] * 5 + ["a"] * 3 + ["c"]
    rare_dropped = Vocabulary.fit(values, min_frequency=2)
    assert rare_dropped.values == ("b", "a")
    assert rare_dropped.encode(["c"]).tolist() == [OOV_ID]
    assert Vocabulary.fit(values, max_size=1).values == ("b",)
    assert Vocabulary.fit(values, min_frequency=6).size == FIRST_ID


def test_integers_floats_and_strings_of_one_value_share_an_id():
    vocab = Vocabulary.fit([5, 5.0, "5", np.int64(5), 7])
    assert vocab.values == ("5", "7")
    assert vocab.encode(np.array([5.0, 7.0, np.nan])).tolist() == [2, 3, OOV_ID]
    assert vocab.encode(["5", 5, np.int32(7)]).tolist() == [2, 2, 3]
    assert canonical_value(2.5) == "2.5"
    assert canonical_value(None) == canonical_value(float("nan")) == ""


def test_missing_values_are_one_value_with_its_own_id_when_frequent():
    vocab = Vocabulary.fit(np.array(["a", None, np.nan, "", "a", "a", "a"], dtype=object))
    assert vocab.values == ("a", "")
    assert vocab.encode(np.array([None, "", float("nan")], dtype=object)).tolist() == [3, 3, 3]


def test_padding_is_not_counted_and_encodes_to_pad_id_keeping_the_shape():
    matrix = np.array([["a", ""], ["a", "b"], ["", ""]], dtype=object)
    vocab = Vocabulary.fit(matrix, padding="")
    assert vocab.values == ("a", "b")
    ids = vocab.encode(matrix, padding="")
    assert ids.shape == (3, 2)
    assert ids.tolist() == [[2, PAD_ID], [2, 3], [PAD_ID, PAD_ID]]
    numeric = Vocabulary.fit(np.array([[10, -1], [10, 11]]), padding=-1)
    assert numeric.encode(np.array([[11, -1]]), padding=-1).tolist() == [[3, PAD_ID]]


def test_vocabulary_json_round_trip_encodes_identically():
    vocab = Vocabulary.fit(["x", "y", "x", 3, 3, 3])
    text = vocab.to_json()
    again = Vocabulary.from_json(text)
    assert again == vocab
    raw = ["x", "3", 3, "y", "new"]
    np.testing.assert_array_equal(again.encode(raw), vocab.encode(raw))
    assert json.loads(text)["values"] == ["3", "x", "y"]


def test_vocabulary_load_is_strict():
    with pytest.raises(AutocompressError, match=r"unknown field\(s\) \['extra'\]"):
        Vocabulary.from_dict({"version": 1, "values": ["a"], "extra": 1})
    with pytest.raises(AutocompressError, match="version 9 is not supported"):
        Vocabulary.from_dict({"version": 9, "values": ["a"]})
    with pytest.raises(AutocompressError, match="appear more than once"):
        Vocabulary(["a", "a"])
    with pytest.raises(AutocompressError, match="min_frequency must be an integer >= 1, got 0"):
        Vocabulary.fit(["a"], min_frequency=0)


def test_dense_scaler_uses_train_statistics_and_maps_missing_to_the_mean():
    scaler = DenseScaler.fit([1.0, 2.0, 3.0, np.nan])
    assert scaler.mean == pytest.approx(2.0)
    assert scaler.std == pytest.approx(math.sqrt(2.0 / 3.0))
    out = scaler.transform([2.0, np.nan, 3.0])
    assert out.dtype == np.float32
    assert out.tolist() == pytest.approx([0.0, 0.0, 1.0 / math.sqrt(2.0 / 3.0)])
    assert DenseScaler.fit([4.0, 4.0]).std == 1.0
    logged = DenseScaler.fit([-5.0, 0.0, math.e - 1.0], log1p=True)
    assert logged.mean == pytest.approx(1.0 / 3.0)
    assert DenseScaler.from_dict(json.loads(json.dumps(logged.to_dict()))) == logged


def test_split_delimited_keeps_first_values_left_or_last_values_right():
    raw = np.array(["a|b|c", "", None, " d "], dtype=object)
    assert split_delimited(raw, "|").tolist() == [["a", "b", "c"], ["", "", ""], ["", "", ""], ["d", "", ""]]
    assert split_delimited(raw, "|", 2).tolist() == [["a", "b"], ["", ""], ["", ""], ["d", ""]]
    assert split_delimited(raw, "|", 2, keep="last").tolist() == [["b", "c"], ["", ""], ["", ""], ["", "d"]]
    with pytest.raises(AutocompressError, match="separator"):
        split_delimited(raw, "")


def _raw(values, tags, history, labels, start):
    n = len(values)
    return Table(
        features={
            "x": np.arange(start, start + n, dtype=np.float64),
            "item": np.array(values, dtype=object),
            "tags": split_delimited(np.array(tags, dtype=object), "|", 2),
            "hist": split_delimited(np.array(history, dtype=object), "|", 3, keep="last"),
            "rare": np.array([f"r{start + i}" for i in range(n)], dtype=object),
        },
        labels=np.array(labels),
    )


def test_encode_splits_fits_on_train_only_and_builds_a_valid_schema():
    train = _raw(
        ["a", "a", "b", "b", "a"],
        ["t1|t2", "t1", "", "t2", "t1"],
        ["a", "a|b", "", "b|a|b|a", ""],
        [1, 0, 1, 0, 1],
        0,
    )
    valid = _raw(["a", "c"], ["t1", "t3"], ["c", "a"], [0, 1], 5)
    test = _raw(["c", "b"], ["t3|t1", ""], ["c|b", ""], [1, 0], 7)
    dataset = encode_splits(
        "toy",
        (train, valid, test),
        dense=[DenseEncoding("x")],
        sparse=[
            SparseEncoding("item", side="item"),
            SparseEncoding("tags", side="item", max_len=2),
            SparseEncoding("rare", min_frequency=2),
        ],
        sequence=[SequenceEncoding("hist", shares_embedding_with="item", max_len=3)],
    )
    schema = dataset.schema
    assert schema.sparse_feature("item").vocab_size == 2 + FIRST_ID  # "c" only appears after train
    assert schema.sparse_feature("tags").vocab_size == 2 + FIRST_ID
    assert schema.sparse_feature("rare").vocab_size == FIRST_ID + 1  # nothing frequent: one spare row
    assert dataset.test.features["item"].tolist() == [OOV_ID, 3]
    assert dataset.test.features["tags"].tolist() == [[OOV_ID, 2], [PAD_ID, PAD_ID]]
    assert dataset.test.features["hist"].tolist() == [[PAD_ID, OOV_ID, 3], [PAD_ID, PAD_ID, PAD_ID]]
    assert dataset.train.features["hist"][3].tolist() == [2, 3, 2]  # the last three, most recent last
    assert set(dataset.train.features["rare"].tolist()) == {OOV_ID}
    assert dataset.train.features["x"].mean() == pytest.approx(0.0, abs=1e-6)
    assert dataset.test.features["x"].tolist() == pytest.approx(
        ((np.array([7.0, 8.0]) - 2.0) / np.sqrt(2.0)).tolist()
    )
    assert isinstance(dataset.info["vocabularies"]["item"], Vocabulary)
    assert dataset.info["dense_scalers"]["x"].mean == pytest.approx(2.0)


def test_a_sequence_must_share_a_sparse_feature():
    table = _raw(["a"], ["t1"], ["a"], [1], 0)
    with pytest.raises(AutocompressError, match="shares_embedding_with 'nope' is not a sparse feature"):
        encode_splits(
            "toy",
            (table, table, table),
            sparse=[SparseEncoding("item")],
            sequence=[SequenceEncoding("hist", shares_embedding_with="nope", max_len=3)],
        )
