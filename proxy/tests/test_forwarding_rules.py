"""Which upstream answers and what its failures mean (`proxy.forwarding`), without a server.

`forward` is driven with a fake `attempt`; the classifiers are called
directly; the rest goes through the whole pipeline in process (`fakes.call`)
against a scripted upstream, asserting what the client got, what reached the
upstream and the request record.
"""

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client import REGISTRY

from logs.models import Outcome
from models_registry.models import MAX_FALLBACK_DEPTH
from proxy import errors, forwarding, upstream
from proxy.accounting import Exchange
from proxy.errors import APIError, Retryable
from proxy.routing import Router
from proxy.snapshot import ModelInfo
from proxy.tests import fakes
from proxy.tests.fakes import FakeResponse, endpoint_info, model_info

# What an upstream's error says: internals the gateway must not pass on.
UPSTREAM_SAYS = "upstream says {} (internal host 10.0.0.7, key sk-upstream-secret)"


def counted(metric: str, **labels) -> float:
    return REGISTRY.get_sample_value(f"aethergate_{metric}_total", labels) or 0.0


# --------------------------------------------------------------------------- forward


def chain(*names: str, loop: bool = False) -> dict:
    """Models named `names`, each falling back to the next (the last to the first if `loop`)."""
    fallbacks = [*names[1:], names[0] if loop else None]
    return {
        name: model_info(name, endpoint=endpoint_info(name=f"ep-{name}"), fallback=fallback)
        for name, fallback in zip(names, fallbacks, strict=True)
    }


def failed(reason: str = "HTTP 503") -> Retryable:
    return Retryable(reason, errors.upstream_error(502, "failed", code="upstream_error"))


def roomy_router() -> Router:
    """A router whose retry budget never runs out: these tests are about the chain."""
    router = Router()
    router.budget_min = 1000
    return router


@dataclass
class Forwarded:
    """What `forward` did: the exchange, the names attempted and admitted, the error raised."""

    ex: Exchange
    attempted: list[str]
    admitted: list[str]
    error: APIError | None


def forward(models: dict, failing: dict | None = None, limited: tuple = ()) -> Forwarded:
    """Forward to the first of `models`; `failing` maps a name to what its attempt raises,
    `limited` names the fallbacks whose own limits are reached."""
    failing = failing or {}
    done = Forwarded(Exchange(path="/v1/chat/completions"), [], [], None)

    async def attempt(candidate, deployment, record):
        done.attempted.append(candidate.name)
        if candidate.name in failing:
            raise failing[candidate.name]
        record["status"] = 200

    async def admit_fallback(candidate):
        done.admitted.append(candidate.name)
        if candidate.name in limited:
            raise APIError(429, "limited", code="rate_limit_exceeded", outcome=Outcome.RATE_LIMITED)

    first = next(iter(models.values()))
    try:
        asyncio.run(
            forwarding.forward(
                done.ex,
                first,
                models,
                router=roomy_router(),
                session=None,
                attempt=attempt,
                admit_fallback=admit_fallback,
            )
        )
    except APIError as error:
        done.error = error
    return done


def test_it_answers_with_the_model_itself_and_admits_no_fallback():
    done = forward(chain("fw-solo", "fw-solo-backup"))

    assert (done.attempted, done.admitted, done.error) == (["fw-solo"], [], None)
    assert done.ex.attempts == [{"model": "fw-solo", "endpoint": "ep-fw-solo", "status": 200}]


def test_it_tries_the_fallback_chain_in_order_until_one_answers():
    models = chain("fw-a", "fw-b", "fw-c", "fw-d")
    before = [counted("fallbacks", model=m) for m in models]
    errors_before = counted("upstream_errors", endpoint="ep-fw-a", reason="timeout")

    done = forward(models, {"fw-a": failed("timeout"), "fw-b": failed()})

    assert (done.attempted, done.error) == (["fw-a", "fw-b", "fw-c"], None)
    assert done.admitted == ["fw-b", "fw-c"]  # each fallback passes its own limits first
    assert done.ex.attempts == [
        {"model": "fw-a", "endpoint": "ep-fw-a", "error": "timeout"},
        {"model": "fw-b", "endpoint": "ep-fw-b", "error": "HTTP 503"},
        {"model": "fw-c", "endpoint": "ep-fw-c", "status": 200},
    ]
    after = [counted("fallbacks", model=m) for m in models]
    assert [n - b for n, b in zip(after, before, strict=True)] == [1, 1, 0, 0]
    assert counted("upstream_errors", endpoint="ep-fw-a", reason="timeout") == errors_before + 1


def test_it_raises_the_last_failure_when_no_candidate_answers():
    last = failed("HTTP 500")

    done = forward(chain("fw-x", "fw-y"), {"fw-x": failed(), "fw-y": last})

    assert done.error is last.error
    assert [a["error"] for a in done.ex.attempts] == ["HTTP 503", "HTTP 500"]


def test_it_tries_each_model_of_a_fallback_loop_once():
    models = chain("fw-loop-a", "fw-loop-b", loop=True)

    done = forward(models, dict.fromkeys(models, failed()))

    assert done.attempted == ["fw-loop-a", "fw-loop-b"]
    assert done.error is not None


def test_it_stops_after_the_maximum_fallback_depth():
    names = [f"fw-deep-{n}" for n in range(MAX_FALLBACK_DEPTH + 3)]

    done = forward(chain(*names), dict.fromkeys(names, failed()))

    assert done.attempted == names[: MAX_FALLBACK_DEPTH + 1]  # the model and 5 fallbacks
    assert [a["model"] for a in done.ex.attempts] == done.attempted
    assert done.error is not None


def test_it_counts_no_fallback_past_the_maximum_depth():
    names = [f"fw-cap-{n}" for n in range(MAX_FALLBACK_DEPTH + 2)]
    last_tried = names[MAX_FALLBACK_DEPTH]
    before = counted("fallbacks", model=last_tried)

    done = forward(chain(*names), dict.fromkeys(names, failed()))

    assert done.attempted[-1] == last_tried
    assert counted("fallbacks", model=last_tried) == before


def test_it_skips_a_rate_limited_fallback_for_the_next_one():
    before = counted("upstream_errors", endpoint="", reason="rate_limited")

    done = forward(chain("fw-r1", "fw-r2", "fw-r3"), {"fw-r1": failed()}, limited=("fw-r2",))

    assert done.attempted == ["fw-r1", "fw-r3"]  # the limited fallback is never called
    assert (done.admitted, done.error) == (["fw-r2", "fw-r3"], None)
    assert done.ex.attempts[1] == {"model": "fw-r2", "endpoint": "", "error": "rate_limited"}
    # A limit reached is the gateway's own refusal, not an upstream error.
    assert counted("upstream_errors", endpoint="", reason="rate_limited") == before


def test_it_answers_the_fallbacks_429_when_the_last_candidate_is_rate_limited():
    done = forward(chain("fw-l1", "fw-l2"), {"fw-l1": failed()}, limited=("fw-l2",))

    assert (done.error.status, done.error.code) == (429, "rate_limit_exceeded")


def test_it_does_not_fall_back_after_a_final_error():
    refusal = errors.bad_request("rejected", code="upstream_rejected")

    done = forward(chain("fw-f1", "fw-f2"), {"fw-f1": refusal})

    assert (done.attempted, done.admitted, done.error) == (["fw-f1"], [], refusal)


def test_a_fallback_missing_from_the_catalog_ends_the_chain():
    models = chain("fw-m1", "fw-m2")
    del models["fw-m2"]  # inactive: not in the snapshot

    done = forward(models, {"fw-m1": failed()})

    assert (done.attempted, done.admitted) == (["fw-m1"], [])
    assert done.error is not None


# --------------------------------------------------------------------------- classifiers


@pytest.mark.parametrize("status", [301, 302, 304, 307, 308])
def test_a_redirect_is_an_invalid_answer_another_candidate_may_replace(status):
    found = forwarding.status_failure(status, "gpt-public")

    assert isinstance(found, Retryable) and found.reason == f"HTTP {status}"
    assert (found.error.status, found.error.code) == (502, "upstream_error")
    assert (
        found.error.message == "The upstream for model 'gpt-public' returned an invalid response."
    )


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_a_server_error_is_a_502_another_candidate_may_replace(status):
    found = forwarding.status_failure(status, "gpt-public")

    assert isinstance(found, Retryable) and found.reason == f"HTTP {status}"
    assert (found.error.status, found.error.code) == (502, "upstream_error")
    assert found.error.outcome == Outcome.UPSTREAM_ERROR
    assert f"(HTTP {status})" in found.error.message


def test_an_upstream_429_is_a_503_another_candidate_may_replace():
    found = forwarding.status_failure(429, "gpt-public")

    assert isinstance(found, Retryable) and found.reason == "HTTP 429"
    assert (found.error.status, found.error.code) == (503, "upstream_rate_limited")
    assert found.error.type == "upstream_error"


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_a_final_502(status):
    found = forwarding.status_failure(status, "gpt-public")

    assert isinstance(found, APIError)
    assert (found.status, found.code, found.outcome) == (
        502,
        "upstream_auth_failed",
        Outcome.UPSTREAM_ERROR,
    )


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_any_other_client_error_is_left_to_the_body(status):
    assert forwarding.status_failure(status, "gpt-public") is None


def rejection(body, *, status=400, log_content=False, endpoint=None):
    return forwarding.rejection(status, body, endpoint or endpoint_info(), log_content=log_content)


def test_a_rejection_passes_the_upstreams_reason_on_scrubbed():
    endpoint = endpoint_info(base_url="https://llm.internal.example/v1", api_key="plain-cred")
    message = (
        "Bad prompt; see https://llm.internal.example/v1/docs from 10.1.2.3:8080, "
        "keys sk-abcdefgh123 and plain-cred"
    )

    found = rejection(fakes.error_body(message), endpoint=endpoint)

    assert (found.status, found.code, found.outcome) == (
        400,
        "upstream_rejected",
        Outcome.INVALID_REQUEST,
    )
    assert found.message == (
        "The upstream rejected the request: Bad prompt; see [redacted]/docs from [redacted], "
        "keys [redacted] and [redacted]"
    )


def test_a_rejection_is_logged_without_its_reason_unless_the_key_logs_content():
    raw = fakes.error_body("Your prompt was flagged: 'my plan'", "content_filter")

    quiet, logged = rejection(raw), rejection(raw, log_content=True)

    assert quiet.log_message == "The upstream rejected the request (HTTP 400, code content_filter)."
    assert "my plan" in quiet.message
    assert logged.log_message is None  # the log keeps the message itself


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (None, "HTTP 409 Conflict"),
        (b"", "HTTP 409 Conflict, with an empty body"),
        (
            b"<html><h1>Bad Request</h1>\n<p>more</p></html>",
            "HTTP 409 Conflict: Bad Request",
        ),
        (b"[1, 2]", "HTTP 409 Conflict"),
        # LM Studio; vLLM before 0.10.1; llama-cpp-python (FastAPI) and its validation errors
        (b'{"error": "flat"}', "flat"),
        (b'{"object": "error", "message": "vllm says", "type": "BadRequestError"}', "vllm says"),
        (b'{"detail": "Invalid API key"}', "Invalid API key"),
        (
            b'{"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]}',
            "messages: Field required",
        ),
    ],
)
def test_a_rejection_in_any_servers_shape_says_what_the_upstream_said(body, reason):
    found = rejection(body, status=409)

    assert found.message == f"The upstream rejected the request: {reason}"
    assert found.log_message == "The upstream rejected the request (HTTP 409)."


def test_a_rejection_keeps_no_traceback_or_file_path_of_the_upstreams():
    # llama-cpp-python's 500 for a request it cannot validate (seen on 0.3.36).
    message = (
        "1 validation error for CreateChatCompletionRequest\nmessages.0.content: bad in "
        "/opt/venv/lib/python3.11/site-packages/llama_cpp/server/app.py line 3\n"
        'Traceback (most recent call last):\n  File "/root/x.py", line 1'
    )

    found = rejection(fakes.error_body(message))

    assert found.message == (
        "The upstream rejected the request: 1 validation error for "
        "CreateChatCompletionRequest\nmessages.0.content: bad in [redacted] line 3"
    )


def test_an_empty_error_message_is_named_by_its_status():
    found = rejection(fakes.error_body(""), status=500)

    assert found.message == "The upstream rejected the request: HTTP 500 Internal Server Error"


def test_llama_cpps_numeric_error_code_is_logged():
    raw = b'{"error": {"code": 400, "message": "the request exceeds the context", "type": "x"}}'

    found = rejection(raw)

    assert found.message == "The upstream rejected the request: the request exceeds the context"
    assert found.log_message == "The upstream rejected the request (HTTP 400, code 400)."


def test_a_rejections_message_and_logged_code_are_bounded():
    raw = fakes.error_body("x" * 5000, code="c" * 500)

    found = rejection(raw)

    assert len(found.message) == len("The upstream rejected the request: ") + 1000
    assert found.log_message == f"The upstream rejected the request (HTTP 400, code {'c' * 100})."


def classify(response: FakeResponse, log_content: bool = False):
    return asyncio.run(
        forwarding.failure(response, endpoint_info(), "gpt-public", log_content=log_content)
    )


def test_a_status_that_says_enough_is_classified_without_reading_the_body():
    response = fakes.error_answer(503, "overloaded")

    found = classify(response)

    assert isinstance(found, Retryable) and found.reason == "HTTP 503"
    assert response.content.unread  # left unread


def test_a_rejections_body_is_read_for_its_reason():
    found = classify(fakes.error_answer(400, "max_tokens is too large"))

    assert found.message == "The upstream rejected the request: max_tokens is too large"


@pytest.mark.parametrize(
    "pieces",
    [
        [b'{"error": {"message": "' + b"x" * forwarding.UPSTREAM_ERROR_BYTES + b'"}}'],
        [b"{", OSError()],
    ],
    ids=["too large", "broken"],
)
def test_a_rejection_body_too_large_or_broken_is_named_by_its_status(pieces):
    found = classify(FakeResponse(400, pieces))

    assert found.message == "The upstream rejected the request: HTTP 400 Bad Request"


@pytest.mark.parametrize("kind", ["llama_cpp", "llama_cpp_python"])
def test_a_500_with_an_error_message_from_llama_cpp_is_a_final_rejection(kind):
    # llama.cpp answers a malformed request (bad tool arguments, a template error) with 500.
    found = asyncio.run(
        forwarding.failure(
            fakes.error_answer(500, "Failed to parse tool call arguments"),
            endpoint_info(kind=kind),
            "gpt-public",
            log_content=False,
        )
    )

    assert not isinstance(found, Retryable)
    assert (found.status, found.code) == (400, "upstream_rejected")
    assert found.message == "The upstream rejected the request: Failed to parse tool call arguments"


@pytest.mark.parametrize(
    ("kind", "pieces"),
    [
        ("llama_cpp", [b"Internal Server Error"]),
        ("llama_cpp_python", [b""]),
        ("generic", [fakes.error_body("Failed to parse tool call arguments")]),
        ("vllm", [fakes.error_body("engine dead")]),
    ],
)
def test_any_other_500_is_a_failure_another_candidate_may_replace(kind, pieces):
    found = asyncio.run(
        forwarding.failure(
            FakeResponse(500, pieces), endpoint_info(kind=kind), "gpt-public", log_content=False
        )
    )

    assert isinstance(found, Retryable) and found.reason == "HTTP 500"


def test_no_answer_in_time_is_a_504_another_candidate_may_replace():
    found = forwarding.connection_failure(TimeoutError(), endpoint_info(), "gpt-public")

    assert isinstance(found, Retryable) and found.reason == "timeout"
    assert (found.error.status, found.error.code, found.error.outcome) == (
        504,
        "upstream_timeout",
        Outcome.UPSTREAM_TIMEOUT,
    )


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientOSError(111, "Connect call failed ('10.0.0.7', 8000)"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("Response payload is not completed"),
    ],
    ids=["refused", "disconnected", "payload"],
)
def test_an_unreachable_upstream_is_a_503_that_names_no_address(exc, caplog):
    with caplog.at_level(logging.WARNING, logger="proxy.forwarding"):
        found = forwarding.connection_failure(exc, endpoint_info(), "gpt-public")

    assert isinstance(found, Retryable) and found.reason == "connection failed"
    assert (found.error.status, found.error.code) == (503, "upstream_unavailable")
    assert found.error.message == "The upstream for model 'gpt-public' could not be reached."
    assert "stand-in" in caplog.text  # the operator learns which endpoint
    assert "10.0.0.7" not in caplog.text


def test_an_address_the_policy_refuses_is_a_503_that_only_the_log_explains(caplog):
    refused = upstream.AddressRefused("169.254.169.254: a link-local address")

    with caplog.at_level(logging.WARNING, logger="proxy.forwarding"):
        found = forwarding.connection_failure(refused, endpoint_info(), "gpt-public")

    assert isinstance(found, Retryable) and found.reason == "address refused"
    assert (found.error.status, found.error.code) == (503, "upstream_address_refused")
    assert "169.254" not in found.error.message
    assert "169.254.169.254: a link-local address" in caplog.text


@pytest.mark.parametrize(
    "deployments",
    [(), (fakes.deployment_info(endpoint=endpoint_info(usable=False)),)],
    ids=["none", "credential unreadable"],
)
def test_a_model_with_no_usable_deployment_is_a_503_without_an_attempt(deployments):
    done = forward({"gpt-public": model_info("gpt-public", deployments=deployments)})

    assert done.attempted == []
    assert done.ex.attempts == [
        {"model": "gpt-public", "endpoint": "", "error": "no deployment available"}
    ]
    assert (done.error.status, done.error.code) == (503, "model_unavailable")
    assert "'gpt-public'" in done.error.message


def test_a_model_with_no_usable_deployment_falls_back_without_calling_it():
    models = {
        "fw-nowhere": model_info("fw-nowhere", deployments=(), fallback="fw-there"),
        "fw-there": model_info("fw-there"),
    }

    done = forward(models)

    assert (done.attempted, done.admitted, done.error) == (["fw-there"], ["fw-there"], None)


# --------------------------------------------------------------------------- through the pipeline


def failing(kind: str):
    """A script entry for an upstream that fails as `kind` says, before answering a byte."""
    says = UPSTREAM_SAYS.format(kind)
    return {
        "refused": lambda call: aiohttp.ClientOSError(111, "Connect call failed (10.0.0.7)"),
        "timeout": fakes.silent,
        "5xx": lambda call: fakes.error_answer(503, says),
        "500": lambda call: fakes.error_answer(500, says),
        "429": lambda call: fakes.error_answer(429, says),
        "malformed": lambda call: FakeResponse(200, [b'{"not json']),
        "400": lambda call: fakes.error_answer(400, says),
    }[kind]


# The first-byte timeout is real loop time: kept short.
PRIMARY = endpoint_info(id=2, name="primary", first_byte_timeout=0.05)


def on_primary(fallback: str | None = None):
    return model_info("gpt-test", upstream_name="failing", endpoint=PRIMARY, fallback=fallback)


BACKUP = model_info("gpt-backup", upstream_name="echo+backup")


def streamed_text(answer) -> str:
    assert answer.events[-1] == "[DONE]"
    assert {c["model"] for c in answer.events[:-1]} == {"gpt-test"}
    return answer.text


FALLBACK_CASES = ["refused", "timeout", "5xx", "429", "malformed"]


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("kind", FALLBACK_CASES)
def test_it_falls_back_when_the_upstream_fails_before_answering(kind, stream):
    rt = fakes.runtime(
        fakes.snapshot(models=[on_primary(fallback="gpt-backup"), BACKUP]),
        upstream=fakes.FakeUpstream(primary=failing(kind)),
    )

    answer = fakes.chat(rt, stream=stream)

    assert answer.status == 200
    if stream:
        assert streamed_text(answer) == "Hello!"
    else:
        assert answer.json()["model"] == "gpt-test"
        assert answer.json()["choices"][0]["message"]["content"] == "Hello!"
    assert [c.body["model"] for c in rt.upstream.calls] == ["failing", "echo+backup"]
    (record,) = rt.writer.records
    assert (record.model, record.status, record.outcome) == ("gpt-test", 200, "ok")
    assert [a["upstream_request_id"] for a in record.attempts] == [
        c.request_id for c in rt.upstream.calls
    ]
    first, second = fakes.without_upstream_ids(record.attempts)
    assert set(first) <= {"model", "endpoint", "deployment", "status", "error"}
    assert (first["model"], first["endpoint"]) == ("gpt-test", "primary")
    assert first["deployment"] == "primary/failing"
    assert first["error"]
    assert second == {
        "model": "gpt-backup",
        "endpoint": "stand-in",
        "deployment": "stand-in/echo+backup",
        "status": 200,
    }
    assert record.endpoint == "stand-in"


def test_it_falls_back_when_a_stream_resets_before_its_first_chunk():
    reset = aiohttp.ClientPayloadError("Response payload is not completed")
    rt = fakes.runtime(
        fakes.snapshot(models=[on_primary(fallback="gpt-backup"), BACKUP]),
        upstream=fakes.FakeUpstream(primary=lambda call: FakeResponse(200, [reset])),
    )

    answer = fakes.chat(rt, stream=True)

    assert streamed_text(answer) == "Hello!"
    assert [c.body["model"] for c in rt.upstream.calls] == ["failing", "echo+backup"]
    (record,) = rt.writer.records
    assert (record.model, record.status, record.outcome) == ("gpt-test", 200, "ok")
    assert [a["model"] for a in record.attempts] == ["gpt-test", "gpt-backup"]
    assert record.attempts[0]["error"] == "stream failed"
    # The fallback's own usage is counted, not the attempt that sent nothing.
    assert (record.input_units, record.output_units, record.usage_estimated) == (3, 2, False)


def on_own_endpoint(name: str, endpoint_id: int, fallback: str) -> ModelInfo:
    """`gpt-NAME` → `fail-NAME` on an endpoint of its own called NAME."""
    endpoint = endpoint_info(id=endpoint_id, name=name)
    return model_info(
        f"gpt-{name}", upstream_name=f"fail-{name}", endpoint=endpoint, fallback=fallback
    )


def test_it_follows_a_fallback_chain():
    models = [
        on_own_endpoint("a", 2, fallback="gpt-b"),
        on_own_endpoint("b", 3, fallback="gpt-c"),
        model_info("gpt-c", upstream_name="echo+third"),
    ]
    rt = fakes.runtime(
        fakes.snapshot(models=models),
        upstream=fakes.FakeUpstream(
            a=failing("5xx"), b=lambda call: fakes.error_answer(502, "bad gateway")
        ),
    )

    answer = fakes.chat(rt, model="gpt-a")

    assert answer.json()["model"] == "gpt-a"
    assert answer.json()["choices"][0]["message"]["content"] == "Hello!"
    assert [c.body["model"] for c in rt.upstream.calls] == ["fail-a", "fail-b", "echo+third"]
    (record,) = rt.writer.records
    assert (record.model, record.outcome) == ("gpt-a", "ok")
    assert [(a["model"], a.get("status")) for a in record.attempts] == [
        ("gpt-a", 503),
        ("gpt-b", 502),
        ("gpt-c", 200),
    ]


def test_it_stops_a_fallback_loop():
    models = [on_own_endpoint("a", 2, fallback="gpt-b"), on_own_endpoint("b", 3, fallback="gpt-a")]
    rt = fakes.runtime(
        fakes.snapshot(models=models),
        upstream=fakes.FakeUpstream(a=failing("5xx"), b=failing("5xx")),
    )

    answer = fakes.chat(rt, model="gpt-a")

    fakes.error_of(answer, 502, "upstream_error")
    fakes.assert_no_internals(answer.body)
    assert [c.body["model"] for c in rt.upstream.calls] == ["fail-a", "fail-b"]
    (record,) = rt.writer.records
    assert [a["model"] for a in record.attempts] == ["gpt-a", "gpt-b"]
    assert (record.status, record.outcome) == (502, "upstream_error")


def test_it_does_not_fall_back_on_an_upstream_400():
    rt = fakes.runtime(
        fakes.snapshot(models=[on_primary(fallback="gpt-backup"), BACKUP]),
        upstream=fakes.FakeUpstream(primary=failing("400")),
    )

    answer = fakes.chat(rt)

    fakes.error_of(answer, 400, "upstream_rejected")
    assert [c.body["model"] for c in rt.upstream.calls] == ["failing"]


FAILURE_CASES = {
    # kind: (status, code, log outcome)
    "5xx": (502, "upstream_error", "upstream_error"),
    "500": (502, "upstream_error", "upstream_error"),
    "429": (503, "upstream_rate_limited", "upstream_error"),
    "refused": (503, "upstream_unavailable", "upstream_error"),
    "timeout": (504, "upstream_timeout", "upstream_timeout"),
    "malformed": (502, "upstream_error", "upstream_error"),
    "400": (400, "upstream_rejected", "invalid_request"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("kind", list(FAILURE_CASES))
def test_it_answers_an_upstream_failure_without_fallback_as_an_openai_error(kind, stream):
    status, code, outcome = FAILURE_CASES[kind]
    rt = fakes.runtime(
        fakes.snapshot(models=[on_primary()]),
        upstream=fakes.FakeUpstream(primary=failing(kind)),
    )

    answer = fakes.chat(rt, stream=stream)

    error = fakes.error_of(answer, status, code)
    fakes.assert_no_internals(answer.body, PRIMARY)
    if kind == "400":
        assert "upstream says 400" in error["message"]
    (record,) = rt.writer.records
    assert (record.model, record.status, record.outcome) == ("gpt-test", status, outcome)
    assert [a["model"] for a in record.attempts] == ["gpt-test"]
    fakes.assert_no_internals(record.error, PRIMARY)
    (sent,) = rt.upstream.calls
    # The gateway gave up on the silent upstream: it hung up rather than wait on.
    assert sent.cancelled is (kind == "timeout")


def test_an_upstream_error_quoting_the_prompt_is_logged_without_it():
    quoted = "Your prompt was flagged: 'my secret plan'"
    keys = {
        fakes.SECRET: fakes.key_info(),
        "ag-logs-content-0123": fakes.key_info(id=8, log_content=True),
    }
    rt = fakes.runtime(
        fakes.snapshot(keys=keys, models=[on_primary()]),
        upstream=fakes.FakeUpstream(
            primary=lambda call: fakes.error_answer(400, quoted, "content_filter")
        ),
    )

    for secret in keys:
        answer = fakes.chat(rt, secret=secret)
        assert quoted in fakes.error_of(answer, 400, "upstream_rejected")["message"]

    quiet, logged = rt.writer.records
    assert quiet.error == "The upstream rejected the request (HTTP 400, code content_filter)."
    assert "secret plan" in logged.error
