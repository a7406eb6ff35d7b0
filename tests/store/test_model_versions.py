"""Model names, versions and tags, learning curves, and the migration that added them: on a SQLite file
and on the PostgreSQL test server (skipped without one, failed under CI)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from autocompress.errors import AutocompressError
from autocompress.store import NotFoundError, Store, TrialStatus
from autocompress.store._orm import UtcDateTime
from tests.store.test_store import _fresh_pg_schema

# the rows as revision 0001 has them, typed so that both databases bind the values the same way
JOBS = sa.table(
    "jobs",
    sa.column("id", sa.String()),
    sa.column("name", sa.String()),
    sa.column("status", sa.String()),
    sa.column("spec", sa.JSON()),
    sa.column("created_at", UtcDateTime()),
)
MODELS = sa.table(
    "model_artifacts",
    sa.column("id", sa.String()),
    sa.column("name", sa.String()),
    sa.column("job_id", sa.String()),
    sa.column("path", sa.String()),
    sa.column("feature_schema", sa.JSON()),
    sa.column("metrics", sa.JSON()),
    sa.column("created_at", UtcDateTime()),
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database nobody else uses: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'versions.db'}"
        return
    with _fresh_pg_schema() as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store(store_url) as opened:
        yield opened


def test_versions_count_up_per_name_and_tags_round_trip(store: Store) -> None:
    job = store.create_job({"name": "ranking", "family": "dlrm"})
    first = store.register_model("ranking-dlrm", "/m/1.onnx", {}, {"valid_auc": 0.71}, job_id=job.id)
    other = store.register_model("ranking-din", "/m/2.onnx", {}, {}, tags={"stage": "canary"})
    second = store.register_model(
        "ranking-dlrm", "/m/3.onnx", {}, {}, tags={"team": "search", "pareto": "", "k8s/ns": "a:b"}
    )
    assert (first.version, other.version, second.version) == (1, 1, 2)
    assert first.tags == {} and other.tags == {"stage": "canary"}
    again = store.get_model(second.id)
    assert again.version == 2 and again.tags == {"team": "search", "pareto": "", "k8s/ns": "a:b"}
    assert [(m.name, m.version) for m in store.list_models(name="ranking-dlrm")] == [
        ("ranking-dlrm", 2),
        ("ranking-dlrm", 1),
    ]
    assert store.list_models(name="nobody") == []


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"": "x"}, "tags: key '' must be 1..100 of letters"),
        ({"-lead": "x"}, "tags: key '-lead' must be"),
        ({"ok": 3}, "tags.ok: the value must be a string of at most 500 characters"),
        ({"ok": "x" * 501}, "tags.ok: the value must be a string"),
        ({f"k{i}": "" for i in range(51)}, "tags: 51 tags; at most 50 are allowed"),
    ],
)
def test_bad_tags_are_refused_naming_the_tag(store: Store, tags: dict[str, object], message: str) -> None:
    with pytest.raises(AutocompressError, match=message):
        store.register_model("m", "/m.onnx", {}, {}, tags=tags)  # type: ignore[arg-type]
    assert store.list_models() == []


def test_concurrent_registrations_of_one_name_get_distinct_versions(store_url: str) -> None:
    """Four stores (connections) register one name at once, five times each: versions 1..20, none twice."""
    writers, each = 4, 5
    start = threading.Barrier(writers)
    versions: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def register(number: int) -> None:
        try:
            with Store(store_url) as own:
                start.wait(timeout=60)
                for i in range(each):
                    model = own.register_model("ranking-dlrm", f"/m/{number}-{i}.onnx", {}, {})
                    with lock:
                        versions.append(model.version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(versions) == list(range(1, writers * each + 1))
    with Store(store_url) as check:
        stored = [m.version for m in check.list_models(name="ranking-dlrm", limit=100)]
    assert sorted(stored) == list(range(1, writers * each + 1))


def test_the_unique_index_refuses_a_version_twice(store: Store, store_url: str) -> None:
    model = store.register_model("m", "/m.onnx", {}, {})
    engine = sa.create_engine(store_url)
    models = sa.table(
        "model_artifacts",
        *(sa.column(c.name, c.type) for c in MODELS.c),
        sa.column("version"),
        sa.column("tags"),
    )
    try:
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.execute(
                sa.insert(models).values(
                    id="dup",
                    name="m",
                    path="/x",
                    feature_schema={},
                    metrics={},
                    created_at=datetime.now(UTC),
                    version=model.version,
                    tags="{}",
                )
            )
    finally:
        engine.dispose()


def test_the_learning_curve_keeps_every_epoch_in_order(store: Store) -> None:
    job = store.create_job({"name": "curves"})
    for epoch, auc, loss in ((2, 0.70, 0.51), (1, 0.65, 0.58), (3, 0.72, 0.47)):  # out of order
        store.record_trial(
            job.id,
            "trial_1",
            TrialStatus.RUNNING,
            metrics={"stage": "train", "epoch": epoch, "valid_auc": auc, "train_loss": loss},
            epoch=epoch,
        )
    store.record_trial(
        job.id, "trial_1", TrialStatus.COMPLETED, metrics={"stage": "final", "valid_auc": 0.73}
    )
    trial, curve = store.trial_curve(job.id, "trial_1")
    assert trial.status is TrialStatus.COMPLETED and trial.metrics["stage"] == "final"  # the final report
    assert [(p.epoch, p.metrics["valid_auc"], p.metrics["train_loss"]) for p in curve] == [
        (1, 0.65, 0.58),
        (2, 0.70, 0.51),
        (3, 0.72, 0.47),
    ]
    assert store.trial_curve(job.id, trial.id)[1] == curve  # by row id as well as by key
    assert store.job_curves(job.id) == {trial.id: curve}
    with pytest.raises(NotFoundError, match="trial: no trial 'nope' in job"):
        store.trial_curve(job.id, "nope")
    with pytest.raises(AutocompressError, match="epoch: -1 must be an integer >= 0"):
        store.record_trial(job.id, "trial_1", TrialStatus.RUNNING, metrics={}, epoch=-1)


def test_a_retried_trial_replaces_its_curve_from_where_it_restarted(store: Store) -> None:
    job = store.create_job({"name": "retry"})

    def report(epoch: int, auc: float) -> None:
        metrics = {"stage": "train", "epoch": epoch, "valid_auc": auc}
        store.record_trial(job.id, "t", TrialStatus.RUNNING, metrics=metrics, epoch=epoch)

    for epoch in (1, 2, 3):
        report(epoch, 0.6 + epoch / 100)
    store.record_trial(job.id, "t", TrialStatus.PENDING, error="node lost")  # Tune retries it
    report(2, 0.9)  # the second attempt resumed after epoch 1
    _, curve = store.trial_curve(job.id, "t")
    assert [(p.epoch, p.attempt, p.metrics["valid_auc"]) for p in curve] == [(1, 1, 0.61), (2, 2, 0.9)]


def test_deleting_a_job_deletes_its_curves(store: Store, store_url: str) -> None:
    job = store.create_job({"name": "gone"})
    store.record_trial(job.id, "t", TrialStatus.RUNNING, metrics={"epoch": 1}, epoch=1)
    store.set_job_status(job.id, "CANCELLED")
    store.delete_job(job.id)
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM trial_epochs")).scalar() == 0
    finally:
        engine.dispose()


def _at_revision_0001(url: str) -> None:
    """Create the tables of revision 0001 only, as a database from before curves and versions."""
    from alembic import command
    from alembic.config import Config

    from autocompress.store._store import MIGRATIONS_DIR

    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
    finally:
        engine.dispose()


def test_the_migration_names_existing_models_after_their_job_and_numbers_them(store_url: str) -> None:
    _at_revision_0001(store_url)
    created = datetime(2026, 1, 1, tzinfo=UTC)
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as connection:
            for job_id, name, family in (("j1", "ranking", "dlrm"), ("j2", "tiny-dlrm", "dlrm")):
                connection.execute(
                    sa.insert(JOBS).values(
                        id=job_id, name=name, status="SUCCEEDED", spec={"family": family}, created_at=created
                    )
                )
            # (id, name, job, minutes after `created`): registered out of id order on purpose
            for model_id, name, job_id, minutes in (
                ("m-c", "ranking-winner", "j1", 1),
                ("m-a", "ranking-winner", "j1", 3),
                ("m-b", "tiny-dlrm-winner", "j2", 2),
                ("m-d", "hand-made", None, 0),
            ):
                connection.execute(
                    sa.insert(MODELS).values(
                        id=model_id,
                        name=name,
                        job_id=job_id,
                        path="/m.onnx",
                        feature_schema={},
                        metrics={},
                        created_at=created + timedelta(minutes=minutes),
                    )
                )
    finally:
        engine.dispose()

    with Store(store_url) as store:
        assert store.schema_revision() == "0002"
        models = {m.id: m for m in store.list_models()}
        assert {k: (m.name, m.version, m.tags) for k, m in models.items()} == {
            "m-c": ("ranking-dlrm", 1, {"former_name": "ranking-winner"}),
            "m-a": ("ranking-dlrm", 2, {"former_name": "ranking-winner"}),
            "m-b": ("tiny-dlrm", 1, {"former_name": "tiny-dlrm-winner"}),
            "m-d": ("hand-made", 1, {}),
        }
        # the next registration of the name continues the numbering
        assert store.register_model("ranking-dlrm", "/n.onnx", {}, {}, job_id="j1").version == 3
