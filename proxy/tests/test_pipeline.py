"""One inference request's flow (`proxy.pipeline`), in process: what goes upstream, fallback
across models, and a client that leaves before its answer is complete."""

import asyncio
import uuid
from decimal import Decimal

import pytest

from proxy.tests import fakes
from proxy.tests.fakes import HELLO, FakeResponse, Pause, chunk, endpoint_info, model_info, sse


def test_it_routes_the_public_name_to_the_upstream_name_on_the_models_endpoint():
    endpoint = endpoint_info(id=4, name="the-models")
    rt = fakes.runtime(
        fakes.snapshot(models=[model_info("gpt-public", upstream_name="echo+x", endpoint=endpoint)])
    )

    answer = fakes.chat(rt, model="gpt-public")

    assert answer.status == 200
    (sent,) = rt.upstream.calls
    assert (sent.endpoint, sent.path, sent.body["model"]) == (
        endpoint,
        "/chat/completions",
        "echo+x",
    )
    assert sent.stream is False
    # A UUID of its own goes upstream, kept with the attempt in the log.
    (record,) = rt.writer.records
    assert sent.request_id == record.attempts[0]["upstream_request_id"]
    assert str(uuid.UUID(sent.request_id)) == sent.request_id
    assert record.request_id == answer.headers["x-request-id"] != sent.request_id
    assert answer.json()["model"] == "gpt-public"
    assert answer.json()["choices"][0]["message"]["content"] == "Hello!"
    (record,) = rt.writer.records
    assert (record.model, record.endpoint, record.outcome) == ("gpt-public", "the-models", "ok")


# --------------------------------------------------------------------------- the upstream body


PASSTHROUGH = {
    "messages": [
        {"role": "system", "content": "Réponds brièvement ✓"},
        {"role": "user", "content": "what is the weather"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Look up the weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "weather"}},
    "n": 2,
    "logprobs": True,
    "top_logprobs": 3,
    "response_format": {"type": "json_object"},
    "seed": 1234,
    "stop": ["\n\n", "END"],
    "max_completion_tokens": 77,
    "temperature": 0.25,
    "user": "end-user-42",
    "my_extension": {"a": [1, 2]},
}


def sent_body(kind="openai", **fields) -> dict:
    """The body that reached an upstream of `kind` for a chat call of `gpt-test` with `fields`.

    OpenAI's is the dialect that changes nothing (proxy/dialects.py).
    """
    model = fakes.model_info(endpoint=fakes.endpoint_info(kind=kind))
    rt = fakes.runtime(fakes.snapshot(models=[model]))
    answer = fakes.chat(rt, **fields)
    assert answer.status == 200, answer.body
    (sent,) = rt.upstream.calls
    return sent.body


def test_it_passes_every_other_field_through_unchanged():
    assert sent_body(**PASSTHROUGH) == {**PASSTHROUGH, "model": "echo"}


def test_it_forces_usage_reporting_on_streams_and_passes_other_stream_options():
    options = {"include_usage": False, "include_obfuscation": False}

    body = sent_body(**PASSTHROUGH, stream=True, stream_options=options)

    assert body == {
        **PASSTHROUGH,
        "model": "echo",
        "stream": True,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }


def test_it_asks_for_usage_on_a_stream_that_sent_no_stream_options():
    assert sent_body(stream=True)["stream_options"] == {"include_usage": True}


def test_it_does_not_add_stream_options_to_a_plain_request():
    assert "stream_options" not in sent_body()
    assert "stream_options" not in sent_body(stream=False)


def test_it_strips_client_routing_fields_at_any_depth():
    elsewhere = "http://198.51.100.7:9/v1"
    rt = fakes.runtime()

    answer = fakes.chat(
        rt,
        api_base=elsewhere,
        base_url=elsewhere,
        api_key="sk-client-chosen",
        api_version="2024-01-01",
        headers={"Authorization": "Bearer sk-client-chosen"},
        extra_headers={"X-Evil": "1"},
        extra={"api_key": "x", "keep": 1, "deep": [{"base_url": "y", "keep": 2}]},
        metadata={"headers": {"a": "b"}, "tag": "t"},
    )

    assert answer.status == 200
    (sent,) = rt.upstream.calls
    assert sent.body == {
        "model": "echo",
        "messages": HELLO,
        "extra": {"keep": 1, "deep": [{"keep": 2}]},
        "metadata": {"tag": "t"},
    }
    # The destination and credential are the endpoint's, whatever the client sent.
    assert sent.endpoint == endpoint_info()


def test_it_leaves_routing_like_names_inside_model_data_untouched():
    fields = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi there", "api_key": "part-of-the-message"}],
            }
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "connect",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "api_key": {"type": "string"},
                            "base_url": {"type": "string"},
                            "headers": {"type": "object"},
                        },
                    },
                },
            }
        ],
        "tool_choice": "auto",
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "conn",
                "schema": {"type": "object", "properties": {"api_base": {"type": "string"}}},
            },
        },
    }

    assert sent_body(**fields) == {**fields, "model": "echo"}


# --------------------------------------------------------------------------- fallback


PRIMARY = endpoint_info(id=2, name="primary")


def with_backup(backup_rate: str = "", **backup_fields):
    return fakes.snapshot(
        models=[
            model_info("gpt-test", upstream_name="primary-model", endpoint=PRIMARY, fallback="b"),
            model_info("b", upstream_name="backup-model", rate_limit=backup_rate, **backup_fields),
        ]
    )


def test_it_falls_back_to_another_model_when_the_first_fails_before_the_first_byte():
    rt = fakes.runtime(
        with_backup(), upstream=fakes.FakeUpstream(primary=fakes.error_answer(503, "down"))
    )

    answer = fakes.chat(rt, stream=True)

    assert answer.status == 200
    assert {e["model"] for e in answer.events[:-1]} == {"gpt-test"}
    assert [(c.endpoint.name, c.body["model"], c.stream) for c in rt.upstream.calls] == [
        ("primary", "primary-model", True),
        ("stand-in", "backup-model", True),
    ]
    assert rt.upstream.calls[1].body["stream_options"] == {"include_usage": True}


def test_it_falls_back_from_a_model_without_a_usable_deployment_without_calling_it():
    unusable = model_info("gpt-test", endpoint=endpoint_info(usable=False), fallback="b")
    rt = fakes.runtime(fakes.snapshot(models=[unusable, model_info("b")]))

    answer = fakes.chat(rt)

    assert answer.status == 200
    assert [c.endpoint.name for c in rt.upstream.calls] == ["stand-in"]
    (record,) = rt.writer.records
    assert record.attempts[0] == {
        "model": "gpt-test",
        "endpoint": "",
        "error": "no deployment available",
    }


def test_it_counts_a_fallback_against_its_own_limits():
    rt = fakes.runtime(
        with_backup(backup_rate="1/m"),
        upstream=fakes.FakeUpstream(primary=lambda call: fakes.error_answer(503, "down")),
    )

    served, limited = fakes.chat(rt), fakes.chat(rt)

    assert served.status == 200
    error = fakes.error_of(limited, 429, "rate_limit_exceeded")
    assert "this model" in error["message"]
    assert [c.endpoint.name for c in rt.upstream.calls] == ["primary", "stand-in", "primary"]
    assert rt.writer.records[1].attempts[1] == {
        "model": "b",
        "endpoint": "",
        "error": "rate_limited",
    }


def test_it_charges_the_answer_at_the_prices_of_the_model_that_gave_it():
    rt = fakes.runtime(
        with_backup(price_in=Decimal("1"), price_out=Decimal("10")),
        upstream=fakes.FakeUpstream(primary=fakes.error_answer(503, "down")),
    )

    fakes.chat(rt)

    (record,) = rt.writer.records
    assert (record.model, record.input_units, record.output_units) == ("gpt-test", 3, 2)
    assert record.cost == Decimal("23")


# --------------------------------------------------------------------------- the client leaving


def test_a_client_leaving_mid_stream_is_logged_as_499_and_the_upstream_is_hung_up():
    disconnect = asyncio.Event()
    response = FakeResponse(
        200, sse(chunk("one"), chunk(" two"), disconnect.set, Pause(None), done=False)
    )
    rt = fakes.runtime(upstream=fakes.FakeUpstream(default=response))

    answer = fakes.chat(rt, stream=True, disconnect=disconnect)

    assert [e["choices"][0]["delta"]["content"] for e in answer.events] == ["one", " two"]
    assert response.closed
    (record,) = rt.writer.records
    assert (record.outcome, record.status, record.stream) == ("client_disconnected", 499, True)
    assert record.output_units > 0  # billed for what reached the client
    assert record.error == ""


def test_a_client_leaving_before_the_upstream_answers_is_logged_as_499():
    disconnect = asyncio.Event()

    async def slow(call):
        disconnect.set()
        await asyncio.Event().wait()

    rt = fakes.runtime(upstream=fakes.FakeUpstream(default=slow))

    answer = fakes.chat(rt, disconnect=disconnect)

    assert answer.status is None  # nothing was sent: there was no one to send it to
    (sent,) = rt.upstream.calls
    assert sent.cancelled
    (record,) = rt.writer.records
    assert (record.outcome, record.status, record.stream) == ("client_disconnected", 499, False)
    assert (record.input_units, record.output_units, record.cost) == (0, 0, 0)


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_the_connection_ending_with_the_whole_answer_is_not_a_disconnect(stream):
    rt = fakes.runtime()

    answer = fakes.call(
        rt,
        "POST",
        "/v1/chat/completions",
        {"model": "gpt-test", "messages": HELLO, "stream": stream},
        closes_when_answered=True,
    )

    assert answer.status == 200
    (record,) = rt.writer.records
    assert (record.outcome, record.status) == ("ok", 200)
