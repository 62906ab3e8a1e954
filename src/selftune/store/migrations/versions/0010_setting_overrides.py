"""setting_overrides: settings changed at run time (the autopilot's), one row per section

Revision ID: 0010
Revises: 0009

The server and the worker are separate processes started from the same settings file; a value
changed through the API or the CLI must reach both and survive a restart, so it lives in the
store beside the records it governs.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_table(
        "setting_overrides",
        sa.Column("section", sa.String(32), primary_key=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("setting_overrides")
