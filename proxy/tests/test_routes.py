"""The `/v1` route table (`proxy.routes`): which operation answers a method and path."""

import pytest

from proxy import routes
from proxy.errors import APIError
from proxy.tests import fakes
from proxy.tests.fakes import call, error_of

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def test_it_answers_unknown_v1_urls_with_404_before_checking_the_key():
    rt = fakes.runtime()
    requests = [
        ("POST", "/v1/nope", None),
        ("POST", "/v1/nope", fakes.SECRET),
        ("POST", "/v1/chat/completions/extra", fakes.SECRET),
        ("GET", "/v1/chat", fakes.SECRET),
        ("GET", "/v1", None),
    ]

    for method, path, secret in requests:
        body = CHAT if method == "POST" else None
        answer = call(rt, method, path, body, secret=secret)

        error = error_of(answer, 404, "unknown_url")
        assert error["message"] == f"Unknown request URL: {method} {path}."
    assert rt.upstream.calls == []
    assert rt.writer.records == []  # refused before the key was read: no account to log under
    assert rt.key_throttle.retry_after("127.0.0.1") == 0  # and no invalid key counted


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("TRACE", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/completions/", "POST"),
        ("GET", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models", "GET"),
        ("DELETE", "/v1/models/gpt-test", "GET"),
        ("POST", "/v1/models/openai/gpt-4o", "GET"),
        ("OPTIONS", "/v1/chat/completions", "POST"),
    ],
)
def test_a_known_path_with_another_method_is_405_naming_the_allowed_ones(method, path, allowed):
    rt = fakes.runtime()

    answer = call(rt, method, path, CHAT if method in ("POST", "PUT") else None, secret=None)

    error = error_of(answer, 405, "method_not_allowed")
    assert answer.headers["allow"] == allowed
    assert error["message"] == f"{method} is not allowed on {path.rstrip('/')}; use {allowed}."
    assert answer.headers["x-request-id"]
    assert rt.upstream.calls == [] and rt.writer.records == []


def test_it_ignores_a_trailing_slash():
    rt = fakes.runtime()

    chat = call(rt, "POST", "/v1/chat/completions/", CHAT)
    listed = call(rt, "GET", "/v1/models/")
    retrieved = call(rt, "GET", "/v1/models/gpt-test/")

    assert chat.status == 200 and chat.json()["object"] == "chat.completion"
    assert rt.upstream.calls[0].path == "/chat/completions"
    assert listed.json()["object"] == "list"
    assert retrieved.json()["id"] == "gpt-test"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/chat/completions", "/chat/completions"),
        ("POST", "/v1/completions", "/completions"),
        ("POST", "/v1/embeddings", "/embeddings"),
    ],
)
def test_each_inference_operation_calls_its_own_path_upstream(method, path, expected):
    op = routes.resolve(method, path)

    assert (op.method, op.path, op.upstream_path) == (method, path, expected)
    assert op.capability == ("EMBEDDING" if "embeddings" in path else "TEXT")
    assert op.streams is ("embeddings" not in path)


def test_a_model_name_with_slashes_is_retrieved_whole():
    model = fakes.model_info("openai/gpt-4o")
    rt = fakes.runtime(fakes.snapshot(models=[model]))

    answer = call(rt, "GET", "/v1/models/openai/gpt-4o")

    assert routes.resolve("GET", "/v1/models/a/b") is routes.RETRIEVE_MODEL
    assert answer.status == 200 and answer.json()["id"] == "openai/gpt-4o"


def test_only_get_retrieves_a_model():
    for method in ("POST", "PUT", "DELETE"):
        with pytest.raises(APIError) as refused:
            routes.resolve(method, "/v1/models/gpt-test")
        assert (refused.value.status, refused.value.code) == (405, "method_not_allowed")
