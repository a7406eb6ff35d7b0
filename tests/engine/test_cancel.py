"""The driver's side of cancel and liveness, against a real SQLite store (the Tune run: tests/api)."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autocompress.engine.cancel import CancelStopper, JobCancelled, heartbeat, raise_if_cancelled
from autocompress.store import JobStatus, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "jobs.db") as opened:
        yield opened


def _running(store: Store) -> str:
    job = store.create_job({"name": "search"}, name="search")
    store.set_job_status(job.id, JobStatus.RUNNING)
    return job.id


def test_the_stopper_stops_everything_once_a_cancel_is_requested(store: Store) -> None:
    job_id = _running(store)
    stopper = CancelStopper(store, job_id, poll_s=3600)
    assert stopper.stop_all() is False and stopper("trial_1", {}) is False
    store.request_cancel(job_id, by="carol")
    assert stopper.stop_all() is False  # the store is read at most every poll_s

    restored = pickle.loads(pickle.dumps(stopper))  # as Tuner.restore brings it back
    assert restored.job_id == job_id and restored.requested_by is None
    assert restored.stop_all() is True and restored.requested_by == "carol"
    assert restored("trial_1", {}) is True
    with pytest.raises(JobCancelled, match=f"job {job_id} cancelled by carol") as raised:
        raise_if_cancelled(store, job_id)
    assert raised.value.by == "carol"


def test_raise_if_cancelled_is_quiet_for_a_live_job_and_a_store_hiccup(store: Store) -> None:
    raise_if_cancelled(store, _running(store))
    raise_if_cancelled(store, "no-such-job")  # read errors count as "not cancelled": asked again later


def test_the_heartbeat_beats_while_inside(store: Store) -> None:
    job_id = _running(store)
    before = store.get_job(job_id).heartbeat_at
    assert before is not None
    time.sleep(0.01)
    with heartbeat(store, job_id, every_s=0.05):
        deadline = time.monotonic() + 10
        beats = set()
        while len(beats) < 3:
            assert time.monotonic() < deadline, "fewer than 3 heartbeats in 10 s"
            beat = store.get_job(job_id).heartbeat_at
            assert beat is not None
            if beat > before:
                beats.add(beat)
            time.sleep(0.02)
    after = store.get_job(job_id).heartbeat_at
    time.sleep(0.2)
    assert store.get_job(job_id).heartbeat_at == after  # stopped with the block
