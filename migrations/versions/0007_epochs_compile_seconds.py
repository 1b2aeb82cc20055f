"""epochs.compile_seconds: the time torch.compile took in an epoch

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("epochs", sa.Column("compile_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("epochs") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("compile_seconds")
