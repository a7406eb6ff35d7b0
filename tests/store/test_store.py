"""One storage suite, run against a SQLite file and a PostgreSQL server (skipped, or failed under CI)."""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from autocompress.errors import AutocompressError
from autocompress.store import (
    ConflictError,
    JobStatus,
    NotFoundError,
    Store,
    TrialStatus,
    default_store_url,
)

PG_URL_ENV = "AUTOCOMPRESS_TEST_PG_URL"
PG_DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TABLES = {"jobs", "trials", "model_artifacts", "deployments", "job_events"}


def _pg_base_url() -> str:
    return os.environ.get(PG_URL_ENV, PG_DEFAULT_URL)


def _pg_schema_url(schema: str) -> str:
    """The test server's URL with a search_path that puts every table into ``schema``."""
    url = make_url(_pg_base_url())
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@contextlib.contextmanager
def _fresh_pg_schema() -> Iterator[str]:
    """A URL into a new PostgreSQL schema on the test server, dropped afterwards.

    Skips when no server answers, except under ``CI=true``, where that is a failure.
    """
    base = make_url(_pg_base_url())
    if base.drivername == "postgresql":
        base = base.set(drivername="postgresql+psycopg")
    admin = sa.create_engine(base, connect_args={"connect_timeout": 3})
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        admin.dispose()
        message = f"no PostgreSQL server answers at {base.render_as_string()} ({PG_URL_ENV}): {exc.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {message}")
        pytest.skip(message)
    schema = f"ac_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A database URL nobody else uses: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with _fresh_pg_schema() as url:
        yield url


@pytest.fixture
def pg_store_url() -> Iterator[str]:
    """A fresh PostgreSQL schema only, for server-side cases such as a lost connection."""
    with _fresh_pg_schema() as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store(store_url) as opened:
        yield opened


def _running_job(store: Store, name: str = "search") -> str:
    job = store.create_job({"name": name, "family": "dlrm"})
    store.set_job_status(job.id, JobStatus.RUNNING, driver_id="raysubmit_1")
    return job.id


def _tables(store_url: str) -> set[str]:
    engine = sa.create_engine(store_url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_create_the_tables_and_rerunning_them_changes_nothing(store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from autocompress.store._orm import Base

    with Store(store_url) as first:
        assert first.schema_revision() == "0002"
        job = first.create_job({"name": "kept"})
    assert _tables(store_url) >= TABLES
    with Store(store_url) as second:
        second.migrate()
        assert second.schema_revision() == "0002"
        assert [j.id for j in second.list_jobs()] == [job.id]
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"migrations and ORM models disagree: {diff}"


def test_two_processes_opening_a_fresh_database_at_once_both_succeed(store_url: str) -> None:
    opened: list[str | None] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            with Store(store_url) as own:
                opened.append(own.schema_revision())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert opened == ["0002"] * 3


def test_a_pickled_store_reopens_the_same_database(store: Store) -> None:
    job = store.create_job({"name": "pickled"})
    with pickle.loads(pickle.dumps(store)) as copy:
        assert copy.url == store.url
        assert copy.get_job(job.id).name == "pickled"


def test_idempotency_key_returns_the_same_job(store: Store) -> None:
    first = store.create_job({"name": "a", "trials": 6}, idempotency_key="submit-1")
    again = store.create_job({"name": "b", "trials": 9}, idempotency_key="submit-1")
    other = store.create_job({"name": "c"}, idempotency_key="submit-2")
    unkeyed = [store.create_job({"name": "d"}) for _ in range(2)]
    assert again.id == first.id and again.spec == {"name": "a", "trials": 6}
    assert len({first.id, other.id, *(j.id for j in unkeyed)}) == 4
    assert store.count_jobs() == 4
    assert store.get_job(first.id).status is JobStatus.PENDING


def test_concurrent_submissions_with_one_key_make_one_job(store: Store) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            ids.append(store.create_job({"name": "same"}, idempotency_key="race").id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(ids) == 8 and len(set(ids)) == 1
    assert store.count_jobs() == 1


def test_trial_upsert_on_the_same_key_updates_instead_of_duplicating(store: Store) -> None:
    job_id = _running_job(store)
    first = store.record_trial(job_id, "trial_00000", "RUNNING", config={"arch": {"mlp": [64, 32]}})
    store.record_trial(job_id, "trial_00000", "RUNNING", metrics={"epoch": 1, "valid_auc": 0.61})
    done = store.record_trial(
        job_id, "trial_00000", TrialStatus.COMPLETED, metrics={"valid_auc": 0.66, "latency_p99_ms": 1.5}
    )
    # a resumed driver recording the same finished trial again changes nothing
    replay = store.record_trial(job_id, "trial_00000", "COMPLETED", seconds=None)
    trials = store.list_trials(job_id)
    assert len(trials) == 1
    assert done.id == first.id == replay.id
    assert trials[0].status is TrialStatus.COMPLETED
    assert trials[0].config == {"arch": {"mlp": [64, 32]}}
    assert trials[0].metrics == {"valid_auc": 0.66, "latency_p99_ms": 1.5}
    assert trials[0].attempts == 1
    assert replay.finished_at == done.finished_at
    assert trials[0].seconds is not None and trials[0].seconds >= 0


def test_a_retried_trial_counts_attempts_and_keeps_its_error(store: Store) -> None:
    job_id = _running_job(store)
    store.record_trial(job_id, "t1", "RUNNING", config={"lr": 0.01})
    failed = store.record_trial(job_id, "t1", "FAILED", error="RayActorError: worker died")
    store.record_trial(job_id, "t1", "RUNNING")
    done = store.record_trial(job_id, "t1", "COMPLETED", metrics={"valid_auc": 0.7}, seconds=12.5)
    assert failed.attempts == 1 and failed.finished_at is not None
    assert done.attempts == 2 and done.seconds == 12.5
    assert done.error == "RayActorError: worker died"
    assert done.metrics == {"valid_auc": 0.7}


def test_metrics_that_json_cannot_hold_are_stored_as_null(store: Store) -> None:
    job_id = _running_job(store)
    trial = store.record_trial(
        job_id, "t1", "COMPLETED", metrics={"valid_auc": float("nan"), "p99": float("inf"), "n": (1, 2)}
    )
    assert store.list_trials(job_id)[0].metrics == {"valid_auc": None, "p99": None, "n": [1, 2]}
    assert trial.metrics["n"] == [1, 2]
    with pytest.raises(AutocompressError, match=r"metrics\.bad"):
        store.record_trial(job_id, "t2", "COMPLETED", metrics={"bad": object()})


def test_illegal_status_transitions_are_refused(store: Store) -> None:
    job_id = _running_job(store)
    finished = store.set_job_status(job_id, "SUCCEEDED", result={"winner": "t1"})
    assert finished.finished_at is not None and finished.result == {"winner": "t1"}
    with pytest.raises(ConflictError, match="cannot go from SUCCEEDED to RUNNING"):
        store.set_job_status(job_id, JobStatus.RUNNING)
    with pytest.raises(ConflictError, match="terminal"):
        store.set_job_status(job_id, JobStatus.FAILED)
    pending = store.create_job({"name": "p"})
    with pytest.raises(ConflictError, match="allowed from PENDING"):
        store.set_job_status(pending.id, JobStatus.SUCCEEDED)
    with pytest.raises(AutocompressError, match="not one of"):
        store.set_job_status(pending.id, "DONE")
    with pytest.raises(NotFoundError, match="job_id"):
        store.set_job_status("no-such-job", JobStatus.RUNNING)
    assert store.get_job(job_id).status is JobStatus.SUCCEEDED
    assert store.get_job(pending.id).status is JobStatus.PENDING


def test_progress_counts_trials_by_state(store: Store) -> None:
    job_id = _running_job(store)
    for key, status in [
        ("t0", "COMPLETED"),
        ("t1", "COMPLETED"),
        ("t2", "STOPPED"),
        ("t3", "FAILED"),
        ("t4", "RUNNING"),
        ("t5", "PENDING"),
    ]:
        store.record_trial(job_id, key, status)
    progress = store.job_progress(job_id)
    assert (progress.done, progress.running, progress.failed, progress.pending) == (3, 1, 1, 1)
    assert progress.total == 6
    # a job reaching a terminal state leaves no trial running
    store.set_job_status(job_id, JobStatus.FAILED, reason="driver lost")
    after = store.job_progress(job_id)
    assert (after.running, after.pending, after.stopped, after.failed) == (0, 0, 3, 1)
    assert store.get_job(job_id).reason == "driver lost"


def test_cancel_stops_a_pending_job_at_once_and_flags_a_running_one(store: Store) -> None:
    pending = store.create_job({"name": "p"})
    cancelled = store.request_cancel(pending.id, by="alice")
    assert cancelled.status is JobStatus.CANCELLED and cancelled.reason == "cancelled by alice"
    running = _running_job(store)
    flagged = store.request_cancel(running, by="bob")
    assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested_by == "bob"
    assert flagged.driver_id == "raysubmit_1" and flagged.heartbeat_at is not None
    store.heartbeat(running)
    assert store.get_job(running).heartbeat_at > flagged.heartbeat_at  # type: ignore[operator]
    with pytest.raises(ConflictError, match="already CANCELLED"):
        store.request_cancel(pending.id)


def test_delete_cascades_and_refuses_live_jobs(store: Store, store_url: str) -> None:
    job_id = _running_job(store)
    trial = store.record_trial(job_id, "t0", "COMPLETED", metrics={"valid_auc": 0.7})
    store.add_event(job_id, "log", "trial t0 finished")
    model = store.register_model(
        "winner", "/models/w.onnx", {"dense": ["price"]}, {"auc": 0.7}, job_id=job_id, trial_id=trial.id
    )
    keeper = _running_job(store, "other")
    foreign = store.record_trial(keeper, "t0", "RUNNING")
    with pytest.raises(NotFoundError, match="trial_id"):
        store.register_model("mixed", "/m.onnx", {}, {}, job_id=job_id, trial_id=foreign.id)
    with pytest.raises(ConflictError, match="only a job in"):
        store.delete_job(job_id)
    store.set_job_status(job_id, JobStatus.SUCCEEDED)
    store.delete_job(job_id)
    with pytest.raises(NotFoundError):
        store.get_job(job_id)
    with pytest.raises(NotFoundError):
        store.delete_job(job_id)
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as connection:
            trials = connection.execute(sa.text("SELECT job_id FROM trials")).scalars().all()
            events = connection.execute(
                sa.text("SELECT count(*) FROM job_events WHERE job_id = :j"), {"j": job_id}
            )
            assert trials == [keeper]
            assert events.scalar_one() == 0
    finally:
        engine.dispose()
    # the registered model survives its job; only the lineage link is cleared
    kept = store.get_model(model.id)
    assert (kept.job_id, kept.trial_id, kept.path) == (None, None, "/models/w.onnx")


def test_two_stores_writing_trials_at_once_lose_nothing(store_url: str) -> None:
    with Store(store_url) as setup:
        job_id = _running_job(setup)
    per_writer = 40
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with Store(store_url) as own:
                for i in range(per_writer):
                    own.record_trial(job_id, f"{name}_{i:05d}", "RUNNING", config={"i": i})
                    own.record_trial(job_id, f"{name}_{i:05d}", "COMPLETED", metrics={"valid_auc": i / 100})
                    own.add_event(job_id, "trial", f"{name} {i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("driver", "api")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Store(store_url) as check:
        trials = check.list_trials(job_id)
        assert len(trials) == 2 * per_writer
        assert all(t.status is TrialStatus.COMPLETED for t in trials)
        assert check.job_progress(job_id).done == 2 * per_writer
        assert len([e for e in check.list_events(job_id) if e.kind == "trial"]) == 2 * per_writer


def test_threads_of_one_process_take_turns_on_a_sqlite_file_instead_of_timing_out(tmp_path) -> None:
    """Thirty-two threads (the API's request workers) writing at once with a 50 ms busy timeout and
    no retry: they queue on the process's lock for the file, so none waits out SQLite's timeout."""
    path = tmp_path / "turns.db"
    stores = [Store(path, busy_timeout_s=0.05, retry_attempts=1) for _ in range(2)]  # two pools, one file
    job_id = _running_job(stores[0])
    errors: list[BaseException] = []
    start = threading.Barrier(32)

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(5):
                stores[n % 2].record_trial(job_id, f"t{n:02d}_{i}", "RUNNING", config={"i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(stores[0].list_trials(job_id)) == 32 * 5
    for opened in stores:
        opened.close()


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    path = tmp_path / "wal.db"
    with Store(path):
        pass
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_write_waits_out_a_locked_sqlite_file(tmp_path) -> None:
    path = tmp_path / "locked.db"
    with Store(path, busy_timeout_s=0.05, retry_attempts=10, retry_initial_s=0.05, retry_max_s=0.2) as store:
        job = store.create_job({"name": "j"})
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.4, blocker.execute, args=("COMMIT",))
        release.start()
        started = time.monotonic()
        try:
            store.add_event(job.id, "log", "written after the lock is released")
        finally:
            release.join()
            blocker.close()
        assert time.monotonic() - started >= 0.3
        assert [e.message for e in store.list_events(job.id)][-1] == "written after the lock is released"


def test_deploy_and_rollback_switch_the_active_model(store: Store) -> None:
    job_id = _running_job(store)
    models = [
        store.register_model(f"m{i}", f"/m/{i}.onnx", {}, {"auc": 0.7 + i / 100}, job_id=job_id)
        for i in range(3)
    ]
    assert store.active_deployment("ranker") is None
    for model in models:
        store.deploy("ranker", model.id)
    assert store.active_deployment("ranker").model_id == models[2].id  # type: ignore[union-attr]
    assert store.rollback("ranker").model_id == models[1].id
    assert store.active_deployment("ranker").model_id == models[1].id  # type: ignore[union-attr]
    assert store.rollback("ranker").model_id == models[0].id
    with pytest.raises(ConflictError, match="no earlier deployment"):
        store.rollback("ranker")
    store.deploy("ranker", models[2].id)
    history = store.deployment_history("ranker")
    assert [d.active for d in history] == [False, False, False, True]
    assert [d.model_id for d in history if d.active] == [models[2].id]
    assert history[2].rolled_back_at is not None and history[0].replaced_at is not None
    store.deploy("a-ranker", models[0].id)
    assert store.list_aliases() == ["a-ranker", "ranker"]  # each alias once, by name
    assert store.active_aliases() == {"a-ranker": models[0].id, "ranker": models[2].id}
    with pytest.raises(NotFoundError, match="model_id"):
        store.deploy("ranker", "missing")
    with pytest.raises(AutocompressError, match="alias"):
        store.deploy("bad alias!", models[0].id)
    with pytest.raises(NotFoundError, match="no active deployment"):
        store.rollback("unknown")


def test_timestamps_are_utc_aware(store: Store) -> None:
    job_id = _running_job(store)
    store.record_trial(job_id, "t0", "RUNNING")
    trial = store.record_trial(job_id, "t0", "COMPLETED")
    event = store.add_event(job_id, "log", "x")
    job = store.set_job_status(job_id, JobStatus.SUCCEEDED)
    stamps = [job.created_at, job.started_at, job.finished_at, trial.started_at, trial.finished_at]
    stamps += [event.time, store.get_job(job_id).created_at, store.list_trials(job_id)[0].updated_at]
    for stamp in stamps:
        assert stamp is not None and stamp.utcoffset() == timedelta(0)
    assert job.created_at <= job.started_at <= job.finished_at  # type: ignore[operator]


def test_listing_filters_and_pages(store: Store) -> None:
    ids = [store.create_job({"name": f"j{i}"}).id for i in range(5)]
    store.set_job_status(ids[0], JobStatus.RUNNING)
    assert [j.id for j in store.list_jobs(status="RUNNING")] == [ids[0]]
    assert store.count_jobs(JobStatus.PENDING) == 4
    pages = [store.list_jobs(limit=2), store.list_jobs(limit=2, offset=2), store.list_jobs(limit=2, offset=4)]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [j.id for page in pages for j in page] == ids[::-1]  # newest first
    with pytest.raises(AutocompressError, match="limit"):
        store.list_jobs(limit=0)
    with pytest.raises(AutocompressError, match=r"status: 'DONE' is not one of"):
        store.list_jobs(status="DONE")


def test_events_follow_after_an_id(store: Store) -> None:
    job_id = _running_job(store)
    seen = store.list_events(job_id)
    assert [e.kind for e in seen] == ["state", "state"]
    store.add_event(job_id, "log", "epoch 1")
    store.add_event(job_id, "log", "epoch 2")
    assert [e.message for e in store.list_events(job_id, after_id=seen[-1].id)] == ["epoch 1", "epoch 2"]


def test_postgres_connections_lost_mid_session_are_retried(pg_store_url: str) -> None:
    application = f"ac_test_{uuid.uuid4().hex[:12]}"  # only this store's connections are cut
    url = make_url(pg_store_url).update_query_dict({"application_name": application})
    with Store(url.render_as_string(hide_password=False)) as store:
        job_id = _running_job(store)
        admin = sa.create_engine(make_url(_pg_base_url()).set(drivername="postgresql+psycopg"))
        try:
            with admin.begin() as connection:
                killed = connection.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :application"
                    ),
                    {"application": application},
                ).scalar_one()
        finally:
            admin.dispose()
        assert killed >= 1
        store.record_trial(job_id, "after_restart", "COMPLETED")
        assert [t.trial_key for t in store.list_trials(job_id)] == ["after_restart"]


def test_urls_are_checked(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOCOMPRESS_DB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_store_url() == f"sqlite:///{tmp_path / 'autocompress.db'}"
    monkeypatch.setenv("AUTOCOMPRESS_DB_URL", "postgresql+psycopg://u@db/ac")
    assert default_store_url() == "postgresql+psycopg://u@db/ac"
    with pytest.raises(AutocompressError, match=r"url: driver 'mysql' is not supported"):
        Store("mysql://u@h/db")
    with pytest.raises(AutocompressError, match="in-memory"):
        Store("sqlite://")
    nested = tmp_path / "deep" / "dir" / "jobs.db"
    with Store(f"sqlite:///{nested}") as store:
        assert store.dialect == "sqlite" and nested.exists()
