from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from autocompress.errors import AutocompressError
from autocompress.export import export_onnx
from autocompress.measure import BusyPolicy, LatencyReport, latency_cache
from autocompress.measure.latency_cache import (
    LOCK_FILE,
    QUIET_FILE,
    cached_latency,
    latency_cache_key,
    measure_exclusively,
    onnx_sha256,
)
from autocompress.spec import Target
from tests.export.tiny_ranker import TinyRanker, tiny_schema
from tests.measure.conftest import MeasureSpy

TARGET = Target(batch_sizes=[1, 8], warmup=1, repetitions=5, max_seconds=0.5)
# these tests count measurements; a busy test machine must not add retries (tests/measure/test_busy.py)
ONCE = BusyPolicy(retries=0)


def _export(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    export_onnx(TinyRanker(), tiny_schema(), path)
    return path


@pytest.fixture(scope="module")
def ranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("latency_cache") / "ranker.onnx", seed=0)


def test_second_call_returns_the_cached_report_without_measuring(
    ranker_path: Path, tmp_path: Path, spy: MeasureSpy
) -> None:
    first = measure_exclusively(ranker_path, tiny_schema(), TARGET, cache_dir=tmp_path, busy_policy=ONCE)
    assert spy.calls == 1
    assert [row.batch_size for row in first.rows] == [1, 8] and first.at(8) > 0

    second = measure_exclusively(ranker_path, tiny_schema(), TARGET, cache_dir=tmp_path, busy_policy=ONCE)
    assert spy.calls == 1
    assert second == first  # every percentile and the target come back from the JSON entry

    key = latency_cache_key(ranker_path, tiny_schema(), TARGET)
    entry = json.loads((tmp_path / f"{key}.json").read_text())
    assert entry["key"] == key and entry["report"] == first.to_dict()
    assert cached_latency(tmp_path, key) == first
    assert (tmp_path / LOCK_FILE).is_file()
    assert first.load is not None and first.load.attempts == 1  # measured with the busy check
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"{key}.json", LOCK_FILE, QUIET_FILE])  # no temp files


def test_a_changed_model_or_target_misses_the_cache(
    ranker_path: Path, tmp_path: Path, spy: MeasureSpy
) -> None:
    measure_exclusively(ranker_path, tiny_schema(), TARGET, cache_dir=tmp_path, busy_policy=ONCE)
    other_model = _export(tmp_path / "other.onnx", seed=1)
    assert onnx_sha256(other_model) != onnx_sha256(ranker_path)
    measure_exclusively(other_model, tiny_schema(), TARGET, cache_dir=tmp_path, busy_policy=ONCE)
    assert spy.calls == 2

    other_target = TARGET.model_copy(update={"batch_sizes": [1, 16]})
    report = measure_exclusively(
        ranker_path, tiny_schema(), other_target, cache_dir=tmp_path, busy_policy=ONCE
    )
    assert spy.calls == 3 and [row.batch_size for row in report.rows] == [1, 16]

    # the same bytes under another name hit the cache: the key is the content, not the path
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(ranker_path.read_bytes())
    measure_exclusively(copy, tiny_schema(), TARGET, cache_dir=tmp_path, busy_policy=ONCE)
    assert spy.calls == 3


def test_the_hash_covers_external_data(ranker_path: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(ranker_path))
    path = tmp_path / "external.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="external.data", size_threshold=0)
    before = onnx_sha256(path)
    data = tmp_path / "external.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert onnx_sha256(path) != before  # the graph file is unchanged, only its weights

    data.unlink()
    with pytest.raises(
        AutocompressError, match=r"references external data 'external\.data', which is missing"
    ):
        onnx_sha256(path)


def test_an_unreadable_entry_is_a_miss(ranker_path: Path, tmp_path: Path, spy: MeasureSpy) -> None:
    key = latency_cache_key(ranker_path, tiny_schema(), TARGET)
    (tmp_path / f"{key}.json").write_text("{not json")
    assert cached_latency(tmp_path, key) is None
    measure_exclusively(ranker_path, tiny_schema(), TARGET, cache_dir=tmp_path, busy_policy=ONCE)
    assert spy.calls == 1 and cached_latency(tmp_path, key) is not None


def _measure_in_child(onnx_path: str, cache_dir: str, log_path: str, batch_size: int, barrier: Any) -> None:
    """Measure with a ``measure_latency`` that logs when it runs and takes at least 0.5 s."""
    real = latency_cache.measure_latency

    def slow_logged(*args: Any, **kwargs: Any) -> LatencyReport:
        entered = time.time()
        time.sleep(0.5)
        report = real(*args, **kwargs)
        Path(log_path).write_text(json.dumps({"enter": entered, "exit": time.time()}))
        return report

    latency_cache.measure_latency = slow_logged
    target = TARGET.model_copy(update={"batch_sizes": [batch_size]})  # a different key per process
    barrier.wait(timeout=60)
    measure_exclusively(onnx_path, tiny_schema(), target, cache_dir=cache_dir, busy_policy=ONCE)


def test_two_processes_never_measure_at_once(ranker_path: Path, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    logs = [tmp_path / f"measure-{i}.json" for i in range(2)]
    procs = [
        ctx.Process(
            target=_measure_in_child,
            args=(str(ranker_path), str(tmp_path / "cache"), str(log), batch_size, barrier),
        )
        for log, batch_size in zip(logs, (2, 4), strict=True)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0]

    first, second = sorted((json.loads(log.read_text()) for log in logs), key=lambda t: t["enter"])
    assert first["exit"] <= second["enter"], f"measurements overlapped: {first} and {second}"
    assert len([p for p in (tmp_path / "cache").glob("*.json") if p.name != QUIET_FILE]) == 2
