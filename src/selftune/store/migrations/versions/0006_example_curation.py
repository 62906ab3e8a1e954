"""training_examples: curation's decision (state, reason, detail) and provenance

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    # Examples made before this migration came from feedback and were all kept: training goes
    # on using the active ones exactly as before (active decides, state only explains).
    op.add_column(
        "training_examples",
        sa.Column("state", sa.String(length=16), nullable=False, server_default="kept"),
    )
    op.add_column("training_examples", sa.Column("reason", sa.String(length=32), nullable=True))
    op.add_column("training_examples", sa.Column("detail", sa.Text(), nullable=True))
    op.add_column("training_examples", sa.Column("provenance", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Dropped in place (SQLite 3.35+), not by batch mode's copy of the table: version_examples
    # refers to training_examples, so the copy's DROP TABLE would break its foreign keys.
    for column in ("provenance", "detail", "reason", "state"):
        op.drop_column("training_examples", column)
