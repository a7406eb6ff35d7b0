import numpy as np
import pytest

from autocompress.data import Table, split
from autocompress.errors import AutocompressError


def _table(n: int = 1000) -> Table:
    rng = np.random.default_rng(0)
    groups = np.sort(rng.integers(0, 150, n))
    return Table(
        features={"x": rng.standard_normal(n).astype(np.float32)},
        labels=rng.integers(0, 2, n),
        groups=groups,
        timestamps=groups * 10 + rng.integers(0, 5, n),
    )


@pytest.mark.parametrize("method", ["time", "session"])
def test_no_session_straddles_splits_and_no_row_is_lost(method):
    table = _table()
    train, valid, test = split(table, method, (0.7, 0.15, 0.15), seed=1)
    assert len(train) + len(valid) + len(test) == len(table)
    sets = [set(t.groups.tolist()) for t in (train, valid, test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert 0.6 < len(train) / len(table) < 0.8


def test_time_split_puts_the_past_in_train_and_the_future_in_test():
    train, valid, test = split(_table(), "time")
    assert train.timestamps.max() <= valid.timestamps.min() + 5
    assert valid.timestamps.max() <= test.timestamps.min() + 5
    assert np.median(train.timestamps) < np.median(test.timestamps)


def test_bad_split_arguments_are_named():
    with pytest.raises(AutocompressError, match="sum"):
        split(_table(), "time", (0.5, 0.1, 0.1))
    with pytest.raises(AutocompressError, match="'random' is not one of"):
        split(_table(), "random")  # type: ignore[arg-type]
    no_time = _table()
    no_time.timestamps = None
    with pytest.raises(AutocompressError, match="needs timestamps"):
        split(no_time, "time")
