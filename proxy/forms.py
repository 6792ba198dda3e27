"""Multipart uploads (`/v1/audio/transcriptions`, `/v1/audio/translations`): read once, re-sent.

The client's form is parsed as it arrives (python-multipart, Starlette's
parser): its fields kept as text, its one file spooled, in memory up to
SPOOL_BYTES and then in an anonymous temporary file, so that an upload is
held at most once, and a large one not in memory at all. Each attempt
upstream gets a form the gateway writes: the client's fields (the model
renamed, routing fields left out), then the file under a safe name, with a
Content-Length (some servers refuse chunked uploads). The file's name is
only passed on, never used as a path.
"""

import math
import os
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile

from proxy.asgi_io import Receive, Scope, headers_named, read_body
from proxy.errors import APIError, bad_request, not_form

FILE_FIELD = "file"
SPOOL_BYTES = 1024 * 1024
CHUNK_BYTES = 64 * 1024
MAX_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024
MAX_FILENAME_LENGTH = 128
# Fields that would let a client choose where or how the gateway calls out
# (as proxy.validation.ROUTING_FIELDS for JSON bodies): never re-sent.
ROUTING_FIELDS = frozenset(
    {"api_base", "base_url", "api_key", "api_version", "headers", "extra_headers"}
)
# Form fields with a type other than text, read as the JSON a schema checks.
_BOOLEANS = {"true": True, "false": False}
_NUMBERS = frozenset({"temperature"})
# Leading path, and characters that have no place in a header's quoted string.
_PATH = re.compile(r"^.*[/\\]")
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"]')


@dataclass(slots=True)
class Upload:
    """The form's file: its safe name, declared type, size, and where its bytes are."""

    filename: str
    content_type: str
    file: SpooledTemporaryFile
    size: int = 0
    _seconds: int | None = field(default=None, init=False)
    _measured: bool = field(default=False, init=False)

    def close(self) -> None:
        self.file.close()

    def seconds(self) -> int | None:
        """How long the audio lasts, in whole seconds rounded up; None when the file is not
        a format mutagen reads the length of (MP3, MP4/M4A, Ogg Vorbis/Opus/FLAC, FLAC,
        WAV, AIFF, ASF/WMA, …; not WebM) or is not audio at all. Measured once."""
        if not self._measured:
            self._measured = True
            self.file.seek(0)
            import mutagen  # on first use: see _multipart()

            try:
                found = mutagen.File(self.file)
            except Exception:  # mutagen raises its own errors, and others on garbage
                found = None
            length = getattr(getattr(found, "info", None), "length", None)
            if isinstance(length, (int, float)) and 0 < length < 2**31 and math.isfinite(length):
                self._seconds = math.ceil(length)
        return self._seconds

    async def chunks(self) -> AsyncIterator[bytes]:
        self.file.seek(0)
        while chunk := self.file.read(CHUNK_BYTES):
            yield chunk


@dataclass(slots=True)
class Form:
    """A client's form: its text fields in order, and its file."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    upload: Upload | None = None

    def payload(self) -> "FormPayload":
        """The form as the JSON body a schema checks: `name[]` fields as lists, booleans and
        numbers read where the spec has them, the file as its Upload; a value that is
        not what its field needs stays text, for the schema to name."""
        payload = FormPayload(self)
        for name, value in self.fields:
            if name.endswith("[]"):
                payload.setdefault(name[:-2], []).append(value)
            elif value.lower() in _BOOLEANS and name == "stream":
                payload[name] = _BOOLEANS[value.lower()]
            elif name in _NUMBERS:
                payload[name] = _number(value)
            else:
                payload[name] = value
        if self.upload is not None:
            payload[FILE_FIELD] = self.upload
        return payload


class FormPayload(dict):
    """A form read as a JSON body (`Form.payload`), still holding the form it came from."""

    __slots__ = ("form",)

    def __init__(self, form: Form):
        super().__init__()
        self.form = form


@dataclass(frozen=True, slots=True)
class FormBody:
    """What an upstream is sent for a form: its content type, length and bytes."""

    content_type: str
    length: int
    head: bytes  # the fields and the file part's headers
    upload: Upload
    tail: bytes

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.head
        async for chunk in self.upload.chunks():
            yield chunk
        yield self.tail


def _number(value: str):
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def _multipart():
    """python-multipart, imported on first use, as mutagen is: they serve only the upload
    routes, and loaded at start-up they made every chat request cost 4% more instructions
    (callgrind, in-process, PYTHONHASHSEED=0)."""
    from python_multipart import exceptions, multipart

    return multipart, exceptions.FormParserError


def is_form(scope: Scope) -> bool:
    media = b""
    for value in headers_named(scope, b"content-type"):
        media = value.split(b";", 1)[0].strip().lower()
    return media == b"multipart/form-data"


def invalid_form(reason: str) -> APIError:
    return bad_request(
        f"The request body is not a valid multipart form: {reason}.", code="invalid_multipart"
    )


async def read_form(scope: Scope, receive: Receive, *, limit: int) -> Form:
    """The client's form, parsed as it arrives; 415 for another media type, 413 past
    `limit` bytes (announced or sent), 400 for a malformed form; ClientGone if the
    client leaves. The caller closes the Upload."""
    content_types = headers_named(scope, b"content-type")
    if not is_form(scope):
        raise not_form()
    multipart, FormParserError = _multipart()
    _, options = multipart.parse_options_header(content_types[-1])
    boundary = options.get(b"boundary")
    if not boundary:
        raise invalid_form("its Content-Type has no boundary")
    reader = _FormReader()
    try:
        parser = multipart.MultipartParser(boundary, reader.callbacks())
        await read_body(scope, receive, limit, sink=parser.write)
        parser.finalize()
    except FormParserError as error:
        reader.discard()
        raise invalid_form(str(error)[:200].rstrip(".") or "it cannot be parsed") from None
    except BaseException:
        reader.discard()
        raise
    if not reader.ended:
        reader.discard()
        raise invalid_form("it ends before its closing boundary")
    if reader.error:
        reader.discard()
        raise invalid_form(reader.error)
    return reader.form


class _FormReader:
    """python-multipart's callbacks: each part's headers, then its bytes, into a Form."""

    def __init__(self) -> None:
        self.form = Form()
        self.ended = False
        self.error = ""
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._value = bytearray()
        self._upload: Upload | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def discard(self) -> None:
        if self.form.upload is not None:
            self.form.upload.close()
        if self._upload is not None and self._upload is not self.form.upload:
            self._upload.close()

    def _fail(self, reason: str) -> None:
        # The first reason is kept; the rest of the body is still read (and dropped),
        # so that the client gets the answer rather than a reset connection.
        self.error = self.error or reason

    def _part_begin(self) -> None:
        self._headers = {}
        self._name = ""
        self._value = bytearray()
        self._upload = None

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).strip().lower()] = bytes(self._header_value).strip()
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition, options = _multipart()[0].parse_options_header(
            self._headers.get(b"content-disposition", b"")
        )
        if disposition != b"form-data" or b"name" not in options:
            self._fail("a part has no Content-Disposition form-data name")
            return
        self._name = _text(options[b"name"])
        if self._name == FILE_FIELD:
            if self.form.upload is not None:
                self._fail(f"it has more than one '{FILE_FIELD}'")
                return
            content_type = _text(self._headers.get(b"content-type", b""))
            self._upload = Upload(
                filename=safe_filename(_text(options.get(b"filename", b""))),
                content_type=_UNSAFE.sub("", content_type)[:200] or "application/octet-stream",
                file=SpooledTemporaryFile(max_size=SPOOL_BYTES),  # closed by the caller
            )
            self.form.upload = self._upload
        elif b"filename" in options:
            self._fail(f"the field '{self._name[:100]}' is a file; only '{FILE_FIELD}' may be")
        elif len(self.form.fields) >= MAX_FIELDS:
            self._fail(f"it has more than {MAX_FIELDS} fields")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error:
            return
        if self._upload is not None:
            self._upload.file.write(data[start:end])
            self._upload.size += end - start
        elif self._name:
            self._value.extend(data[start:end])
            if len(self._value) > MAX_FIELD_BYTES:
                self._fail(f"the field '{self._name[:100]}' is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self.error or self._upload is not None or not self._name:
            return
        try:
            value = self._value.decode()
        except UnicodeDecodeError:
            self._fail(f"the field '{self._name[:100]}' is not UTF-8 text")
            return
        self.form.fields.append((self._name, value))

    def _end(self) -> None:
        self.ended = True


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def safe_filename(name: str) -> str:
    """The client's file name fit to pass on: no directories, no control characters or
    quotes, at most MAX_FILENAME_LENGTH characters (the extension kept: servers read
    the format from it); "audio" when nothing is left."""
    name = _UNSAFE.sub("", _PATH.sub("", name)).strip().lstrip(".")
    if len(name) > MAX_FILENAME_LENGTH:
        stem, extension = os.path.splitext(name)
        name = stem[: MAX_FILENAME_LENGTH - len(extension[:16])] + extension[:16]
    return name or "audio"


def _quoted(value: str) -> str:
    # As browsers write names in multipart/form-data (WHATWG HTML): " and newlines escaped.
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def upstream_body(form: Form, model_name: str, extra: tuple = ()) -> FormBody:
    """The form an upstream is sent: the client's fields with `model` set to `model_name`
    and routing fields left out, the `extra` (name, value) fields, then the file (which
    the schema made sure of)."""
    upload = form.upload
    boundary = "aethergate-" + secrets.token_hex(16)
    parts = []
    for name, value in (*form.fields, *extra):
        if name in ROUTING_FIELDS:
            continue
        if name == "model":
            value = model_name
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'
            f"{value}\r\n"
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{FILE_FIELD}"; '
        f'filename="{_quoted(upload.filename)}"\r\nContent-Type: {upload.content_type}\r\n\r\n'
    )
    head = "".join(parts).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return FormBody(
        content_type=f"multipart/form-data; boundary={boundary}",
        length=len(head) + upload.size + len(tail),
        head=head,
        upload=upload,
        tail=tail,
    )
