import numpy as np
import pandas as pd
import pytest

from autocompress.data.movielens import ML100K_GENRES, load_movielens, positive_history
from autocompress.data.schema import FIRST_ID, OOV_ID, PAD_ID
from autocompress.errors import AutocompressError
from autocompress.measure.quality import auc

DAY = 86_400
START = 1_000_000_000
HAND_USER = 999
HAND_DAY = START + 2 * DAY
# (item, rating, seconds after HAND_DAY); ratings >= 4 are positives
HAND_ROWS = [(10, 5, 100), (11, 2, 200), (12, 4, 300), (13, 5, 300), (14, 4, 400)]
LATE_ITEM = 77  # rated only on the last day: never seen in train
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def _source(seed: int = 0):
    """Ratings, users and items as plain frames; ratings depend on user and item biases."""
    rng = np.random.default_rng(seed)
    users, items = np.arange(1, 31), np.arange(1, 41)
    user_bias = rng.normal(0, 1, len(users) + 1)
    item_bias = rng.normal(0, 1, len(items) + 1)
    n = 600
    u = rng.choice(users, n)
    i = rng.choice(items, n)
    ts = START + rng.integers(0, 40 * DAY, n)
    rating = np.clip(np.rint(3 + 1.2 * (user_bias[u] + item_bias[i]) + rng.normal(0, 0.5, n)), 1, 5)
    rows = pd.DataFrame({"user_id": u, "item_id": i, "rating": rating, "timestamp": ts})
    hand = pd.DataFrame(
        [(HAND_USER, item, rating, HAND_DAY + s) for item, rating, s in HAND_ROWS], columns=rows.columns
    )
    late = pd.DataFrame(
        [(int(x), LATE_ITEM, 5.0, START + 40 * DAY + 10 * k) for k, x in enumerate(users[:6])],
        columns=rows.columns,
    )
    ratings = pd.concat([rows, hand, late], ignore_index=True)
    ratings["rating"] = ratings["rating"].astype(float)
    all_users = [*users.tolist(), HAND_USER]
    user_table = pd.DataFrame(
        {
            "user_id": all_users,
            "gender": ["F" if x % 3 == 0 else "M" for x in all_users],
            "age": [18 + x % 5 * 7 for x in all_users],
            "occupation": [x % 7 for x in all_users],
            "zip": [f"{10000 + x % 4}" for x in all_users],
        }
    )
    all_items = [*items.tolist(), LATE_ITEM]
    item_genres = ["|".join(GENRES[(x + k) % len(GENRES)] for k in range(1 + x % 3)) for x in all_items]
    item_table = pd.DataFrame(
        {"item_id": all_items, "title": [f"Movie {x} (1995)" for x in all_items], "genres": item_genres}
    )
    return ratings, user_table, item_table


def _write_ml100k(folder, ratings, users, items):
    ratings.astype({"rating": int}).to_csv(folder / "u.data", sep="\t", header=False, index=False)
    lines = [f"{r.user_id}|{r.age}|{r.gender}|{r.occupation}|{r.zip}" for r in users.itertuples()]
    (folder / "u.user").write_text("\n".join(lines) + "\n", encoding="latin-1")
    lines = []
    for r in items.itertuples():
        flags = ["1" if g in r.genres.split("|") else "0" for g in ML100K_GENRES]
        lines.append("|".join([str(r.item_id), r.title, "01-Jan-1995", "", "http://example.org", *flags]))
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")


def _write_ml1m(folder, ratings, users, items):
    lines = [f"{r.user_id}::{r.item_id}::{int(r.rating)}::{r.timestamp}" for r in ratings.itertuples()]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    lines = [f"{r.user_id}::{r.gender}::{r.age}::{r.occupation}::{r.zip}" for r in users.itertuples()]
    (folder / "users.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    lines = [f"{r.item_id}::{r.title}::{r.genres}" for r in items.itertuples()]
    (folder / "movies.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")


def _write_parquet(folder, ratings, users, items):
    stamped = ratings.assign(timestamp=pd.to_datetime(ratings["timestamp"], unit="s"))
    stamped.to_parquet(folder / "ratings.parquet")
    users.to_parquet(folder / "users.parquet")
    items.to_parquet(folder / "items.parquet")


WRITERS = {"ml-100k": _write_ml100k, "ml-1m": _write_ml1m, "parquet": _write_parquet}


@pytest.fixture(params=sorted(WRITERS))
def movielens_folder(request, tmp_path):
    WRITERS[request.param](tmp_path, *_source())
    return request.param, tmp_path


def _all_rows(dataset, name):
    return np.concatenate([getattr(dataset, s).features[name] for s in ("train", "valid", "test")])


def test_every_layout_loads_a_valid_dataset_with_user_item_and_history_features(movielens_folder):
    layout, folder = movielens_folder
    dataset = load_movielens(folder)
    schema = dataset.schema
    assert dataset.name == f"movielens-{layout}"
    assert set(schema.features_on("user")) == {
        "user_id",
        "gender",
        "age",
        "occupation",
        "zip",
        "hist_item_ids",
    }
    assert set(schema.features_on("item")) == {"item_id", "genres"}
    assert schema.sparse_feature("genres").max_len == 3
    (history,) = schema.sequence
    assert (history.name, history.shares_embedding_with, history.max_len) == ("hist_item_ids", "item_id", 20)
    assert schema.group_id == "session_id"
    ratings = _source()[0]
    assert len(dataset.train) + len(dataset.valid) + len(dataset.test) == len(ratings)
    all_labels = np.concatenate([dataset.train.labels, dataset.valid.labels, dataset.test.labels])
    assert all_labels.sum() == (ratings["rating"] >= 4.0).sum()
    for table in (dataset.train, dataset.valid, dataset.test):
        schema.validate_batch(table.features)
    # labels come from user and item biases, so item ids carry signal (per-item positive rate ranks rows)
    train = dataset.train
    rate = np.bincount(train.features["item_id"], weights=train.labels) / np.maximum(
        np.bincount(train.features["item_id"]), 1
    )
    assert auc(train.labels, rate[train.features["item_id"]]) > 0.6


def test_all_layouts_give_the_same_rows_and_vocabularies(tmp_path):
    loaded = {}
    for layout, write in WRITERS.items():
        folder = tmp_path / layout
        folder.mkdir()
        write(folder, *_source())
        loaded[layout] = load_movielens(folder)
    reference = loaded["ml-100k"]
    for dataset in loaded.values():
        assert sorted(dataset.schema.sparse, key=str) == sorted(reference.schema.sparse, key=str)
        assert dataset.schema.sequence == reference.schema.sequence
        np.testing.assert_array_equal(dataset.test.labels, reference.test.labels)
        np.testing.assert_array_equal(dataset.test.timestamps, reference.test.timestamps)
        for name in ("item_id", "hist_item_ids", "gender"):
            np.testing.assert_array_equal(dataset.test.features[name], reference.test.features[name])
        # u.item lists genres in flag order, the other layouts in their own order: same set per row
        genres = np.sort(dataset.test.features["genres"], axis=1)
        np.testing.assert_array_equal(genres, np.sort(reference.test.features["genres"], axis=1))


def test_history_holds_only_earlier_positive_items_most_recent_last(movielens_folder):
    _, folder = movielens_folder
    dataset = load_movielens(folder, history_length=2)
    vocab = dataset.info["vocabularies"]
    hand_id = vocab["user_id"].encode([HAND_USER])[0]
    assert hand_id >= FIRST_ID
    users = _all_rows(dataset, "user_id")
    stamps = np.concatenate([dataset.train.timestamps, dataset.valid.timestamps, dataset.test.timestamps])
    history = _all_rows(dataset, "hist_item_ids")
    items = vocab["item_id"]
    seen = {}
    for row in np.flatnonzero(users == hand_id):
        decoded = [items.values[i - FIRST_ID] for i in history[row] if i != PAD_ID]
        seen.setdefault(int(stamps[row] - HAND_DAY), []).append(decoded)
    # item 11 was rated 2 (negative); 12 and 13 share a timestamp, so neither is in the other's history
    assert seen == {100: [[]], 200: [["10"]], 300: [["10"], ["10"]], 400: [["12", "13"]]}
    assert history[users == hand_id][0].tolist() == [PAD_ID, PAD_ID]


def test_positive_history_on_a_hand_made_table():
    users = np.array([0, 0, 1, 0, 0, 1])
    stamps = np.array([10, 20, 20, 30, 30, 40])
    labels = np.array([1, 1, 1, 0, 1, 1])
    items = np.array([5, 6, 7, 8, 9, 5])
    history = positive_history(users, stamps, labels, items, 3)
    assert history.tolist() == [[-1, -1, -1], [-1, -1, 5], [-1, -1, -1], [-1, 5, 6], [-1, 5, 6], [-1, -1, 7]]


def test_attributes_and_genres_are_joined_to_each_row(movielens_folder):
    _, folder = movielens_folder
    dataset = load_movielens(folder)
    vocab = dataset.info["vocabularies"]
    train = dataset.train
    hand_rows = np.flatnonzero(train.features["user_id"] == vocab["user_id"].encode([HAND_USER])[0])
    assert {vocab["gender"].values[i - FIRST_ID] for i in train.features["gender"][hand_rows]} == {"F"}
    item_10 = hand_rows[train.features["item_id"][hand_rows] == vocab["item_id"].encode([10])[0]][0]
    genres = {vocab["genres"].values[i - FIRST_ID] for i in train.features["genres"][item_10] if i != PAD_ID}
    assert genres == {"Romance", "Sci-Fi"}  # item 10: GENRES[4], GENRES[5]


def test_time_split_keeps_sessions_whole_and_unseen_items_are_oov_in_test(movielens_folder):
    _, folder = movielens_folder
    dataset = load_movielens(folder)
    splits = (dataset.train, dataset.valid, dataset.test)
    groups = [set(t.groups.tolist()) for t in splits]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    starts = [pd.Series(t.timestamps).groupby(t.groups).min() for t in splits]
    assert starts[0].max() <= starts[1].min() and starts[1].max() <= starts[2].min()
    for table in splits:  # a session is one user on one day
        frame = pd.DataFrame(
            {"g": table.groups, "u": table.features["user_id"], "d": table.timestamps // DAY}
        )
        assert (frame.groupby("g")[["u", "d"]].nunique() == 1).all().all()
    assert "77" not in dataset.info["vocabularies"]["item_id"].values
    assert (dataset.test.features["item_id"] == OOV_ID).sum() >= 6


def test_positive_threshold_sets_the_labels(tmp_path):
    _write_ml1m(tmp_path, *_source())
    strict = load_movielens(tmp_path, positive_threshold=5.0)
    ratings = _source()[0]
    total = sum(t.labels.sum() for t in (strict.train, strict.valid, strict.test))
    assert total == (ratings["rating"] >= 5.0).sum()


def test_missing_folder_or_ratings_file_is_explained(tmp_path):
    with pytest.raises(AutocompressError, match="does not exist"):
        load_movielens(tmp_path / "nope")
    with pytest.raises(
        AutocompressError, match=r"looked for u\.data \(ml-100k\), ratings\.dat \(ml-1m\), ratings\.parquet"
    ):
        load_movielens(tmp_path)


def test_a_bad_rating_is_named_with_its_file(tmp_path):
    (tmp_path / "u.data").write_text("1\t2\t5\t100\n1\t3\tfive\t200\n")
    with pytest.raises(AutocompressError, match=r"u\.data: row 2: rating 'five' is not a number"):
        load_movielens(tmp_path)
