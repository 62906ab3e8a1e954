"""api_keys.admin: keys that may change what every user is served

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    # Keys made before this migration are users' keys; an operator makes admin keys anew.
    op.add_column(
        "api_keys",
        sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("admin")
