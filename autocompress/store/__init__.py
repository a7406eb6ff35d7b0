"""The database of jobs, trials, registered models and deployments (SQLite file or PostgreSQL).

``Store(url)`` applies the Alembic migrations on open and hands back frozen records; the search
records every trial into it and the REST API serves from it.
"""

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
from autocompress.store._store import DB_URL_ENV, Store, default_store_url

__all__ = [
    "DB_URL_ENV",
    "JOB_TRANSITIONS",
    "ConflictError",
    "DeploymentRecord",
    "EpochRecord",
    "EventRecord",
    "JobProgress",
    "JobRecord",
    "JobStatus",
    "ModelRecord",
    "NotFoundError",
    "Store",
    "TrialRecord",
    "TrialStatus",
    "default_store_url",
]
