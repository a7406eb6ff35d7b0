"""Alembic environment: runs on the connection the store hands over (no alembic.ini, no offline mode)."""

from alembic import context
from sqlalchemy.engine import Connection

from autocompress.store._orm import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "autocompress migrations run through autocompress.store.Store, which hands over a connection"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
