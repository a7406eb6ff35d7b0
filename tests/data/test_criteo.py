import gzip
import time

import numpy as np
import pytest

from autocompress.data.criteo import CRITEO_DENSE, CRITEO_SPARSE, load_criteo
from autocompress.data.schema import FIRST_ID, OOV_ID
from autocompress.errors import AutocompressError
from autocompress.measure.quality import auc

N_ROWS = 400


def _criteo_lines(n: int = N_ROWS, seed: int = 0) -> list[str]:
    """Rows in the real format whose clicks depend on I1 and C1.

    C2 is unique per row (all rare), C3 is often empty, I2 of row 3 is negative, and C4 changes
    value in the last tenth of the file (so its new value is unseen in train).
    """
    rng = np.random.default_rng(seed)
    c1_values = [f"{v:08x}" for v in (0xA1, 0xB2, 0xC3, 0xD4, 0xE5)]
    c1_effect = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    lines = []
    for row in range(n):
        i1 = int(rng.integers(0, 50))
        c1 = int(rng.integers(0, 5))
        click = rng.random() < 1.0 / (1.0 + np.exp(-(c1_effect[c1] + (i1 - 25) / 10.0)))
        dense = [str(i1)] + [
            "" if rng.random() < 0.2 else str(int(rng.integers(-2, 1000))) for _ in range(12)
        ]
        if row == 3:
            dense[1] = "-1"  # counts can be negative in the real data: log1p(max(x, 0)) makes them 0
        sparse = [c1_values[c1], f"{row:08x}", "" if rng.random() < 0.5 else "0000abcd"]
        sparse.append("11111111" if row < int(0.9 * n) else "99999999")
        sparse += [f"{int(rng.integers(0, 3)):08x}" for _ in range(22)]
        lines.append("\t".join([str(int(click)), *dense, *sparse]))
    return lines


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def criteo_file(tmp_path):
    return _write(tmp_path / "train.txt", _criteo_lines())


def test_loads_a_valid_dataset_with_the_criteo_feature_names(criteo_file):
    dataset = load_criteo(criteo_file)
    schema = dataset.schema
    assert [f.name for f in schema.dense] == list(CRITEO_DENSE) == [f"I{i}" for i in range(1, 14)]
    assert [f.name for f in schema.sparse] == list(CRITEO_SPARSE)
    assert {f.side for f in (*schema.dense, *schema.sparse)} == {"context"}
    assert len(dataset.train) + len(dataset.valid) + len(dataset.test) == N_ROWS
    for table in (dataset.train, dataset.valid, dataset.test):
        schema.validate_batch(table.features)
        assert table.features["I1"].dtype == np.float32 and table.features["C1"].dtype == np.int64
    # the labels depend on I1: the standardised feature ranks clicks well above chance
    assert auc(dataset.train.labels, dataset.train.features["I1"]) > 0.65


def test_min_frequency_drops_rare_values_and_the_empty_value_gets_its_own_id(criteo_file):
    dataset = load_criteo(criteo_file, min_frequency=10)
    vocab = dataset.info["vocabularies"]
    assert dataset.schema.sparse_feature("C1").vocab_size == 5 + FIRST_ID
    assert dataset.schema.sparse_feature("C2").vocab_size == FIRST_ID + 1  # every value unique: none kept
    assert set(dataset.train.features["C2"].tolist()) == {OOV_ID}
    assert set(vocab["C3"].values) == {"", "0000abcd"}
    assert vocab["C3"].encode([""])[0] >= FIRST_ID
    loose = load_criteo(criteo_file, min_frequency=1)
    assert loose.schema.sparse_feature("C2").vocab_size == len(loose.train) + FIRST_ID


def test_time_split_keeps_file_order_and_values_unseen_in_train_are_oov(criteo_file):
    lines = _criteo_lines()
    dataset = load_criteo(criteo_file)
    train, valid, test = dataset.train, dataset.valid, dataset.test
    assert train.timestamps.max() < valid.timestamps.min() <= valid.timestamps.max() < test.timestamps.min()
    assert len(train) == int(0.8 * N_ROWS)
    expected_test_labels = [float(line.split("\t")[0]) for line in lines[-len(test) :]]
    assert test.labels.tolist() == expected_test_labels
    assert set(test.features["C4"].tolist()) == {OOV_ID}  # "99999999" only appears after train
    assert set(train.features["C4"].tolist()) == {FIRST_ID}


def test_dense_missing_is_zero_then_log1p_and_train_standardised(criteo_file):
    dataset = load_criteo(criteo_file)
    i2 = dataset.train.features["I2"]
    assert abs(float(i2.mean())) < 1e-4 and float(i2.std()) == pytest.approx(1.0, rel=1e-3)
    scaler = dataset.info["dense_scalers"]["I2"]
    assert scaler.log1p
    lines = _criteo_lines()
    row = next(k for k, line in enumerate(lines) if line.split("\t")[2] == "")
    assert dataset.train.features["I2"][row] == pytest.approx(float(scaler.transform([0.0])[0]))
    assert dataset.train.features["I2"][3] == pytest.approx((0.0 - scaler.mean) / scaler.std, rel=1e-5)


def test_small_read_blocks_max_rows_and_gzip_give_the_same_rows(criteo_file, tmp_path):
    whole = load_criteo(criteo_file)
    blocks = load_criteo(criteo_file, chunk_bytes=2000)
    for name in ("I1", "C1", "C4"):
        np.testing.assert_array_equal(whole.train.features[name], blocks.train.features[name])
    np.testing.assert_array_equal(whole.test.labels, blocks.test.labels)
    first = load_criteo(criteo_file, max_rows=150, chunk_bytes=500)
    assert len(first.train) + len(first.valid) + len(first.test) == 150
    packed = tmp_path / "train.txt.gz"
    packed.write_bytes(gzip.compress(criteo_file.read_bytes()))
    np.testing.assert_array_equal(load_criteo(packed).train.features["C1"], whole.train.features["C1"])


@pytest.mark.parametrize(
    ("line_number", "broken", "expected"),
    [
        (7, lambda f: f[:-1], "line 7: expected 40 tab-separated fields"),
        (12, lambda f: [*f[:3], "1.5", *f[4:]], "line 12: I3 is '1.5', expected an integer"),
        (5, lambda f: ["2", *f[1:]], "line 5: label is '2', expected 0 or 1"),
        (250, lambda f: [*f[:2], "abc", *f[3:]], "line 250: I2 is 'abc'"),
    ],
)
def test_malformed_lines_are_reported_with_file_and_line_number(tmp_path, line_number, broken, expected):
    lines = _criteo_lines()
    lines[line_number - 1] = "\t".join(broken(lines[line_number - 1].split("\t")))
    path = _write(tmp_path / "bad.tsv", lines)
    with pytest.raises(AutocompressError, match=expected) as error:
        load_criteo(path, chunk_bytes=1000)  # several blocks: line numbers must count across them
    assert "bad.tsv" in str(error.value)


def test_missing_or_empty_file_is_named(tmp_path):
    with pytest.raises(AutocompressError, match=r"nowhere\.tsv' does not exist"):
        load_criteo(tmp_path / "nowhere.tsv")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(AutocompressError, match="has no rows"):
        load_criteo(tmp_path / "empty.tsv")


@pytest.mark.slow
def test_two_hundred_thousand_lines_load_in_seconds(tmp_path):
    block = ("\n".join(_criteo_lines(1000, seed=1)) + "\n").encode()
    path = tmp_path / "big.tsv"
    path.write_bytes(block * 200)
    start = time.perf_counter()
    dataset = load_criteo(path)
    elapsed = time.perf_counter() - start
    assert len(dataset.train) + len(dataset.valid) + len(dataset.test) == 200_000
    assert elapsed < 30.0, f"load_criteo took {elapsed:.1f}s for 200k lines"
