"""api_keys: a name, an expiry, when each was last used, and an index on the prefix

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    # Keys made before this migration never expire and have not been seen in use yet.
    op.add_column("api_keys", sa.Column("name", sa.String(length=64), nullable=True))
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_prefix", table_name="api_keys")
    with op.batch_alter_table("api_keys") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
        batch.drop_column("name")
