"""/v1/models: model files an owner sends (safetensors weights, ONNX classifiers), listed,
read and deleted. Every route acts for the token's owner: another owner's upload is as
missing as one that never existed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from api.service import owners, uploads
from api.service.config import Settings
from api.service.db import session_scope
from api.service.errors import InvalidField, StorageFull
from api.service.owners import Limits
from api.service.store import uploads as upload_store
from api.web.auth import OwnerDep
from api.web.deps import SettingsDep
from api.web.routes.jobs import ERRORS
from api.web.schemas import ErrorOut, UploadOut
from api.web.server import UPLOADS
from api.web.upload_form import FILE_FIELD, Form, read_form
from lsq.cost import DATASETS
from lsq.file_kinds import ONNX
from lsq.spec import Arch
from lsq.text import show

router = APIRouter(prefix=UPLOADS, tags=["models"], responses=ERRORS)
NOT_FOUND = {404: {"model": ErrorOut, "description": "No upload with this id"}}
MAX_RECEIVING = 4  # uploads streaming in at once, one per owner
_receiving: set[str] = set()

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary"},
                        "arch": {"type": "string", "description": "safetensors: its network"},
                        "dataset": {"type": "string", "description": "safetensors: the data"},
                        "classes": {"type": "integer"},
                        "channels": {"type": "integer"},
                        "image_size": {"type": "integer"},
                    },
                }
            }
        },
    }
}


BUILT_IN = ("cifar10", "fashion-mnist", "imagenet", "synthetic")


def _built_in(name: str) -> str:
    if name not in BUILT_IN:
        raise ValueError(
            f"{show(name)}: give one of {', '.join(BUILT_IN)}, or for other data (an image "
            "folder) any of them with the classes, channels and image_size fields"
        )
    return name


class UploadShape(BaseModel):
    """What safetensors weights are checked against: the network built for these images."""

    model_config = ConfigDict(extra="forbid")

    arch: Arch | None = None
    dataset: Annotated[str, AfterValidator(_built_in)] = "cifar10"
    classes: int | None = Field(None, ge=2, le=100_000)
    channels: int | None = Field(None, ge=1, le=16)
    image_size: int | None = Field(None, ge=1, le=4096)

    def resolved(self) -> dict[str, Any]:
        g = DATASETS[self.dataset]
        return {
            "arch": self.arch,
            "classes": self.classes or g.classes,
            "channels": self.channels or g.channels,
            "image_size": self.image_size or g.size,
        }


def _shape(form: Form) -> dict[str, Any]:
    try:
        return UploadShape.model_validate(form.fields).resolved()
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidField(name, first["msg"]) from None


@router.post(
    "",
    status_code=201,
    summary="Send a model file",
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {"model": UploadOut, "description": "The same bytes, sent before for this shape"},
        413: {"model": ErrorOut, "description": "Over LSQ_MAX_UPLOAD_BYTES"},
        507: {"model": ErrorOut, "description": "The owner's storage is full"},
    },
)
async def upload_model(
    request: Request, owner: OwnerDep, settings: SettingsDep, response: Response
) -> UploadOut:
    """A multipart form with the file as `file`: **safetensors weights** (checked against
    `arch` built for `dataset`'s images, or `classes`, `channels` and `image_size`: every
    missing, unexpected or wrongly shaped tensor is named) or an **ONNX classifier** (one
    image input; every op must convert to a trainable module). The kind is read from the
    file's content. A PyTorch pickle (.pt) is refused: send its state dict as safetensors."""
    length = request.headers.get("content-length", "0")
    if length.isdigit() and int(length) > settings.max_upload_bytes + (64 << 10):
        raise HTTPException(413, f"over {settings.max_upload_bytes:,} bytes (LSQ_MAX_UPLOAD_BYTES)")
    if owner in _receiving:
        raise HTTPException(429, "your other upload is still coming in: send this one after it",
                            headers={"Retry-After": "10"})  # fmt: skip
    if len(_receiving) >= MAX_RECEIVING:
        raise HTTPException(429, f"{MAX_RECEIVING} uploads are coming in: try again in a minute",
                            headers={"Retry-After": "60"})  # fmt: skip
    _receiving.add(owner)
    incoming = uploads.Incoming(settings)
    try:
        row = await _receive(request, owner, settings, incoming, response)
    except uploads.TooLarge as e:
        raise HTTPException(413, str(e)) from None
    except uploads.Refused as e:
        raise InvalidField(FILE_FIELD, str(e)) from None
    finally:
        incoming.discard()
        _receiving.discard(owner)
    return row


async def _receive(
    request: Request, owner: str, settings: Settings, incoming: uploads.Incoming, response: Response
) -> UploadOut:
    length = request.headers.get("content-length", "")
    await run_in_threadpool(_check_room, owner, settings, int(length) if length.isdigit() else 0)
    form = await read_form(request, incoming)
    shape = _shape(form)
    sha, kind = incoming.finish()
    if kind == ONNX:
        shape = {"arch": None}  # an ONNX model says what it takes
    else:
        if shape["arch"] is None:
            raise InvalidField(
                "arch", "safetensors weights are checked against a network: give arch"
            )
    earlier = await run_in_threadpool(_earlier, owner, sha, shape, settings)
    if earlier is not None:
        response.status_code = 200
        return earlier
    found = await uploads.inspect(incoming.path, incoming.size, shape)
    if kind == ONNX:
        shape = {"arch": None, **{k: found[k] for k in ("classes", "channels", "image_size")}}
    fields = {"filename": form.filename, "kind": kind, "sha256": sha, "size_bytes": incoming.size}
    fields |= {**shape, "info": found}
    return await run_in_threadpool(_add, owner, fields, settings, incoming)


def _earlier(owner: str, sha: str, shape: dict[str, Any], settings: Settings) -> UploadOut | None:
    with session_scope() as session:
        if shape["arch"] is None:  # ONNX: any earlier upload of these bytes
            row = next(
                (u for u in upload_store.list_uploads(session, owner) if u.sha256 == sha), None
            )
        else:
            row = upload_store.same_upload(session, owner, sha, shape)
        return UploadOut.of(row) if row is not None else None


def _check_room(owner: str, settings: Settings, size: int) -> None:
    """Before a byte of the body is read: the owner may keep another upload of `size`."""
    with session_scope() as session:
        _room(session, owner, settings, size)


def _room(session: Session, owner: str, settings: Settings, size: int) -> None:
    row = owners.lock(session, owner)
    if upload_store.count_uploads(session, owner) >= upload_store.MAX_UPLOADS:
        raise InvalidField(
            "file", f"{owner} has {upload_store.MAX_UPLOADS} uploads, the most allowed: delete one"
        )
    limits = Limits.defaults(settings).overridden_by(row)
    stored = owners.usage_of(session, owner).storage_bytes + size
    if problem := owners.storage_full(owner, stored, limits):
        raise StorageFull(problem)


def _add(
    owner: str, fields: dict[str, Any], settings: Settings, incoming: uploads.Incoming
) -> UploadOut:
    """The upload's row, and its bytes kept, in one transaction: a refusal keeps nothing."""
    with session_scope() as session:
        _room(session, owner, settings, fields["size_bytes"])
        row = upload_store.add_upload(session, owner, **fields)
        incoming.keep(uploads.blob(settings, fields["sha256"], fields["kind"]))
        return UploadOut.of(row)


@router.get("", summary="List your uploads")
def list_models(owner: OwnerDep) -> list[UploadOut]:
    """Newest first (an owner keeps at most 100)."""
    with session_scope() as session:
        return [UploadOut.of(u) for u in upload_store.list_uploads(session, owner)]


@router.get("/{upload_id}", summary="Read an upload", responses=NOT_FOUND)
def get_model(upload_id: int, owner: OwnerDep) -> UploadOut:
    with session_scope() as session:
        return UploadOut.of(upload_store.get_upload(session, upload_id, owner))


@router.delete(
    "/{upload_id}",
    status_code=204,
    summary="Delete an upload",
    responses={**NOT_FOUND, 409: {"model": ErrorOut, "description": "A job uses it"}},
)
def delete_model(upload_id: int, owner: OwnerDep, settings: SettingsDep) -> Response:
    """Refused (409) while a queued or running job uses it; its bytes go once no upload of
    any owner names them."""
    with session_scope() as session:
        row = upload_store.delete_upload(session, upload_id, owner)
        sha, kind = row.sha256, row.kind
    with session_scope() as session:
        if not upload_store.still_stored(session, sha):
            uploads.blob(settings, sha, kind).unlink(missing_ok=True)
    return Response(status_code=204)
