"""The upstream stand-in answers like an OpenAI server, and as each model-name flag says."""

import base64
import hashlib
import io
import json
import math
import struct
import time
import wave
import zlib

import anthropic
import httpx
import openai
import pytest

from aethergate.testing import wait_for
from proxy.tests import media
from proxy.tests.upstream import (
    AUDIO_TOKENS_PER_SECOND,
    DEFAULT_CHUNKS,
    DEFAULT_IMAGE_SIZE,
    EMBEDDING_DIMENSIONS,
    IMAGE_OUTPUT_TOKENS,
    MAX_IMAGE_SIDE,
    NON_WAV_BYTES_PER_SECOND,
    REVISED_PROMPT_PREFIX,
    SPEECH_MAX_INPUT,
    SPEECH_SECONDS_PER_CHARACTER,
    UPLOAD_HEAD_BYTES,
    Flags,
    audio_seconds,
    chat_answer,
    completion_answer,
    embedding_vector,
    error_body,
    image_usage,
    parse_flags,
    speech_audio,
    split_bytes,
    stream_text,
    transcript_text,
)

HELLO = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def sdk(upstream):
    client = openai.OpenAI(base_url=upstream.base_url, api_key="x", max_retries=0, timeout=10)
    yield client
    client.close()


def sse_events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response, in order."""
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


# --------------------------------------------------------------------------- flag grammar


def test_it_reads_flags_after_a_base_name_or_alone():
    assert parse_flags("echo") == Flags()
    assert parse_flags("fail=503").fail == 503
    flags = parse_flags("echo+nousage+slow=0.3+chunks=4+gap=0.1+noDone+reset=2")
    assert flags == Flags(nousage=True, slow=0.3, chunks=4, gap=0.1, nodone=True, reset=2)


def test_it_ignores_parts_that_are_not_well_formed_flags():
    assert parse_flags("llama3:8b+q4+slow=soon+fail") == Flags()


# --------------------------------------------------------------------------- normal answers


def test_it_answers_a_chat_completion_deterministically(sdk):
    answer = sdk.chat.completions.create(model="echo", messages=HELLO)

    assert answer.object == "chat.completion"
    assert answer.model == "echo"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "Hello from upstream: hi there"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 5)
    assert answer.usage.total_tokens == 10
    assert chat_answer(HELLO) == ("Hello from upstream: hi there", 5, 5)


def test_it_answers_the_last_user_message_joining_text_parts(sdk):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "look"}, {"type": "text", "text": "here"}],
        },
    ]

    answer = sdk.chat.completions.create(model="echo", messages=messages)

    assert answer.choices[0].message.content == "Hello from upstream: look here"
    assert answer.usage.prompt_tokens == 2 + 1 + 1 + 2 + 3


def test_it_answers_a_text_completion(sdk):
    answer = sdk.completions.create(model="echo", prompt="say something")

    assert answer.object == "text_completion"
    assert answer.choices[0].text == "Hello from upstream: say something"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == completion_answer("say something")[1] == 5


def test_it_embeds_each_input_as_eight_floats(sdk):
    answer = sdk.embeddings.create(model="embed", input=["a", "b c"], encoding_format="float")

    assert [d.index for d in answer.data] == [0, 1]
    for item, text in zip(answer.data, ["a", "b c"], strict=True):
        assert len(item.embedding) == EMBEDDING_DIMENSIONS
        assert all(isinstance(v, float) and -1 <= v <= 1 for v in item.embedding)
        assert item.embedding == embedding_vector(text)
    assert answer.data[0].embedding != answer.data[1].embedding
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 3


def test_it_sends_floats_even_when_base64_is_asked(upstream):
    response = httpx.post(
        f"{upstream.base_url}/embeddings",
        json={"model": "embed", "input": [[1, 2, 3]], "encoding_format": "base64"},
    )

    vector = response.json()["data"][0]["embedding"]
    assert vector == embedding_vector([1, 2, 3])
    assert response.json()["usage"]["prompt_tokens"] == 3


def test_it_lists_models(sdk, upstream):
    assert [m.id for m in sdk.models.list()] == ["echo", "echo-embed"]
    upstream.model_ids = ["only"]
    assert [m.id for m in sdk.models.list()] == ["only"]


def test_it_answers_unknown_paths_with_an_openai_shaped_404(upstream):
    response = httpx.get(f"{upstream.base_url}/nowhere")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert upstream.received[0].path == "/v1/nowhere"


# --------------------------------------------------------------------------- streams


def test_it_streams_twenty_word_chunks_then_stop_without_usage_unless_asked(sdk):
    chunks = list(sdk.chat.completions.create(model="echo", messages=HELLO, stream=True))

    content = chunks[:-1]
    assert len(content) == DEFAULT_CHUNKS
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content for c in content)
    assert text == stream_text("Hello from upstream: hi there")
    assert text.startswith("Hello from upstream: hi there Hello from")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_it_ends_a_stream_with_a_usage_chunk_when_asked(sdk):
    chunks = list(
        sdk.chat.completions.create(
            model="echo+chunks=3",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert len(chunks) == 3 + 2
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 3)


def test_it_streams_text_completions_with_usage_when_asked(sdk):
    chunks = list(
        sdk.completions.create(
            model="echo+chunks=4",
            prompt="go",
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert "".join(c.choices[0].text for c in chunks[:4]) == "Hello from upstream: go"
    assert chunks[4].choices[0].finish_reason == "stop"
    assert chunks[5].usage.completion_tokens == 4


def test_it_flushes_each_chunk_and_ends_with_done(upstream):
    body = {"model": "echo+chunks=2", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{upstream.base_url}/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)

    assert events[-1] == "[DONE]"
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]] == [
        "Hello",
        " from",
        None,
    ]
    # The client can read [DONE] before the handler records that it finished.
    assert upstream.received[0].wait_done(5)
    assert upstream.received[0].finished_at is not None
    assert not upstream.received[0].closed_early


# --------------------------------------------------------------------------- flags


def test_nousage_drops_usage_everywhere(sdk):
    answer = sdk.chat.completions.create(model="echo+nousage", messages=HELLO)
    chunks = list(
        sdk.chat.completions.create(
            model="echo+nousage",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert answer.usage is None
    assert all(c.usage is None and c.choices for c in chunks)


def test_nousage_omits_the_usage_key(upstream):
    response = httpx.post(
        f"{upstream.base_url}/chat/completions", json={"model": "echo+nousage", "messages": HELLO}
    )

    assert "usage" not in response.json()


def reported_usage(response) -> dict:
    """The `usage` of a plain answer, or of a stream's last chunk."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        return response.json()["usage"]
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
    return json.loads(events[-1])["usage"]


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_usage_flag_reports_absurd_counts(upstream, stream):
    payload = {"model": "echo+usage=huge", "messages": HELLO, "stream": stream}
    if stream:
        payload["stream_options"] = {"include_usage": True}
    usage = reported_usage(httpx.post(f"{upstream.base_url}/chat/completions", json=payload))

    assert usage == dict.fromkeys(("prompt_tokens", "completion_tokens", "total_tokens"), 2**63)
    assert parse_flags("echo+usage=exponent").usage == "exponent"
    assert parse_flags("echo+usage=nonsense").usage == ""


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_component_flags_report_cached_and_reasoning_tokens_as_openai_details(
    upstream, path, stream
):
    model = "echo+cached=4+cachewrite=1+reasoning=2"
    body = {"messages": HELLO} if path == "/chat/completions" else {"prompt": "say hi"}
    payload = {"model": model, "stream": stream, **body}
    if stream:
        payload["stream_options"] = {"include_usage": True}
    usage = reported_usage(httpx.post(f"{upstream.base_url}{path}", json=payload))

    assert usage["prompt_tokens_details"] == {"cached_tokens": 4, "cache_write_tokens": 1}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 2}
    assert parse_flags("echo+cached=8").cached == 8
    assert parse_flags("echo").cached is None


def test_fail_answers_the_status_with_an_openai_error_carrying_internals(sdk):
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="fail=503", messages=HELLO)

    assert caught.value.status_code == 503
    assert caught.value.body["type"] == "upstream_test"
    assert "10.0.0.7" in caught.value.body["message"]
    assert "sk-upstream-secret" in caught.value.body["message"]


def test_fail_429_asks_to_retry_after_a_second(upstream):
    response = httpx.post(
        f"{upstream.base_url}/chat/completions",
        json={"model": "echo+fail=429", "messages": HELLO, "stream": True},
    )

    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "x"


def test_malformed_answers_broken_json(upstream):
    response = httpx.post(
        f"{upstream.base_url}/chat/completions", json={"model": "malformed", "messages": HELLO}
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == b'{"not json'


def test_malformed_breaks_the_sdk(sdk):
    with pytest.raises((openai.APIError, json.JSONDecodeError, ValueError)):
        sdk.chat.completions.create(model="malformed", messages=HELLO)


def test_reset_drops_a_stream_after_k_chunks(sdk, upstream):
    received = []
    with pytest.raises((openai.APIConnectionError, httpx.HTTPError)):
        for chunk in sdk.chat.completions.create(model="echo+reset=3", messages=HELLO, stream=True):
            received.append(chunk.choices[0].delta.content)

    assert received == ["Hello", " from", " upstream:"]
    record = upstream.received[0]
    assert record.wait_done(1)
    assert record.aborted
    assert not record.closed_early


def test_reset_drops_a_plain_request_before_answering(sdk, upstream):
    with pytest.raises(openai.APIConnectionError):
        sdk.chat.completions.create(model="echo+reset=0", messages=HELLO)

    assert upstream.received[0].aborted


def test_nodone_ends_a_stream_cleanly_without_done(upstream):
    body = {"model": "echo+chunks=1+noDone", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{upstream.base_url}/chat/completions", json=body) as response:
        events = sse_events(response)

    assert len(events) == 2
    assert "[DONE]" not in events


def test_slow_waits_before_the_headers(upstream):
    started = time.monotonic()
    response = httpx.post(
        f"{upstream.base_url}/chat/completions", json={"model": "echo+slow=0.2", "messages": HELLO}
    )

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2


def test_gap_spaces_stream_chunks(upstream):
    body = {"model": "echo+chunks=3+gap=0.1", "messages": HELLO, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{upstream.base_url}/chat/completions", json=body) as response:
        events = sse_events(response)

    assert len(events) == 5
    assert time.monotonic() - started >= 0.3


def test_silent_never_answers_and_notices_the_client_leaving_at_once(upstream):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{upstream.base_url}/chat/completions",
            json={"model": "silent", "messages": HELLO},
            timeout=0.2,
        )
    left = time.monotonic()

    record = upstream.received[0]
    assert record.wait_done(1)
    assert record.closed_early
    assert record.finished_at is None
    assert record.closed_at - left < 1


def test_it_notices_a_client_leaving_mid_stream(upstream):
    # With 2 s between chunks, only noticing the disconnect itself (not a failed write) is fast.
    body = {"model": "echo+gap=2", "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{upstream.base_url}/chat/completions", json=body) as response:
        first = next(response.iter_lines())
    left = time.monotonic()

    assert first.startswith("data: ")
    record = upstream.received[0]
    assert record.wait_done(1)
    assert record.closed_early
    assert record.closed_at - left < 1


# --------------------------------------------------------------------------- records


def test_it_records_method_path_headers_and_body_in_order(sdk, upstream):
    sdk.chat.completions.create(model="echo", messages=HELLO, extra_headers={"X-Trace": "t1"})
    sdk.embeddings.create(model="embed", input="x", encoding_format="float")

    first, second = upstream.received
    assert (first.method, first.path) == ("POST", "/v1/chat/completions")
    assert first.headers["authorization"] == "Bearer x"
    assert first.headers["x-trace"] == "t1"
    assert first.json == {"model": "echo", "messages": HELLO}
    assert first.model == "echo"
    assert first.wait_done(5)
    assert first.finished_at is not None
    assert second.path == "/v1/embeddings"


def test_it_records_a_request_before_its_flags_act(upstream):
    with pytest.raises(httpx.HTTPError):
        httpx.post(
            f"{upstream.base_url}/chat/completions", json={"model": "reset=0", "messages": HELLO}
        )

    assert [r.model for r in upstream.received] == ["reset=0"]


def test_it_refuses_a_wrong_key_only_when_one_is_required(upstream):
    upstream.require_api_key = "sk-right"
    url = f"{upstream.base_url}/chat/completions"
    body = {"model": "echo", "messages": HELLO}

    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-wrong"})
    right = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-right"})

    assert (wrong.status_code, right.status_code) == (401, 200)


def test_reset_forgets_requests_and_overrides(upstream):
    httpx.get(f"{upstream.base_url}/models")
    upstream.model_ids = []
    upstream.require_api_key = "k"

    upstream.reset()

    assert upstream.received == []
    assert upstream.model_ids == ["echo", "echo-embed"]
    assert upstream.require_api_key is None


# --------------------------------------------------------------------------- media files


@pytest.mark.parametrize(
    ("seconds", "rate", "channels", "frames"),
    [(90.0, 8000, 1, 720_000), (1.5, 16000, 2, 24_000), (0.0, 8000, 1, 0)],
)
def test_it_makes_a_wav_the_wave_module_reads_back_at_its_exact_duration(
    seconds, rate, channels, frames
):
    data = media.wav_bytes(seconds, rate=rate, channels=channels)

    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (channels, 2, rate)
        assert wav.getnframes() == frames
        assert wav.getnframes() / wav.getframerate() == seconds
        samples = struct.unpack(f"<{min(frames, 400) * channels}h", wav.readframes(400))
    assert len(data) == media.WAV_HEADER_BYTES + frames * channels * 2
    assert media.wav_duration(data) == seconds
    if frames:  # a quiet tone, not silence
        assert 0 < max(abs(s) for s in samples) <= media.TONE_AMPLITUDE


def test_it_reads_a_wav_duration_from_its_head_and_size_capped_by_what_arrived():
    data = media.wav_bytes(90.0)

    assert media.wav_duration(data[:64], size=len(data)) == 90.0
    assert media.wav_duration(data[:1000]) == (1000 - media.WAV_HEADER_BYTES) / 16000
    assert media.wav_duration(data[: media.WAV_HEADER_BYTES - 8]) is None  # no data chunk
    assert media.wav_duration(b"ID3\x04" + bytes(100)) is None
    assert media.wav_duration(b"") is None


def test_it_steps_over_other_chunks_before_a_wavs_data():
    data = media.wav_bytes(2.0)
    # A LIST chunk of odd length (padded to even) between fmt and data, as editors write.
    extra = b"LIST" + struct.pack("<I", 5) + b"INFOx\x00"
    padded = data[:36] + extra + data[36:]

    assert media.wav_duration(padded) == 2.0
    with wave.open(io.BytesIO(padded)) as wav:
        assert wav.getnframes() == 16000


def test_it_makes_a_png_whose_chunks_check_out_and_decode_to_its_size_and_colour():
    data = media.png_bytes(7, 3)

    assert data.startswith(media.PNG_SIGNATURE)
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks.append((kind, body))
        offset += 12 + length
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (7, 3, 8, 2, 0, 0, 0)
    assert zlib.decompress(chunks[1][1]) == (b"\x00" + bytes(media.PNG_RGB) * 7) * 3
    assert media.png_size(data) == (7, 3)
    assert media.png_size(b"GIF89a" + bytes(30)) is None
    with pytest.raises(ValueError):
        media.png_bytes(0, 3)


# --------------------------------------------------------------------------- images


def test_it_generates_images_as_urls_it_serves(sdk, upstream):
    answer = sdk.images.generate(model="img", prompt="a sea otter", n=2, size="32x16")

    assert len(answer.data) == 2
    assert answer.created > 0
    assert all(image.revised_prompt is None and image.b64_json is None for image in answer.data)
    assert answer.data[0].url != answer.data[1].url
    fetched = httpx.get(answer.data[0].url)
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"
    assert fetched.content == media.png_bytes(32, 16)
    assert answer.usage.model_dump() == {
        "input_tokens": 3,
        "output_tokens": 2 * IMAGE_OUTPUT_TOKENS,
        "total_tokens": 3 + 2 * IMAGE_OUTPUT_TOKENS,
        "input_tokens_details": {"text_tokens": 3, "image_tokens": 0},
        "output_tokens_details": None,
    }
    assert image_usage("a sea otter", 2)["total_tokens"] == answer.usage.total_tokens
    record = upstream.received[0]
    assert (record.method, record.path) == ("POST", "/v1/images/generations")
    assert record.json == {"model": "img", "prompt": "a sea otter", "n": 2, "size": "32x16"}


def test_it_answers_one_default_sized_image_in_base64_when_asked(sdk):
    answer = sdk.images.generate(model="img", prompt="x", response_format="b64_json")

    (image,) = answer.data
    assert image.url is None
    assert base64.b64decode(image.b64_json) == media.png_bytes(*DEFAULT_IMAGE_SIZE)


def test_it_revises_the_prompt_for_dall_e_3_names_only(sdk):
    answer = sdk.images.generate(model="dall-e-3", prompt="an otter", size="auto")

    assert answer.data[0].revised_prompt == REVISED_PROMPT_PREFIX + "an otter"


def test_it_forgets_served_images_on_reset_and_404s_unknown_ones(sdk, upstream):
    url = sdk.images.generate(model="img", prompt="x", size="8x8").data[0].url
    upstream.reset()

    assert httpx.get(url).status_code == 404
    assert httpx.get(url.replace(".png", ".gif")).status_code == 404
    assert upstream.received[0].path.startswith("/files/")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"n": 0}, "n"),
        ({"n": 11}, "n"),
        ({"n": True}, "n"),
        ({"size": "big"}, "size"),
        ({"size": f"{MAX_IMAGE_SIDE + 1}x16"}, "size"),
        ({"response_format": "gif"}, "response_format"),
    ],
)
def test_it_refuses_an_image_request_it_cannot_answer_naming_the_field(upstream, change, param):
    body = {k: v for k, v in ({"model": "img", "prompt": "x"} | change).items() if v is not None}
    response = httpx.post(f"{upstream.base_url}/images/generations", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["param"] == param


def test_image_usage_follows_the_usage_flags(sdk):
    assert sdk.images.generate(model="img+nousage", prompt="x", size="8x8").usage is None
    usage = sdk.images.generate(model="img+usage=negative", prompt="x", size="8x8").usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (-1_000_000,) * 3


def test_reset_drops_an_image_request_at_once_even_asking_for_a_stream(upstream):
    body = {"model": "img+reset=0", "prompt": "x", "stream": True}
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{upstream.base_url}/images/generations", json=body)

    assert upstream.received[0].wait_done(1)
    assert upstream.received[0].aborted


# --------------------------------------------------------------------------- transcriptions

WAV_90 = media.wav_bytes(90.0)


def upload(
    url: str,
    model: str = "whisper-1",
    file=("speech.wav", WAV_90, "audio/wav"),
    *,
    headers=None,
    timeout=5.0,
    **form,
):
    """POST a multipart upload of `file` with `model` and the other `form` fields."""
    return httpx.post(
        url, data={"model": model, **form}, files={"file": file}, headers=headers, timeout=timeout
    )


def test_it_transcribes_a_wav_saying_how_long_it_was_and_records_the_upload(sdk, upstream):
    answer = sdk.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", WAV_90, "audio/wav"), language="en"
    )

    assert answer.text == "Hello from upstream: transcribed 90 seconds of audio"
    assert answer.text == transcript_text(90.0)
    assert answer.usage.model_dump() == {"type": "duration", "seconds": 90.0}
    record = upstream.received[0]
    assert (record.method, record.path) == ("POST", "/v1/audio/transcriptions")
    assert record.fields == [("model", "whisper-1"), ("language", "en")]
    assert record.model == "whisper-1"
    assert record.json is None
    assert record.body == b""
    assert record.content_type.startswith("multipart/form-data; boundary=")
    assert record.content_length > len(WAV_90)
    upload_ = record.file
    assert (upload_.field, upload_.filename, upload_.content_type) == (
        "file",
        "speech.wav",
        "audio/wav",
    )
    assert upload_.size == len(WAV_90)
    assert upload_.sha256 == hashlib.sha256(WAV_90).hexdigest()
    assert upload_.complete
    assert upload_.duration == 90.0


def test_it_reads_a_large_upload_in_chunks_keeping_only_its_head(upstream):
    data = media.wav_bytes(200.0)  # 3.2 MB

    response = upload(f"{upstream.base_url}/audio/transcriptions", file=("a.wav", data))

    assert response.json()["usage"]["seconds"] == 200.0
    record = upstream.received[0]
    assert (record.file.size, record.file.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert record.file.head == data[:UPLOAD_HEAD_BYTES]


def test_it_records_filenames_with_path_components_as_sent(upstream):
    name = "../../etc/passwd.wav"

    upload(f"{upstream.base_url}/audio/transcriptions", file=(name, b"RIFF", "text/plain"))

    assert upstream.received[0].file.filename == name
    assert upstream.received[0].file.content_type == "text/plain"


def test_it_takes_a_file_that_is_not_a_wav_for_a_128_kbit_mp3(upstream):
    response = upload(
        f"{upstream.base_url}/audio/transcriptions", file=("a.mp3", b"\xff" * 24000, "audio/mpeg")
    )

    assert response.json() == {
        "text": transcript_text(1.5),
        "usage": {"type": "duration", "seconds": 24000 / NON_WAV_BYTES_PER_SECOND},
    }
    assert upstream.received[0].file.duration is None
    assert audio_seconds(upstream.received[0].file) == 1.5


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ("text", "Hello from upstream: transcribed 90 seconds of audio"),
        (
            "srt",
            "1\n00:00:00,000 --> 00:01:30,000\n"
            "Hello from upstream: transcribed 90 seconds of audio\n\n",
        ),
        (
            "vtt",
            "WEBVTT\n\n00:00:00.000 --> 00:01:30.000\n"
            "Hello from upstream: transcribed 90 seconds of audio\n\n",
        ),
    ],
)
def test_it_answers_text_formats_as_plain_text(sdk, upstream, response_format, expected):
    answer = sdk.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", WAV_90), response_format=response_format
    )
    raw = upload(f"{upstream.base_url}/audio/transcriptions", response_format=response_format)

    assert answer == expected
    assert raw.text == expected
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"


def test_it_answers_verbose_json_with_segments_and_words_when_asked(sdk):
    answer = sdk.audio.transcriptions.create(
        model="whisper-1",
        file=("a.wav", media.wav_bytes(8.0)),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        language="de",
    )

    assert (answer.task, answer.language, answer.duration) == ("transcribe", "de", 8.0)
    assert answer.text == transcript_text(8.0)
    (segment,) = answer.segments
    assert (segment.id, segment.start, segment.end, segment.text) == (0, 0.0, 8.0, answer.text)
    assert [w.word for w in answer.words] == answer.text.split()
    assert (answer.words[0].start, answer.words[-1].end) == (0.0, 8.0)
    assert answer.usage.seconds == 8.0


def test_it_gives_words_only_when_asked(upstream):
    response = upload(f"{upstream.base_url}/audio/transcriptions", response_format="verbose_json")

    assert response.json()["language"] == "english"
    assert "words" not in response.json()


def test_noduration_leaves_out_every_duration_and_usage(upstream):
    url = f"{upstream.base_url}/audio/transcriptions"

    plain = upload(url, "whisper-1+noDuration").json()
    verbose = upload(url, "whisper-1+noDuration", response_format="verbose_json").json()
    stream = upload(url, "whisper-1+noDuration", stream="true")

    assert plain == {"text": transcript_text(90.0)}
    assert "duration" not in verbose
    assert "usage" not in verbose
    assert verbose["text"] == transcript_text(90.0)
    assert "usage" not in json.loads(stream.text.splitlines()[-2][6:])


def test_nousage_leaves_out_usage_but_keeps_the_verbose_duration(upstream):
    url = f"{upstream.base_url}/audio/transcriptions"

    plain = upload(url, "whisper-1+nousage").json()
    verbose = upload(url, "whisper-1+nousage", response_format="verbose_json").json()

    assert plain == {"text": transcript_text(90.0)}
    assert verbose["duration"] == 90.0
    assert "usage" not in verbose


def test_usage_flag_reports_an_absurd_duration(upstream):
    url = f"{upstream.base_url}/audio/transcriptions"

    assert upload(url, "w+usage=negative").json()["usage"]["seconds"] == -1_000_000
    assert upload(url, "w+usage=text", response_format="verbose_json").json()["duration"] == "12"


def test_it_streams_transcript_deltas_then_done_with_token_usage(sdk):
    events = list(
        sdk.audio.transcriptions.create(
            model="gpt-4o-transcribe+chunks=3",
            file=("a.wav", WAV_90),
            prompt="two words",
            stream=True,
        )
    )

    assert [e.type for e in events] == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    assert [e.delta for e in events[:3]] == ["Hello", " from", " upstream:"]
    assert events[-1].text == "Hello from upstream:"
    assert events[-1].usage.model_dump() == {
        "type": "tokens",
        "input_tokens": 2 + 90 * AUDIO_TOKENS_PER_SECOND,
        "input_token_details": {"text_tokens": 2, "audio_tokens": 90 * AUDIO_TOKENS_PER_SECOND},
        "output_tokens": 3,
        "total_tokens": 2 + 900 + 3,
    }


def test_a_transcript_stream_is_sse_without_done(upstream):
    url = f"{upstream.base_url}/audio/transcriptions"
    with httpx.stream(
        "POST", url, data={"model": "w+chunks=2", "stream": "true"}, files={"file": ("a", b"x")}
    ) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = sse_events(response)

    assert [json.loads(e)["type"] for e in events] == [
        "transcript.text.delta",
        "transcript.text.delta",
        "transcript.text.done",
    ]


def test_reset_cuts_a_transcript_stream_and_drops_a_plain_one(upstream):
    url = f"{upstream.base_url}/audio/transcriptions"
    deltas = []
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream(
            "POST", url, data={"model": "w+reset=2", "stream": "true"}, files={"file": ("a", b"x")}
        ) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: "):
                deltas.append(json.loads(line[6:])["delta"])
    with pytest.raises(httpx.HTTPError):
        upload(url, "w+reset=0")

    assert deltas == ["Hello", " from"]
    assert all(r.wait_done(1) and r.aborted for r in upstream.received)
    assert upstream.received[1].file.complete  # read whole before the drop


@pytest.mark.parametrize(
    ("data", "files", "param"),
    [
        ({"model": "whisper-1"}, None, "file"),
        ({"model": "whisper-1"}, {"other": ("a.wav", b"x")}, "file"),
        ({"language": "en"}, {"file": ("a.wav", b"x")}, "model"),
        ({"model": ""}, {"file": ("a.wav", b"x")}, "model"),
    ],
    ids=["no-file", "file-under-another-name", "no-model", "empty-model"],
)
def test_it_refuses_an_upload_without_file_or_model(upstream, data, files, param):
    response = httpx.post(
        f"{upstream.base_url}/audio/transcriptions", data=data, files=files or {"x": ("", b"")}
    )

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": f"Missing required parameter: '{param}'.",
            "type": "invalid_request_error",
            "param": param,
            "code": "missing_required_parameter",
        }
    }


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"model": "whisper-1"}'),
        ("multipart/form-data", b"no boundary"),
        ("multipart/form-data; boundary=xx", b"garbage"),
        ("multipart/form-data; boundary=xx", b'--xx\r\nContent-Disposition: form-data; name="a"'),
    ],
    ids=["json", "no-boundary", "no-parts", "cut-short"],
)
def test_it_refuses_a_body_that_is_not_a_whole_multipart_form(upstream, content_type, body):
    response = httpx.post(
        f"{upstream.base_url}/audio/translations",
        content=body,
        headers={"Content-Type": content_type},
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("Could not parse multipart form")
    assert upstream.received[0].content_type == content_type
    assert upstream.received[0].content_length == len(body)


def test_it_refuses_a_response_format_it_does_not_make(upstream):
    response = upload(f"{upstream.base_url}/audio/transcriptions", response_format="diarized_json")

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "response_format"


class _Left(Exception):
    """Raised inside a request body to make the client drop the connection."""


def test_it_records_an_upload_as_it_arrives_and_notices_the_client_leaving(upstream):
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    sent = 100_000

    def body():
        yield head + WAV_90[:sent]
        wait_for(lambda: upstream.received and upstream.received[0].file, what="the file part")
        raise _Left

    with pytest.raises(_Left):
        httpx.post(
            f"{upstream.base_url}/audio/transcriptions",
            content=body(),
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + len(WAV_90) + len(tail)),
            },
        )
    left = time.monotonic()

    record = upstream.received[0]
    assert record.wait_done(1)
    assert record.closed_early
    assert record.closed_at - left < 1
    assert record.content_length == len(head) + len(WAV_90) + len(tail)
    assert record.form == {"model": "whisper-1"}
    assert 0 < record.file.size <= sent
    assert not record.file.complete
    assert record.file.sha256 is None


# --------------------------------------------------------------------------- translations


def test_it_translates_into_english_without_usage_as_the_spec_has_it(sdk, upstream):
    with pytest.warns(DeprecationWarning):
        answer = sdk.audio.translations.create(model="whisper-1", file=("a.wav", WAV_90))

    assert answer.text == "Hello from upstream: translated 90 seconds of audio"
    assert answer.text == transcript_text(90.0, "translate")
    assert "usage" not in answer.model_dump()
    assert upstream.received[0].path == "/v1/audio/translations"
    assert upstream.received[0].file.sha256 == hashlib.sha256(WAV_90).hexdigest()


def test_it_translates_verbosely_with_the_duration_and_never_streams(upstream):
    url = f"{upstream.base_url}/audio/translations"

    verbose = upload(url, response_format="verbose_json", language="de").json()
    streamed = upload(url, stream="true")

    assert (verbose["task"], verbose["language"], verbose["duration"]) == (
        "translate",
        "english",
        90.0,
    )
    assert "usage" not in verbose
    assert streamed.headers["content-type"].startswith("application/json")
    assert streamed.json() == {"text": transcript_text(90.0, "translate")}


# --------------------------------------------------------------------------- speech

SPEAK = {"model": "tts-1", "voice": "alloy", "input": "Say this, please."}  # 17 characters


def test_it_speaks_a_wav_as_long_as_the_input_in_chunks(sdk, upstream):
    with sdk.audio.speech.with_streaming_response.create(**SPEAK) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        assert response.headers["transfer-encoding"] == "chunked"
        audio = response.read()

    assert audio == speech_audio(SPEAK["input"])
    assert media.wav_duration(audio) == pytest.approx(17 * SPEECH_SECONDS_PER_CHARACTER)
    record = upstream.received[0]
    assert (record.path, record.json) == ("/v1/audio/speech", SPEAK)
    assert record.wait_done(5)
    assert record.finished_at is not None


@pytest.mark.parametrize(
    ("response_format", "content_type"),
    [
        ("mp3", "audio/mpeg"),
        ("opus", "audio/opus"),
        ("aac", "audio/aac"),
        ("flac", "audio/flac"),
        ("wav", "audio/wav"),
        ("pcm", "audio/pcm"),
    ],
)
def test_it_labels_speech_as_the_format_asked_but_sends_a_wav(
    upstream, response_format, content_type
):
    response = httpx.post(
        f"{upstream.base_url}/audio/speech", json=SPEAK | {"response_format": response_format}
    )

    assert response.headers["content-type"] == content_type
    assert response.content == speech_audio(SPEAK["input"])


def test_speed_shortens_the_speech(upstream):
    response = httpx.post(f"{upstream.base_url}/audio/speech", json=SPEAK | {"speed": 2})

    assert media.wav_duration(response.content) == pytest.approx(17 * 0.05 / 2)
    assert response.content == speech_audio(SPEAK["input"], 2)


def test_speech_arrives_in_chunks_writes_before_the_end(upstream):
    body = SPEAK | {"model": "tts-1+chunks=4+gap=0.3"}
    pieces = split_bytes(speech_audio(SPEAK["input"]), 4)
    with httpx.stream("POST", f"{upstream.base_url}/audio/speech", json=body) as response:
        stream = response.iter_raw()
        first = next(stream)
        record = upstream.received[0]
        assert record.finished_at is None
        audio = first + b"".join(stream)

    assert 0 < len(first) <= len(pieces[0])
    assert audio == b"".join(pieces)
    assert len(pieces) == 4


def test_it_notices_a_client_leaving_mid_speech(upstream):
    body = SPEAK | {"model": "tts-1+gap=2"}
    with httpx.stream("POST", f"{upstream.base_url}/audio/speech", json=body) as response:
        first = next(response.iter_raw())
    left = time.monotonic()

    assert first.startswith(b"RIFF")
    record = upstream.received[0]
    assert record.wait_done(1)
    assert record.closed_early
    assert record.closed_at - left < 1


def test_reset_cuts_speech_after_k_chunks(upstream):
    body = SPEAK | {"model": "tts-1+chunks=4+reset=2"}
    pieces = split_bytes(speech_audio(SPEAK["input"]), 4)
    got = b""
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream("POST", f"{upstream.base_url}/audio/speech", json=body) as response,
    ):
        for chunk in response.iter_raw():
            got += chunk

    assert got == pieces[0] + pieces[1]
    assert upstream.received[0].wait_done(1)
    assert upstream.received[0].aborted


def test_it_streams_speech_as_sse_audio_deltas_then_done_with_usage(upstream):
    body = SPEAK | {"model": "gpt-4o-mini-tts+chunks=3", "stream_format": "sse"}
    with httpx.stream("POST", f"{upstream.base_url}/audio/speech", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = [json.loads(e) for e in sse_events(response)]

    assert [e["type"] for e in events] == ["speech.audio.delta"] * 3 + ["speech.audio.done"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:3])
    assert audio == speech_audio(SPEAK["input"])
    tokens = math.ceil(17 * SPEECH_SECONDS_PER_CHARACTER * AUDIO_TOKENS_PER_SECOND)
    assert events[-1]["usage"] == {
        "input_tokens": 3,
        "output_tokens": tokens,
        "total_tokens": 3 + tokens,
    }


def test_nousage_leaves_usage_out_of_speech_done(upstream):
    body = SPEAK | {"model": "tts+nousage+chunks=1", "stream_format": "sse"}
    response = httpx.post(f"{upstream.base_url}/audio/speech", json=body)

    assert json.loads(response.text.splitlines()[-2][6:]) == {"type": "speech.audio.done"}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"input": None}, "input"),
        ({"input": "x" * (SPEECH_MAX_INPUT + 1)}, "input"),
        ({"voice": None}, "voice"),
        ({"voice": {"name": "x"}}, "voice"),
        ({"response_format": "ogg"}, "response_format"),
        ({"speed": 5}, "speed"),
        ({"speed": "fast"}, "speed"),
        ({"stream_format": "ws"}, "stream_format"),
    ],
)
def test_it_refuses_a_speech_request_it_cannot_answer_naming_the_field(upstream, change, param):
    body = {k: v for k, v in (SPEAK | change).items() if v is not None}
    response = httpx.post(f"{upstream.base_url}/audio/speech", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_it_takes_a_custom_voice_object(upstream):
    body = SPEAK | {"voice": {"id": "voice_1234"}}

    assert httpx.post(f"{upstream.base_url}/audio/speech", json=body).status_code == 200


# --------------------------------------------------------------------------- flags on every route


def media_request(upstream, route: str, model: str, **kwargs) -> httpx.Response:
    """POST a valid request for `route` with `model`: JSON, or a WAV upload for audio in."""
    url = f"{upstream.base_url}/{route}"
    if route.startswith("audio/") and route != "audio/speech":
        return upload(url, model, **kwargs)
    body = {"images/generations": {"prompt": "x", "size": "8x8"}, "audio/speech": SPEAK}[route]
    return httpx.post(url, json=body | {"model": model}, **kwargs)


MEDIA_ROUTES = ["images/generations", "audio/transcriptions", "audio/translations", "audio/speech"]


@pytest.mark.parametrize("route", MEDIA_ROUTES)
def test_fail_and_malformed_act_on_every_media_route(upstream, route):
    failed = media_request(upstream, route, "m+fail=429")
    broken = media_request(upstream, route, "m+malformed")

    assert failed.status_code == 429
    assert failed.headers["retry-after"] == "1"
    assert failed.json() == error_body(429)
    assert (broken.status_code, broken.content) == (200, b'{"not json')
    assert [r.model for r in upstream.received] == ["m+fail=429", "m+malformed"]


@pytest.mark.parametrize("route", MEDIA_ROUTES)
def test_slow_and_silent_act_on_every_media_route(upstream, route):
    started = time.monotonic()
    slow = media_request(upstream, route, "m+slow=0.2")
    waited = time.monotonic() - started
    with pytest.raises(httpx.ReadTimeout):
        media_request(upstream, route, "m+silent", timeout=0.2)

    assert slow.status_code == 200
    assert waited >= 0.2
    assert upstream.received[1].wait_done(1)
    assert upstream.received[1].closed_early


@pytest.mark.parametrize("route", MEDIA_ROUTES)
def test_media_routes_refuse_a_non_uuid_request_id_and_a_wrong_key(upstream, route):
    upstream.require_api_key = "sk-right"
    wrong_key = media_request(upstream, route, "m", headers={"Authorization": "Bearer no"})
    upstream.require_api_key = None
    bad_id = media_request(upstream, route, "m", headers={"X-Request-ID": "not-a-uuid"})

    assert wrong_key.status_code == 401
    assert (bad_id.status_code, bad_id.content) == (400, b"")


# ------------------------------------------------------------------- chat tools and reasoning

TOOLS = [
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "other"}},
]


def chat_events(upstream, body: dict) -> list[dict]:
    """The JSON chunks of a chat stream (its `[DONE]` left out)."""
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{upstream.base_url}/chat/completions", json=payload) as response:
        return [json.loads(e) for e in sse_events(response) if e != "[DONE]"]


def test_it_reads_the_tools_and_think_flags():
    assert (parse_flags("echo").tools, parse_flags("echo").think) == (0, None)
    assert parse_flags("echo+tools").tools == 1
    assert parse_flags("echo+tools=3").tools == 3
    assert parse_flags("echo+think").think == ""
    assert parse_flags("echo+think=Let me see").think == "Let me see"


def test_tools_answers_a_tool_call_to_the_first_tool_with_the_last_user_text(sdk):
    answer = sdk.chat.completions.create(model="echo+tools", messages=HELLO, tools=TOOLS)

    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert [c.model_dump() for c in choice.message.tool_calls] == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "search", "arguments": '{"query": "hi there"}'},
        }
    ]
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 3)


def test_tools_n_answers_n_calls_with_distinct_ids(sdk):
    answer = sdk.chat.completions.create(model="echo+tools=3", messages=HELLO, tools=TOOLS)

    calls = answer.choices[0].message.tool_calls
    assert [c.id for c in calls] == ["call_0", "call_1", "call_2"]
    assert {c.function.name for c in calls} == {"search"}


def test_tools_answers_text_without_tools_in_the_request(sdk):
    answer = sdk.chat.completions.create(model="echo+tools", messages=HELLO)

    assert answer.choices[0].message.content == "Hello from upstream: hi there"
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].finish_reason == "stop"


def test_it_answers_a_tool_result_with_text_built_from_it(sdk):
    messages = [
        *HELLO,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "search", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny today"},
    ]

    answer = sdk.chat.completions.create(model="echo+tools", messages=messages, tools=TOOLS)

    assert answer.choices[0].message.content == "Hello from upstream: tool said sunny today"
    assert answer.choices[0].finish_reason == "stop"
    assert chat_answer(messages)[0] == "Hello from upstream: tool said sunny today"


def test_tools_streams_the_call_as_openai_does(upstream):
    events = chat_events(upstream, {"model": "echo+tools=2", "messages": HELLO, "tools": TOOLS})

    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas == [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "search", "arguments": ""},
                }
            ],
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"query'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '": "hi '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'there"}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "search", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": '{"query'}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": '": "hi '}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": 'there"}'}}]},
        {},
    ]
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-1]["usage"]["completion_tokens"] == 6


def test_tools_streams_calls_the_sdk_accumulates(sdk):
    with sdk.chat.completions.stream(model="echo+tools", messages=HELLO, tools=TOOLS) as stream:
        final = stream.get_final_completion()

    call = final.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name) == ("call_0", "search")
    assert json.loads(call.function.arguments) == {"query": "hi there"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_think_answers_reasoning_first_and_counts_it(upstream):
    body = {"model": "echo+think", "messages": HELLO}
    answer = httpx.post(f"{upstream.base_url}/chat/completions", json=body).json()

    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello from upstream: hi there",
        "reasoning_content": "Thinking about: hi there",
    }
    assert answer["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 5 + 4,
        "total_tokens": 14,
        "completion_tokens_details": {"reasoning_tokens": 4},
    }


def test_think_streams_reasoning_deltas_before_the_content(upstream):
    events = chat_events(upstream, {"model": "echo+think=Let me see+chunks=2", "messages": HELLO})

    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas == [
        {"role": "assistant", "reasoning_content": "Let"},
        {"reasoning_content": " me"},
        {"reasoning_content": " see"},
        {"content": "Hello"},
        {"content": " from"},
        {},
    ]
    assert events[-1]["usage"]["completion_tokens"] == 2 + 3
    assert events[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}


def test_think_with_vllm_names_the_field_reasoning_and_combines_with_tools(upstream):
    body = {"model": "echo+think+vllm+tools", "messages": HELLO, "tools": TOOLS}
    message = httpx.post(f"{upstream.base_url}/chat/completions", json=body).json()["choices"][0][
        "message"
    ]
    deltas = [e["choices"][0]["delta"] for e in chat_events(upstream, body) if e["choices"]]

    assert message["reasoning"] == "Thinking about: hi there"
    assert message["tool_calls"][0]["id"] == "call_0"
    assert deltas[0] == {"role": "assistant", "reasoning": "Thinking"}
    assert "tool_calls" in deltas[4]


# --------------------------------------------------------------------------- Anthropic Messages

ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-x", "anthropic-version": "2023-06-01"}


@pytest.fixture
def claude(upstream):
    root = upstream.base_url.removesuffix("/v1")
    client = anthropic.Anthropic(base_url=root, api_key="sk-ant-x", max_retries=0, timeout=10)
    yield client
    client.close()


def post_messages(upstream, body: dict, headers=ANTHROPIC_HEADERS, path="/messages"):
    return httpx.post(f"{upstream.base_url}{path}", json=body, headers=headers)


def named_events(response: httpx.Response, into: list | None = None) -> list[tuple[str, dict]]:
    """The `(event, data)` pairs of a stream with `event:` lines (appended to `into` as they
    arrive, for a stream that breaks)."""
    pairs, name = [] if into is None else into, None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            pairs.append((name, json.loads(line[6:])))
            name = None
    return pairs


def test_it_answers_a_message_as_anthropic_does(claude, upstream):
    answer = claude.messages.create(model="echo", max_tokens=100, messages=HELLO)

    assert answer.id.startswith("msg_")
    assert answer.model_dump(exclude={"id"}, exclude_none=True) == {
        "type": "message",
        "role": "assistant",
        "model": "echo",
        "content": [{"type": "text", "text": "Hello from upstream: hi there"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 5,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    record = upstream.received[0]
    assert record.path == "/v1/messages"
    assert record.headers["authorization"] == "Bearer sk-ant-x"  # how the SDK sends its key
    assert record.headers["anthropic-version"]


def test_it_records_the_anthropic_headers_as_they_arrived(upstream):
    headers = {**ANTHROPIC_HEADERS, "anthropic-beta": "a-2025,b-2026"}
    post_messages(upstream, {"model": "echo", "max_tokens": 5, "messages": HELLO}, headers)

    record = upstream.received[0]
    assert record.headers["x-api-key"] == "sk-ant-x"
    assert record.headers["anthropic-version"] == "2023-06-01"
    assert record.headers["anthropic-beta"] == "a-2025,b-2026"
    assert "authorization" not in record.headers


def test_it_joins_text_blocks_and_counts_the_system(upstream):
    body = {
        "model": "echo",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "look"}, {"type": "text", "text": "here"}],
            }
        ],
    }
    answer = post_messages(upstream, body).json()

    assert answer["content"] == [{"type": "text", "text": "Hello from upstream: look here"}]
    assert answer["usage"]["input_tokens"] == 2 + 2 + 3


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "k"}, 400, "invalid_request_error"),
    ],
)
def test_it_refuses_a_message_without_its_headers(upstream, headers, status, kind):
    response = post_messages(
        upstream, {"model": "echo", "max_tokens": 5, "messages": HELLO}, headers
    )

    assert response.status_code == status
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == kind
    assert len(upstream.received) == 1


def test_it_checks_the_key_when_one_is_required(upstream):
    upstream.require_api_key = "sk-ant-x"
    body = {"model": "echo", "max_tokens": 5, "messages": HELLO}

    wrong = post_messages(upstream, body, {**ANTHROPIC_HEADERS, "x-api-key": "other"})

    assert (wrong.status_code, post_messages(upstream, body).status_code) == (401, 200)


@pytest.mark.parametrize(
    "body",
    [
        {"max_tokens": 5, "messages": HELLO},
        {"model": "echo", "messages": HELLO},
        {"model": "echo", "max_tokens": 5},
        {"model": "echo", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
    ],
)
def test_it_refuses_a_message_request_without_a_required_field(upstream, body):
    response = post_messages(upstream, body)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_it_stops_at_max_tokens_words(claude):
    answer = claude.messages.create(model="echo", max_tokens=2, messages=HELLO)

    assert answer.content[0].text == "Hello from"
    assert answer.stop_reason == "max_tokens"
    assert answer.usage.output_tokens == 2


def test_it_reports_the_cache_flags_apart_from_input_tokens(claude):
    answer = claude.messages.create(
        model="echo+cached=2+cachewrite=1", max_tokens=9, messages=HELLO
    )

    usage = answer.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (2, 2)
    assert usage.cache_creation_input_tokens == 1


ANTHROPIC_TOOLS = [{"name": "search", "input_schema": {"type": "object"}}]


def test_tools_answers_tool_use_then_text_from_the_tool_result(claude):
    first = claude.messages.create(
        model="echo+tools=2", max_tokens=50, messages=HELLO, tools=ANTHROPIC_TOOLS
    )
    history = [
        *HELLO,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_0", "content": "sunny"}],
        },
    ]
    second = claude.messages.create(
        model="echo+tools", max_tokens=50, messages=history, tools=ANTHROPIC_TOOLS
    )

    assert first.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in first.content] == [
        ("tool_use", f"toolu_{i}", "search", {"query": "hi there"}) for i in range(2)
    ]
    assert second.content[0].text == "Hello from upstream: tool said sunny"
    assert second.stop_reason == "end_turn"


def test_it_thinks_first_when_thinking_is_enabled(claude):
    answer = claude.messages.create(
        model="echo",
        max_tokens=2000,
        messages=HELLO,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )

    thinking, text = answer.content
    assert (thinking.type, thinking.thinking) == ("thinking", "Thinking about: hi there")
    assert thinking.signature
    assert text.text == "Hello from upstream: hi there"
    assert answer.usage.output_tokens == 4 + 5


def test_it_streams_the_exact_anthropic_event_sequence(upstream):
    body = {"model": "echo+cached=1", "max_tokens": 100, "messages": HELLO, "stream": True}
    with httpx.stream(
        "POST", f"{upstream.base_url}/messages", json=body, headers=ANTHROPIC_HEADERS
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = named_events(response)

    assert all(name == data["type"] for name, data in events)
    data = [d for _, d in events]
    start = data[0]["message"]
    assert start["id"].startswith("msg_")
    assert (start["content"], start["stop_reason"]) == ([], None)
    assert start["usage"] == {
        "input_tokens": 4,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1,
        "output_tokens": 1,
    }
    assert data[1:] == [
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
            for t in ["Hello", " from", " upstream:", " hi", " there"]
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 4,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 1,
                "output_tokens": 5,
            },
        },
        {"type": "message_stop"},
    ]


def test_it_streams_thinking_and_tool_use_that_the_sdk_accumulates(claude):
    with claude.messages.stream(
        model="echo+tools",
        max_tokens=2000,
        messages=HELLO,
        tools=ANTHROPIC_TOOLS,
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()

    thinking, call = final.content
    assert thinking.thinking == "Thinking about: hi there"
    assert thinking.signature
    assert (call.id, call.name, call.input) == ("toolu_0", "search", {"query": "hi there"})
    assert final.stop_reason == "tool_use"
    assert "signature" in kinds
    assert kinds.count("input_json") == 3


def test_fail_answers_an_anthropic_error_the_sdk_raises(claude):
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(model="fail=429", max_tokens=5, messages=HELLO)

    assert caught.value.status_code == 429
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert "10.0.0.7" in caught.value.body["error"]["message"]
    assert caught.value.response.headers["retry-after"] == "1"


def test_nodone_ends_a_message_stream_without_message_stop(upstream):
    body = {"model": "echo+nodone", "max_tokens": 100, "messages": HELLO, "stream": True}
    with httpx.stream(
        "POST", f"{upstream.base_url}/messages", json=body, headers=ANTHROPIC_HEADERS
    ) as response:
        names = [name for name, _ in named_events(response)]

    assert names[-1] == "message_delta"


def test_reset_cuts_a_message_stream(upstream):
    body = {"model": "echo+reset=3", "max_tokens": 100, "messages": HELLO, "stream": True}
    events: list = []
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream(
            "POST", f"{upstream.base_url}/messages", json=body, headers=ANTHROPIC_HEADERS
        ) as response,
    ):
        named_events(response, events)

    names = [name for name, _ in events]

    assert names == ["message_start", "ping", "content_block_start"]


def test_it_counts_message_tokens(claude, upstream):
    counted = claude.messages.count_tokens(model="echo", messages=HELLO, system="be brief")

    assert counted.input_tokens == 2 + 2 + 3
    assert upstream.received[0].path == "/v1/messages/count_tokens"
    assert (
        post_messages(upstream, {"messages": HELLO}, path="/messages/count_tokens").status_code
        == 400
    )


# --------------------------------------------------------------------------- Responses

RESPONSE_TOOLS = [{"type": "function", "name": "search", "parameters": {"type": "object"}}]


def test_it_answers_a_response_as_openai_does(sdk, upstream):
    answer = sdk.responses.create(model="echo+cached=1", input="hi there", instructions="be brief")

    assert answer.id.startswith("resp_")
    assert (answer.object, answer.status, answer.model) == (
        "response",
        "completed",
        "echo+cached=1",
    )
    assert answer.output_text == "Hello from upstream: hi there"
    assert answer.output[0].type == "message"
    assert answer.usage.model_dump(exclude_none=True) == {
        "input_tokens": 2 + 2 + 3,
        "input_tokens_details": {"cached_tokens": 1, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12,
    }
    assert upstream.received[0].path == "/v1/responses"


def test_it_answers_the_last_user_item_and_a_function_call_output(sdk):
    items = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_text", "text": "here"},
            ],
        },
    ]
    after_tool = [
        *items,
        {"type": "function_call", "call_id": "call_0", "name": "search", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_0", "output": "sunny"},
    ]

    assert sdk.responses.create(model="echo", input=items).output_text == (
        "Hello from upstream: look here"
    )
    assert sdk.responses.create(
        model="echo+tools", input=after_tool, tools=RESPONSE_TOOLS
    ).output_text == ("Hello from upstream: tool said sunny")


def test_tools_answers_function_call_items(sdk):
    answer = sdk.responses.create(model="echo+tools=2", input="hi there", tools=RESPONSE_TOOLS)

    assert [(i.type, i.id, i.call_id, i.name, i.arguments) for i in answer.output] == [
        ("function_call", f"fc_{i}", f"call_{i}", "search", '{"query": "hi there"}')
        for i in range(2)
    ]


def test_it_streams_a_response_as_the_full_event_sequence(upstream):
    body = {"model": "echo", "input": "hi", "stream": True}
    with httpx.stream("POST", f"{upstream.base_url}/responses", json=body) as response:
        events = named_events(response)

    assert all(name == data["type"] for name, data in events)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(d["delta"] for n, d in events if n == "response.output_text.delta") == (
        "Hello from upstream: hi"
    )
    assert events[-1][1]["response"]["usage"]["output_tokens"] == 4


def test_it_streams_function_calls_the_sdk_accumulates(sdk):
    with sdk.responses.stream(model="echo+tools", input="hi there", tools=RESPONSE_TOOLS) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()

    call = final.output[0]
    assert (call.type, call.call_id, json.loads(call.arguments)) == (
        "function_call",
        "call_0",
        {"query": "hi there"},
    )
    assert kinds.count("response.function_call_arguments.delta") == 3


def test_fail_and_nodone_act_on_responses(sdk, upstream):
    with pytest.raises(openai.InternalServerError):
        sdk.responses.create(model="fail=500", input="hi")
    body = {"model": "echo+nodone", "input": "hi", "stream": True}
    with httpx.stream("POST", f"{upstream.base_url}/responses", json=body) as response:
        names = [name for name, _ in named_events(response)]

    assert names[-1] == "response.output_item.done"
    assert httpx.post(f"{upstream.base_url}/responses", json={"model": "echo"}).status_code == 400
