"""Fault injection: a driver killed with SIGKILL, the API restarted mid-search, PostgreSQL away for 10 s,
a work folder that cannot be written, a corrupt model file.

Every job ends with a reason (never stuck RUNNING) or goes on; no recorded trial is lost; the alias
keeps serving. Real components throughout: the job API on uvicorn with its launcher starting
detached drivers, a real Ray (2 CPUs) where searches run, a SQLite file, the PostgreSQL server on
127.0.0.1:5432 behind a TCP proxy this test takes down, ONNX Runtime. Everything stays on loopback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import URL, make_url

from autocompress.engine.job import run_job
from autocompress.engine.tuner import run_search
from autocompress.errors import AutocompressError
from autocompress.job import JobSpec
from autocompress.serving import ModelCatalog
from autocompress.store import ConflictError, JobStatus, Store, TrialStatus
from serve_app.api import Settings
from serve_app.launcher import RELAUNCH_EVENT, free_port
from tests.api.conftest import RunningApi, running_api
from tests.engine.test_faults import SPACE, TRAIN, _settings, _shared, _space
from tests.serving.conftest import Registry
from tests.store.test_store import _fresh_pg_schema

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
# the tiny search of tests/engine/test_faults.py on fewer rows, submitted over the API; one trial at a time
SEARCH_JOB: dict[str, Any] = {
    "name": "restart",
    "dataset": {"kind": "synthetic", "scale": "tiny", "options": {"n_rows": 10_000}},
    "family": "dlrm",
    "search_space": "space.yaml",  # in the API's data folder
    "budget": {"latency_ms": 1000.0, "batch_size": 64, "size_mb": 100.0},
    "target": {"batch_sizes": [1, 64], "warmup": 2, "repetitions": 10, "max_seconds": 1},
    "search": {"searcher": "random", "num_trials": 2, "cpus_per_trial": 2, "max_failures": 1, "seed": 3},
    "train": {"epochs": 1, "batch_size": 1024, "lr": 0.01, "early_stopping_patience": None},
    "distill": False,
}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'faults.db'}"


def _wait_until(what: str, seconds: float, check: Callable[[], Any], every_s: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f} s"
        time.sleep(every_s)


def _driver_log(settings: Settings, job_id: str) -> str:
    log = settings.work_dir / job_id / "driver.log"
    return log.read_text(errors="replace")[-3000:] if log.is_file() else "(no driver log)"


def _live_job(api: RunningApi, job_id: str) -> dict[str, Any]:
    """The job's view over HTTP, failing (with the driver's log) if it has ended."""
    response = api.http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    assert view["status"] not in TERMINAL, f"job ended {view['status']}: {view['reason']}\n" + _driver_log(
        api.settings, job_id
    )
    return view


def _process_alive(pid: int) -> bool:
    try:  # a zombie's command line is empty: it counts as gone, as for the launcher
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


# -- a driver killed with SIGKILL ------------------------------------------------------------------


def _driver_pid(api: RunningApi, job_id: str, not_pid: int | None) -> int:
    """The pid of the job's driver once the launcher has recorded one other than ``not_pid``."""

    def recorded() -> int | None:
        job = api.store.get_job(job_id)
        assert job.status is JobStatus.RUNNING or job.status is JobStatus.PENDING, job.reason
        pid = int(job.driver_id.rsplit(":", 1)[1]) if job.driver_id else None
        return pid if job.status is JobStatus.RUNNING and pid != not_pid else None

    pid: int = _wait_until("the launcher to start a driver", 30, recorded)
    return pid


def test_a_driver_killed_with_sigkill_is_relaunched_and_then_failed_with_a_reason(
    sqlite_url: str, tmp_path: Path
) -> None:
    # Nothing listens at this Ray address: each driver waits there for minutes, until it is killed.
    settings = Settings(
        db_url=sqlite_url,
        work_dir=tmp_path / "runs",
        max_running_jobs=1,
        max_relaunches=1,
        ray_address=f"127.0.0.1:{free_port()}",
        launcher_poll_s=0.2,
    )
    with running_api(settings) as api:
        submitted = api.http.post("/v1/jobs", json={"name": "doomed"})
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]

        first = _driver_pid(api, job_id, None)
        assert _process_alive(first)
        os.kill(first, signal.SIGKILL)
        second = _driver_pid(api, job_id, first)  # relaunched to resume the search
        assert _process_alive(second)
        assert _live_job(api, job_id)["status"] == "RUNNING"
        [relaunch] = [e for e in api.store.list_events(job_id) if e.kind == RELAUNCH_EVENT]
        # the launcher sees its child's exit code, or only that the pid is gone: either says why
        assert re.search(rf"driver process {first} (is gone|exited with code -9)", relaunch.message)
        assert "relaunch 1 of 1" in relaunch.message

        os.kill(second, signal.SIGKILL)  # no relaunch left: the job fails and says why

        def ended() -> dict[str, Any] | None:
            view: dict[str, Any] = api.http.get(f"/v1/jobs/{job_id}").json()
            assert view["status"] in ("RUNNING", *TERMINAL)
            return view if view["status"] in TERMINAL else None

        view = _wait_until("the job to end after its last driver was killed", 30, ended)
    assert view["status"] == "FAILED"
    assert re.match(rf"driver lost: driver process {second} (is gone|exited with code -9)", view["reason"])
    assert "gave up after 1 relaunch(es)" in view["reason"]


# -- the API restarted mid-search ------------------------------------------------------------------


@pytest.mark.slow
def test_an_api_restarted_mid_search_keeps_jobs_and_trials_and_the_search_goes_on(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "space.yaml").write_text(yaml.safe_dump(SPACE))
    # drivers save Tune's experiment state every second (so there is a run to resume); the restart
    # comes as soon as a trial is finished in the store, which keeps it done whatever Tune saved
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    settings = Settings(
        db_url=sqlite_url,
        work_dir=tmp_path / "runs",
        data_dir=data_dir,
        max_running_jobs=1,
        ray_num_cpus=2,
        launcher_poll_s=0.5,
    )

    with running_api(settings) as api:
        submitted = api.http.post("/v1/jobs", json=SEARCH_JOB)
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]

        def completed() -> list[dict[str, Any]]:
            _live_job(api, job_id)
            trials = api.http.get(f"/v1/jobs/{job_id}/trials").json()["trials"]
            return [t for t in trials if t["status"] == "COMPLETED"]

        before = {t["trial_key"]: t for t in _wait_until("a completed trial", 240, completed, every_s=0.2)}
        assert len(before) == 1, "the search finished before the API could be restarted"
        first_driver = api.store.get_job(job_id).driver_id
        assert first_driver is not None
    # the API is gone, and with it its driver and Ray head; the job waits in the database
    with Store(sqlite_url) as store:
        job = store.get_job(job_id)
        assert job.status is JobStatus.RUNNING and job.driver_id == first_driver
        assert not _process_alive(int(first_driver.rsplit(":", 1)[1]))
        assert {t.trial_key for t in store.list_trials(job_id)} >= set(before)

    with running_api(settings) as api:
        listed = api.http.get("/v1/jobs").json()
        assert [j["id"] for j in listed["jobs"]] == [job_id] and listed["total"] == 1
        trials = api.http.get(f"/v1/jobs/{job_id}/trials").json()["trials"]
        assert {t["trial_key"] for t in trials} >= set(before)

        def ended() -> dict[str, Any] | None:
            view: dict[str, Any] = api.http.get(f"/v1/jobs/{job_id}").json()
            return view if view["status"] in TERMINAL else None

        view = _wait_until("the resumed job to end", 300, ended, every_s=1.0)
        assert view["status"] == "SUCCEEDED", f"{view['reason']}\n{_driver_log(settings, job_id)}"
        trials = api.http.get(f"/v1/jobs/{job_id}/trials").json()["trials"]
        events = api.store.list_events(job_id)
    assert len(trials) == 2 and len({t["trial_key"] for t in trials}) == 2  # every trial once
    assert all(t["status"] == "COMPLETED" and t["metrics"]["stage"] == "final" for t in trials)
    after = {t["trial_key"]: t for t in trials}
    for key, trial in before.items():  # finished before the restart: kept as they were, not rerun
        assert after[key]["attempts"] == 1 and after[key]["finished_at"] == trial["finished_at"]
        # the job measures every finished candidate's latency again once no trial runs (engine.comparison)
        remeasured = {"latency_ms", "latency_ms_in_trial", "feasible", "violations", "distance_to_feasible"}
        remeasured |= {"latency_busy", "latency_busy_warning"}  # the re-measurement's own load
        kept = {k: v for k, v in after[key]["metrics"].items() if k not in remeasured}
        assert kept == {k: v for k, v in trial["metrics"].items() if k not in remeasured}
        assert after[key]["metrics"]["latency_ms_in_trial"] == trial["metrics"]["latency_ms"]
    [relaunch] = [e for e in events if e.kind == RELAUNCH_EVENT]
    assert "is gone" in relaunch.message
    assert any("resuming the Tune run" in e.message for e in events)
    assert view["progress"]["done"] == 2 and len(view["model_ids"]) == 1


# -- PostgreSQL away for 10 s ----------------------------------------------------------------------


class PostgresProxy:
    """A TCP proxy on a free 127.0.0.1 port in front of PostgreSQL that can go away for a while.

    While it is down, every open connection is cut and every new one is closed as soon as it is
    accepted (the client sees the server close the connection), which is what a restarting server
    looks like; ``cut`` and ``refused`` count both.
    """

    def __init__(self, upstream: URL) -> None:
        self.upstream = (upstream.host or "127.0.0.1", upstream.port or 5432)
        self.cut = 0
        self.refused = 0
        self._down = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="pg-proxy", daemon=True)
        self._acceptor.start()

    def url(self, database_url: str) -> str:
        """``database_url`` (on the upstream server) routed through this proxy."""
        return make_url(database_url).set(host="127.0.0.1", port=self.port).render_as_string(False)

    def go_down(self) -> None:
        """Cut every open connection and refuse new ones until ``come_back``."""
        self._down.set()
        with self._lock:
            sockets, self._open = self._open, []
        self.cut += len(sockets) // 2
        for sock in sockets:
            self._shut(sock)

    def come_back(self) -> None:
        """Let connections through again."""
        self._down.clear()

    def close(self) -> None:
        self._closed.set()
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            self._shut(sock)

    def __enter__(self) -> PostgresProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv
        sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._down.is_set():
                self.refused += 1
                self._shut(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                self._shut(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:  # ends when either side closes, or when an outage or close() shuts them
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open = [s for s in self._open if s not in (source, sink)]
            self._shut(source)
            self._shut(sink)


@pytest.mark.slow
def test_a_10_s_postgresql_outage_mid_search_loses_no_trial(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import ray

    caplog.set_level(logging.WARNING, logger="autocompress.store")
    with contextlib.ExitStack() as stack:
        direct_url = stack.enter_context(_fresh_pg_schema())
        proxy = stack.enter_context(PostgresProxy(make_url(direct_url)))
        direct = stack.enter_context(Store(direct_url))  # the test's own view, never through the proxy
        store = stack.enter_context(Store(proxy.url(direct_url)))
        job_id = store.create_job({"name": "pg-outage"}, name="pg-outage").id
        probe_job = store.create_job({"name": "probe"}, name="probe").id

        searching = threading.Event()
        at_outage: dict[str, Any] = {}

        def take_postgres_away() -> None:
            # once a trial has reported an epoch: the rest of its reports arrive while the server is away
            deadline = time.monotonic() + 240
            while searching.is_set() and time.monotonic() < deadline:
                trials = direct.list_trials(job_id)
                if any(t.status is TrialStatus.RUNNING and t.metrics for t in trials):
                    at_outage["done"] = sum(t.status is TrialStatus.COMPLETED for t in trials)
                    proxy.go_down()
                    back = threading.Timer(10.0, proxy.come_back)
                    back.start()
                    try:  # a write begun as the server went away: it must wait the 10 s out
                        at_outage["probe"] = store.record_trial(probe_job, "probe", TrialStatus.COMPLETED)
                    except Exception as exc:
                        at_outage["probe"] = exc
                    back.join()
                    return
                time.sleep(0.1)

        outage = threading.Thread(target=take_postgres_away, name="pg-outage", daemon=True)
        searching.set()
        outage.start()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            outcome = run_search(
                _space(tmp_path),
                _settings(tmp_path),
                _shared(tmp_path),
                store=store,
                job_id=job_id,
                name="pg-outage",
                train_config=TRAIN,
            )
        finally:
            searching.clear()
            ray.shutdown()
            outage.join(30)

        assert "probe" in at_outage, "the outage never started: no trial reported while the search ran"
        assert at_outage["done"] < 2  # the search was still going when the server went away
        assert proxy.cut >= 1 and proxy.refused >= 1  # connections were cut and new ones refused
        probe = at_outage["probe"]
        assert not isinstance(probe, Exception), f"a write during the outage was lost: {probe!r}"
        assert [t.trial_key for t in direct.list_trials(probe_job)] == ["probe"]
        messages = [r.getMessage() for r in caplog.records]
        assert any("transient database error" in m for m in messages)  # writes were retried, none lost:
        assert not [m for m in messages if m.startswith(("could not record", "could not log"))]
        assert [t.status for t in outcome.trials] == [TrialStatus.COMPLETED] * 2
        rows = {r.trial_key: r for r in direct.list_trials(job_id)}
        assert set(rows) == {t.trial_id for t in outcome.trials}  # every trial Tune finished is there
        for trial in outcome.trials:
            row = rows[trial.trial_id]
            assert row.status is TrialStatus.COMPLETED and row.finished_at is not None
            assert row.metrics["stage"] == "final"
            assert row.metrics["valid_auc"] == trial.metrics["valid_auc"]
            assert {"arch", "policy"} <= set(row.config)
        completed = [e for e in direct.list_events(job_id) if e.message.endswith("completed")]
        assert len(completed) == 2
        # the pooled connections were replaced: the store works through the proxy again
        assert store.get_job(job_id).status is JobStatus.PENDING


def test_the_api_answers_503_while_postgresql_is_away_and_200_once_it_is_back(tmp_path: Path) -> None:
    """Over HTTP through the same proxy: a read and a write while the server is away get a 503 that
    says so (never a 500 or a hang), and the API serves again once it is back, with nothing lost."""
    with contextlib.ExitStack() as stack:
        direct_url = stack.enter_context(_fresh_pg_schema())
        proxy = stack.enter_context(PostgresProxy(make_url(direct_url)))
        settings = Settings(db_url=proxy.url(direct_url), work_dir=tmp_path / "runs", max_running_jobs=0)
        api = stack.enter_context(running_api(settings))
        direct = stack.enter_context(Store(direct_url))
        job_id = direct.create_job({"name": "before"}, name="before").id
        assert api.http.get(f"/v1/jobs/{job_id}").status_code == 200

        proxy.go_down()
        try:
            for response in (api.http.get(f"/v1/jobs/{job_id}"), api.http.delete(f"/v1/jobs/{job_id}")):
                assert response.status_code == 503, response.text
                assert response.json()["detail"].startswith("database: unavailable (")
            assert proxy.refused >= 1  # the API really tried the server, which refused it
        finally:
            proxy.come_back()

        response = api.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200 and response.json()["name"] == "before"
        assert direct.get_job(job_id).status is JobStatus.PENDING  # the refused delete changed nothing


# -- an artifact folder that cannot be written -----------------------------------------------------


def test_a_job_whose_work_folder_cannot_be_written_fails_naming_the_folder(
    sqlite_url: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    # root ignores permission bits; no one can create a folder inside a regular file
    work_dir = blocker / "runs"
    settings = Settings(
        db_url=sqlite_url,
        work_dir=work_dir,
        max_running_jobs=1,
        ray_address=f"127.0.0.1:{free_port()}",  # never reached: nothing is launched
        launcher_poll_s=0.2,
    )
    with running_api(settings) as api:
        ids = [api.http.post("/v1/jobs", json={"name": f"nowhere-{i}"}).json()["id"] for i in range(2)]

        def ended() -> list[dict[str, Any]] | None:
            views = [api.http.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
            return views if all(v["status"] in TERMINAL for v in views) else None

        views = _wait_until("both jobs to end", 30, ended)
        health = api.http.get("/healthz")
        assert health.status_code == 200 and health.json()["launcher"]["last_error"] is None
        assert health.json()["launcher"]["drivers"] == []
    for job_id, view in zip(ids, views, strict=True):
        assert view["status"] == "FAILED"
        assert view["reason"] == (
            f"work_dir: cannot write the job's folder {str(work_dir / job_id)!r}: Not a directory"
        )
    assert not blocker.is_dir() and blocker.read_text() == "a file, not a folder"

    # a driver given such a folder directly (`autocompress search --job-id ... --work-dir`) fails the job too
    with Store(sqlite_url) as store:
        job = store.create_job({"name": "driver-side"}, name="driver-side")
        with pytest.raises(AutocompressError, match="work_dir: cannot write the job's folder"):
            run_job(JobSpec.from_dict({"name": "driver-side"}), store, work_dir, job_id=job.id)
        failed = store.get_job(job.id)
        assert failed.status is JobStatus.FAILED and failed.reason is not None
        assert str(work_dir / job.id) in failed.reason and "Not a directory" in failed.reason
        assert store.list_trials(job.id) == []


# -- a corrupt model file --------------------------------------------------------------------------


def test_a_corrupt_onnx_artifact_is_refused_and_the_alias_keeps_serving_the_old_model(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = Settings(db_url=sqlite_url, work_dir=tmp_path / "runs", max_running_jobs=0)
    with running_api(settings) as api:
        registry = Registry(api.store, settings.work_dir)
        good, truncated, overwritten = (registry.register("dlrm", seed=seed) for seed in (0, 1, 2))
        batch = registry.schema.example_batch(3, seed=5)
        rows = [{n: batch[n][i].tolist() for n in registry.schema.feature_names} for i in range(3)]

        deployed = api.http.post(f"/v1/models/{good.id}/deploy", json={"alias": "ranking-prod"})
        assert deployed.status_code == 200, deployed.text
        served = api.http.post("/v1/endpoints/ranking-prod/predict", json={"rows": rows}).json()
        assert served["model_id"] == good.id
        # a canary predicted by id: this process has it checked and open before its file is overwritten
        canary = api.http.post(f"/v1/models/{overwritten.id}/predict", json={"rows": rows})
        assert canary.status_code == 200, canary.text

        whole = Path(truncated.path).read_bytes()
        Path(truncated.path).write_bytes(whole[: len(whole) // 2])
        Path(overwritten.path).write_bytes(b"not an onnx model\x00\xff" * 32)

        for model in (truncated, overwritten):
            for route, body in (
                ("/v1/endpoints/ranking-prod/promote", {"model_id": model.id}),
                (f"/v1/models/{model.id}/deploy", {"alias": "ranking-prod"}),
            ):
                refused = api.http.post(route, json=body)
                assert refused.status_code == 409, (route, refused.text)
                detail = refused.json()["detail"]
                assert detail.startswith(f"model {model.id!r} cannot be served: its ONNX file")
                assert str(Path(model.path).resolve()) in detail and "does not load in ONNX Runtime" in detail

        endpoint = api.http.get("/v1/endpoints/ranking-prod").json()
        assert endpoint["model_id"] == good.id and len(endpoint["history"]) == 1
        again = api.http.post("/v1/endpoints/ranking-prod/predict", json={"rows": rows})
        assert again.status_code == 200 and again.json() == served  # the same model, the same answers
        # a sound model is still promoted: the refusals left the alias working
        fine = registry.register("dlrm", seed=3)
        promoted = api.http.post("/v1/endpoints/ranking-prod/promote", json={"model_id": fine.id})
        assert promoted.status_code == 200, promoted.text
        assert api.http.get("/v1/endpoints/ranking-prod").json()["model_id"] == fine.id

    # the same refusal in the library, without HTTP
    catalog = ModelCatalog(Store(sqlite_url), settings.work_dir)
    try:
        with pytest.raises(ConflictError, match="does not load in ONNX Runtime"):
            catalog.get(truncated.id)
        assert catalog.get(good.id).id == good.id
    finally:
        catalog.store.close()
