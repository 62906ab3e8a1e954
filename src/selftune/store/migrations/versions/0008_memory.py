"""memory: records, tags, vectors, channel summaries, keyword index; interactions.memory,
imports.shared

Revision ID: 0008
Revises: 0007

The keyword index is the database's own full-text search, kept up to date by the database on
every write: SQLite's FTS5 (an external-content table and triggers), PostgreSQL's text search
(a GIN index on the records' tsvector). On PostgreSQL with pgvector, vectors are also kept in a
``vector`` column that the database searches.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"

_FTS5 = [
    # porter: "cities" finds "city"; unicode61 folds case and diacritics.
    "CREATE VIRTUAL TABLE memory_fts USING fts5(title, text, content='memory_records', "
    "content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER memory_fts_insert AFTER INSERT ON memory_records BEGIN "
    "INSERT INTO memory_fts(rowid, title, text) VALUES (new.id, coalesce(new.title, ''), "
    "new.text); END",
    "CREATE TRIGGER memory_fts_delete AFTER DELETE ON memory_records BEGIN "
    "INSERT INTO memory_fts(memory_fts, rowid, title, text) VALUES ('delete', old.id, "
    "coalesce(old.title, ''), old.text); END",
    "CREATE TRIGGER memory_fts_update AFTER UPDATE OF title, text ON memory_records BEGIN "
    "INSERT INTO memory_fts(memory_fts, rowid, title, text) VALUES ('delete', old.id, "
    "coalesce(old.title, ''), old.text); "
    "INSERT INTO memory_fts(rowid, title, text) VALUES (new.id, coalesce(new.title, ''), "
    "new.text); END",
]
# The same expression the keyword search matches on (selftune.memory.keywords).
_POSTGRES = (
    "CREATE INDEX ix_memory_records_fts ON memory_records USING gin "
    "(to_tsvector('english', coalesce(title, '') || ' ' || text))"
)


def upgrade() -> None:
    op.add_column("interactions", sa.Column("memory", sa.JSON(), nullable=True))
    op.add_column(
        "imports",
        sa.Column("shared", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.create_table(
        "memory_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("shared", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_memory_records_user_id", "memory_records", ["user_id"])
    op.create_index("ix_memory_records_source_id", "memory_records", ["source_id"])
    op.create_table(
        "memory_tags",
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("origin", sa.String(length=8), nullable=False),
        sa.ForeignKeyConstraint(["record_id"], ["memory_records.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("record_id", "tag"),
    )
    op.create_index("ix_memory_tags_tag", "memory_tags", ["tag"])
    op.create_table(
        "memory_vectors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["record_id"], ["memory_records.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("record_id", "model"),
    )
    op.create_index("ix_memory_vectors_record_id", "memory_vectors", ["record_id"])
    op.create_index("ix_memory_vectors_model", "memory_vectors", ["model"])
    op.create_table(
        "memory_summaries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=140), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("record_ids", sa.JSON(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tag", "scope"),
    )
    op.create_index("ix_memory_summaries_user_id", "memory_summaries", ["user_id"])
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in _FTS5:
            op.execute(statement)
    elif dialect == "postgresql":
        op.execute(_POSTGRES)
        _add_pgvector_column()


def _add_pgvector_column() -> None:
    """``memory_vectors.embedding`` where pgvector is installed, or can be by this role; without
    it the server searches its own index of the vectors (selftune.memory.pgvector)."""
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
    except sa.exc.DBAPIError:
        return
    op.execute("ALTER TABLE memory_vectors ADD COLUMN embedding vector")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for trigger in ("memory_fts_insert", "memory_fts_delete", "memory_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS memory_fts")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_memory_records_fts")
        op.execute("ALTER TABLE memory_vectors DROP COLUMN IF EXISTS embedding")
    op.drop_index("ix_memory_summaries_user_id", table_name="memory_summaries")
    op.drop_table("memory_summaries")
    op.drop_index("ix_memory_vectors_model", table_name="memory_vectors")
    op.drop_index("ix_memory_vectors_record_id", table_name="memory_vectors")
    op.drop_table("memory_vectors")
    op.drop_index("ix_memory_tags_tag", table_name="memory_tags")
    op.drop_table("memory_tags")
    op.drop_index("ix_memory_records_source_id", table_name="memory_records")
    op.drop_index("ix_memory_records_user_id", table_name="memory_records")
    op.drop_table("memory_records")
    op.drop_column("imports", "shared")
    op.drop_column("interactions", "memory")
