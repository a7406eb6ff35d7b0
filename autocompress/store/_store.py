"""The store: one SQLAlchemy engine, migrations applied on open, short retried transactions.

Every repository method is its own transaction and returns frozen records, so the search driver,
the REST API and the CLI can share a database file (SQLite in WAL mode) or a PostgreSQL server.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, create_engine, delete, event, func, select, text, update
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from autocompress.errors import AutocompressError
from autocompress.store._orm import Deployment, Job, JobEvent, ModelArtifact, Trial, TrialEpoch
from autocompress.store._records import (
    JOB_TRANSITIONS,
    ConflictError,
    DeploymentRecord,
    EpochRecord,
    EventRecord,
    JobProgress,
    JobRecord,
    JobStatus,
    ModelRecord,
    NotFoundError,
    TrialRecord,
    TrialStatus,
)

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
_R = TypeVar("_R", bound="DataclassInstance")

DB_URL_ENV = "AUTOCOMPRESS_DB_URL"
DEFAULT_DB_FILE = "autocompress.db"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_SUPPORTED_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")
_MIGRATION_LOCK_KEY = 0x61636D70  # pg_advisory_xact_lock key shared by every store opening this database
_MODEL_VERSION_LOCK_CLASS = 0x61636D76  # with hashtext(name): registrations of one name take turns
_ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_TAG_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")
_MAX_TAGS = 50
_MAX_TAG_VALUE_CHARS = 500
_VERSION_ATTEMPTS = 20  # a registration that lost the race for a version number reads the next one
_MAX_PAGE = 1000
_PG_CONNECT_TIMEOUT_S = 10  # a server that does not answer at all fails the attempt, then it is retried
_FATAL_CONNECT_ERRORS = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
)


def default_store_url() -> str:
    """The database URL from ``AUTOCOMPRESS_DB_URL``, else the SQLite file ``./autocompress.db``."""
    url = os.environ.get(DB_URL_ENV, "").strip()
    if url:
        return url
    return f"sqlite:///{Path(DEFAULT_DB_FILE).resolve()}"


def _normalize_url(url: str | Path) -> URL:
    """Parse a URL (or a bare file path, taken as SQLite) and pick the psycopg 3 driver for PostgreSQL."""
    text_url = str(url)
    if "://" not in text_url:
        text_url = f"sqlite:///{Path(text_url).resolve()}"
    try:
        parsed = make_url(text_url)
    except ArgumentError:
        raise AutocompressError(
            f"url: {text_url!r} is not a database URL; use sqlite:///<path> or postgresql+psycopg://..."
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in _SUPPORTED_DRIVERS:
        raise AutocompressError(
            f"url: driver {parsed.drivername!r} is not supported; allowed: {list(_SUPPORTED_DRIVERS)}"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise AutocompressError("url: in-memory SQLite is not supported; give a file, sqlite:///<path>")
    return parsed


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


def _json_value(value: Any, where: str) -> Any:
    """A JSON-safe copy: numpy scalars unwrapped, tuples as lists, NaN/inf as null (PostgreSQL refuses them).

    Both backends then store the same thing, whatever Tune or numpy handed over.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    item = getattr(value, "item", None)
    if callable(item):
        return _json_value(item(), where)
    raise AutocompressError(
        f"{where}: a {type(value).__name__} cannot be stored; "
        "allowed: JSON values (dict, list, str, number, bool, null)"
    )


def _json_object(value: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AutocompressError(f"{where}: expected a mapping, got {type(value).__name__}")
    result: dict[str, Any] = _json_value(value, where)
    return result


def _tags(value: Mapping[str, str] | None, where: str = "tags") -> dict[str, str]:
    """Checked model tags: at most 50 ``key: value`` strings, keys of letters, digits and ``._:/-``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AutocompressError(f"{where}: expected a mapping of key to value, got {type(value).__name__}")
    if len(value) > _MAX_TAGS:
        raise AutocompressError(f"{where}: {len(value)} tags; at most {_MAX_TAGS} are allowed")
    tags: dict[str, str] = {}
    for key, tag in value.items():
        if not isinstance(key, str) or not _TAG_KEY_PATTERN.match(key):
            raise AutocompressError(
                f"{where}: key {key!r} must be 1..100 of letters, digits, '.', '_', ':', '/', '-', "
                "starting alphanumeric"
            )
        if not isinstance(tag, str) or len(tag) > _MAX_TAG_VALUE_CHARS or "\x00" in tag:
            raise AutocompressError(
                f"{where}.{key}: the value must be a string of at most {_MAX_TAG_VALUE_CHARS} characters "
                "without NUL"
            )
        tags[key] = tag
    return tags


def _job_status(value: JobStatus | str, where: str = "status") -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        raise AutocompressError(f"{where}: {value!r} is not one of {[s.value for s in JobStatus]}") from None


def _trial_status(value: TrialStatus | str, where: str = "status") -> TrialStatus:
    try:
        return TrialStatus(value)
    except ValueError:
        raise AutocompressError(
            f"{where}: {value!r} is not one of {[s.value for s in TrialStatus]}"
        ) from None


def _page(limit: int, offset: int) -> None:
    if not 1 <= limit <= _MAX_PAGE:
        raise AutocompressError(f"limit: {limit} is outside 1..{_MAX_PAGE}")
    if offset < 0:
        raise AutocompressError(f"offset: {offset} must be >= 0")


def _record(cls: type[_R], row: Any, **converted: Any) -> _R:
    """A frozen record of an ORM row: every field of ``cls`` copied by name, ``converted`` ones given."""
    values = {f.name: getattr(row, f.name) for f in fields(cls) if f.name not in converted}
    return cls(**values, **converted)


def _job_record(row: Job) -> JobRecord:
    return _record(JobRecord, row, status=JobStatus(row.status))


def _trial_record(row: Trial) -> TrialRecord:
    return _record(TrialRecord, row, status=TrialStatus(row.status))


def _model_record(row: ModelArtifact) -> ModelRecord:
    return _record(ModelRecord, row, tags=dict(row.tags))


def _epoch_record(row: TrialEpoch) -> EpochRecord:
    return _record(EpochRecord, row)


def _deployment_record(row: Deployment) -> DeploymentRecord:
    return _record(DeploymentRecord, row)


def _event_record(row: JobEvent) -> EventRecord:
    return _record(EventRecord, row)


# One lock per SQLite file for the write transactions of this process: its threads (the API's request
# workers) queue here in turn, instead of polling SQLite's busy handler, which lets a hundred
# concurrent writers starve one past the busy timeout. SQLite's lock still orders other processes.
_SQLITE_WRITERS: dict[str, threading.RLock] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()


def _sqlite_writer(database: str) -> threading.RLock:
    key = os.path.realpath(database)
    with _SQLITE_WRITERS_GUARD:
        return _SQLITE_WRITERS.setdefault(key, threading.RLock())


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    """WAL + busy timeout + foreign keys on every connection; write transactions take the lock up front.

    ``BEGIN IMMEDIATE`` makes a writer wait (up to the busy timeout) for the write lock when it
    starts, instead of failing midway when a read lock cannot be upgraded.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("autocompress_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Store:
    """The job / trial / model / deployment database behind the search, the API and the CLI.

    Opening it applies the Alembic migrations up to head. Each method runs in its own short
    transaction, retried with bounded backoff on transient errors (a locked SQLite file, a lost or
    refused PostgreSQL connection: a server restarting), for at most ``retry_attempts`` tries and
    ``retry_timeout_s`` seconds, and returns frozen records.
    """

    def __init__(
        self,
        url: str | Path | None = None,
        *,
        busy_timeout_s: float = 10.0,
        retry_attempts: int = 30,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 2.0,
        retry_timeout_s: float = 30.0,
    ) -> None:
        if retry_attempts < 1:
            raise AutocompressError(f"retry_attempts: {retry_attempts} must be >= 1")
        if retry_timeout_s < 0:
            raise AutocompressError(f"retry_timeout_s: {retry_timeout_s} must be >= 0")
        self._url = _normalize_url(url if url is not None else default_store_url())
        self._retry_attempts = retry_attempts
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._retry_timeout_s = retry_timeout_s
        self._options: dict[str, float | int] = {
            "busy_timeout_s": busy_timeout_s,
            "retry_attempts": retry_attempts,
            "retry_initial_s": retry_initial_s,
            "retry_max_s": retry_max_s,
            "retry_timeout_s": retry_timeout_s,
        }
        if self.dialect == "sqlite":
            assert self._url.database is not None
            Path(self._url.database).parent.mkdir(parents=True, exist_ok=True)
            self._engine = create_engine(self._url, connect_args={"timeout": busy_timeout_s})
            _configure_sqlite(self._engine, busy_timeout_s)
            self._writer: contextlib.AbstractContextManager[Any] = _sqlite_writer(self._url.database)
        else:
            # pre-ping: a pooled connection the server dropped (a restart) is replaced before use
            connect_args: dict[str, Any] = {}
            if "connect_timeout" not in self._url.query:
                connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
            self._engine = create_engine(self._url, pool_pre_ping=True, connect_args=connect_args)
            self._writer = contextlib.nullcontext()  # the server orders its writers
        write_engine = self._engine.execution_options(autocompress_write=True)
        self._reads = sessionmaker(self._engine, expire_on_commit=False)
        self._writes = sessionmaker(write_engine, expire_on_commit=False)
        self._write_engine = write_engine
        try:
            self.migrate()
        except BaseException:
            self._engine.dispose()
            raise

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        """The database kind: ``sqlite`` or ``postgresql``."""
        return self._url.get_backend_name()

    @property
    def url(self) -> str:
        """The database URL with any password hidden, for logs and the health route."""
        return self._url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Close every pooled connection; the store cannot be used afterwards."""
        self._engine.dispose()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as "open this URL again", so a Tune callback holding a store survives ``Tuner.restore``."""
        return (_reopen, (self._url.render_as_string(hide_password=False), self._options))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def migrate(self) -> None:
        """Apply the Alembic migrations up to head; a no-op on an up-to-date database.

        Runs in one write transaction (under an advisory lock on PostgreSQL), so two processes
        opening a fresh database at once do not both create the tables.
        """
        from alembic import command
        from alembic.config import Config

        def work(connection: Connection) -> None:
            if self.dialect == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        self._retrying(lambda: self._in_connection(work))

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None before any migration)."""
        from alembic.runtime.migration import MigrationContext

        def work(connection: Connection) -> str | None:
            return MigrationContext.configure(connection).get_current_revision()

        return self._retrying(lambda: self._in_connection(work))

    def _in_connection(self, work: Callable[[Connection], T]) -> T:
        with self._write_engine.begin() as connection:
            return work(connection)

    def _is_transient(self, exc: DBAPIError) -> bool:
        """Worth retrying: a lost or refused connection, a serialization failure, a locked SQLite file."""
        if exc.connection_invalidated:
            return True
        if not isinstance(exc, OperationalError):
            return False
        message = str(exc.orig).lower()
        if self.dialect == "postgresql":
            # psycopg raises OperationalError for lost connections and serialization failures alike;
            # a wrong password or database name will not heal by waiting.
            return not any(fatal in message for fatal in _FATAL_CONNECT_ERRORS)
        return "locked" in message or "busy" in message

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt``, again after a growing pause while it fails transiently, within the bounds."""
        delay = self._retry_initial_s
        deadline = time.monotonic() + self._retry_timeout_s
        for number in range(1, self._retry_attempts + 1):
            try:
                return attempt()
            except DBAPIError as exc:
                out_of_time = time.monotonic() + delay > deadline
                if number >= self._retry_attempts or out_of_time or not self._is_transient(exc):
                    raise
                logger.warning("store: transient database error (attempt %d), retrying: %s", number, exc.orig)
                time.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
        raise AssertionError("unreachable")

    def _transaction(self, work: Callable[[Session], T], *, write: bool) -> T:
        sessions = self._writes if write else self._reads
        turn = self._writer if write else contextlib.nullcontext()

        def attempt() -> T:
            with turn, sessions.begin() as session:
                return work(session)

        return self._retrying(attempt)

    @staticmethod
    def _job_row(session: Session, job_id: str, *, lock: bool = False) -> Job:
        row = session.get(Job, job_id, with_for_update=lock)
        if row is None:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        return row

    # -- jobs -----------------------------------------------------------------------------------

    def create_job(
        self, spec: Mapping[str, Any], name: str | None = None, idempotency_key: str | None = None
    ) -> JobRecord:
        """Record a new PENDING job; a repeated ``idempotency_key`` returns the job it created first."""
        spec_json = _json_object(spec, "spec")
        job_name = name if name is not None else str(spec_json.get("name") or "job")
        if not job_name or len(job_name) > 200:
            raise AutocompressError(f"name: {job_name!r} must be 1..200 characters")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
            raise AutocompressError("idempotency_key: must be 1..200 characters")

        def find(session: Session) -> Job | None:
            if idempotency_key is None:
                return None
            return session.scalars(select(Job).where(Job.idempotency_key == idempotency_key)).one_or_none()

        def work(session: Session) -> JobRecord:
            existing = find(session)
            if existing is not None:
                return _job_record(existing)
            now = _now()
            row = Job(
                id=_new_id(),
                name=job_name,
                status=JobStatus.PENDING.value,
                spec=spec_json,
                idempotency_key=idempotency_key,
                created_at=now,
            )
            try:
                with session.begin_nested():
                    session.add(row)
                    session.add(
                        JobEvent(job_id=row.id, time=now, kind="state", message="job created (PENDING)")
                    )
            except IntegrityError:
                existing = find(session)  # another writer took the key between our read and insert
                if existing is None:
                    raise
                return _job_record(existing)
            return _job_record(row)

        return self._transaction(work, write=True)

    def get_job(self, job_id: str) -> JobRecord:
        """The job with this id; raises NotFoundError if there is none."""
        return self._transaction(lambda s: _job_record(self._job_row(s, job_id)), write=False)

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        """Jobs, newest first, optionally only those in one state."""
        _page(limit, offset)
        wanted = _job_status(status) if status is not None else None

        def work(session: Session) -> list[JobRecord]:
            query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
            if wanted is not None:
                query = query.where(Job.status == wanted.value)
            return [_job_record(row) for row in session.scalars(query)]

        return self._transaction(work, write=False)

    def count_jobs(self, status: JobStatus | str | None = None) -> int:
        """How many jobs there are (in one state, if given), for paginated listings."""
        wanted = _job_status(status) if status is not None else None

        def work(session: Session) -> int:
            query = select(func.count()).select_from(Job)
            if wanted is not None:
                query = query.where(Job.status == wanted.value)
            return int(session.scalar(query) or 0)

        return self._transaction(work, write=False)

    def set_job_status(
        self,
        job_id: str,
        status: JobStatus | str,
        reason: str | None = None,
        *,
        result: Mapping[str, Any] | None = None,
        driver_id: str | None = None,
    ) -> JobRecord:
        """Move a job to ``status`` if its life cycle allows it, else raise ConflictError.

        RUNNING sets the start time (once); a terminal state sets the finish time and marks the
        job's still PENDING or RUNNING trials STOPPED, so nothing is left running forever.
        """
        target = _job_status(status)
        result_json = _json_object(result, "result") if result is not None else None

        def work(session: Session) -> JobRecord:
            row = self._job_row(session, job_id, lock=True)
            current = JobStatus(row.status)
            allowed = JOB_TRANSITIONS[current]
            if target not in allowed:
                allowed_text = sorted(s.value for s in allowed) or "none (terminal state)"
                raise ConflictError(
                    f"status: job {job_id} cannot go from {current.value} to {target.value}; "
                    f"allowed from {current.value}: {allowed_text}"
                )
            now = _now()
            row.status = target.value
            if reason is not None:
                row.reason = reason
            if driver_id is not None:
                row.driver_id = driver_id
            if result_json is not None:
                row.result = result_json
            if target is JobStatus.RUNNING:
                row.heartbeat_at = now
                if row.started_at is None:
                    row.started_at = now
            if target.terminal:
                row.finished_at = now
                session.execute(
                    update(Trial)
                    .where(
                        Trial.job_id == job_id,
                        Trial.status.in_([TrialStatus.PENDING.value, TrialStatus.RUNNING.value]),
                    )
                    .values(status=TrialStatus.STOPPED.value, finished_at=now, updated_at=now)
                )
            message = f"{current.value} -> {target.value}" + (f": {reason}" if reason else "")
            session.add(JobEvent(job_id=job_id, time=now, kind="state", message=message))
            return _job_record(row)

        return self._transaction(work, write=True)

    def request_cancel(self, job_id: str, by: str = "user") -> JobRecord:
        """Cancel a job: a PENDING one at once; a RUNNING one is flagged for its driver to stop.

        The driver sees ``cancel_requested_by`` and moves the job to CANCELLED itself; a job
        already in a terminal state raises ConflictError.
        """

        def work(session: Session) -> JobRecord:
            row = self._job_row(session, job_id, lock=True)
            current = JobStatus(row.status)
            if current.terminal:
                raise ConflictError(
                    f"status: job {job_id} is already {current.value}; only a live job can be cancelled"
                )
            now = _now()
            row.cancel_requested_by = by
            if current is JobStatus.PENDING:
                row.status = JobStatus.CANCELLED.value
                row.reason = f"cancelled by {by}"
                row.finished_at = now
            session.add(JobEvent(job_id=job_id, time=now, kind="state", message=f"cancel requested by {by}"))
            return _job_record(row)

        return self._transaction(work, write=True)

    def heartbeat(self, job_id: str) -> None:
        """Note that the job's driver is alive, so a restarted API can tell a dead driver from a slow one."""

        def work(session: Session) -> None:
            self._job_row(session, job_id).heartbeat_at = _now()

        self._transaction(work, write=True)

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job with its trials and events; a live job raises ConflictError."""

        def work(session: Session) -> None:
            row = self._job_row(session, job_id, lock=True)
            if not JobStatus(row.status).terminal:
                raise ConflictError(
                    f"status: job {job_id} is {row.status}; only a job in "
                    f"{[s.value for s in JobStatus if s.terminal]} can be deleted (cancel it first)"
                )
            session.execute(delete(Job).where(Job.id == job_id))

        self._transaction(work, write=True)

    # -- trials ---------------------------------------------------------------------------------

    def record_trial(
        self,
        job_id: str,
        trial_key: str,
        status: TrialStatus | str,
        config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        error: str | None = None,
        *,
        seconds: float | None = None,
        epoch: int | None = None,
    ) -> TrialRecord:
        """Insert or update the trial ``trial_key`` of a job (one row per key, however often recorded).

        Fields left as None keep their stored value. Entering RUNNING from another state counts
        an attempt (a retried trial has attempts > 1); a terminal state sets the finish time.
        With ``epoch``, ``metrics`` is that training epoch's report and is also kept in the trial's
        learning curve (``trial_curve``), in the same transaction: one point per epoch, a later
        report of the same epoch (a retried attempt) replacing it, and the points an older attempt
        reported after that epoch dropped, so the curve is always one consistent run.
        """
        target = _trial_status(status)
        config_json = _json_object(config, "config") if config is not None else None
        metrics_json = _json_object(metrics, "metrics") if metrics is not None else None
        if not 1 <= len(trial_key) <= 200:
            raise AutocompressError("trial_key: must be 1..200 characters")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            raise AutocompressError(f"epoch: {epoch!r} must be an integer >= 0")
        if epoch is not None and metrics_json is None:
            raise AutocompressError("metrics: required with epoch (the epoch's report)")

        def keep_epoch(session: Session, row: Trial, now: datetime) -> None:
            assert epoch is not None and metrics_json is not None
            session.flush()  # the trial row exists before its curve refers to it
            session.execute(
                delete(TrialEpoch).where(
                    TrialEpoch.trial_id == row.id, TrialEpoch.epoch > epoch, TrialEpoch.attempt < row.attempts
                )
            )
            point = session.scalars(
                select(TrialEpoch).where(TrialEpoch.trial_id == row.id, TrialEpoch.epoch == epoch)
            ).one_or_none()
            if point is None:
                point = TrialEpoch(trial_id=row.id, epoch=epoch)
                session.add(point)
            point.attempt = row.attempts
            point.metrics = metrics_json
            point.recorded_at = now

        def apply(row: Trial, previous: TrialStatus | None, now: datetime) -> None:
            if target is TrialStatus.RUNNING and previous is not TrialStatus.RUNNING:
                row.attempts += 1
                row.started_at = row.started_at or now
                row.finished_at = None
            if target.terminal:
                row.attempts = max(row.attempts, 1)
                if previous is not target or row.finished_at is None:
                    row.finished_at = now
            row.status = target.value
            if config_json is not None:
                row.config = config_json
            if metrics_json is not None:
                row.metrics = metrics_json
            if error is not None:
                row.error = error
            if seconds is not None:
                row.seconds = float(seconds)
            elif target.terminal and row.started_at is not None and row.finished_at is not None:
                row.seconds = (row.finished_at - row.started_at).total_seconds()
            row.updated_at = now

        def find(session: Session) -> Trial | None:
            query = select(Trial).where(Trial.job_id == job_id, Trial.trial_key == trial_key)
            return session.scalars(query.with_for_update()).one_or_none()

        def work(session: Session) -> TrialRecord:
            now = _now()
            row = find(session)
            if row is not None:
                apply(row, TrialStatus(row.status), now)
                if epoch is not None:
                    keep_epoch(session, row, now)
                return _trial_record(row)
            self._job_row(session, job_id)
            row = Trial(
                id=_new_id(),
                job_id=job_id,
                trial_key=trial_key,
                status=TrialStatus.PENDING.value,
                config={},
                metrics={},
                attempts=0,
            )
            apply(row, None, now)
            try:
                with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                row = find(session)  # a concurrent writer inserted the same key first
                if row is None:
                    raise
                apply(row, TrialStatus(row.status), now)
            if epoch is not None:
                keep_epoch(session, row, now)
            return _trial_record(row)

        return self._transaction(work, write=True)

    def list_trials(self, job_id: str, status: TrialStatus | str | None = None) -> list[TrialRecord]:
        """The job's trials in trial-key order (Tune numbers them), optionally only one state."""
        wanted = _trial_status(status) if status is not None else None

        def work(session: Session) -> list[TrialRecord]:
            self._job_row(session, job_id)
            query = select(Trial).where(Trial.job_id == job_id).order_by(Trial.trial_key)
            if wanted is not None:
                query = query.where(Trial.status == wanted.value)
            return [_trial_record(row) for row in session.scalars(query)]

        return self._transaction(work, write=False)

    def get_trial(self, job_id: str, trial: str) -> TrialRecord:
        """The job's trial whose key (Tune's trial id) or row id is ``trial``; NotFoundError if none."""

        def work(session: Session) -> TrialRecord:
            return _trial_record(self._trial_row(session, job_id, trial))

        return self._transaction(work, write=False)

    def trial_curve(self, job_id: str, trial: str) -> tuple[TrialRecord, list[EpochRecord]]:
        """A trial (by key or id, as ``get_trial``) and its learning curve: its per-epoch reports in
        epoch order."""

        def work(session: Session) -> tuple[TrialRecord, list[EpochRecord]]:
            row = self._trial_row(session, job_id, trial)
            query = select(TrialEpoch).where(TrialEpoch.trial_id == row.id).order_by(TrialEpoch.epoch)
            return _trial_record(row), [_epoch_record(point) for point in session.scalars(query)]

        return self._transaction(work, write=False)

    def job_curves(self, job_id: str) -> dict[str, list[EpochRecord]]:
        """The learning curves of all the job's trials in one read: trial row id -> points in epoch
        order (trials without a per-epoch report are absent)."""

        def work(session: Session) -> dict[str, list[EpochRecord]]:
            self._job_row(session, job_id)
            query = (
                select(TrialEpoch)
                .join(Trial, Trial.id == TrialEpoch.trial_id)
                .where(Trial.job_id == job_id)
                .order_by(TrialEpoch.trial_id, TrialEpoch.epoch)
            )
            curves: dict[str, list[EpochRecord]] = {}
            for point in session.scalars(query):
                curves.setdefault(point.trial_id, []).append(_epoch_record(point))
            return curves

        return self._transaction(work, write=False)

    def _trial_row(self, session: Session, job_id: str, trial: str) -> Trial:
        self._job_row(session, job_id)
        by_key = select(Trial).where(Trial.job_id == job_id, Trial.trial_key == trial)
        row = session.scalars(by_key).one_or_none()
        if row is None:
            row = session.scalars(
                select(Trial).where(Trial.job_id == job_id, Trial.id == trial)
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"trial: no trial {trial!r} in job {job_id}")
        return row

    def job_progress(self, job_id: str) -> JobProgress:
        """How many of the job's trials are completed, stopped, failed, running and pending."""

        def work(session: Session) -> JobProgress:
            self._job_row(session, job_id)
            query = select(Trial.status, func.count()).where(Trial.job_id == job_id).group_by(Trial.status)
            counts = {str(status).lower(): int(count) for status, count in session.execute(query)}
            return JobProgress(**counts)

        return self._transaction(work, write=False)

    # -- events ---------------------------------------------------------------------------------

    def add_event(self, job_id: str, kind: str, message: str) -> EventRecord:
        """Append one log line to a job (kind: a short word such as ``state``, ``trial``, ``log``)."""
        if not 1 <= len(kind) <= 32:
            raise AutocompressError(f"kind: {kind!r} must be 1..32 characters")

        def work(session: Session) -> EventRecord:
            self._job_row(session, job_id)
            row = JobEvent(job_id=job_id, time=_now(), kind=kind, message=message)
            session.add(row)
            session.flush()
            return _event_record(row)

        return self._transaction(work, write=True)

    def list_events(self, job_id: str, after_id: int = 0, limit: int = _MAX_PAGE) -> list[EventRecord]:
        """The job's log lines in order, those after ``after_id`` only (to follow a running job)."""
        _page(limit, 0)

        def work(session: Session) -> list[EventRecord]:
            self._job_row(session, job_id)
            query = (
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
                .order_by(JobEvent.id)
                .limit(limit)
            )
            return [_event_record(row) for row in session.scalars(query)]

        return self._transaction(work, write=False)

    # -- models ---------------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        path: str | Path,
        feature_schema: Mapping[str, Any],
        metrics: Mapping[str, Any],
        *,
        job_id: str | None = None,
        trial_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> ModelRecord:
        """Register an exported model (ONNX path, feature schema, metrics) with its lineage and tags.

        It becomes the next version of ``name``: 1 for a new name, else one more than the highest.
        Two registrations of a name at once get two versions: SQLite takes the write lock up front,
        PostgreSQL an advisory lock on the name until the transaction ends; behind both, the unique
        (name, version) index refuses a number twice, and a refused insert reads the highest again.
        """
        if not name or len(name) > 200:
            raise AutocompressError(f"name: {name!r} must be 1..200 characters")
        schema_json = _json_object(feature_schema, "feature_schema")
        metrics_json = _json_object(metrics, "metrics")
        tags_json = _tags(tags)

        def work(session: Session) -> ModelRecord:
            if job_id is not None:
                self._job_row(session, job_id)
            if trial_id is not None:
                trial = session.get(Trial, trial_id)
                if trial is None or (job_id is not None and trial.job_id != job_id):
                    raise NotFoundError(f"trial_id: no trial {trial_id!r} in job {job_id!r}")
            if self.dialect == "postgresql":
                session.execute(
                    text("SELECT pg_advisory_xact_lock(:kind, hashtext(:name))"),
                    {"kind": _MODEL_VERSION_LOCK_CLASS, "name": name},
                )
            highest = select(func.max(ModelArtifact.version)).where(ModelArtifact.name == name)
            for _ in range(_VERSION_ATTEMPTS):
                row = ModelArtifact(
                    id=_new_id(),
                    name=name,
                    version=int(session.scalar(highest) or 0) + 1,
                    tags=tags_json,
                    job_id=job_id,
                    trial_id=trial_id,
                    path=str(path),
                    feature_schema=schema_json,
                    metrics=metrics_json,
                    created_at=_now(),
                )
                try:
                    with session.begin_nested():
                        session.add(row)
                except IntegrityError:
                    continue  # another registration took this version first; read the highest again
                return _model_record(row)
            raise ConflictError(
                f"name: no version of {name!r} could be assigned in {_VERSION_ATTEMPTS} tries "
                "(too many registrations at once); try again"
            )

        return self._transaction(work, write=True)

    def get_model(self, model_id: str) -> ModelRecord:
        """The registered model with this id; raises NotFoundError if there is none."""

        def work(session: Session) -> ModelRecord:
            row = session.get(ModelArtifact, model_id)
            if row is None:
                raise NotFoundError(f"model_id: no model {model_id!r}")
            return _model_record(row)

        return self._transaction(work, write=False)

    def list_models(
        self, job_id: str | None = None, limit: int = 50, offset: int = 0, *, name: str | None = None
    ) -> list[ModelRecord]:
        """Registered models, newest first, optionally only those of one job or of one name."""
        _page(limit, offset)

        def work(session: Session) -> list[ModelRecord]:
            query = select(ModelArtifact).order_by(
                ModelArtifact.created_at.desc(), ModelArtifact.version.desc(), ModelArtifact.id
            )
            if job_id is not None:
                query = query.where(ModelArtifact.job_id == job_id)
            if name is not None:
                query = query.where(ModelArtifact.name == name)
            return [_model_record(row) for row in session.scalars(query.limit(limit).offset(offset))]

        return self._transaction(work, write=False)

    # -- deployments ----------------------------------------------------------------------------

    def deploy(self, alias: str, model_id: str) -> DeploymentRecord:
        """Point ``alias`` at a model; the deployment it replaces stays in the alias's history."""
        if not _ALIAS_PATTERN.match(alias):
            raise AutocompressError(
                f"alias: {alias!r} must be 1..200 of letters, digits, '.', '_', '-', starting alphanumeric"
            )

        def work(session: Session) -> DeploymentRecord:
            if session.get(ModelArtifact, model_id) is None:
                raise NotFoundError(f"model_id: no model {model_id!r}")
            now = _now()
            current = self._active_row(session, alias)
            if current is not None:
                current.active = False
                current.replaced_at = now
                session.flush()  # free the one-active-per-alias index before the insert
            row = Deployment(alias=alias, model_id=model_id, active=True, created_at=now)
            session.add(row)
            session.flush()
            return _deployment_record(row)

        return self._transaction(work, write=True)

    def rollback(self, alias: str) -> DeploymentRecord:
        """Put the alias back on the deployment before the active one; raises if there is none."""

        def work(session: Session) -> DeploymentRecord:
            current = self._active_row(session, alias)
            if current is None:
                raise NotFoundError(f"alias: {alias!r} has no active deployment")
            previous = session.scalars(
                select(Deployment)
                .where(
                    Deployment.alias == alias,
                    Deployment.id < current.id,
                    Deployment.rolled_back_at.is_(None),
                )
                .order_by(Deployment.id.desc())
                .limit(1)
                .with_for_update()
            ).one_or_none()
            if previous is None:
                raise ConflictError(f"alias: {alias!r} has no earlier deployment to roll back to")
            now = _now()
            current.active = False
            current.replaced_at = now
            current.rolled_back_at = now
            session.flush()
            previous.active = True
            previous.replaced_at = None
            session.flush()
            return _deployment_record(previous)

        return self._transaction(work, write=True)

    def active_deployment(self, alias: str) -> DeploymentRecord | None:
        """The deployment the alias serves now, or None."""

        def work(session: Session) -> DeploymentRecord | None:
            row = self._active_row(session, alias, lock=False)
            return _deployment_record(row) if row is not None else None

        return self._transaction(work, write=False)

    def active_aliases(self) -> dict[str, str]:
        """Every alias that serves a model now, and its model id, in one query (the serving
        replicas' alias table, read every half second)."""

        def work(session: Session) -> dict[str, str]:
            query = select(Deployment.alias, Deployment.model_id).where(Deployment.active.is_(True))
            return {alias: model_id for alias, model_id in session.execute(query.order_by(Deployment.alias))}

        return self._transaction(work, write=False)

    def list_aliases(self) -> list[str]:
        """Every alias ever deployed, in name order."""

        def work(session: Session) -> list[str]:
            return sorted(session.scalars(select(Deployment.alias).distinct()))

        return self._transaction(work, write=False)

    def deployment_history(self, alias: str) -> list[DeploymentRecord]:
        """Every deployment of the alias, oldest first."""

        def work(session: Session) -> list[DeploymentRecord]:
            query = select(Deployment).where(Deployment.alias == alias).order_by(Deployment.id)
            return [_deployment_record(row) for row in session.scalars(query)]

        return self._transaction(work, write=False)

    @staticmethod
    def _active_row(session: Session, alias: str, *, lock: bool = True) -> Deployment | None:
        query = select(Deployment).where(Deployment.alias == alias, Deployment.active.is_(True))
        if lock:
            query = query.with_for_update()
        return session.scalars(query).one_or_none()


def _reopen(url: str, options: dict[str, Any]) -> Store:
    return Store(url, **options)
