"""Images and audio through the gateway, with the official SDK, in front of the stand-in.

Each route is admitted, billed in its model's unit and logged like chat; what reached the
upstream is checked on the stand-in's record. Hostile uploads are refused before the
upstream sees anything.
"""

import base64
import hashlib
import socket
from decimal import Decimal

import httpx
import openai
import pytest

from aethergate.testing import wait_for, wait_for_logs
from proxy.tests import media
from proxy.tests.upstream import (
    SPEECH_CONTENT_TYPES,
    image_usage,
    speech_audio,
    transcript_text,
)

PRICE = Decimal("0.006")
PROMPT = "a lighthouse at dusk"


@pytest.fixture
def secret(make_key):
    return make_key()[1]


def only_log():
    rows = wait_for_logs(1)
    assert len(rows) == 1, rows
    return rows[0]


def auth(secret):
    return {"Authorization": f"Bearer {secret}"}


def wav_file(seconds: float, name: str = "talk.wav"):
    return (name, media.wav_bytes(seconds), "audio/wav")


# --------------------------------------------------------------------------- images


def test_images_are_generated_and_billed_per_image_returned(
    gateway, upstream, make_model, secret, client_for
):
    make_model(
        "painter",
        "echo-image",
        capability="IMAGE",
        billing_unit="IMAGE",
        price_in=Decimal("5"),
        price_out=Decimal("0.04"),
    )

    answer = client_for(secret).images.generate(
        model="painter", prompt=PROMPT, n=2, size="64x32", response_format="b64_json"
    )

    assert len(answer.data) == 2
    assert media.png_size(base64.b64decode(answer.data[0].b64_json)) == (64, 32)
    sent = upstream.received[-1]
    assert sent.path == "/v1/images/generations"
    assert sent.json == {
        "model": "echo-image",
        "prompt": PROMPT,
        "n": 2,
        "size": "64x32",
        "response_format": "b64_json",
    }
    row = only_log()
    assert (row.path, row.status, row.outcome) == ("/v1/images/generations", 200, "ok")
    assert (row.input_units, row.output_units, row.usage_estimated) == (0, 2, False)
    assert row.cost == 2 * Decimal("0.04")


def test_image_urls_are_passed_on_and_a_token_model_is_billed_by_the_upstreams_tokens(
    gateway, upstream, make_model, secret, client_for
):
    make_model(
        "painter",
        "echo-image",
        capability="IMAGE",
        billing_unit="TOKEN",
        price_in=Decimal("0.01"),
        price_out=Decimal("0.02"),
    )

    answer = client_for(secret).images.generate(model="painter", prompt=PROMPT)

    image = httpx.get(answer.data[0].url)
    assert image.status_code == 200 and image.content.startswith(media.PNG_SIGNATURE)
    usage = image_usage(PROMPT, 1)
    row = only_log()
    assert (row.input_units, row.output_units) == (usage["input_tokens"], usage["output_tokens"])
    assert row.usage_estimated is False
    assert row.cost == usage["input_tokens"] * Decimal("0.01") + usage["output_tokens"] * Decimal(
        "0.02"
    )


def test_a_streamed_image_is_refused_before_the_upstream(gateway, upstream, make_model, secret):
    make_model("painter", "echo-image", capability="IMAGE", billing_unit="IMAGE")

    response = httpx.post(
        f"{gateway.v1}/images/generations",
        json={"model": "painter", "prompt": PROMPT, "stream": True},
        headers=auth(secret),
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stream"
    assert upstream.received == []


def test_a_model_is_used_only_on_the_route_of_its_capability(
    gateway, upstream, make_model, secret, client_for
):
    make_model("chatty", "echo")
    make_model("painter", "echo-image", capability="IMAGE", billing_unit="IMAGE")
    client = client_for(secret)

    with pytest.raises(openai.BadRequestError) as on_images:
        client.images.generate(model="chatty", prompt=PROMPT)
    with pytest.raises(openai.BadRequestError) as on_chat:
        client.chat.completions.create(
            model="painter", messages=[{"role": "user", "content": "hi"}]
        )

    assert on_images.value.code == on_chat.value.code == "unsupported_capability"
    assert upstream.received == []


# --------------------------------------------------------------------------- transcriptions


def test_a_90_second_wav_on_a_per_minute_model_costs_one_and_a_half_minutes(
    gateway, upstream, make_model, secret, client_for
):
    make_model("whisper", "echo-stt", capability="AUDIO_STT", billing_unit="MINUTE", price_in=PRICE)
    name, data, kind = wav_file(90)

    transcript = client_for(secret).audio.transcriptions.create(
        model="whisper", file=(name, data, kind), language="en"
    )

    assert transcript.text == transcript_text(90)
    sent = upstream.received[-1]
    assert sent.path == "/v1/audio/transcriptions"
    assert sent.form["model"] == "echo-stt" and sent.form["language"] == "en"
    assert (sent.file.filename, sent.file.content_type) == (name, kind)
    assert sent.file.sha256 == hashlib.sha256(data).hexdigest()
    # The gateway's form goes with its length: no chunked upload.
    assert sent.content_length is not None and sent.content_length > len(data)
    row = only_log()
    assert (row.path, row.status, row.outcome) == ("/v1/audio/transcriptions", 200, "ok")
    # The upstream reported the duration: not an estimate.
    assert (row.input_units, row.output_units, row.usage_estimated) == (90, 0, False)
    assert row.cost == Decimal("1.5") * PRICE


def test_the_gateway_measures_the_audio_when_the_upstream_reports_no_duration(
    gateway, upstream, make_model, secret, client_for
):
    make_model(
        "whisper",
        "echo-stt+noduration",
        capability="AUDIO_STT",
        billing_unit="MINUTE",
        price_in=PRICE,
    )

    text = client_for(secret).audio.transcriptions.create(
        model="whisper", file=wav_file(90.4), response_format="srt"
    )

    assert "-->" in text  # the upstream's SRT, as it wrote it
    row = only_log()
    # 90.4 s count as 91 whole seconds, measured by the gateway: flagged.
    assert (row.input_units, row.usage_estimated) == (91, True)
    assert row.cost == Decimal(91) * PRICE / 60


@pytest.mark.parametrize("response_format", ["text", "vtt", "verbose_json"])
def test_each_answer_format_is_passed_on_as_the_upstream_wrote_it(
    gateway, upstream, make_model, secret, response_format
):
    make_model("whisper", "echo-stt", capability="AUDIO_STT", billing_unit="MINUTE", price_in=PRICE)

    response = httpx.post(
        f"{gateway.v1}/audio/transcriptions",
        data={"model": "whisper", "response_format": response_format},
        files={"file": wav_file(30)},
        headers=auth(secret),
    )

    assert response.status_code == 200
    if response_format == "verbose_json":
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["duration"] == 30
    else:
        assert response.headers["content-type"].startswith("text/plain")
        assert transcript_text(30) in response.text
    assert only_log().cost == PRICE / 2


def test_a_streamed_transcript_passes_every_event_on_and_bills_its_tokens(
    gateway, upstream, make_model, secret, client_for
):
    make_model(
        "whisper",
        "echo-stt+chunks=4",
        capability="AUDIO_STT",
        billing_unit="TOKEN",
        price_in=Decimal("0.001"),
        price_out=Decimal("0.002"),
    )

    events = list(
        client_for(secret).audio.transcriptions.create(
            model="whisper", file=wav_file(10), stream=True
        )
    )

    kinds = [event.type for event in events]
    assert kinds == ["transcript.text.delta"] * 4 + ["transcript.text.done"]
    done = events[-1]
    assert "".join(e.delta for e in events[:-1]).split() == done.text.split()
    row = only_log()
    assert row.stream is True
    assert (row.input_units, row.output_units, row.usage_estimated) == (
        done.usage.input_tokens,
        done.usage.output_tokens,
        False,
    )


def test_a_translation_is_relayed_and_billed_like_a_transcription(
    gateway, upstream, make_model, secret, client_for
):
    make_model("whisper", "echo-stt", capability="AUDIO_STT", billing_unit="MINUTE", price_in=PRICE)

    with pytest.warns(DeprecationWarning):  # the SDK's own, on translations.create
        answer = client_for(secret).audio.translations.create(model="whisper", file=wav_file(60))

    assert answer.text == transcript_text(60, "translate")
    assert upstream.received[-1].path == "/v1/audio/translations"
    row = only_log()
    # Translations carry no duration: measured, so flagged.
    assert (row.input_units, row.usage_estimated, row.cost) == (60, True, PRICE)


def test_a_request_priced_model_is_charged_once_per_transcription(
    gateway, upstream, make_model, secret, client_for
):
    make_model(
        "whisper",
        "echo-stt",
        capability="AUDIO_STT",
        billing_unit="REQUEST",
        price_in=Decimal("0.25"),
    )

    client_for(secret).audio.transcriptions.create(model="whisper", file=wav_file(600))

    assert only_log().cost == Decimal("0.25")


# --------------------------------------------------------------------------- speech


def test_speech_is_relayed_as_it_arrives_with_the_upstreams_media_type(
    gateway, upstream, make_model, secret, client_for
):
    make_model(
        "voice",
        "echo-tts+chunks=5+gap=0.3",
        capability="AUDIO_TTS",
        billing_unit="TOKEN",
        price_in=Decimal("0.001"),
    )
    text = "Hello there, this is a spoken sentence."

    with client_for(secret).audio.speech.with_streaming_response.create(
        model="voice", voice="alloy", input=text, response_format="wav"
    ) as response:
        assert response.headers["content-type"] == SPEECH_CONTENT_TYPES["wav"]
        pieces = response.iter_bytes()
        first = next(pieces)
        # The first bytes came while the upstream was still sending the rest.
        assert upstream.received[-1].finished_at is None
        audio = first + b"".join(pieces)

    assert audio == speech_audio(text)
    assert upstream.received[-1].json["model"] == "echo-tts+chunks=5+gap=0.3"
    row = only_log()
    assert (row.path, row.status, row.outcome) == ("/v1/audio/speech", 200, "ok")
    # Audio carries no usage: the input's tokens are estimated (4 characters a token).
    assert (row.input_units, row.output_units, row.usage_estimated) == (10, 0, True)
    assert row.cost == 10 * Decimal("0.001")


def test_speech_cut_by_the_upstream_is_not_passed_off_as_complete(
    gateway, upstream, make_model, secret
):
    make_model("voice", "echo-tts+chunks=6+reset=2", capability="AUDIO_TTS")

    with pytest.raises(httpx.RemoteProtocolError):  # the connection ends mid-answer
        httpx.post(
            f"{gateway.v1}/audio/speech",
            json={"model": "voice", "voice": "alloy", "input": "one two three four"},
            headers=auth(secret),
        )

    row = only_log()
    assert (row.status, row.outcome) == (502, "upstream_error")


def test_a_client_leaving_mid_speech_closes_the_upstream_and_is_billed_what_started(
    gateway, upstream, make_model, secret
):
    make_model(
        "voice", "echo-tts+chunks=20+gap=0.2", capability="AUDIO_TTS", price_in=Decimal("0.001")
    )
    payload = {"model": "voice", "voice": "alloy", "input": "x" * 40}

    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST", f"{gateway.v1}/audio/speech", json=payload, headers=auth(secret)
        ) as response,
    ):
        next(response.iter_bytes())

    sent = upstream.wait_for_requests(1)[-1]
    assert sent.wait_done()
    assert sent.closed_early
    row = only_log()
    assert row.outcome == "client_disconnected"
    assert (row.input_units, row.cost) == (10, 10 * Decimal("0.001"))


# --------------------------------------------------------------------------- hostile uploads


def post_form(gateway, secret, files, data=None, **options):
    return httpx.post(
        f"{gateway.v1}/audio/transcriptions",
        data=data if data is not None else {"model": "whisper"},
        files=files,
        headers=auth(secret),
        **options,
    )


@pytest.fixture
def whisper(make_model):
    return make_model(
        "whisper", "echo-stt", capability="AUDIO_STT", billing_unit="MINUTE", price_in=PRICE
    )


def test_an_upload_past_the_limit_is_413_before_the_upstream(
    gateway, upstream, whisper, secret, settings
):
    settings.AETHERGATE_MAX_UPLOAD_BYTES = 100_000

    response = post_form(gateway, secret, {"file": wav_file(30)})  # 480 KB

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert upstream.received == []
    assert only_log().cost == 0


def test_an_unannounced_upload_past_the_limit_is_cut_at_the_limit(
    gateway, upstream, whisper, secret, settings
):
    settings.AETHERGATE_MAX_UPLOAD_BYTES = 100_000
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode()

    def body():
        yield head
        for _ in range(50):
            yield b"\0" * 10_000

    response = httpx.post(
        f"{gateway.v1}/audio/transcriptions",
        content=body(),
        headers={**auth(secret), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )

    assert response.status_code == 413
    assert upstream.received == []


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        (
            {"Content-Type": "application/json"},
            b'{"model": "whisper"}',
            415,
            "unsupported_media_type",
        ),
        ({"Content-Type": "multipart/form-data"}, b"--x\r\n", 400, "invalid_multipart"),
        (
            {"Content-Type": "multipart/form-data; boundary=x"},
            b"not a form at all",
            400,
            "invalid_multipart",
        ),
        (
            {"Content-Type": "multipart/form-data; boundary=x"},
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n',
            400,
            "invalid_multipart",
        ),  # no closing boundary
        (
            {"Content-Type": "multipart/form-data; boundary=x"},
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--x--\r\n',
            400,
            "missing_required_parameter",
        ),  # no file
    ],
    ids=["json", "no-boundary", "garbage", "unterminated", "no-file"],
)
def test_a_malformed_upload_is_refused_with_a_clear_error(
    gateway, upstream, whisper, secret, headers, content, status, code
):
    response = httpx.post(
        f"{gateway.v1}/audio/transcriptions", content=content, headers={**auth(secret), **headers}
    )

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert upstream.received == []


def test_a_second_file_is_refused(gateway, upstream, whisper, secret):
    response = post_form(gateway, secret, [("file", wav_file(1)), ("file", wav_file(1, "b.wav"))])

    assert response.status_code == 400
    assert "more than one 'file'" in response.json()["error"]["message"]
    assert upstream.received == []


@pytest.mark.parametrize(
    ("sent", "passed_on"),
    [
        ("../../etc/passwd.wav", "passwd.wav"),
        ("C:\\Users\\me\\talk.wav", "talk.wav"),
        ("tab\tand\x7fdel.wav", "tab%09anddel.wav"),  # DEL dropped; httpx escapes the tab
        ('quote"and\r\nnewline.wav', "quote%22and%0D%0Anewline.wav"),  # as httpx escapes them
        ("/", "audio"),
    ],
)
def test_a_file_name_with_path_parts_goes_upstream_as_its_last_part(
    gateway, upstream, whisper, secret, sent, passed_on
):
    response = post_form(gateway, secret, {"file": (sent, media.wav_bytes(1), "audio/wav")})

    assert response.status_code == 200
    assert upstream.received[-1].file.filename == passed_on


def test_routing_fields_in_a_form_never_reach_the_upstream(gateway, upstream, whisper, secret):
    response = post_form(
        gateway,
        secret,
        {"file": wav_file(1)},
        data={"model": "whisper", "api_base": "http://evil.example", "prompt": "names"},
    )

    assert response.status_code == 200
    assert upstream.received[-1].form == {"model": "echo-stt", "prompt": "names"}


def test_audio_whose_length_cannot_be_measured_is_refused_for_a_per_minute_model(
    gateway, upstream, whisper, secret
):
    response = post_form(
        gateway, secret, {"file": ("talk.webm", b"\x1aE\xdf\xa3" * 64, "audio/webm")}
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unmeasurable_audio"
    assert upstream.received == []
    assert only_log().cost == 0


def test_a_client_leaving_mid_upload_reaches_no_upstream_and_is_not_billed(
    gateway, upstream, whisper, secret
):
    host, port = gateway.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {secret}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 1000000\r\n\r\n"
            + b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
            + b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            + b"\0" * 50_000
        )
        wait_for(lambda: gateway.app.runtime.active == 1, what="the upload to be in progress")

    row = only_log()
    assert (row.status, row.outcome, row.cost) == (499, "client_disconnected", 0)
    assert upstream.received == []


def test_a_failed_transcription_falls_back_with_the_same_file(
    gateway, upstream, make_model, secret, client_for
):
    spare = make_model(
        "spare", "echo-stt", capability="AUDIO_STT", billing_unit="MINUTE", price_in=PRICE
    )
    make_model(
        "whisper",
        "echo-stt+fail=503",
        capability="AUDIO_STT",
        billing_unit="MINUTE",
        price_in=PRICE,
        fallback=spare,
    )
    name, data, kind = wav_file(30)

    transcript = client_for(secret).audio.transcriptions.create(
        model="whisper", file=(name, data, kind)
    )

    assert transcript.text == transcript_text(30)
    first, second = upstream.received
    assert first.form["model"] == "echo-stt+fail=503" and second.form["model"] == "echo-stt"
    assert first.file.sha256 == second.file.sha256 == hashlib.sha256(data).hexdigest()
    row = only_log()
    assert [a["model"] for a in row.attempts] == ["whisper", "spare"]
    assert row.cost == PRICE / 2


# --------------------------------------------------------------------------- vLLM's dialect


@pytest.fixture
def vllm_whisper(make_endpoint, make_model):
    endpoint = make_endpoint("vllm", kind="vllm")
    return make_model(
        "whisper",
        "echo-stt+vllm+chunks=3",
        endpoint=endpoint,
        capability="AUDIO_STT",
        billing_unit="TOKEN",
        price_in=Decimal("0.001"),
        price_out=Decimal("0.002"),
    )


def test_vllms_chunked_transcript_stream_reaches_the_client_as_openais_events(
    gateway, upstream, vllm_whisper, secret, client_for
):
    events = list(
        client_for(secret).audio.transcriptions.create(
            model="whisper", file=wav_file(10), stream=True
        )
    )

    assert [e.type for e in events] == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    done = events[-1]
    assert done.text == "".join(e.delta for e in events[:-1])
    # vLLM counts usage only when asked: the gateway asked, for a vLLM endpoint.
    assert upstream.received[-1].form["stream_include_usage"] == "true"
    row = only_log()
    assert (row.input_units, row.output_units, row.usage_estimated) == (
        done.usage.input_tokens,
        done.usage.output_tokens,
        False,
    )
    assert done.usage.output_tokens == 3


def test_vllms_duration_written_as_text_is_still_the_upstreams(
    gateway, upstream, make_endpoint, make_model, secret
):
    endpoint = make_endpoint("vllm", kind="vllm")
    make_model(
        "whisper",
        "echo-stt+vllm",
        endpoint=endpoint,
        capability="AUDIO_STT",
        billing_unit="MINUTE",
        price_in=PRICE,
    )

    response = post_form(
        gateway,
        secret,
        {"file": wav_file(45)},
        data={"model": "whisper", "response_format": "verbose_json"},
    )

    assert response.json()["duration"] == "45.0"
    row = only_log()
    assert (row.input_units, row.usage_estimated, row.cost) == (45, False, PRICE * 3 / 4)
