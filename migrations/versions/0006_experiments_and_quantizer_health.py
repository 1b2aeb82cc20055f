"""Experiments (a baseline and its variants), and each epoch's quantizer health

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_experiments_owner_id", "experiments", ["owner", "id"])
    if op.get_bind().dialect.name == "sqlite":
        # A plain ADD COLUMN with its reference (SQLite allows that, not ADD CONSTRAINT), so
        # SQLite keeps the table and its AUTOINCREMENT instead of copying it.
        op.execute("ALTER TABLE jobs ADD COLUMN experiment_id INTEGER REFERENCES experiments (id)")
    else:
        op.add_column("jobs", sa.Column("experiment_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            "fk_jobs_experiment_id", "jobs", "experiments", ["experiment_id"], ["id"]
        )
    op.add_column("jobs", sa.Column("variant", sa.Integer(), nullable=True))
    op.create_index("ix_jobs_experiment_id", "jobs", ["experiment_id"])
    op.add_column("epochs", sa.Column("quantizers", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("epochs") as batch:
        batch.drop_column("quantizers")
    op.drop_index("ix_jobs_experiment_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("variant")
        batch.drop_column("experiment_id")
    op.drop_index("ix_experiments_owner_id", table_name="experiments")
    op.drop_table("experiments")
