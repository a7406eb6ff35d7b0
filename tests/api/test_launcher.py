"""Lost-driver recovery: a RUNNING job whose driver is gone never stays RUNNING.

Real processes stand in for drivers (a finished one is gone; a sleeping one whose command line
names the job is alive), with a real SQLite store; no PENDING job, so no Ray head starts.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autocompress.store import JobStatus, Store
from serve_app.launcher import RELAUNCH_EVENT, JobLauncher, driver_id_for


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "jobs.db") as opened:
        yield opened


def _launcher(store: Store, tmp_path: Path, **overrides: float) -> JobLauncher:
    options: dict[str, float] = {"max_relaunches": 0, "stale_after_s": 3600.0}
    options.update(overrides)
    return JobLauncher(
        store,
        db_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        work_dir=tmp_path / "runs",
        ray_address="127.0.0.1:1",  # never used: nothing is launched
        max_relaunches=int(options["max_relaunches"]),
        stale_after_s=options["stale_after_s"],
    )


def _running(store: Store, name: str, driver_id: str | None) -> str:
    job = store.create_job({"name": name}, name=name)
    store.set_job_status(job.id, JobStatus.RUNNING, driver_id=driver_id)
    return job.id


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_jobs_of_gone_drivers_end_failed_or_cancelled_and_live_ones_stay(store, tmp_path) -> None:
    driver = zombie = None
    try:
        lost = _running(store, "lost", driver_id_for(_dead_pid()))
        zombie = subprocess.Popen(["true"])  # exited, not reaped: its command line is empty, like one in exec
        while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            time.sleep(0.01)
        unreaped = _running(store, "unreaped", driver_id_for(zombie.pid))
        cancelled = _running(store, "cancelled", driver_id_for(_dead_pid()))
        store.request_cancel(cancelled, by="bob")
        elsewhere = _running(store, "elsewhere", None)  # e.g. `ray job submit`: only its heartbeat tells
        live = store.create_job({"name": "live"}, name="live").id
        driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", live])
        store.set_job_status(live, JobStatus.RUNNING, driver_id=driver_id_for(driver.pid))

        _launcher(store, tmp_path).tick()  # what an API does on start

        failed = store.get_job(lost)
        assert failed.status is JobStatus.FAILED
        assert failed.reason is not None and failed.reason.startswith("driver lost: driver process")
        assert failed.reason.endswith("is gone")
        assert store.get_job(unreaped).status is JobStatus.FAILED
        assert store.get_job(cancelled).status is JobStatus.CANCELLED
        assert store.get_job(cancelled).reason == "cancelled by bob"
        assert store.get_job(elsewhere).status is JobStatus.RUNNING  # fresh heartbeat
        assert store.get_job(live).status is JobStatus.RUNNING  # its process runs the job
        assert driver.poll() is None

        # a silent driver counts as lost too: a live but wedged one is killed first
        _launcher(store, tmp_path, stale_after_s=0.0).tick()
        for job_id in (elsewhere, live):
            job = store.get_job(job_id)
            assert job.status is JobStatus.FAILED
            assert job.reason is not None and "no heartbeat from driver" in job.reason
        assert driver.wait(30) is not None
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        if zombie is not None:
            zombie.wait()


def test_a_lost_driver_is_relaunched_at_most_max_relaunches_times(store, tmp_path) -> None:
    # the relaunched driver exits at once (its stored spec names no known family); then the launcher gives up
    job = store.create_job({"name": "flaky", "family": "resnet"}, name="flaky")
    store.set_job_status(job.id, JobStatus.RUNNING, driver_id=driver_id_for(_dead_pid()))
    job_id = job.id
    launcher = _launcher(store, tmp_path, max_relaunches=1)
    try:
        launcher.tick()
        job = store.get_job(job_id)
        assert job.status is JobStatus.RUNNING
        assert job.driver_id == driver_id_for(launcher._drivers[job_id].process.pid)
        relaunches = [e for e in store.list_events(job_id) if e.kind == RELAUNCH_EVENT]
        assert len(relaunches) == 1 and "relaunch 1 of 1" in relaunches[0].message
        assert (tmp_path / "runs" / job_id / "driver.log").is_file()

        launcher._drivers[job_id].process.wait(120)
        launcher.tick()
        job = store.get_job(job_id)
        assert job.status is JobStatus.FAILED
        assert job.reason is not None and "gave up after 1 relaunch(es)" in job.reason
        assert "last log line" in job.reason and "unknown model family 'resnet'" in job.reason
    finally:
        launcher.close()
