"""owners (an operator's per-owner limits), a folder name per job and experiment that is never
reused, and each job's estimated compute, seconds run, stored bytes, and when its files were pruned

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

A job's files lived in artifacts/jobs/<id>: a fresh database pointed at an old artifacts folder
handed its job 1 the old job 1's files. New rows get a random folder name (a UUID's hex);
existing rows keep their id as the name, so their files stay theirs.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "owners",
        sa.Column("owner", sa.String(100), primary_key=True),
        sa.Column("max_queued", sa.Integer(), nullable=True),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("max_job_tmacs", sa.Float(), nullable=True),
        sa.Column("max_job_seconds", sa.Float(), nullable=True),
        sa.Column("max_storage_bytes", sa.BigInteger(), nullable=True),
    )
    # every owner of a job has a row: a worker choosing a job locks it, and never makes one
    op.execute("INSERT INTO owners (owner) SELECT DISTINCT owner FROM jobs")
    for table in ("jobs", "experiments"):
        op.add_column(table, sa.Column("folder", sa.String(32), nullable=True))
        op.execute(f"UPDATE {table} SET folder = CAST(id AS VARCHAR(32))")
        op.create_index(f"ux_{table}_folder", table, ["folder"], unique=True)
    op.add_column("jobs", sa.Column("compute_tmacs", sa.Float(), nullable=True))
    op.add_column("jobs", sa.Column("stored_bytes", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("files_pruned_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("run_seconds", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("jobs", "run_seconds")
    op.drop_column("jobs", "files_pruned_at")
    op.drop_column("jobs", "stored_bytes")
    op.drop_column("jobs", "compute_tmacs")
    for table in ("experiments", "jobs"):
        op.drop_index(f"ux_{table}_folder", table_name=table)
        op.drop_column(table, "folder")
    op.drop_table("owners")
