"""The embedded default dataset: a synthetic e-commerce search log with a known ground truth.

A session is a user issuing a query (a category intent) and seeing ``items_per_session``
candidate items at positions ranked by a noisy production ranker. Users have an id, age bucket,
gender, city tier and purchase power; items have an id, category, brand (with a price tier),
price and Zipf-distributed popularity; every row carries the user's last clicked items (the
behaviour sequence, updated as sessions go by). A click is drawn from a hidden logit built from
real interactions (user x category affinity, query intent match, price sensitivity x price,
brand tier x purchase power, position bias, popularity, behaviour-sequence similarity) plus
noise. The noise-free logit scored on the test split gives the **oracle AUC**, the quality
ceiling a report compares every model against.

Rows are produced in chunks of sessions (``iter_chunks``) so that large scales (1M items, 10M
rows) can be streamed to Parquet without holding more than one chunk of rows at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from autocompress.data.schema import (
    FIRST_ID,
    PAD_ID,
    DenseFeature,
    FeatureSchema,
    SequenceFeature,
    SparseFeature,
)
from autocompress.data.splits import SplitMethod, split
from autocompress.data.table import Dataset, Table
from autocompress.errors import AutocompressError

N_AGE_BUCKETS = 7
N_GENDERS = 3
N_CITY_TIERS = 4
N_PURCHASE_POWER = 5
N_PRICE_BUCKETS = 10


@dataclass(frozen=True)
class SyntheticConfig:
    """Scale and shape of the generated log; every count must be positive.

    The default is the production-like scale every benchmark uses: embeddings dominate the bytes
    (200k items, 100k users). ``SyntheticConfig.tiny()`` is the size tests use.
    """

    n_users: int = 100_000
    n_items: int = 200_000
    n_categories: int = 100
    brands_per_category: int = 20
    n_rows: int = 1_000_000
    items_per_session: int = 10
    history_length: int = 20
    noise_std: float = 0.5
    seed: int = 0
    chunk_sessions: int = 20_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "seed":
                continue
            if f.name == "noise_std":
                if not isinstance(value, int | float) or value < 0:
                    raise AutocompressError(f"synthetic.noise_std must be >= 0, got {value!r}")
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise AutocompressError(f"synthetic.{f.name} must be a positive integer, got {value!r}")
        if self.n_rows < 10 * self.items_per_session:
            raise AutocompressError(
                f"synthetic.n_rows must be at least 10 sessions ({10 * self.items_per_session} rows), "
                f"got {self.n_rows}"
            )

    @classmethod
    def tiny(cls, **overrides: Any) -> SyntheticConfig:
        """A few thousand rows over a small catalogue: fast enough for unit tests."""
        base: dict[str, Any] = dict(
            n_users=2_000,
            n_items=3_000,
            n_categories=12,
            brands_per_category=5,
            n_rows=40_000,
            chunk_sessions=1_000,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyntheticConfig:
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise AutocompressError(f"synthetic: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def n_sessions(self) -> int:
        return math.ceil(self.n_rows / self.items_per_session)


def synthetic_schema(config: SyntheticConfig) -> FeatureSchema:
    """The FeatureSchema of the generated log (ids offset by FIRST_ID; 0 pads, 1 is OOV)."""
    n_brands = config.n_categories * config.brands_per_category
    return FeatureSchema(
        dense=(
            DenseFeature("item_price", side="item"),
            DenseFeature("hour_of_day", side="context"),
        ),
        sparse=(
            SparseFeature("user_id", config.n_users + FIRST_ID, side="user"),
            SparseFeature("user_age_bucket", N_AGE_BUCKETS + FIRST_ID, side="user"),
            SparseFeature("user_gender", N_GENDERS + FIRST_ID, side="user"),
            SparseFeature("user_city_tier", N_CITY_TIERS + FIRST_ID, side="user"),
            SparseFeature("user_purchase_power", N_PURCHASE_POWER + FIRST_ID, side="user"),
            SparseFeature("query_category", config.n_categories + FIRST_ID, side="context"),
            SparseFeature("position", config.items_per_session + FIRST_ID, side="context"),
            SparseFeature("item_id", config.n_items + FIRST_ID, side="item"),
            SparseFeature("item_category", config.n_categories + FIRST_ID, side="item"),
            SparseFeature("item_brand", n_brands + FIRST_ID, side="item"),
            SparseFeature("item_price_bucket", N_PRICE_BUCKETS + FIRST_ID, side="item"),
        ),
        sequence=(
            SequenceFeature("hist_item_ids", "item_id", config.history_length, side="user"),
            SequenceFeature("hist_categories", "item_category", config.history_length, side="user"),
        ),
        label="click",
        group_id="session_id",
    )


class _World:
    """The hidden catalogue and population: everything the click model knows and the data hides."""

    def __init__(self, config: SyntheticConfig, rng: np.random.Generator) -> None:
        c = config
        self.config = c
        n_brands = c.n_categories * c.brands_per_category
        # users
        self.age = rng.integers(0, N_AGE_BUCKETS, c.n_users)
        self.gender = rng.integers(0, N_GENDERS, c.n_users)
        self.city = rng.integers(0, N_CITY_TIERS, c.n_users)
        self.power = rng.integers(0, N_PURCHASE_POWER, c.n_users)
        self.price_sensitivity = 1.0 - self.power / (N_PURCHASE_POWER - 1) + rng.normal(0, 0.15, c.n_users)
        self.demo_affinity = rng.normal(0.0, 0.8, (N_AGE_BUCKETS, N_GENDERS, c.n_categories))
        self.favourites = rng.integers(0, c.n_categories, (c.n_users, 2))
        self.activity = rng.lognormal(0.0, 1.0, c.n_users)
        self.activity /= self.activity.sum()
        # items: category by a Zipf-like share, brand within category, price from brand tier
        cat_share = 1.0 / np.arange(1, c.n_categories + 1) ** 0.7
        self.category = rng.choice(c.n_categories, c.n_items, p=cat_share / cat_share.sum())
        self.brand = self.category * c.brands_per_category + rng.integers(0, c.brands_per_category, c.n_items)
        self.brand_tier = rng.integers(0, N_PURCHASE_POWER, n_brands)
        category_price = rng.normal(3.0, 0.6, c.n_categories)
        self.log_price = (
            category_price[self.category]
            + 0.35 * self.brand_tier[self.brand]
            + rng.normal(0, 0.25, c.n_items)
        )
        self.price_z = (self.log_price - self.log_price.mean()) / (self.log_price.std() + 1e-9)
        edges = np.quantile(self.price_z, np.linspace(0, 1, N_PRICE_BUCKETS + 1)[1:-1])
        self.price_bucket = np.searchsorted(edges, self.price_z)
        popularity = 1.0 / rng.permutation(np.arange(1, c.n_items + 1)) ** 1.05
        log_pop = np.log(popularity)
        self.popularity_z = (log_pop - log_pop.mean()) / (log_pop.std() + 1e-9)
        # sampling by popularity within a category: items sorted by category, one global cumsum
        self.by_category = np.argsort(self.category, kind="stable")
        sorted_pop = popularity[self.by_category]
        self.cum_pop = np.cumsum(sorted_pop)
        counts = np.bincount(self.category, minlength=c.n_categories)
        self.cat_end = np.cumsum(counts)
        self.cat_start = self.cat_end - counts
        self.global_cum_pop = np.cumsum(popularity)

    def affinity(self, users: np.ndarray) -> np.ndarray:
        """User x category affinity [len(users), n_categories]: demographics plus two favourites."""
        aff = self.demo_affinity[self.age[users], self.gender[users]].copy()
        rows = np.arange(len(users))[:, None]
        aff[rows, self.favourites[users]] += 1.5
        return aff

    def sample_categories(self, users: np.ndarray, per_user: int, rng: np.random.Generator) -> np.ndarray:
        """Categories drawn from each user's affinity (Gumbel-max), shape [len(users), per_user]."""
        aff = self.affinity(users)[:, None, :]
        gumbel = rng.gumbel(size=(len(users), per_user, aff.shape[-1]))
        return np.argmax(aff * 1.5 + gumbel, axis=-1)

    def sample_items_in(self, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of ``categories``, by popularity within that category."""
        start, end = self.cat_start[categories], self.cat_end[categories]
        empty = end == start
        lo = np.where(start > 0, self.cum_pop[np.maximum(start - 1, 0)], 0.0)
        hi = self.cum_pop[np.maximum(end - 1, 0)]
        draw = lo + rng.random(categories.shape) * (hi - lo)
        pos = np.clip(np.searchsorted(self.cum_pop, draw, side="right"), start, np.maximum(end - 1, start))
        items = self.by_category[np.minimum(pos, len(self.by_category) - 1)]
        if empty.any():
            items[empty] = self.sample_items_anywhere(int(empty.sum()), rng)
        return items

    def sample_items_anywhere(self, n: int, rng: np.random.Generator) -> np.ndarray:
        draw = rng.random(n) * self.global_cum_pop[-1]
        return np.minimum(np.searchsorted(self.global_cum_pop, draw, side="right"), self.config.n_items - 1)


def _history_similarity(
    world: _World, hist_items: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Share of the history in the candidate's category, and whether its brand was clicked before."""
    valid = hist_items >= 0
    length = np.maximum(valid.sum(axis=1), 1)
    hist_cat = np.where(valid, world.category[np.maximum(hist_items, 0)], -1)
    hist_brand = np.where(valid, world.brand[np.maximum(hist_items, 0)], -1)
    same_cat = (hist_cat == world.category[items][:, None]).sum(axis=1) / length
    same_brand = (hist_brand == world.brand[items][:, None]).any(axis=1)
    return same_cat, same_brand.astype(np.float64)


def iter_chunks(config: SyntheticConfig) -> Iterator[tuple[Table, np.ndarray]]:
    """Yield ``(table, oracle_logits)`` chunks of whole sessions in time order.

    The behaviour sequence of a row holds only clicks from earlier chunks' sessions (and the
    user's pre-period history), never clicks of its own or a later session.
    """
    c = config
    rng = np.random.default_rng(c.seed)
    world = _World(c, rng)
    L, N = c.history_length, c.items_per_session
    # pre-period history: a random length per user, items from the user's affinity; -1 = empty
    history = np.full((c.n_users, L), -1, dtype=np.int64)
    for lo in range(0, c.n_users, 50_000):
        users = np.arange(lo, min(lo + 50_000, c.n_users))
        cats = world.sample_categories(users, L, rng)
        items = world.sample_items_in(cats.ravel(), rng).reshape(len(users), L)
        lengths = rng.integers(0, L + 1, len(users))
        items[np.arange(L)[None, :] < (L - lengths)[:, None]] = -1
        history[users] = items
    seconds_per_session = 86_400 * 30 / c.n_sessions  # a month of traffic
    rows_left = c.n_rows
    session0 = 0
    while rows_left > 0:
        n_sess = min(c.chunk_sessions, math.ceil(rows_left / N))
        sessions = np.arange(session0, session0 + n_sess)
        users = rng.choice(c.n_users, n_sess, p=world.activity)
        intent = world.sample_categories(users, 1, rng)[:, 0]
        # candidates: 70% from the intent category, the rest from anywhere, by popularity
        from_intent = rng.random((n_sess, N)) < 0.7
        cand = np.where(
            from_intent,
            world.sample_items_in(np.repeat(intent, N).reshape(n_sess, N), rng),
            world.sample_items_anywhere(n_sess * N, rng).reshape(n_sess, N),
        )
        # the production ranker orders candidates by a noisy relevance; position = rank
        ranker = (world.category[cand] == intent[:, None]) * 1.0 + 0.5 * world.popularity_z[cand]
        ranker = ranker + rng.normal(0, 1.0, ranker.shape)
        order = np.argsort(-ranker, axis=1)
        cand = np.take_along_axis(cand, order, axis=1)
        position = np.tile(np.arange(N), (n_sess, 1))

        row_user = np.repeat(users, N)
        row_item = cand.ravel()
        row_pos = position.ravel()
        row_intent = np.repeat(intent, N)
        row_hist = history[row_user]
        aff = world.affinity(users)
        row_aff = np.repeat(aff, N, axis=0)[np.arange(n_sess * N), world.category[row_item]]
        same_cat, same_brand = _history_similarity(world, row_hist, row_item)
        tier_gap = np.abs(world.brand_tier[world.brand[row_item]] - world.power[row_user]) / 2.0
        logit = (
            -5.0
            + 0.9 * row_aff
            + 1.2 * (world.category[row_item] == row_intent)
            - 0.9 * world.price_sensitivity[row_user] * world.price_z[row_item]
            - 0.6 * tier_gap
            - 0.5 * np.log1p(row_pos)
            + 0.35 * world.popularity_z[row_item]
            + 1.2 * same_cat
            + 0.4 * same_brand
        )
        noisy = logit + rng.normal(0.0, c.noise_std, logit.shape)
        clicks = (rng.random(logit.shape) < 1.0 / (1.0 + np.exp(-noisy))).astype(np.float32)

        times = ((sessions + rng.random(n_sess)) * seconds_per_session).astype(np.int64)
        row_time = np.repeat(times, N)
        hist_ids = np.where(row_hist >= 0, row_hist + FIRST_ID, PAD_ID)
        hist_cats = np.where(row_hist >= 0, world.category[np.maximum(row_hist, 0)] + FIRST_ID, PAD_ID)
        features = {
            "item_price": world.price_z[row_item].astype(np.float32),
            "hour_of_day": (((row_time // 3600) % 24 - 11.5) / 6.9).astype(np.float32),
            "user_id": row_user + FIRST_ID,
            "user_age_bucket": world.age[row_user] + FIRST_ID,
            "user_gender": world.gender[row_user] + FIRST_ID,
            "user_city_tier": world.city[row_user] + FIRST_ID,
            "user_purchase_power": world.power[row_user] + FIRST_ID,
            "query_category": row_intent + FIRST_ID,
            "position": row_pos + FIRST_ID,
            "item_id": row_item + FIRST_ID,
            "item_category": world.category[row_item] + FIRST_ID,
            "item_brand": world.brand[row_item] + FIRST_ID,
            "item_price_bucket": world.price_bucket[row_item] + FIRST_ID,
            "hist_item_ids": hist_ids,
            "hist_categories": hist_cats,
        }
        features = {k: v.astype(np.int64) if v.dtype.kind == "i" else v for k, v in features.items()}
        take = min(rows_left, n_sess * N)
        table = Table(
            features=features, labels=clicks, groups=np.repeat(sessions, N), timestamps=row_time
        ).head(take)
        yield table, logit[:take].astype(np.float32)

        # behaviour sequences move on: append this chunk's clicks, in time order, per user
        clicked = np.flatnonzero(clicks[:take] > 0)
        clicked = clicked[np.argsort(row_time[clicked], kind="stable")]
        for u, item in zip(row_user[clicked].tolist(), row_item[clicked].tolist(), strict=True):
            h = history[u]
            h[:-1] = h[1:]
            h[-1] = item
        rows_left -= take
        session0 += n_sess


def load_synthetic(
    config: SyntheticConfig | None = None,
    *,
    split_method: SplitMethod = "time",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> Dataset:
    """Generate the whole log in memory and split it (by time by default; sessions never straddle)."""
    config = config or SyntheticConfig()
    tables, logits = zip(*iter_chunks(config), strict=True)
    whole = _concat(list(tables))
    oracle = np.concatenate(logits)
    whole.features["_row"] = np.arange(len(whole))
    train, valid, test = split(whole, split_method, fractions, seed=config.seed)
    test_oracle = oracle[test.features["_row"]]
    for t in (train, valid, test):
        del t.features["_row"]
    return Dataset(
        name="synthetic",
        schema=synthetic_schema(config),
        train=train,
        valid=valid,
        test=test,
        oracle_test_scores=test_oracle,
        info={"generator": config.to_dict(), "ctr": float(np.mean(whole.labels))},
    )


def _concat(tables: list[Table]) -> Table:
    first = tables[0]
    return Table(
        features={k: np.concatenate([t.features[k] for t in tables]) for k in first.features},
        labels=np.concatenate([t.labels for t in tables]),
        groups=np.concatenate([t.groups for t in tables if t.groups is not None]),
        timestamps=np.concatenate([t.timestamps for t in tables if t.timestamps is not None]),
    )


def write_parquet(config: SyntheticConfig, out_dir: str | Path) -> dict[str, Any]:
    """Stream the log to ``out_dir/data.parquet`` chunk by chunk, with ``schema.json``.

    Columns: every feature (sequences as lists), the label, ``session_id``, ``timestamp`` and the
    hidden ``oracle_logit``. Memory stays at one chunk of sessions whatever ``n_rows`` is.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from autocompress.measure.quality import auc

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AutocompressError(f"output folder {str(out)!r} cannot be created: {exc.strerror}") from None
    schema = synthetic_schema(config)
    writer: pq.ParquetWriter | None = None
    rows, clicks, sessions = 0, 0.0, 0
    labels, logits = [], []
    try:
        for table, logit in iter_chunks(config):
            columns: dict[str, Any] = {}
            for name, col in table.features.items():
                columns[name] = pa.array(list(col)) if col.ndim == 2 else pa.array(col)
            columns[schema.label] = pa.array(table.labels)
            columns["session_id"] = pa.array(table.groups)
            columns["timestamp"] = pa.array(table.timestamps)
            columns["oracle_logit"] = pa.array(logit)
            batch = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(out / "data.parquet", batch.schema)
            writer.write_table(batch)
            rows += len(table)
            clicks += float(table.labels.sum())
            sessions += len(np.unique(table.groups)) if table.groups is not None else 0
            labels.append(table.labels)
            logits.append(logit)
    finally:
        if writer is not None:
            writer.close()
    (out / "schema.json").write_text(schema.to_json())
    (out / "generator.json").write_text(json.dumps(config.to_dict(), indent=2))
    return {
        "rows": rows,
        "sessions": sessions,
        "ctr": clicks / max(rows, 1),
        "oracle_auc": auc(np.concatenate(labels), np.concatenate(logits)),
    }
