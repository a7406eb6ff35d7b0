import numpy as np
import pytest

from autocompress.data import PAD_ID
from autocompress.data.synthetic import SyntheticConfig, iter_chunks, load_synthetic, synthetic_schema
from autocompress.errors import AutocompressError
from autocompress.measure.baselines import popularity_scores
from autocompress.measure.quality import auc


@pytest.fixture(scope="module")
def tiny():
    return load_synthetic(SyntheticConfig.tiny())


def test_deterministic_by_seed():
    a = load_synthetic(SyntheticConfig.tiny(n_rows=3000))
    b = load_synthetic(SyntheticConfig.tiny(n_rows=3000))
    c = load_synthetic(SyntheticConfig.tiny(n_rows=3000, seed=1))
    assert np.array_equal(a.test.labels, b.test.labels)
    assert np.array_equal(a.train.features["hist_item_ids"], b.train.features["hist_item_ids"])
    assert not np.array_equal(a.train.features["item_id"], c.train.features["item_id"])


def test_oracle_is_a_real_ceiling(tiny):
    oracle = tiny.oracle_auc
    assert oracle is not None and 0.75 < oracle < 0.95
    pop = auc(tiny.test.labels, popularity_scores(tiny.train, tiny.test, "item_id"))
    position = auc(tiny.test.labels, -tiny.test.features["position"])
    assert 0.55 < pop < oracle - 0.05
    assert 0.55 < position < oracle - 0.05  # position bias is real but far from all of the signal
    assert 0.05 < tiny.info["ctr"] < 0.35


def test_item_popularity_is_heavy_tailed(tiny):
    counts = np.sort(np.bincount(tiny.train.features["item_id"]))[::-1]
    top_share = counts[: len(counts) // 100].sum() / counts.sum()
    assert top_share > 0.15  # the top 1% of items take a large share of impressions (Zipf)


def test_history_only_holds_earlier_clicks():
    config = SyntheticConfig.tiny(n_rows=20_000, chunk_sessions=200)
    clicks_so_far: dict[int, list[int]] = {}
    first_chunk_seen = {}
    for chunk_no, (table, _) in enumerate(iter_chunks(config)):
        users = table.features["user_id"]
        hist = table.features["hist_item_ids"]
        for row in np.flatnonzero(np.isin(users, list(clicks_so_far)))[:200]:
            u = int(users[row])
            recent = [i for i in hist[row] if i != PAD_ID]
            earlier = clicks_so_far[u][-config.history_length :]
            # the tail of the history equals the user's clicks from earlier chunks
            n = min(len(earlier), len(recent))
            assert recent[len(recent) - n :] == earlier[len(earlier) - n :]
        for row in np.flatnonzero(table.labels > 0)[
            np.argsort(table.timestamps[table.labels > 0], kind="stable")
        ]:
            clicks_so_far.setdefault(int(users[row]), []).append(int(table.features["item_id"][row]))
            first_chunk_seen.setdefault(int(users[row]), chunk_no)
    assert any(c > 0 for c in first_chunk_seen.values())


def test_schema_matches_the_rows_and_sessions_stay_whole(tiny):
    schema = synthetic_schema(SyntheticConfig.tiny())
    assert tiny.schema == schema
    assert tiny.schema.vocab_size_of("hist_item_ids") == SyntheticConfig.tiny().n_items + 2
    groups = [set(t.groups.tolist()) for t in (tiny.train, tiny.valid, tiny.test)]
    assert not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert tiny.train.timestamps.max() <= tiny.test.timestamps.min()


def test_default_scale_is_production_like():
    config = SyntheticConfig()
    assert config.n_items >= 200_000 and config.n_users >= 100_000


@pytest.mark.parametrize("field", ["n_rows", "n_items", "items_per_session"])
def test_zero_or_negative_sizes_are_refused_by_name(field):
    with pytest.raises(AutocompressError, match=f"synthetic.{field} must be a positive integer"):
        SyntheticConfig.tiny(**{field: 0})
    with pytest.raises(AutocompressError, match=f"synthetic.{field}"):
        SyntheticConfig.tiny(**{field: -5})
