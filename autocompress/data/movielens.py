"""MovieLens ratings as a click-through task with user/item features and a behaviour history.

A folder holds one of three layouts: ml-100k (``u.data``, optional ``u.user`` and ``u.item``),
ml-1m (``ratings.dat``, optional ``users.dat`` and ``movies.dat``) or Parquet
(``ratings.parquet`` with user_id, item_id, rating, timestamp; optional ``users.parquet`` and
``items.parquet`` with a '|'-separated ``genres`` column). A rating >= ``positive_threshold`` is a
positive. Each row carries ``hist_item_ids``: the user's last ``history_length`` positively rated
items strictly before the row's timestamp (most recent last), which DIN-style models attend over.
Rows are grouped into sessions (user x day) for GAUC and for splits that keep sessions whole.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from autocompress.data.splits import SplitMethod, split
from autocompress.data.table import Dataset, Table
from autocompress.data.vocab import (
    SequenceEncoding,
    SparseEncoding,
    canonical_strings,
    encode_splits,
    split_delimited,
)
from autocompress.errors import AutocompressError

# the 19 genre flags at the end of a ml-100k u.item line, in file order (as listed in u.genre)
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
SECONDS_PER_DAY = 86_400
_RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


@dataclass
class _Tables:
    """What a layout reader returns: ratings, and user / item attributes when the folder has them."""

    layout: str
    ratings: pd.DataFrame
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None


def load_movielens(
    path: str | Path,
    *,
    positive_threshold: float = 4.0,
    history_length: int = 20,
    split_method: SplitMethod = "time",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    min_frequency: int = 1,
) -> Dataset:
    """Load a MovieLens folder (ml-100k, ml-1m or Parquet layout), split it and encode it.

    Features: ``user_id`` and user attributes (side user), ``item_id`` and multi-hot ``genres``
    (side item), ``hist_item_ids`` (side user, sharing the ``item_id`` embedding); group id
    ``session_id`` (user x day). Vocabularies keep values seen ``min_frequency`` times in train.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise AutocompressError(f"MovieLens folder {str(folder)!r} does not exist (or is not a folder)")
    if not isinstance(history_length, int) or history_length < 1:
        raise AutocompressError(f"history_length must be an integer >= 1, got {history_length!r}")
    tables = _read_folder(folder)
    ratings = tables.ratings
    if ratings.empty:
        raise AutocompressError(f"MovieLens folder {str(folder)!r}: the ratings file has no rows")
    ratings = ratings.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)

    user_ids = ratings["user_id"].to_numpy()
    item_ids = ratings["item_id"].to_numpy()
    timestamps = ratings["timestamp"].to_numpy(dtype=np.int64)
    labels = (ratings["rating"].to_numpy(dtype=np.float64) >= positive_threshold).astype(np.float32)
    user_codes = pd.factorize(canonical_strings(user_ids))[0]
    item_codes, item_uniques = pd.factorize(item_ids)
    history_codes = positive_history(user_codes, timestamps, labels, item_codes, history_length)
    padding = _padding_marker(np.asarray(item_uniques))
    history = np.asarray(item_uniques)[history_codes]  # code -1 picks an item; replaced by padding next
    history[history_codes < 0] = padding

    features: dict[str, np.ndarray] = {"user_id": user_ids, "item_id": item_ids, "hist_item_ids": history}
    sparse = [
        SparseEncoding("user_id", side="user", min_frequency=min_frequency),
        SparseEncoding("item_id", side="item", min_frequency=min_frequency),
    ]
    if tables.users is not None:
        attributes = _attributes_of(tables.users, "user_id", user_ids, f"{folder}: users file")
        for name, column in attributes.items():
            features[name] = column
            sparse.append(SparseEncoding(name, side="user", min_frequency=min_frequency))
    if tables.items is not None:
        attributes = _attributes_of(tables.items, "item_id", item_ids, f"{folder}: items file")
        attributes.pop("title", None)  # unique per item: it would only repeat item_id
        for name, column in attributes.items():
            if name == "genres":
                genres = split_delimited(column, "|")
                width = genres.shape[1]
                features[name] = genres if width > 1 else genres[:, 0]  # one genre per item: single-hot
                sparse.append(SparseEncoding(name, side="item", min_frequency=min_frequency, max_len=width))
            else:
                features[name] = column
                sparse.append(SparseEncoding(name, side="item", min_frequency=min_frequency))

    raw = Table(
        features=features, labels=labels, groups=_sessions(user_codes, timestamps), timestamps=timestamps
    )
    return encode_splits(
        f"movielens-{tables.layout}",
        split(raw, method=split_method, fractions=fractions, seed=seed),
        sparse=sparse,
        sequence=[
            SequenceEncoding(
                "hist_item_ids",
                shares_embedding_with="item_id",
                max_len=history_length,
                side="user",
                padding=padding,
            )
        ],
        group_id="session_id",
        info={
            "source": str(folder),
            "format": f"movielens-{tables.layout}",
            "rows": len(ratings),
            "positive_threshold": positive_threshold,
            "positive_rate": float(labels.mean()),
        },
    )


def positive_history(
    user_codes: np.ndarray,
    timestamps: np.ndarray,
    labels: np.ndarray,
    item_codes: np.ndarray,
    length: int,
) -> np.ndarray:
    """For each row, the item codes of its user's last ``length`` positives strictly before its time.

    Returns ``[rows, length]`` int64, right-aligned (most recent last), -1 where there is none. It
    sorts once and slices with ``searchsorted``, so it costs O(rows log rows + rows x length).
    """
    n = len(timestamps)
    time_rank = np.unique(timestamps, return_inverse=True)[1].astype(np.int64)
    key = user_codes.astype(np.int64) * (n + 1) + time_rank
    positives = np.flatnonzero(labels > 0.5)
    positives = positives[np.argsort(key[positives], kind="stable")]
    positive_keys = key[positives]
    positive_items = np.asarray(item_codes, dtype=np.int64)[positives]
    end = np.searchsorted(positive_keys, key, side="left")  # positives earlier than the row
    start = np.searchsorted(positive_keys, user_codes.astype(np.int64) * (n + 1), side="left")
    history = np.full((n, length), -1, dtype=np.int64)
    for column in range(length):
        index = end - (length - column)
        present = index >= start
        history[present, column] = positive_items[index[present]]
    return history


def _sessions(user_codes: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """A session id per row: one per (user, calendar day of the timestamp)."""
    day = timestamps // SECONDS_PER_DAY
    day = day - day.min()
    return pd.factorize(user_codes.astype(np.int64) * (int(day.max()) + 1) + day)[0].astype(np.int64)


def _padding_marker(item_uniques: np.ndarray) -> object:
    """A raw value that is no item id, marking the empty slots of the history matrix."""
    if item_uniques.dtype.kind in "iu":
        return -1 if item_uniques.size == 0 or item_uniques.min() >= 0 else int(item_uniques.min()) - 1
    return ""


def _attributes_of(table: pd.DataFrame, key: str, ids: np.ndarray, where: str) -> dict[str, np.ndarray]:
    """Columns of an attribute table looked up for each id (missing ids give missing values)."""
    keys = pd.Index(canonical_strings(table[key].to_numpy()), dtype=object)
    if not keys.is_unique:
        duplicated = sorted(set(keys[keys.duplicated()]))[:5]
        raise AutocompressError(f"{where}: {key} values {duplicated} appear more than once")
    rows = keys.get_indexer(canonical_strings(ids))
    out: dict[str, np.ndarray] = {}
    for name in table.columns:
        if name == key:
            continue
        values = np.append(table[name].to_numpy(dtype=object), np.array([None], dtype=object))
        out[str(name)] = values[rows]  # row -1 picks the appended None
    return out


def _read_folder(folder: Path) -> _Tables:
    layouts = (
        ("u.data", _read_ml100k, "ml-100k"),
        ("ratings.dat", _read_ml1m, "ml-1m"),
        ("ratings.parquet", _read_parquet, "parquet"),
    )
    for file_name, reader, _ in layouts:
        if (folder / file_name).is_file():
            return reader(folder)
    looked_for = ", ".join(f"{file_name} ({layout})" for file_name, _, layout in layouts)
    raise AutocompressError(f"no MovieLens ratings file in {str(folder)!r}: looked for {looked_for}")


def _read_delimited(path: Path, names: list[str], separator: str, encoding: str = "utf-8") -> pd.DataFrame:
    """Read a header-less delimited file as strings; '::' (ml-1m) is turned into tabs first."""
    try:
        data = path.read_bytes()
        if separator == "::":
            data, separator = data.replace(b"::", b"\t"), "\t"
        return pd.read_csv(
            io.BytesIO(data),
            sep=separator,
            header=None,
            names=names,
            dtype=object,
            encoding=encoding,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            engine="c",
        )
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise AutocompressError(f"{path}: cannot be read as {separator!r}-separated fields: {exc}") from None


def _numeric_ratings(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Check the four rating columns and make rating float and timestamp int64 seconds."""
    missing = [c for c in _RATING_COLUMNS if c not in frame.columns]
    if missing:
        raise AutocompressError(
            f"{path}: missing column(s) {missing} (needs {list(_RATING_COLUMNS)}, has {list(frame.columns)})"
        )
    frame = frame[list(_RATING_COLUMNS)].copy()
    for name in ("user_id", "item_id"):
        empty = frame[name].isna().to_numpy() | (canonical_strings(frame[name].to_numpy()) == "")
        if empty.any():
            raise AutocompressError(f"{path}: row {int(np.flatnonzero(empty)[0]) + 1}: {name} is empty")
    rating = pd.to_numeric(frame["rating"], errors="coerce")
    _refuse_non_numbers(frame["rating"], rating, path, "rating")
    frame["rating"] = rating.astype(np.float64)
    stamps = frame["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(stamps):
        utc = pd.to_datetime(stamps, utc=True)
        frame["timestamp"] = ((utc - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype(np.int64)
    else:
        numbers = pd.to_numeric(stamps, errors="coerce")
        _refuse_non_numbers(stamps, numbers, path, "timestamp")
        frame["timestamp"] = numbers.astype(np.int64)
    return frame


def _integer_ids(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Make the id columns of a text layout int64 (MovieLens ids are integers); refuse other ids."""
    for name in ("user_id", "item_id"):
        numbers = pd.to_numeric(frame[name], errors="coerce")
        _refuse_non_numbers(frame[name], numbers, path, name)
        frame[name] = numbers.astype(np.int64)
    return frame


def _refuse_non_numbers(raw: pd.Series, numbers: pd.Series, path: Path, column: str) -> None:
    bad = numbers.isna().to_numpy() | ~np.isfinite(numbers.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise AutocompressError(f"{path}: row {k + 1}: {column} {raw.iloc[k]!r} is not a number")


def _read_ml100k(folder: Path) -> _Tables:
    ratings_path = folder / "u.data"
    ratings = _numeric_ratings(_read_delimited(ratings_path, list(_RATING_COLUMNS), "\t"), ratings_path)
    ratings = _integer_ids(ratings, ratings_path)
    users = None
    if (folder / "u.user").is_file():
        users = _read_delimited(
            folder / "u.user", ["user_id", "age", "gender", "occupation", "zip"], "|", "latin-1"
        )
    items = None
    if (folder / "u.item").is_file():
        item_path = folder / "u.item"
        try:
            lines = item_path.read_bytes().decode("latin-1").splitlines()
        except OSError as exc:
            raise AutocompressError(f"{item_path}: cannot be read: {exc}") from None
        ids: list[str] = []
        genres: list[str] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split("|")
            flags = fields[-len(ML100K_GENRES) :]
            if len(fields) < len(ML100K_GENRES) + 1 or any(f not in ("0", "1") for f in flags):
                raise AutocompressError(
                    f"{item_path}: line {number}: expected movie id|title|...|{len(ML100K_GENRES)} genre "
                    "flags (0 or 1)"
                )
            ids.append(fields[0])
            genres.append("|".join(g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1"))
        items = pd.DataFrame({"item_id": ids, "genres": genres})
    return _Tables("ml-100k", ratings, users, items)


def _read_ml1m(folder: Path) -> _Tables:
    ratings_path = folder / "ratings.dat"
    ratings = _numeric_ratings(_read_delimited(ratings_path, list(_RATING_COLUMNS), "::"), ratings_path)
    ratings = _integer_ids(ratings, ratings_path)
    users = None
    if (folder / "users.dat").is_file():
        users = _read_delimited(
            folder / "users.dat", ["user_id", "gender", "age", "occupation", "zip"], "::", "latin-1"
        )
    items = None
    if (folder / "movies.dat").is_file():
        items = _read_delimited(folder / "movies.dat", ["item_id", "title", "genres"], "::", "latin-1")
    return _Tables("ml-1m", ratings, users, items)


def _read_parquet_file(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise AutocompressError(f"{path}: cannot be read as Parquet: {exc}") from None


def _read_parquet(folder: Path) -> _Tables:
    ratings_path = folder / "ratings.parquet"
    ratings = _numeric_ratings(_read_parquet_file(ratings_path), ratings_path)
    users = None
    if (folder / "users.parquet").is_file():
        users = _read_parquet_file(folder / "users.parquet")
        if "user_id" not in users.columns:
            raise AutocompressError(
                f"{folder / 'users.parquet'}: has no user_id column ({list(users.columns)})"
            )
    items = None
    if (folder / "items.parquet").is_file():
        items = _read_parquet_file(folder / "items.parquet")
        if "item_id" not in items.columns:
            raise AutocompressError(
                f"{folder / 'items.parquet'}: has no item_id column ({list(items.columns)})"
            )
    return _Tables("parquet", ratings, users, items)
