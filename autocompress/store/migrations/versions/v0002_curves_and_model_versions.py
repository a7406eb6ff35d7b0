"""Learning curves and model versions: a ``trial_epochs`` table; ``version`` and ``tags`` on models.

Existing models are renamed after their job (the name a registration from that job gets by
default, ``<job name>-<family>``; the former name is kept in the tag ``former_name``) and numbered
1, 2, ... per name in the order they were created. The unique (name, version) index is an index,
not a table constraint, so SQLite needs no table rebuild (a rebuild would drop a table that
deployments refer to).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-14
"""

import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from autocompress.store._orm import UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_models = sa.table(
    "model_artifacts",
    sa.column("id", sa.String()),
    sa.column("name", sa.String()),
    sa.column("version", sa.Integer()),
    sa.column("tags", sa.JSON()),
    sa.column("job_id", sa.String()),
    sa.column("created_at", UtcDateTime()),
)
_jobs = sa.table(
    "jobs", sa.column("id", sa.String()), sa.column("name", sa.String()), sa.column("spec", sa.JSON())
)


def _name_from_job(job_name: str, spec: Any) -> str:
    """The default model name of a job as this revision defines it (a copy: a migration is frozen)."""
    family = spec.get("family") if isinstance(spec, dict) else None
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", job_name).strip("-._") or "model"
    if isinstance(family, str) and family and family not in re.split(r"[-_.]", name):
        name = f"{name}-{family}"
    return name[:200]


def upgrade() -> None:
    op.create_table(
        "trial_epochs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("trial_id", sa.String(36), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("recorded_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_trial_epochs"),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trials.id"], name="fk_trial_epochs_trial_id_trials", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("trial_id", "epoch", name="uq_trial_epochs_trial_id_epoch"),
    )
    op.add_column("model_artifacts", sa.Column("version", sa.Integer(), nullable=False, server_default="0"))
    op.add_column(
        "model_artifacts", sa.Column("tags", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
    )

    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_models.c.id, _models.c.name, _jobs.c.name, _jobs.c.spec)
        .select_from(_models.outerjoin(_jobs, _jobs.c.id == _models.c.job_id))
        .order_by(_models.c.created_at, _models.c.id)
    ).all()
    versions: dict[str, int] = {}
    for model_id, former, job_name, spec in rows:
        name = former if job_name is None else _name_from_job(job_name, spec)
        versions[name] = versions.get(name, 0) + 1
        tags = {"former_name": former} if name != former else {}
        bind.execute(
            sa.update(_models)
            .where(_models.c.id == model_id)
            .values(name=name, version=versions[name], tags=tags)
        )
    op.create_index("uq_model_artifacts_name_version", "model_artifacts", ["name", "version"], unique=True)


def downgrade() -> None:
    bind = op.get_bind()
    for model_id, tags in bind.execute(sa.select(_models.c.id, _models.c.tags)).all():
        former = (tags or {}).get("former_name")
        if former:
            bind.execute(sa.update(_models).where(_models.c.id == model_id).values(name=former))
    op.drop_index("uq_model_artifacts_name_version", table_name="model_artifacts")
    op.drop_column("model_artifacts", "tags")
    op.drop_column("model_artifacts", "version")
    op.drop_table("trial_epochs")
