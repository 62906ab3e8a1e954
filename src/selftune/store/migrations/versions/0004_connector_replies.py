"""connector_replies: replies connectors wrote, pending approval, posted or rejected

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_table(
        "connector_replies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("connector", sa.String(length=32), nullable=False),
        sa.Column("item_id", sa.String(length=128), nullable=False),
        sa.Column("parent_id", sa.String(length=128), nullable=False),
        sa.Column("video_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("interaction_id", sa.String(length=64), nullable=False),
        sa.Column("chain", sa.JSON(), nullable=False),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("posted_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["interaction_id"], ["interactions.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("connector", "item_id"),
    )
    op.create_index("ix_connector_replies_status", "connector_replies", ["status"])
    op.create_index("ix_connector_replies_user_id", "connector_replies", ["user_id"])
    op.create_index("ix_connector_replies_video_id", "connector_replies", ["video_id"])


def downgrade() -> None:
    op.drop_index("ix_connector_replies_video_id", table_name="connector_replies")
    op.drop_index("ix_connector_replies_user_id", table_name="connector_replies")
    op.drop_index("ix_connector_replies_status", table_name="connector_replies")
    op.drop_table("connector_replies")
