"""experiments.spec_version: the lsq.spec version an experiment's base was written with

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

Version 2 of lsq.spec re-estimates batch norms by default. Version 2 came before this
revision, so an experiment's version is its jobs' (written with it in one transaction): a
base stored at version 1 ran its jobs without, and reads back upgraded as their specs do.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "experiments", sa.Column("spec_version", sa.Integer(), nullable=False, server_default="1")
    )
    op.execute(
        "UPDATE experiments SET spec_version = COALESCE((SELECT MAX(jobs.spec_version) "
        "FROM jobs WHERE jobs.experiment_id = experiments.id), 1)"
    )


def downgrade() -> None:
    # Not batch mode: SQLite would copy the table, which jobs' foreign keys refuse while they
    # point into it; SQLite 3.35 and later drop the column in place.
    op.drop_column("experiments", "spec_version")
