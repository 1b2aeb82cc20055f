"""A multipart/form-data upload read as it streams (python-multipart's parser): small text
fields kept, the one file part written straight to an api.service.uploads.Incoming, so neither
the API's memory nor a temporary folder ever holds more than a chunk of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartState, parse_options_header
from starlette.requests import Request

from api.service.errors import InvalidField
from api.service.uploads import Incoming, TooLarge

FILE_FIELD = "file"
MAX_FIELDS = 10
MAX_FIELD_BYTES = 256
FORM_BYTES = 1 << 20  # the form's fields, headers and boundaries around the file


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None


class _Reader:
    """The parser's callbacks: one part at a time, its headers, then its data."""

    def __init__(self, incoming: Incoming) -> None:
        self.form, self.incoming = Form(), incoming
        self._header, self._value, self._disposition = b"", b"", b""
        self._name: str | None = None
        self._text = bytearray()
        self._parts = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._add("_header", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_FIELDS:
            raise InvalidField("body", f"more than {MAX_FIELDS} form fields")
        self._disposition, self._name, self._text = b"", None, bytearray()

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD:
            if self.form.filename is not None:
                raise InvalidField(FILE_FIELD, "one file per upload")
            raw = options.get(b"filename", b"model").decode("utf-8", "replace")
            self.form.filename = "".join(c for c in raw if c.isprintable())[:255] or "model"
        self._name = name

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._name == FILE_FIELD:
            self.incoming.write(data[start:end])
            return
        self._text += data[start:end]
        if len(self._text) > MAX_FIELD_BYTES:
            raise InvalidField(self._name or "body", f"over {MAX_FIELD_BYTES} bytes")

    def _end(self) -> None:
        if self._name and self._name != FILE_FIELD:
            self.form.fields[self._name] = self._text.decode("utf-8", "replace")


async def read_form(request: Request, incoming: Incoming) -> Form:
    """The form's text fields and the file's name, its bytes in `incoming`. InvalidField for a
    body that is no such form; TooLarge (from `incoming`) past the size cap."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidField("body", "send the file as multipart/form-data, in a part named file")
    reader = _Reader(incoming)
    parser = MultipartParser(boundary, reader.callbacks())
    received, most = 0, incoming.max_bytes + FORM_BYTES
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > most:  # the file is capped, and so is what comes around it
                raise TooLarge(f"the form is over {most:,} bytes (LSQ_MAX_UPLOAD_BYTES + 1 MiB)")
            parser.write(chunk)
    except MultipartParseError as e:
        raise InvalidField("body", f"not a multipart form: {e}") from None
    if parser.state is not MultipartState.END:
        raise InvalidField("body", "the form ended before its closing boundary (cut short?)")
    if reader.form.filename is None:
        raise InvalidField(FILE_FIELD, "no part named file: send the model file as `file`")
    return reader.form
