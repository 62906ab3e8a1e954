"""interactions: indexes on (created_at, id) and (user_id, created_at, id), the order GET
/api/interactions reads them in, everyone's and one user's

Revision ID: 0009
Revises: 0008

Without them a page of the newest interactions sorts the whole table (or every one of a user's).
"""

from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.create_index("ix_interactions_created_at_id", "interactions", ["created_at", "id"])
    op.create_index(
        "ix_interactions_user_created_at_id", "interactions", ["user_id", "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_interactions_user_created_at_id", table_name="interactions")
    op.drop_index("ix_interactions_created_at_id", table_name="interactions")
