"""Reading a client's multipart form and writing the upstream's (proxy.forms), in process."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from python_multipart.multipart import MultipartParser

from proxy import forms
from proxy.errors import APIError, ClientGone
from proxy.tests import media

BOUNDARY = "XyZ"


def part(name: str, value: bytes, filename: str | None = None, kind: str = "") -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if kind:
        head += f"Content-Type: {kind}\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def scope(content_type: str = f"multipart/form-data; boundary={BOUNDARY}", length=None):
    headers = [(b"content-type", content_type.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "headers": headers}


def receiver(data: bytes, piece: int | None = None, *, leave_after: int | None = None):
    """An ASGI receive giving `data` in pieces of `piece` bytes (all at once by default)."""
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)] if piece else [data]
    pieces = pieces or [b""]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
        for i, p in enumerate(pieces)
    ]
    if leave_after is not None:
        messages = [*messages[:leave_after], {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    return receive


def read(data: bytes, piece=None, limit=10_000_000, **scope_options) -> forms.Form:
    return asyncio.run(forms.read_form(scope(**scope_options), receiver(data, piece), limit=limit))


AUDIO = media.wav_bytes(0.5)
FORM = body(
    part("model", b"whisper"),
    part("timestamp_granularities[]", b"word"),
    part("timestamp_granularities[]", b"segment"),
    part("file", AUDIO, "talk.wav", "audio/wav"),
    part("stream", b"true"),
    part("temperature", b"0.2"),
)


def file_bytes(upload: forms.Upload) -> bytes:
    upload.file.seek(0)
    return upload.file.read()


@pytest.mark.parametrize("piece", [None, 1, 7, 64, 4096])
def test_it_reads_fields_and_the_file_whatever_the_pieces_the_body_arrives_in(piece):
    form = read(FORM, piece)

    assert form.fields == [
        ("model", "whisper"),
        ("timestamp_granularities[]", "word"),
        ("timestamp_granularities[]", "segment"),
        ("stream", "true"),
        ("temperature", "0.2"),
    ]
    upload = form.upload
    assert (upload.filename, upload.content_type, upload.size) == (
        "talk.wav",
        "audio/wav",
        len(AUDIO),
    )
    assert file_bytes(upload) == AUDIO


def test_its_payload_reads_lists_booleans_and_numbers_as_the_spec_types_them():
    form = read(FORM)

    payload = form.payload()

    assert payload == {
        "model": "whisper",
        "timestamp_granularities": ["word", "segment"],
        "file": form.upload,
        "stream": True,
        "temperature": 0.2,
    }
    assert payload.form is form


def test_a_value_of_the_wrong_type_stays_text_for_the_schema_to_name():
    form = read(body(part("stream", b"maybe"), part("temperature", b"warm")))

    assert form.payload() == {"stream": "maybe", "temperature": "warm"}


def test_a_large_upload_is_spooled_to_a_temporary_file_not_kept_in_memory():
    audio = media.wav_bytes(120)  # 1.9 MB at 8 kHz
    form = read(body(part("model", b"w"), part("file", audio, "long.wav")), piece=65536)

    assert form.upload.file._rolled  # SpooledTemporaryFile's own flag
    assert file_bytes(form.upload) == audio
    assert form.upload.seconds() == 120


def test_a_small_upload_stays_in_memory():
    assert not read(FORM).upload.file._rolled


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (body(part("file", b"a", "a.wav"), part("file", b"b", "b.wav")), "more than one 'file'"),
        (body(part("model", b"w"), part("notes", b"x", "notes.txt")), "is a file"),
        (body(part("prompt", b"\xff\xfe")), "not UTF-8"),
        (body(part("prompt", b"x" * (forms.MAX_FIELD_BYTES + 1))), "longer than"),
        (body(*(part(f"f{i}", b"1") for i in range(forms.MAX_FIELDS + 1))), "more than 64"),
        (b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--\r\n", "no Content-Disposition"),
        (part("model", b"w"), "ends before its closing boundary"),
        (b"garbage without any boundary", "Expected boundary"),
    ],
    ids=[
        "two-files",
        "other-file",
        "not-utf8",
        "long-field",
        "many-fields",
        "no-name",
        "unterminated",
        "garbage",
    ],
)
def test_a_malformed_form_is_a_400_naming_what_is_wrong(data, reason):
    with pytest.raises(APIError) as refused:
        read(data)

    assert (refused.value.status, refused.value.code) == (400, "invalid_multipart")
    assert reason in refused.value.message


def test_it_refuses_another_media_type_with_415():
    with pytest.raises(APIError) as refused:
        read(b"{}", content_type="application/json")

    assert refused.value.status == 415


def test_it_refuses_a_form_without_a_boundary():
    with pytest.raises(APIError) as refused:
        read(FORM, content_type="multipart/form-data")

    assert refused.value.code == "invalid_multipart"


def test_it_refuses_a_boundary_longer_than_the_parser_takes():
    with pytest.raises(APIError) as refused:
        read(FORM, content_type="multipart/form-data; boundary=" + "b" * 300)

    assert refused.value.code == "invalid_multipart"
    assert "Boundary length" in refused.value.message


def test_an_announced_length_past_the_limit_is_413_before_reading():
    async def receive():
        raise AssertionError("read")

    with pytest.raises(APIError) as refused:
        asyncio.run(forms.read_form(scope(length=2000), receive, limit=1000))

    assert refused.value.status == 413


def test_a_body_past_the_limit_is_413_as_it_arrives():
    with pytest.raises(APIError) as refused:
        read(FORM, piece=100, limit=len(FORM) - 1)

    assert refused.value.status == 413


def test_a_client_leaving_mid_upload_is_client_gone():
    with pytest.raises(ClientGone):
        asyncio.run(forms.read_form(scope(), receiver(FORM, 100, leave_after=3), limit=10_000_000))


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("talk.wav", "talk.wav"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\talk.mp3", "talk.mp3"),
        ('a"b\r\n\x00c.wav', "abc.wav"),
        ("..hidden.wav", "hidden.wav"),
        ("", "audio"),
        ("dir/", "audio"),
        ("x" * 300 + ".flac", "x" * (forms.MAX_FILENAME_LENGTH - 5) + ".flac"),
    ],
)
def test_a_file_name_is_made_safe_to_pass_on(name, safe):
    assert forms.safe_filename(name) == safe


def test_the_upstreams_form_has_the_clients_fields_the_upstream_model_and_the_file():
    form = read(
        body(
            part("model", b"public"),
            part("api_base", b"http://elsewhere"),
            part("prompt", b'say "hi"'),
            part("file", AUDIO, "talk.wav", "audio/wav"),
        )
    )

    sent = forms.upstream_body(form, "upstream-name")

    async def collect():
        return b"".join([chunk async for chunk in sent.chunks()])

    data = asyncio.run(collect())
    assert len(data) == sent.length
    boundary = sent.content_type.split("boundary=")[1]
    found = []
    names: list[bytes] = []
    current = bytearray()
    header = bytearray()

    def on_header_value(data, start, end):
        header.extend(data[start:end])

    def on_header_end():
        if header.startswith(b"form-data"):
            names.append(bytes(header))
        header.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_part_data": lambda data, start, end: current.extend(data[start:end]),
            "on_part_end": lambda: (found.append(bytes(current)), current.clear()),
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
        },
    )
    parser.write(data)
    assert found == [b"upstream-name", b'say "hi"', AUDIO]
    assert names == [
        b'form-data; name="model"',
        b'form-data; name="prompt"',
        b'form-data; name="file"; filename="talk.wav"',
    ]


def test_the_upstreams_form_can_be_sent_again_for_a_fallback():
    form = read(FORM)
    sent = forms.upstream_body(form, "m")

    async def collect():
        return b"".join([chunk async for chunk in sent.chunks()])

    assert asyncio.run(collect()) == asyncio.run(collect())


@pytest.mark.parametrize(
    ("data", "seconds"),
    [
        (media.wav_bytes(90), 90),
        (media.wav_bytes(90.4), 91),
        (media.wav_bytes(0.2), 1),
        (b"\x1aE\xdf\xa3" * 64, None),  # WebM's signature: not measured
        (b"plain text, not audio" * 10, None),
        (b"", None),
    ],
)
def test_an_uploads_length_is_measured_in_whole_seconds_rounded_up(data, seconds):
    form = read(body(part("file", data, "a.bin")))

    assert form.upload.seconds() == seconds


@given(
    data=st.one_of(
        st.binary(max_size=400),
        # A real form with bytes flipped: nearly valid, the hardest to parse right.
        st.tuples(st.integers(0, len(FORM) - 1), st.binary(min_size=1, max_size=8)).map(
            lambda cut: FORM[: cut[0]] + cut[1] + FORM[cut[0] + len(cut[1]) :]
        ),
    ),
    piece=st.sampled_from([None, 1, 3, 50]),
)
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_any_body_is_a_form_or_a_400_never_another_error(data, piece):
    try:
        form = read(data, piece)
    except APIError as refused:
        assert refused.status == 400
    else:
        if form.upload is not None:
            form.upload.close()
