"""ASGI I/O for `/v1` (`proxy.asgi_io`): reading a bounded body, and the Responder's lifecycle."""

import asyncio
import json

import pytest

from proxy.asgi_io import Responder, read_body
from proxy.errors import APIError, ClientGone
from proxy.tests import fakes
from proxy.tests.fakes import call, error_of

CHAT_PATH = "/v1/chat/completions"


def receiver(*messages):
    """A `receive` handing out `messages` in order; it fails the test if asked for more."""
    queue = list(messages)

    async def receive():
        assert queue, "read past the messages the client sent"
        return queue.pop(0)

    return receive


def body(data: bytes, more: bool = False) -> dict:
    return {"type": "http.request", "body": data, "more_body": more}


def read(scope_headers, *messages, limit=10) -> bytes:
    scope = {"headers": scope_headers}
    return asyncio.run(read_body(scope, receiver(*messages), limit))


# --------------------------------------------------------------------------- read_body


def test_it_reads_a_body_sent_in_pieces_up_to_the_limit():
    assert (
        read([], body(b"12345", more=True), body(b"", more=True), body(b"67890")) == b"1234567890"
    )
    assert read([(b"content-length", b"10")], body(b"1234567890")) == b"1234567890"


def test_it_refuses_an_announced_body_over_the_limit_before_reading_it():
    with pytest.raises(APIError) as refused:
        read([(b"content-length", b"11")])  # no message to receive: none is read

    assert (refused.value.status, refused.value.code) == (413, "request_too_large")
    assert "10 bytes" in refused.value.message


def test_it_refuses_a_body_that_grows_past_the_limit_as_it_arrives():
    with pytest.raises(APIError) as refused:
        read([], body(b"123456", more=True), body(b"78901", more=True))  # stops at 11 bytes

    assert refused.value.status == 413


def test_it_takes_the_body_sent_over_a_content_length_it_cannot_read():
    for value in (b"", b"-5", b"1e9", b"ten"):
        assert read([(b"content-length", value)], body(b"ok")) == b"ok"
    with pytest.raises(APIError):
        read([(b"content-length", b"nonsense")], body(b"x" * 11))


def test_it_reports_a_client_that_leaves_while_sending_its_body():
    with pytest.raises(ClientGone):
        read([], body(b"123", more=True), {"type": "http.disconnect"})


def sized_chat_body(size: int) -> bytes:
    """A valid chat body for `gpt-test` that is exactly `size` bytes long."""
    empty = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": ""}]})
    padding = size - len(empty.encode())
    assert padding >= 0
    data = json.dumps(
        {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * padding}]}
    ).encode()
    assert len(data) == size
    return data


def test_it_refuses_a_body_over_the_size_limit_with_413(settings):
    settings.AETHERGATE_MAX_BODY_BYTES = 1000
    rt = fakes.runtime()

    def post(data: bytes, *, announced: bool = True, piece_size=None):
        headers = [(b"content-length", str(len(data)).encode())] if announced else []
        return call(rt, "POST", CHAT_PATH, data, headers=headers, piece_size=piece_size)

    at_limit = post(sized_chat_body(1000))
    refused = [
        post(sized_chat_body(1001)),
        post(b"{" * 2000),  # too big before invalid
        post(sized_chat_body(2000), announced=False, piece_size=300),  # as a chunked upload
    ]

    assert at_limit.status == 200, at_limit.body
    for answer in refused:
        error_of(answer, 413, "request_too_large")
    assert len(rt.upstream.calls) == 1
    (ok, *logged) = rt.writer.records
    assert ok.outcome == "ok"
    for record, answer in zip(logged, refused, strict=True):
        # A refused body is not read, so no model name is known to log.
        assert record.request_id == answer.headers["x-request-id"]
        assert (record.status, record.outcome, record.model, record.cost) == (
            413,
            "invalid_request",
            "",
            0,
        )


def test_a_client_leaving_before_its_body_arrived_gets_no_answer_and_a_499_record():
    rt = fakes.runtime()
    scope = fakes.request_scope("POST", CHAT_PATH)
    receive = receiver(body(b'{"model": "gpt', more=True), {"type": "http.disconnect"})

    answer = asyncio.run(fakes.drive(rt, scope, receive))

    assert (answer.status, answer.messages) == (None, [])
    assert rt.upstream.calls == []
    (record,) = rt.writer.records
    assert (record.status, record.outcome, record.cost) == (499, "client_disconnected", 0)


# --------------------------------------------------------------------------- Responder


class Recorded:
    """A Responder on a recorded `send`."""

    def __init__(self):
        self.sent: list[dict] = []
        self.responder = Responder(self.send, "req_test")

    async def send(self, message):
        self.sent.append(message)

    def run(self, *steps):
        async def go():
            for step in steps:
                await step(self.responder)

        asyncio.run(go())
        return self.sent


def test_a_json_answer_is_one_start_and_one_body_with_its_length_and_request_id():
    recorded = Recorded()

    sent = recorded.run(lambda r: r.json(201, b'{"a": 1}', {"x-extra": "yes"}))

    start, end = sent
    assert (start["type"], start["status"]) == ("http.response.start", 201)
    assert dict(start["headers"]) == {
        b"content-type": b"application/json",
        b"x-request-id": b"req_test",
        b"x-extra": b"yes",
        b"content-length": b"8",
    }
    assert end == {"type": "http.response.body", "body": b'{"a": 1}'}
    assert recorded.responder.started and recorded.responder.finished


def test_a_stream_starts_with_its_headers_and_ends_with_a_last_body():
    recorded = Recorded()

    sent = recorded.run(
        lambda r: r.start_stream({"x-ratelimit-limit-requests": "5"}),
        lambda r: r.chunk(b"data: 1\n\n"),
        lambda r: r.end(b"data: [DONE]\n\n"),
    )

    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"x-accel-buffering"] == b"no"
    assert headers[b"x-ratelimit-limit-requests"] == b"5"
    assert b"content-length" not in headers
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [
        (b"data: 1\n\n", True),
        (b"data: [DONE]\n\n", False),
    ]
    assert recorded.responder.finished


def test_an_error_before_anything_was_sent_is_a_json_error_with_its_headers():
    recorded = Recorded()
    error = APIError(429, "slow down", headers={"retry-after": "3"})

    sent = recorded.run(lambda r: r.error(error))

    assert sent[0]["status"] == 429
    assert dict(sent[0]["headers"])[b"retry-after"] == b"3"
    assert json.loads(sent[1]["body"])["error"]["message"] == "slow down"


def test_an_error_after_a_stream_started_ends_it_with_an_error_event():
    recorded = Recorded()
    error = APIError(500, "boom", type="api_error")

    sent = recorded.run(lambda r: r.start_stream({}), lambda r: r.error(error))

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200  # already out: the error can only be an event
    assert json.loads(sent[1]["body"].removeprefix(b"data: "))["error"]["message"] == "boom"
    assert sent[1]["more_body"] is False
    assert recorded.responder.finished


def test_an_error_after_an_answer_is_complete_sends_nothing_more():
    error = APIError(500, "boom")
    json_answer = Recorded()
    ended_stream = Recorded()

    json_answer.run(lambda r: r.json(200, b"{}"), lambda r: r.error(error))
    ended_stream.run(lambda r: r.start_stream({}), lambda r: r.end(), lambda r: r.error(error))

    assert len(json_answer.sent) == 2
    assert len(ended_stream.sent) == 2
