"""Uploads: an owner's model files (api.service.uploads keeps their bytes), and the specs that
name them (`model: {upload: ID}`, `model.init: {upload: ID}`): checked against the upload's
kind and shape when a job is submitted, with the upload's sha256 recorded in the job."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, load_only

from api.service.errors import InvalidField, JobConflict, UploadNotFound
from api.service.job_spec import MAX_JOB_ID, ServiceJobSpec, UploadRef
from api.service.models import UNFINISHED, Job, Upload
from lsq.cost import DATASETS, Tally
from lsq.file_kinds import ONNX, SAFETENSORS
from lsq.spec import upgrade_spec

MAX_UPLOADS = 100  # per owner: the list is one page


def get_upload(session: Session, upload_id: int, owner: str) -> Upload:
    """An upload of `owner`; another owner's is as missing as one that never was."""
    row = session.get(Upload, upload_id) if 1 <= upload_id <= MAX_JOB_ID else None
    if row is None or row.owner != owner:
        raise UploadNotFound(upload_id)
    return row


def list_uploads(session: Session, owner: str) -> list[Upload]:
    query = select(Upload).where(Upload.owner == owner).order_by(Upload.id.desc())
    return list(session.scalars(query.limit(MAX_UPLOADS)))


def count_uploads(session: Session, owner: str) -> int:
    return session.scalar(select(func.count()).where(Upload.owner == owner)) or 0


def same_upload(session: Session, owner: str, sha256: str, shape: dict[str, Any]) -> Upload | None:
    """The owner's earlier upload of these bytes, checked for the same network and shape."""
    query = select(Upload).where(Upload.owner == owner, Upload.sha256 == sha256)
    return next((u for u in session.scalars(query) if _shape(u) == shape), None)


def _shape(u: Upload) -> dict[str, Any]:
    return {
        "arch": u.arch,
        "classes": u.classes,
        "channels": u.channels,
        "image_size": u.image_size,
    }


def add_upload(session: Session, owner: str, **fields: Any) -> Upload:
    row = Upload(owner=owner, **fields)
    session.add(row)
    session.flush()
    return row


def delete_upload(session: Session, upload_id: int, owner: str) -> Upload:
    """Delete an upload of `owner`, unless a queued or running job uses it (409). The caller
    removes its bytes once no row names them (still_stored)."""
    row = get_upload(session, upload_id, owner)
    query = select(Job).where(Job.owner == owner, Job.status.in_(UNFINISHED)).order_by(Job.id)
    for job in session.scalars(query.options(load_only(Job.id, Job.spec, Job.spec_version))):
        if upload_id in named_uploads(upgrade_spec(job.spec, job.spec_version)).values():
            raise JobConflict(
                f"job {job.id} ({job.status}) uses upload {upload_id}; cancel it or let it end "
                "first"
            )
    session.delete(row)
    session.flush()
    return row


def still_stored(session: Session, sha256: str) -> bool:
    """Whether any upload row still names these bytes."""
    return session.scalar(select(func.count()).where(Upload.sha256 == sha256)) > 0


def stored_bytes(session: Session, owner: str) -> int:
    query = select(func.coalesce(func.sum(Upload.size_bytes), 0)).where(Upload.owner == owner)
    return int(session.scalar(query) or 0)


def named_uploads(spec: dict[str, Any]) -> dict[str, int]:
    """Field -> id of each upload a spec (a JSON object, as stored) names."""
    model = spec.get("model") or {}
    init = model.get("init")
    found = {"model.upload": model.get("upload")}
    found["model.init.upload"] = init.get("upload") if isinstance(init, dict) else None
    return {f: v for f, v in found.items() if isinstance(v, int)}


def attach(session: Session, owner: str, spec: ServiceJobSpec) -> ServiceJobSpec:
    """`spec` with the sha256 of each upload it names recorded, after checking that each is
    the owner's, of the right kind, and made for the job's network and images."""
    model = spec.model
    if model.upload is not None:
        u = _named(session, owner, "model.upload", model.upload, ONNX, model.sha256)
        _fits("model.upload", u, spec)
        model = model.model_copy(update={"sha256": u.sha256})
    if isinstance(model.init, UploadRef):
        u = _named(session, owner, "model.init.upload", model.init.upload, SAFETENSORS,
                   model.init.sha256)  # fmt: skip
        if u.arch != model.arch:
            raise InvalidField(
                "model.init.upload", f"upload {u.id} holds weights of {u.arch}, not of {model.arch}"
            )
        _fits("model.init.upload", u, spec)
        model = model.model_copy(update={"init": UploadRef(upload=u.id, sha256=u.sha256)})
    return spec.model_copy(update={"model": model}) if model is not spec.model else spec


def _named(
    session: Session, owner: str, field: str, upload_id: int, kind: str, sha: str | None
) -> Upload:
    try:
        u = get_upload(session, upload_id, owner)
    except UploadNotFound as e:
        raise InvalidField(field, str(e)) from None
    if u.kind != kind:
        use = "model: {upload: ID}" if u.kind == ONNX else "model: {arch: ..., init: {upload: ID}}"
        raise InvalidField(field, f"upload {u.id} is {u.kind}; name it as {use}")
    if sha is not None and sha != u.sha256:
        raise InvalidField(field, f"upload {u.id}'s sha256 is {u.sha256}, not {sha}")
    return u


def _fits(field: str, u: Upload, spec: ServiceJobSpec) -> None:
    """The upload was made for the dataset's images (its classes are checked when the worker
    has read them: an image folder's are known only then)."""
    d, geometry = spec.dataset, DATASETS[spec.dataset.name]
    channels = d.channels or geometry.channels
    size = d.image_size or geometry.size
    classes = None if d.name == "image_folder" else geometry.classes
    if (u.channels, u.image_size) != (channels, size) or classes not in (None, u.classes):
        raise InvalidField(
            field,
            f"upload {u.id} takes {u.channels} x {u.image_size} x {u.image_size} images into "
            f"{u.classes} classes; {d.name} here is {channels} x {size} x {size}"
            + (f" in {classes}" if classes else "")
            + " (dataset.image_size, dataset.channels)",
        )


def network_of(session: Session, owner: str, upload_id: int | None) -> Tally | None:
    """The cost per image of the ONNX model a spec names (`model.upload`), as measured when it
    was sent; None for a network lsq.cost knows by name."""
    if upload_id is None:
        return None
    row = session.get(Upload, upload_id)
    if row is None or row.owner != owner or row.kind != ONNX:
        return None  # attach refuses it
    info = row.info
    return Tally(int(info["macs"]), int(info["outputs"]), int(info["parameters"]))
