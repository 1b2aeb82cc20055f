"""/v1/datasets: what a job can train on, as the workers see the data folders."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.service import datasets
from api.web.auth import OwnerDep
from api.web.deps import SettingsDep
from api.web.routes.jobs import ERRORS
from api.web.schemas import DatasetOut

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERRORS)


@router.get("", summary="Datasets under this service's data folders")
async def list_datasets(_: OwnerDep, settings: SettingsDep) -> list[DatasetOut]:
    """The built-in datasets found (Fashion-MNIST, CIFAR-10 batches, synthetic) and every image
    folder (class folders, or train/ and val/ of them) under LSQ_DATA_ROOTS, with its class
    count. The folders are walked at most once a minute."""
    found = await run_in_threadpool(datasets.listing, settings)
    return [DatasetOut(**asdict(d)) for d in found]
