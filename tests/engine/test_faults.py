"""Faults in a search: a trial worker killed mid-trial is retried; a killed driver's run is resumed.

Both use a real Ray (2 CPUs), tiny data and a real SQLite store. The test kills the trial's Ray
worker by its pid once the trial has reported an epoch (nothing in the product helps it); the
driver kill runs the search in a child process connected to a Ray head this test starts (and
stops) on a free port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from autocompress.engine.trial import SharedResources
from autocompress.engine.tuner import run_search
from autocompress.measure.quality import auc
from autocompress.search.budget import Budget
from autocompress.search.space import SearchSpace, load_search_space
from autocompress.spec import SearchSettings, Target
from autocompress.store import Store, TrialStatus
from autocompress.testing import cluster, tiny_setup
from autocompress.train import TrainConfig, predict
from serve_app.launcher import free_port

pytestmark = pytest.mark.slow

TRAIN = TrainConfig(epochs=1, batch_size=256, lr=1e-2, early_stopping_patience=None)
TARGET = Target(batch_sizes=[1, 64], warmup=2, repetitions=10, max_seconds=1)
SPACE = {
    "version": 1,
    "family": "dlrm",
    "arch": {
        "embedding_dim": {"kind": "categorical", "choices": [8, 16]},
        "bottom_mlp": {"kind": "categorical", "choices": [[], [8]]},
        "top_mlp": {"kind": "categorical", "choices": [[16], [32]]},
    },
    "arch_rules": {"bottom_mlp": {"append": "embedding_dim"}},
    "policy": [],
    "budget": {"latency_ms": 1000.0, "batch_size": 64, "size_mb": 100.0},
}
REPO = Path(__file__).resolve().parents[2]


def _space(tmp_path: Path) -> SearchSpace:
    file = tmp_path / "space.yaml"
    file.write_text(yaml.safe_dump(SPACE))
    return load_search_space("dlrm", path=file)


def _shared(root: Path) -> SharedResources:
    setup = tiny_setup("dlrm")
    return SharedResources(
        dataset=setup.dataset,
        teacher=setup.trained,
        reference_valid_auc=auc(setup.dataset.valid.labels, predict(setup.trained, setup.dataset.valid)),
        target=TARGET,
        budget=Budget(latency_ms=1000.0, batch_size=64, size_mb=100.0),
        work_dir=root / "work",
        cache_dir=root / "cache",
    )


def _settings(tmp_path: Path, **overrides: Any) -> SearchSettings:
    base: dict[str, Any] = {
        "searcher": "random",
        "num_trials": 2,
        "max_concurrent": 2,
        "cpus_per_trial": 1.0,
        "max_failures": 1,
        "storage_path": str(tmp_path / "tune"),
        "seed": 3,
    }
    return SearchSettings.from_dict({**base, **overrides})


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db") as opened:
        yield opened


def _kill_a_trial_worker_once(
    session_dir: str, store: Store, job_id: str, stop: threading.Event
) -> int | None:
    """From the test's side: once a trial of the job has reported an epoch, SIGKILL the Ray worker
    process running a trial (``ray::ImplicitFunc``, a child of this test's raylet), once; its pid."""
    import psutil

    raylets = {
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any("raylet" in a for a in (p.info["cmdline"] or [])[:1])
        and any(session_dir in a for a in p.info["cmdline"] or [])
    }
    deadline = time.monotonic() + 240
    while not stop.is_set() and time.monotonic() < deadline:
        if any(t.status is TrialStatus.RUNNING and t.metrics for t in store.list_trials(job_id)):
            for proc in psutil.process_iter(["cmdline", "ppid"]):
                title = (proc.info["cmdline"] or [""])[0]
                if title.startswith("ray::ImplicitFunc") and proc.info["ppid"] in raylets:
                    os.kill(proc.pid, signal.SIGKILL)
                    return proc.pid
        time.sleep(0.05)
    return None


def test_a_trial_whose_worker_is_killed_is_retried_and_completes(tmp_path: Path, store: Store) -> None:
    import ray

    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    job = store.create_job({"name": "kill-worker"}, name="kill-worker")
    stop = threading.Event()
    killed: list[int | None] = []
    killer = threading.Thread(
        target=lambda: killed.append(
            _kill_a_trial_worker_once(context.address_info["session_dir"], store, job.id, stop)
        ),
        daemon=True,
    )
    killer.start()
    try:
        outcome = run_search(
            _space(tmp_path),
            _settings(tmp_path),
            _shared(tmp_path),
            store=store,
            job_id=job.id,
            name="kill-worker",
            train_config=TRAIN,
        )
    finally:
        stop.set()
        killer.join(30)
        ray.shutdown()

    assert killed and killed[0] is not None  # a trial's worker process really was killed, mid-trial
    assert [t.status for t in outcome.trials] == [TrialStatus.COMPLETED] * 2
    rows = store.list_trials(job.id)
    assert len(rows) == 2 and len({r.trial_key for r in rows}) == 2  # no duplicate rows
    assert {r.trial_key for r in rows} == {t.trial_id for t in outcome.trials}
    assert all(r.status is TrialStatus.COMPLETED and r.metrics["stage"] == "final" for r in rows)
    assert sorted(r.attempts for r in rows) == [1, 2]  # the killed trial ran again, the other once
    retried = next(r for r in rows if r.attempts == 2)
    assert retried.metrics["valid_auc"] > 0.5 and retried.finished_at is not None
    assert any("will be retried" in e.message for e in store.list_events(job.id))


DRIVER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path

    import ray

    sys.path.insert(0, {tests!r})
    from test_faults import TRAIN, _settings, _shared, _space

    from autocompress.engine.tuner import run_search
    from autocompress.store import Store

    root = Path({root!r})
    ray.init(address={address!r}, log_to_driver=False)
    with Store(root / "store.db") as store:
        run_search(
            _space(root), _settings(root, num_trials=4, max_concurrent=1), _shared(root),
            store=store, job_id={job_id!r}, name="driver", train_config=TRAIN,
        )
    print("SEARCH DONE", flush=True)
    """
)


@pytest.fixture()
def ray_head(tmp_path: Path) -> Iterator[str]:
    """A Ray head on a free port in its own process (``--block``), stopped with it at the end."""
    port = free_port()

    def port_open() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    args = [f"--port={port}", "--num-cpus=2", "--include-dashboard=false"]
    log = tmp_path / "ray-head.log"
    with cluster.ray_head(args, env=env, log=log, ready=port_open, ready_within_s=60, stop_within_s=30):
        yield f"127.0.0.1:{port}"


def test_a_killed_driver_is_resumed_without_duplicate_trials(
    tmp_path: Path, store: Store, ray_head: str
) -> None:
    job = store.create_job({"name": "driver"}, name="driver")
    script = tmp_path / "driver.py"
    script.write_text(
        DRIVER.format(tests=str(Path(__file__).parent), root=str(tmp_path), address=ray_head, job_id=job.id)
    )
    # Tune saves its experiment state every second here (so there is a run to restore), but the kill
    # comes as soon as the store holds a trial finished: Tune's state may not know it yet, and the
    # restored run must still neither run it again nor record it twice (the store's finished reports)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    command = [sys.executable, str(script)]

    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not any(r.status is TrialStatus.COMPLETED for r in store.list_trials(job.id)):
            assert first.poll() is None, "the driver ended before any trial completed"
            assert time.monotonic() < deadline, "no trial completed within 120s"
            time.sleep(0.2)
        assert first.poll() is None, "the driver finished the whole search before it could be killed"
        first.kill()
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(30)
    before = {r.trial_key: r for r in store.list_trials(job.id) if r.status is TrialStatus.COMPLETED}
    assert before and len(before) < 4

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "SEARCH DONE" in second.stdout

    rows = store.list_trials(job.id)
    assert len(rows) == 4 and len({r.trial_key for r in rows}) == 4  # every trial once
    assert all(r.status is TrialStatus.COMPLETED and r.metrics["stage"] == "final" for r in rows)
    after = {r.trial_key: r for r in rows}
    for key, row in before.items():  # finished before the kill: kept, not rerun
        assert after[key].attempts == 1
        assert after[key].finished_at == row.finished_at
    assert any("resuming" in e.message for e in store.list_events(job.id))


def test_a_trial_the_store_holds_finished_is_left_as_it_is_when_tune_runs_it_again(
    tmp_path: Path, store: Store
) -> None:
    """Tune's saved state lags the store by up to its save period: a restored run may start a trial
    again that the store holds as COMPLETED. Its row (attempts, finish time, metrics) stays as it is,
    and so does the row of a trial that had not finished."""
    from types import SimpleNamespace

    from autocompress.engine.recording import TrialRecorder, finished_reports

    job = store.create_job({"name": "lag"}, name="lag")
    final = {"stage": "final", "valid_auc": 0.71, "latency_ms": 0.4, "size_mb": 0.1}
    store.record_trial(job.id, "t1", TrialStatus.RUNNING, config={"a": 1})
    done = store.record_trial(job.id, "t1", TrialStatus.COMPLETED, metrics=final)
    store.record_trial(job.id, "t2", TrialStatus.RUNNING, metrics={"stage": "train", "epoch": 0})
    assert finished_reports(store, job.id) == {"t1": final}

    recorder = TrialRecorder(store, job.id, _space(tmp_path), TRAIN)
    recorder.setup()  # Tune calls it when the restored run starts
    rerun = {"stage": "final", "valid_auc": 0.5, "latency_ms": 9.0, "size_mb": 9.0}
    for key in ("t1", "t2"):
        trial = SimpleNamespace(trial_id=key, config={}, last_result=rerun, error_file=None)
        recorder.on_trial_result(0, [], trial, rerun)
        recorder.on_trial_complete(0, [], trial)

    rows = {r.trial_key: r for r in store.list_trials(job.id)}
    kept = rows["t1"]
    assert (kept.attempts, kept.finished_at, kept.metrics) == (done.attempts, done.finished_at, final)
    assert rows["t2"].status is TrialStatus.COMPLETED and rows["t2"].metrics["valid_auc"] == 0.5
    assert [e.message for e in store.list_events(job.id) if e.kind == "trial"] == ["trial t2 completed"]
