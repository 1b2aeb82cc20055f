"""idempotency_keys: experiments' keys under "experiment " (a job's key may start "experiment:")

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

A job submitted with the key "experiment:K" and an experiment with the key "K" were stored
under the same key, so the second was refused as a reused key. A header key cannot hold a
space: under "experiment " the two can never meet. Only keys whose job belongs to an
experiment move; a job's own "experiment:..." key stays as it is.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _move(old: str, new: str) -> None:
    op.execute(
        f"UPDATE idempotency_keys SET key = '{new}' || substr(key, {len(old) + 1}) "
        f"WHERE substr(key, 1, {len(old)}) = '{old}' "
        "AND job_id IN (SELECT id FROM jobs WHERE experiment_id IS NOT NULL)"
    )


def upgrade() -> None:
    _move("experiment:", "experiment ")


def downgrade() -> None:
    # Where a job's key "experiment:K" and an experiment's "K" both exist, the older schema
    # holds one: the job's stays, the experiment's is forgotten (a retry of it makes another).
    op.execute(
        "DELETE FROM idempotency_keys WHERE substr(key, 1, 11) = 'experiment ' AND EXISTS "
        "(SELECT 1 FROM idempotency_keys AS job_key WHERE job_key.owner = idempotency_keys.owner "
        "AND job_key.key = 'experiment:' || substr(idempotency_keys.key, 12))"
    )
    _move("experiment ", "experiment:")
