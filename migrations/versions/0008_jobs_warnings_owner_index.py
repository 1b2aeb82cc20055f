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
    _existing_jobs_warnings()


def _existing_jobs_warnings() -> None:
    """Jobs with epochs already recorded get the warnings their epochs' health says (new
    epochs write them as they come)."""
    from lsq.metrics import QuantizerHealth, quantizer_warnings

    epochs = sa.table(
        "epochs", sa.column("job_id"), sa.column("epoch"), sa.column("quantizers", sa.JSON)
    )
    jobs = sa.table("jobs", sa.column("id"), sa.column("warnings", sa.JSON))
    query = (
        sa.select(epochs.c.job_id, epochs.c.quantizers)
        .where(epochs.c.quantizers.is_not(None))
        .order_by(epochs.c.job_id, epochs.c.epoch)
    )
    history: dict[int, list] = {}
    for job_id, quantizers in op.get_bind().execute(query):
        history.setdefault(job_id, []).append(quantizers)
    for job_id, rows in history.items():
        rows = rows[:1] + rows[1:][-3:]  # what a job's warnings read: first and last three
        found = quantizer_warnings([[QuantizerHealth.model_validate(h) for h in e] for e in rows])
        op.get_bind().execute(jobs.update().where(jobs.c.id == job_id).values(warnings=found))


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_id", table_name="jobs")
    op.drop_column("jobs", "warnings")  # SQLite 3.35+ drops it in place (AUTOINCREMENT kept)
