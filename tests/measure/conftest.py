"""Fixtures of the measurement tests."""

from __future__ import annotations

from typing import Any

import pytest

from autocompress.measure import LatencyReport, latency_cache


class MeasureSpy:
    """Counts calls of the real ``measure_latency`` that ``measure_exclusively`` makes."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = latency_cache.measure_latency

    def __call__(self, *args: Any, **kwargs: Any) -> LatencyReport:
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> MeasureSpy:
    spy = MeasureSpy()
    monkeypatch.setattr(latency_cache, "measure_latency", spy)
    return spy
