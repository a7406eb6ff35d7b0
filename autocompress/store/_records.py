"""What the store hands back: statuses, frozen records and the errors a caller can get.

Records are plain frozen dataclasses copied out of a finished transaction, so callers (the search
callback, the REST API, the CLI) never hold a database session.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from autocompress.errors import AutocompressError


class JobStatus(enum.StrEnum):
    """Life cycle of a job: PENDING -> RUNNING -> one of the terminal states."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Whether no further transition is allowed from this state."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class TrialStatus(enum.StrEnum):
    """Life cycle of one trial; STOPPED means stopped early (a scheduler or a cancelled job).

    SKIPPED: never built, because the latency model predicted it far over the latency budget
    (its metrics hold the prediction); neither a failure nor a candidate.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    SKIPPED = "SKIPPED"

    @property
    def terminal(self) -> bool:
        """Whether the trial has finished, one way or another."""
        return self in (TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.STOPPED, TrialStatus.SKIPPED)


JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset(
        {JobStatus.PENDING, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    # RUNNING -> RUNNING is a resumed driver taking the job over.
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class NotFoundError(AutocompressError):
    """The job, trial, model or alias named does not exist (the API answers 404)."""


class ConflictError(AutocompressError):
    """The request is valid but the current state forbids it, e.g. deleting a running job (409)."""


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: spec, state with its reason, timings, driver and result."""

    id: str
    name: str
    status: JobStatus
    reason: str | None
    spec: dict[str, Any]
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    driver_id: str | None
    cancel_requested_by: str | None
    result: dict[str, Any] | None


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a job: its config (arch + policy), metrics, status, error and timings."""

    id: str
    job_id: str
    trial_key: str
    status: TrialStatus
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    seconds: float | None
    updated_at: datetime


@dataclass(frozen=True)
class JobProgress:
    """Trial counts of a job by state; ``done`` counts trials that finished without failing."""

    completed: int = 0
    stopped: int = 0
    failed: int = 0
    running: int = 0
    pending: int = 0
    skipped: int = 0

    @property
    def done(self) -> int:
        """Trials that finished normally, those stopped early or skipped on a latency prediction too."""
        return self.completed + self.stopped + self.skipped

    @property
    def total(self) -> int:
        """All trials recorded for the job so far."""
        return self.completed + self.stopped + self.skipped + self.failed + self.running + self.pending


@dataclass(frozen=True)
class EpochRecord:
    """One per-epoch report of a trial, a point of its learning curve: what the trial reported for
    ``epoch`` (``valid_auc``, ``train_loss``, ...) and the attempt that reported it."""

    trial_id: str
    epoch: int
    attempt: int
    metrics: dict[str, Any]
    recorded_at: datetime


@dataclass(frozen=True)
class ModelRecord:
    """A registered model artifact: its name and version (1, 2, ... per name), tags, feature schema,
    metrics and lineage (job, trial)."""

    id: str
    name: str
    version: int
    tags: dict[str, str]
    job_id: str | None
    trial_id: str | None
    path: str
    feature_schema: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class DeploymentRecord:
    """One entry of an alias's history; at most one entry per alias is active."""

    id: int
    alias: str
    model_id: str
    active: bool
    created_at: datetime
    replaced_at: datetime | None
    rolled_back_at: datetime | None


@dataclass(frozen=True)
class EventRecord:
    """One log line of a job; ``id`` grows, so a reader can follow with ``after_id``."""

    id: int
    job_id: str
    time: datetime
    kind: str
    message: str
