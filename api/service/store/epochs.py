"""Epochs: a job's per-epoch numbers and quantizer health, as the API and the plots read them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, defer, load_only

from api.service.models import EPOCH_NUMBERS, Epoch
from api.service.store.jobs import get_job
from lsq.metrics import EpochMetrics, QuantizerHealth, quantizer_warnings


def list_epochs(
    session: Session, job_id: int, owner: str | None = None, *, health: bool = False
) -> list[Epoch]:
    """A job's epochs, in order; their quantizer health (a larger column) only with `health`."""
    get_job(session, job_id, owner=owner)
    query = select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)
    return list(session.scalars(query if health else query.options(defer(Epoch.quantizers))))


def job_quantizer_warnings(session: Session, job_id: int) -> list[str]:
    """What the quantizer health of a job's first and last three epochs says is wrong."""
    numbers = select(Epoch.epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)
    epochs = list(session.scalars(numbers))
    wanted = sorted({*epochs[:1], *epochs[-3:]})
    query = select(Epoch.quantizers).where(Epoch.job_id == job_id, Epoch.epoch.in_(wanted))
    rows = [q for q in session.scalars(query.order_by(Epoch.epoch)) if q]
    return quantizer_warnings([[QuantizerHealth.model_validate(h) for h in e] for e in rows])


def epoch_numbers(epoch: Epoch) -> EpochMetrics:
    """An epoch without its quantizer health (GET /v1/jobs/{id}/quantizers has it)."""
    return EpochMetrics.model_validate({k: getattr(epoch, k) for k in ("epoch", *EPOCH_NUMBERS)})


def epochs_of(session: Session, job_ids: list[int]) -> dict[int, list[EpochMetrics]]:
    """The numbers of every epoch of these jobs (no quantizer health), by job, in order."""
    query = select(Epoch).where(Epoch.job_id.in_(job_ids)).order_by(Epoch.job_id, Epoch.epoch)
    numbers = load_only(*(getattr(Epoch, n) for n in ("job_id", "epoch", *EPOCH_NUMBERS)))
    epochs: dict[int, list[EpochMetrics]] = {}
    for e in session.scalars(query.options(numbers)):
        epochs.setdefault(e.job_id, []).append(epoch_numbers(e))
    return epochs
