from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from autocompress.errors import AutocompressError
from autocompress.export import create_session, export_onnx
from autocompress.measure import LatencyReport, measure_latency
from autocompress.spec import Target
from tests.export.tiny_ranker import TinyRanker, tiny_schema


@pytest.fixture(scope="module")
def ranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("latency") / "ranker.onnx"
    export_onnx(TinyRanker(), tiny_schema(), path)
    return path


def test_one_row_per_batch_size_with_ordered_percentiles(ranker_path: Path) -> None:
    target = Target(batch_sizes=[1, 16, 128], warmup=3, repetitions=40, percentile=95)
    report = measure_latency(create_session(ranker_path, target), tiny_schema(), target)

    assert [row.batch_size for row in report.rows] == [1, 16, 128]
    for row in report.rows:
        assert 0 < row.p50_ms <= row.p95_ms <= row.p99_ms
        assert row.repetitions == 40
        assert row.mean_ms > 0 and row.std_ms >= 0
        assert row.cv == pytest.approx(row.std_ms / row.mean_ms)
        assert row.rows_per_second == pytest.approx(row.batch_size * 1000 / row.mean_ms)
    assert report.at(16) == report.rows[1].p95_ms  # the target's percentile
    assert report.at(128, 99) == report.rows[2].p99_ms
    assert report.at(1, 50) == report.rows[0].p50_ms


def test_max_seconds_bounds_the_measurement(ranker_path: Path) -> None:
    target = Target(batch_sizes=[1, 8], warmup=1_000_000, repetitions=1_000_000, max_seconds=0.05)
    started = time.perf_counter()
    report = measure_latency(create_session(ranker_path, target), tiny_schema(), target)
    elapsed = time.perf_counter() - started

    assert elapsed < 2 * 0.05 + 0.5  # two batch sizes, plus building the inputs
    for row in report.rows:
        assert 1 <= row.repetitions < 1_000_000


def test_report_refuses_unmeasured_points_and_serialises(ranker_path: Path) -> None:
    target = Target(batch_sizes=[4], warmup=0, repetitions=5)
    report = measure_latency(create_session(ranker_path, target), tiny_schema(), target)
    assert isinstance(report, LatencyReport)
    with pytest.raises(AutocompressError, match=r"batch_size 256 was not measured; measured: \[4\]"):
        report.at(256)
    with pytest.raises(AutocompressError, match=r"percentile 90 is not measured; allowed: \[50, 95, 99\]"):
        report.at(4, 90)

    assert report.load is None and not report.busy and report.busy_warning is None  # no busy check here
    assert report.rows[0].p99_over_p50 == report.rows[0].p99_ms / report.rows[0].p50_ms
    data = report.to_dict()
    assert data["load"] is None
    assert data["target"] == target.to_dict()
    assert data["rows"][0]["batch_size"] == 4 and data["rows"][0]["repetitions"] == 5
    assert set(data["rows"][0]) == {
        "batch_size",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "mean_ms",
        "std_ms",
        "cv",
        "repetitions",
        "rows_per_second",
    }


def test_torch_latency_is_measured_like_onnx_and_restores_threads():
    import torch

    from autocompress.measure import measure_torch_latency
    from autocompress.spec import Target
    from tests.export.tiny_ranker import TinyRanker, tiny_schema

    schema = tiny_schema()
    threads = torch.get_num_threads()
    report = measure_torch_latency(TinyRanker(), schema, Target(batch_sizes=[1, 32], repetitions=15))
    assert [r.batch_size for r in report.rows] == [1, 32]
    for row in report.rows:
        assert row.repetitions == 15
        assert 0 < row.p50_ms <= row.p95_ms <= row.p99_ms
    assert torch.get_num_threads() == threads


def test_a_burst_of_outside_load_spoils_one_round_not_the_percentile() -> None:
    from autocompress.measure.latency import _summarise

    ms = np.full(300, 1.0)
    ms[120:130] = 50.0  # ten slow runs in a row: a neighbour's burst, inside the second third
    single = _summarise(256, ms, rounds=1)
    assert single.p99_ms == pytest.approx(50.0)
    robust = _summarise(256, ms, rounds=3)
    assert robust.p99_ms == pytest.approx(1.0) and robust.p50_ms == pytest.approx(1.0)
    assert robust.mean_ms == single.mean_ms > 1.0  # the mean still shows the burst
    assert Target().rounds == 3
