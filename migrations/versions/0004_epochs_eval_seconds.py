"""epochs.eval_seconds: the time of an epoch's test evaluation

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("epochs", sa.Column("eval_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("epochs") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("eval_seconds")
