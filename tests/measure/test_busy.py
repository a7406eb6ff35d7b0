"""Busy-machine detection (autocompress/measure/busy.py) through ``measure_exclusively``."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autocompress.errors import AutocompressError
from autocompress.export import export_onnx
from autocompress.measure import BusyPolicy, LatencyReport, LatencyRow, latency_cache
from autocompress.measure.busy import assess_load, calibration_probe_ms, probe_node_key
from autocompress.measure.latency_cache import (
    QUIET_FILE,
    cached_latency,
    latency_cache_key,
    measure_exclusively,
    quiet_probe_ms,
    record_probe,
)
from autocompress.spec import Target
from tests.export.tiny_ranker import TinyRanker, tiny_schema
from tests.measure.conftest import MeasureSpy

TARGET = Target(batch_sizes=[1, 64], warmup=5, repetitions=100, max_seconds=0.5)

# Each hog announces itself once its interpreter is up, then spins; it also ends on its own after a
# minute, so none outlives a test that dies before its ``finally``.
HOG = (
    "import time\nprint('ready', flush=True)\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"
)


@pytest.fixture(scope="module")
def ranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("busy") / "ranker.onnx"
    export_onnx(TinyRanker(), tiny_schema(), path)
    return path


@contextlib.contextmanager
def cpu_hogs() -> Iterator[int]:
    """Two spinning processes per core this process may run on, each running when this yields."""
    count = 2 * len(os.sched_getaffinity(0))
    hogs = [
        subprocess.Popen([sys.executable, "-c", HOG], stdout=subprocess.PIPE, text=True) for _ in range(count)
    ]
    try:
        for hog in hogs:
            assert hog.stdout is not None and hog.stdout.readline() == "ready\n"
        yield count
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait(timeout=10)


def test_a_quiet_measurement_is_not_busy_and_records_its_noise_and_probes(
    ranker_path: Path, tmp_path: Path
) -> None:
    # A test machine is never as quiet as a latency node: other tests' Ray workers and neighbours
    # take turns on its cores (the probe was seen at 1.9x its quiet figure with nothing of ours
    # running). So this policy tolerates that ordinary load, and its retries let a burst go by;
    # two hogs per core, next test, still go past the default policy.
    policy = BusyPolicy(probe_factor=3.0, max_p99_over_p50=10.0, retries=3, wait_seconds=0.2)
    report = measure_exclusively(ranker_path, tiny_schema(), TARGET, cache_dir=tmp_path, busy_policy=policy)

    load = report.load
    assert load is not None
    assert not report.busy and report.busy_warning is None and load.warning is None, load
    assert 1 <= load.attempts <= 4
    assert 0 < load.quiet_probe_ms <= min(load.probe_before_ms, load.probe_after_ms)
    assert load.quiet_probe_ms == quiet_probe_ms(tmp_path)  # the first probes set the node's figure
    slower = max(load.probe_before_ms, load.probe_after_ms)
    assert load.probe_ratio == pytest.approx(slower / load.quiet_probe_ms)
    assert 1.0 <= load.probe_ratio <= policy.probe_factor
    assert load.max_cv == max(row.cv for row in report.rows)
    assert load.max_p99_over_p50 == max(row.p99_ms / row.p50_ms for row in report.rows)
    assert 1.0 <= load.max_p99_over_p50 <= policy.max_p99_over_p50

    key = latency_cache_key(ranker_path, tiny_schema(), TARGET)
    assert cached_latency(tmp_path, key) == report  # the load round-trips through the cache entry
    assert report.to_dict()["load"]["busy"] is False


def test_a_measurement_beside_cpu_hogs_ends_busy_with_the_warning(
    ranker_path: Path, tmp_path: Path, spy: MeasureSpy
) -> None:
    quiet = record_probe(tmp_path, *(calibration_probe_ms() for _ in range(3)))  # before any hog
    policy = BusyPolicy(retries=1, wait_seconds=0.05)
    with cpu_hogs():
        report = measure_exclusively(
            ranker_path, tiny_schema(), TARGET, cache_dir=tmp_path, busy_policy=policy
        )

    load = report.load
    assert load is not None and report.busy and load.busy, load
    assert load.attempts == 2 and spy.calls == 2  # waited and measured again, then went on
    assert load.quiet_probe_ms <= quiet
    assert load.probe_ratio > policy.probe_factor  # the probe had a fraction of a core
    warning = report.busy_warning
    assert warning is not None and warning.startswith("node busy while measuring latency: calibration probe ")
    assert f"vs the node's quiet {load.quiet_probe_ms:.4g} ms" in warning
    assert warning.endswith("still busy after 2 measurement(s), the figures may be inflated")


def test_the_retries_are_bounded_and_a_busy_figure_is_cached_flagged(
    ranker_path: Path, tmp_path: Path, spy: MeasureSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_probe(tmp_path, 1e-9)  # a quiet figure no probe can match: every attempt is busy
    sleeps: list[float] = []
    monkeypatch.setattr(latency_cache.time, "sleep", sleeps.append)
    policy = BusyPolicy(retries=3, wait_seconds=0.25)
    report = measure_exclusively(ranker_path, tiny_schema(), TARGET, cache_dir=tmp_path, busy_policy=policy)

    assert report.busy and report.load is not None
    assert report.load.attempts == 4 and spy.calls == 4  # one measurement and three retries
    assert sleeps == [0.25, 0.25, 0.25]  # a wait between attempts, none after the last
    assert report.load.quiet_probe_ms == 1e-9
    warning = report.busy_warning
    assert warning is not None and warning.startswith("node busy while measuring latency: calibration probe ")
    assert "vs the node's quiet 1e-09 ms" in warning and "still busy after 4 measurement(s)" in warning

    # cached with its flag: a later request gets the busy figure back as busy, not as a quiet one
    key = latency_cache_key(ranker_path, tiny_schema(), TARGET)
    entry = json.loads((tmp_path / f"{key}.json").read_text())
    assert entry["report"]["load"]["busy"] is True and entry["report"]["load"]["warning"] == warning
    again = measure_exclusively(ranker_path, tiny_schema(), TARGET, cache_dir=tmp_path, busy_policy=policy)
    assert spy.calls == 4 and again == report and again.busy_warning == warning

    no_retry = BusyPolicy(retries=0)
    refreshed = measure_exclusively(
        ranker_path, tiny_schema(), TARGET, cache_dir=tmp_path, busy_policy=no_retry, refresh=True
    )
    assert spy.calls == 5 and refreshed.load is not None and refreshed.load.attempts == 1


def test_the_quiet_figure_only_goes_down_and_is_kept_per_node(tmp_path: Path) -> None:
    assert quiet_probe_ms(tmp_path) is None
    assert record_probe(tmp_path, 5.0) == 5.0  # a first probe taken while busy sets a high figure
    assert record_probe(tmp_path, 3.0, 2.0) == 2.0  # the first quieter probe brings it down
    assert record_probe(tmp_path, 9.0) == 2.0  # a busy probe never raises it
    assert quiet_probe_ms(tmp_path) == 2.0

    path = tmp_path / QUIET_FILE
    data = json.loads(path.read_text())
    assert data == {"version": 1, "probe_ms": {probe_node_key(): 2.0}}
    data["probe_ms"]["other-host/x86_64/cpus=64/ort=1.0/probe=v1"] = 0.5
    path.write_text(json.dumps(data))
    assert quiet_probe_ms(tmp_path) == 2.0  # another node's figure is not this node's
    assert record_probe(tmp_path, 1.5) == 1.5
    assert json.loads(path.read_text())["probe_ms"]["other-host/x86_64/cpus=64/ort=1.0/probe=v1"] == 0.5

    path.write_text("{not json")
    assert quiet_probe_ms(tmp_path) is None  # unreadable: started again from the next probe
    assert record_probe(tmp_path, 4.0) == 4.0


def _row(batch_size: int, p50: float, p99: float, cv: float) -> LatencyRow:
    return LatencyRow(batch_size, p50, p50, p99, p50, cv * p50, cv, 100, batch_size * 1000 / p50)


def test_the_verdict_names_each_reason_against_its_threshold() -> None:
    quiet_rows = LatencyReport((_row(1, 0.02, 0.03, 0.2), _row(64, 0.07, 0.1, 0.3)), TARGET)
    load = assess_load(quiet_rows, 0.05, 0.06, 0.05, attempts=1)
    assert not load.busy and load.warning is None
    assert load.probe_ratio == pytest.approx(1.2)
    assert load.max_cv == 0.3 and load.max_p99_over_p50 == pytest.approx(1.5)

    slow_probe = assess_load(quiet_rows, 0.05, 0.1, 0.04, attempts=3)
    assert slow_probe.busy and slow_probe.warning == (
        "node busy while measuring latency: calibration probe 0.1 ms vs the node's quiet 0.04 ms "
        "(2.50x > 1.5x); cv 0.30; still busy after 3 measurement(s), the figures may be inflated"
    )

    long_tail = LatencyReport((_row(1, 0.02, 0.03, 0.2), _row(64, 0.07, 7.0, 5.0)), TARGET)
    noisy = assess_load(long_tail, 0.05, 0.05, 0.05, attempts=1)
    assert noisy.busy and noisy.warning is not None
    assert "p99/p50 100.00 at batch 64 (> 3)" in noisy.warning and "calibration probe" not in noisy.warning

    high_cv = LatencyReport((_row(1, 0.02, 0.03, 4.0),), TARGET)
    assert not assess_load(high_cv, 0.05, 0.05, 0.05, attempts=1).busy  # cv is recorded, not judged
    judged = assess_load(high_cv, 0.05, 0.05, 0.05, attempts=1, policy=BusyPolicy(max_cv=1.0))
    assert judged.busy and judged.warning is not None and "cv 4.00 at batch 1 (> 1)" in judged.warning


def test_the_policy_refuses_bad_values_by_name() -> None:
    with pytest.raises(AutocompressError, match=r"busy policy: probe_factor must be a number >= 1, got 0\.5"):
        BusyPolicy(probe_factor=0.5)
    with pytest.raises(AutocompressError, match=r"busy policy: retries must be an integer >= 0, got -1"):
        BusyPolicy(retries=-1)
    with pytest.raises(AutocompressError, match=r"busy policy: max_cv must be a number > 0, or None"):
        BusyPolicy(max_cv=0.0)


def test_the_default_policy_takes_its_retries_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from autocompress.measure.busy import DEFAULT_BUSY_POLICY, RETRIES_ENV, default_busy_policy

    monkeypatch.delenv(RETRIES_ENV, raising=False)
    assert default_busy_policy() == DEFAULT_BUSY_POLICY and DEFAULT_BUSY_POLICY.retries == 2
    monkeypatch.setenv(RETRIES_ENV, "0")
    assert default_busy_policy() == BusyPolicy(retries=0)
    monkeypatch.setenv(RETRIES_ENV, "two")
    with pytest.raises(
        AutocompressError, match=r"AUTOCOMPRESS_BUSY_RETRIES: must be an integer >= 0, got 'two'"
    ):
        default_busy_policy()
