"""jobs.warnings (the quantizers' health, written with each epoch) and an (owner, id) index

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("warnings", sa.JSON(), nullable=True))
    op.create_index("ix_jobs_owner_id", "jobs", ["owner", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_id", table_name="jobs")
    op.drop_column("jobs", "warnings")  # SQLite 3.35+ drops it in place (AUTOINCREMENT kept)
