"""Admission at `/v1`: keys, request ids, model listing, the admission order, rate limits,
balances, and how soon catalog changes (this process's or another's) take effect.

Every test runs the real gateway (uvicorn in a thread) in front of the upstream stand-in and
observes it from outside: HTTP answers, `RequestLog` rows, balances in the database.
"""

import asyncio
import http.client as http_client
import json
import re
from datetime import timedelta
from decimal import Decimal

import httpx
import openai
import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import User
from aethergate.testing import FakeClock, wait_for, wait_for_logs
from keys.models import APIKey
from keys.services import rotate_key
from logs.models import RequestLog
from models_registry.models import Model

REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")
RESET_REQUESTS = re.compile(r"^\d+\.\d{3}s$")
CHAT_PATH = "/v1/chat/completions"

# The stand-in answers "Hello from upstream: hi there": 2 + 3 prompt tokens, 5 completion tokens.
MESSAGES = [{"role": "user", "content": "hi there"}]
PROMPT_TOKENS, COMPLETION_TOKENS = 5, 5
PRICE_IN, PRICE_OUT = Decimal("0.001"), Decimal("0.002")
CHAT_COST = PROMPT_TOKENS * PRICE_IN + COMPLETION_TOKENS * PRICE_OUT  # 0.015

# A well-formed but unknown key, and the parts of it no answer may contain.
FAKE_KEY = "ag-Zq7Xk2Lp9Wm4Rt8Yb3Nc6Vd1Hf5Jg0QsUu"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def http(gateway):
    """A plain httpx client on the gateway's root, for raw status, headers and bodies."""
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        yield client


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def chat(http, secret, model="gpt-test", **extra) -> httpx.Response:
    return http.post(
        CHAT_PATH, json={"model": model, "messages": MESSAGES, **extra}, headers=bearer(secret)
    )


def embed(http, secret, model="embed", text="one two three") -> httpx.Response:
    return http.post("/v1/embeddings", json={"model": model, "input": text}, headers=bearer(secret))


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    """Assert `response` is an OpenAI-shaped error with `status` and `code`; return the error."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert REQUEST_ID.match(response.headers["x-request-id"])
    return error


def rows(**filters) -> list[RequestLog]:
    """Log rows in request order: by request start, not by when the writer stored them."""
    return list(RequestLog.objects.filter(**filters).order_by("created_at", "id"))


def settle_logs(http, secret) -> list[RequestLog]:
    """Make one more logged request and wait for its row; return every row, in order.

    The writer stores records in arrival order, so once this row is in, every record of an
    earlier request is too: what is absent then was never logged.
    """
    response = http.get("/v1/models", headers=bearer(secret))
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    wait_for_logs(1, request_id=request_id)
    return rows()


def assert_refusal_logged(row, response, *, key, status, outcome, model="", path=CHAT_PATH):
    assert row.request_id == response.headers["x-request-id"]
    assert (row.status, row.outcome, row.model, row.path) == (status, outcome, model, path)
    assert (row.user_id, row.username) == (key.owner_id, key.owner.username)
    assert (row.api_key_id, row.key_prefix) == (key.pk, key.prefix)
    assert row.cost == 0
    assert (row.input_units, row.output_units) == (0, 0)


def ratelimit_headers(response) -> tuple[str, str]:
    return (
        response.headers.get("x-ratelimit-limit-requests"),
        response.headers.get("x-ratelimit-remaining-requests"),
    )


def assert_rate_limited(response, *, limit: int, tier: str) -> dict:
    """Assert a 429 with every rate-limit header, naming `tier`; return the error."""
    error = error_of(response, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert 1 <= int(response.headers["retry-after"]) <= 120
    assert ratelimit_headers(response) == (str(limit), "0")
    assert RESET_REQUESTS.match(response.headers["x-ratelimit-reset-requests"])
    tiers = ["this API key", "this model's endpoint", "this model"]
    named = next(t for t in tiers if t in error["message"])
    assert named == tier, error["message"]
    return error


def raw_get(http, path: str, headers: dict) -> tuple[int, dict, bytes]:
    """GET with http.client, which sends header values httpx would refuse."""
    connection = http_client.HTTPConnection(http.base_url.host, http.base_url.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def warm_up(async_client_for, secret) -> None:
    """One unmetered, unpriced request (GET /v1/models) so the catalog already holds the key.

    Without it a concurrent burst right after the key's creation meets the bug that
    `test_it_lets_every_concurrent_request_see_a_key_created_just_before` reproduces; the
    tests that warm up are about limits and money, not about catalog reloads.
    """

    async def models():
        async with async_client_for(secret) as client:
            await client.models.list()

    asyncio.run(models())


def key_secret_parts(secret: str, size: int = 6) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


# --------------------------------------------------------------------------- authentication


def test_it_answers_every_unauthenticated_request_with_one_identical_401(
    http, make_model, make_key
):
    make_model()
    _, secret = make_key()
    near_miss = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    presented = {
        "no header": {},
        "basic scheme, real key": {"Authorization": f"Basic {secret}"},
        "token scheme, real key": {"Authorization": f"Token {secret}"},
        "bare real key": {"Authorization": secret},
        "bearer without token": {"Authorization": "Bearer"},
        "unknown key": bearer(FAKE_KEY),
        "real key, one character off": bearer(near_miss),
    }
    bodies = {}
    for case, headers in presented.items():
        for method, path, body in (
            ("POST", CHAT_PATH, {"model": "gpt-test", "messages": MESSAGES}),
            ("GET", "/v1/models", None),
            ("POST", "/v1/embeddings", {"model": "embed", "input": "x"}),
        ):
            response = http.request(method, path, json=body, headers=headers)
            error_of(response, 401, "invalid_api_key")
            bodies[(case, method, path)] = response.content
            for leaked in (secret, FAKE_KEY, near_miss):
                text = response.text + json.dumps(dict(response.headers))
                for part in key_secret_parts(leaked):
                    assert part not in text, (case, part)

    # httpx refuses to send "Bearer " (trailing space); http.client sends it as it is.
    for value in ("Bearer ", "Bearer   "):
        status, raw_headers, content = raw_get(http, "/v1/models", {"Authorization": value})
        assert status == 401 and REQUEST_ID.match(raw_headers["x-request-id"])
        bodies[(repr(value), "GET", "/v1/models")] = content

    assert len(set(bodies.values())) == 1, bodies
    assert len({json.dumps(json.loads(b), sort_keys=True) for b in bodies.values()}) == 1
    logged = settle_logs(http, secret)
    assert [r.path for r in logged] == ["/v1/models"]  # only the sentinel


def test_it_refuses_inactive_keys_expired_keys_and_inactive_owners_with_403(
    http, make_user, make_model, make_key
):
    make_model()
    _, working = make_key(name="working", expires_at=timezone.now() + timedelta(hours=1))
    _, inactive = make_key(name="off", is_active=False)
    _, expired = make_key(name="old", expires_at=timezone.now() - timedelta(seconds=1))
    _, orphaned = make_key(owner=make_user(username="bob", is_active=False), name="bob's")

    for secret, code in ((inactive, "key_inactive"), (expired, "key_expired")):
        for response in (chat(http, secret), http.get("/v1/models", headers=bearer(secret))):
            error_of(response, 403, code)
            assert secret[3:12] not in response.text
    for response in (chat(http, orphaned), http.get("/v1/models", headers=bearer(orphaned))):
        error_of(response, 403, "user_inactive")
    assert chat(http, working).status_code == 200

    logged = settle_logs(http, working)
    assert [(r.path, r.status) for r in logged] == [(CHAT_PATH, 200), ("/v1/models", 200)]


def test_it_refuses_a_key_whose_expiry_passes_while_the_gateway_runs(
    http, make_model, make_key, monkeypatch
):
    make_model()
    _, secret = make_key(expires_at=timezone.now() + timedelta(hours=1))

    assert chat(http, secret).status_code == 200
    # An hour later, with nothing written: the expiry is judged at each request.
    monkeypatch.setattr(timezone, "now", FakeClock(timezone.now() + timedelta(hours=1)))

    error_of(chat(http, secret), 403, "key_expired")


# --------------------------------------------------------------------------- request ids


def test_it_gives_every_response_a_unique_request_id_that_its_log_row_keeps(
    http, make_model, make_key
):
    make_model()
    _, secret = make_key(rate_limit="2/m")
    responses = {
        "ok": chat(http, secret),
        "ok again": chat(http, secret),
        "429": chat(http, secret),
        "401": chat(http, FAKE_KEY),
        "401 without header": http.get("/v1/models"),
        "404 unknown url": http.post("/v1/nope", headers=bearer(secret)),
        "404 unknown url without key": http.get("/v1/chat/completions"),
        "400": http.post(CHAT_PATH, content=b"{", headers=bearer(secret)),
        "models": http.get("/v1/models", headers=bearer(secret)),
    }
    assert {case: r.status_code for case, r in responses.items()} == {
        "ok": 200,
        "ok again": 200,
        "429": 429,
        "401": 401,
        "401 without header": 401,
        "404 unknown url": 404,
        "404 unknown url without key": 404,
        "400": 400,
        "models": 200,
    }

    ids = {case: r.headers.get("x-request-id") for case, r in responses.items()}
    for case, request_id in ids.items():
        assert request_id and REQUEST_ID.match(request_id), (case, request_id)
    assert len(set(ids.values())) == len(ids)

    logged_cases = ["ok", "ok again", "429", "400", "models"]
    logged = wait_for_logs(len(logged_cases))
    assert [r.request_id for r in logged] == [ids[case] for case in logged_cases]
    assert [r.outcome for r in logged] == ["ok", "ok", "rate_limited", "invalid_request", "ok"]


def test_it_sends_the_request_id_through_the_sdk(client_for, make_model, make_key):
    make_model()
    key, secret = make_key()

    raw = client_for(secret).chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES
    )

    request_id = raw.headers["x-request-id"]
    assert REQUEST_ID.match(request_id)
    (row,) = wait_for_logs(1)
    assert (row.request_id, row.api_key_id, row.outcome) == (request_id, key.pk, "ok")


# --------------------------------------------------------------------------- unknown urls


def test_it_answers_unknown_v1_urls_with_404_before_checking_the_key(http, make_model, make_key):
    make_model()
    _, secret = make_key()
    requests = [
        ("POST", "/v1/nope", {}),
        ("POST", "/v1/nope", bearer(secret)),
        ("GET", "/v1/chat/completions", {}),
        ("GET", "/v1/chat/completions", bearer(secret)),
        ("GET", "/v1/embeddings", bearer(FAKE_KEY)),
        ("POST", "/v1/models", bearer(secret)),
        ("DELETE", "/v1/completions", bearer(secret)),
        ("POST", "/v1/chat/completions/extra", bearer(secret)),
        ("GET", "/v1", {}),
    ]
    for method, path, headers in requests:
        json_body = {"model": "gpt-test", "messages": MESSAGES} if method == "POST" else None
        response = http.request(method, path, json=json_body, headers=headers)
        error_of(response, 404, "unknown_url")


# --------------------------------------------------------------------------- models


@pytest.fixture
def catalog(make_endpoint, make_model):
    """A text model, an embedding model, and three models /v1 must not list."""
    chat_model = make_model(name="gpt-test")
    embed_model = make_model(name="embed", capability="EMBEDDING")
    make_model(name="gone", is_active=False)
    make_model(name="orphan", endpoint=make_endpoint(name="off", is_active=False))
    Model.objects.create(name="loose", upstream_name="echo", endpoint=None)
    return chat_model, embed_model


def list_ids(http, secret) -> list[str]:
    response = http.get("/v1/models", headers=bearer(secret))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"object", "data"} and body["object"] == "list"
    for item in body["data"]:
        assert set(item) == {"id", "object", "created", "owned_by"}
        assert item["object"] == "model"
        assert isinstance(item["created"], int) and isinstance(item["owned_by"], str)
    return sorted(item["id"] for item in body["data"])


def test_it_lists_only_active_models_that_have_an_active_endpoint(http, catalog, make_key):
    _, secret = make_key()

    assert list_ids(http, secret) == ["embed", "gpt-test"]
    retrieved = http.get("/v1/models/gpt-test", headers=bearer(secret))
    assert retrieved.status_code == 200
    assert retrieved.json()["id"] == "gpt-test" and retrieved.json()["object"] == "model"
    for hidden in ("gone", "orphan", "loose", "nope"):
        error = error_of(
            http.get(f"/v1/models/{hidden}", headers=bearer(secret)), 404, "model_not_found"
        )
        assert hidden in error["message"]


def test_it_filters_the_model_list_by_the_keys_allowed_models_and_capabilities(
    http, catalog, make_key
):
    chat_model, embed_model = catalog
    gone = Model.objects.get(name="gone")
    _, only_chat = make_key(name="only chat", allowed_models=[chat_model])
    _, only_embeddings = make_key(name="only embeddings", allowed_capabilities=["EMBEDDING"])
    _, both_but_text = make_key(
        name="both but text",
        allowed_models=[chat_model, embed_model],
        allowed_capabilities=["TEXT"],
    )
    _, only_gone = make_key(name="only gone", allowed_models=[gone])

    assert list_ids(http, only_chat) == ["gpt-test"]
    assert list_ids(http, only_embeddings) == ["embed"]
    assert list_ids(http, both_but_text) == ["gpt-test"]
    assert list_ids(http, only_gone) == []

    assert http.get("/v1/models/gpt-test", headers=bearer(only_chat)).status_code == 200
    assert http.get("/v1/models/embed", headers=bearer(only_embeddings)).status_code == 200
    for secret, name in (
        (only_chat, "embed"),
        (only_embeddings, "gpt-test"),
        (both_but_text, "embed"),
        (only_gone, "gone"),
    ):
        error_of(http.get(f"/v1/models/{name}", headers=bearer(secret)), 404, "model_not_found")


def test_it_serves_the_sdks_models_list_and_retrieve(client_for, catalog, make_key):
    _, secret = make_key()
    client = client_for(secret)

    listed = client.models.list()
    model = client.models.retrieve("embed")

    assert sorted(m.id for m in listed.data) == ["embed", "gpt-test"]
    assert all(m.object == "model" for m in listed.data)
    assert (model.id, model.object) == ("embed", "model")
    with pytest.raises(openai.NotFoundError) as refused:
        client.models.retrieve("gone")
    assert refused.value.code == "model_not_found"


# --------------------------------------------------------------------------- admission


def test_it_refuses_a_body_that_is_not_a_json_object_with_400_invalid_json(
    http, make_model, make_key
):
    make_model()
    key, secret = make_key()
    bodies = [b"{not json", b"", b"[]", b'"gpt-test"', b"null", b'{"model": "gpt-test",}']
    responses = []
    for path in (CHAT_PATH, "/v1/completions", "/v1/embeddings"):
        for body in bodies:
            response = http.post(
                path, content=body, headers={**bearer(secret), "content-type": "application/json"}
            )
            error_of(response, 400, "invalid_json")
            responses.append((path, response))

    logged = wait_for_logs(len(responses))
    assert len(logged) == len(responses)
    for row, (path, response) in zip(logged, responses, strict=True):
        assert_refusal_logged(
            row, response, key=key, status=400, outcome="invalid_request", path=path
        )


def test_it_refuses_a_request_without_a_model_with_400_missing_model(http, make_model, make_key):
    make_model()
    key, secret = make_key()

    responses = [
        http.post(CHAT_PATH, json={"messages": MESSAGES}, headers=bearer(secret)),
        http.post("/v1/completions", json={"prompt": "hi"}, headers=bearer(secret)),
        http.post("/v1/embeddings", json={"input": "hi"}, headers=bearer(secret)),
    ]

    for response in responses:
        assert error_of(response, 400, "missing_model")["param"] == "model"
    logged = wait_for_logs(3)
    paths = [CHAT_PATH, "/v1/completions", "/v1/embeddings"]
    for row, response, path in zip(logged, responses, paths, strict=True):
        assert_refusal_logged(
            row, response, key=key, status=400, outcome="invalid_request", path=path
        )


def sized_chat_body(size: int) -> bytes:
    """A valid chat body for `gpt-test` that is exactly `size` bytes long."""
    empty = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": ""}]})
    padding = size - len(empty.encode())
    assert padding >= 0
    body = json.dumps(
        {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * padding}]}
    ).encode()
    assert len(body) == size
    return body


def test_it_refuses_a_body_over_the_size_limit_with_413(
    http, settings, upstream, make_model, make_key
):
    settings.AETHERGATE_MAX_BODY_BYTES = 1000
    make_model()
    key, secret = make_key()
    headers = {**bearer(secret), "content-type": "application/json"}

    def chunked(body: bytes):
        for start in range(0, len(body), 300):
            yield body[start : start + 300]

    at_limit = http.post(CHAT_PATH, content=sized_chat_body(1000), headers=headers)
    refused = [
        http.post(CHAT_PATH, content=sized_chat_body(1001), headers=headers),
        http.post(CHAT_PATH, content=b"{" * 2000, headers=headers),  # too big before invalid
        http.post(CHAT_PATH, content=chunked(sized_chat_body(2000)), headers=headers),
    ]

    assert at_limit.status_code == 200, at_limit.text
    assert "transfer-encoding" not in refused[0].request.headers
    assert refused[2].request.headers.get("transfer-encoding") == "chunked"
    for response in refused:
        error_of(response, 413, "request_too_large")
    assert len(upstream.received) == 1
    logged = wait_for_logs(4)
    assert logged[0].outcome == "ok"
    for row, response in zip(logged[1:], refused, strict=True):
        # A refused body is not read, so no model name is known to log.
        assert_refusal_logged(row, response, key=key, status=413, outcome="invalid_request")


def test_it_answers_an_unknown_or_inactive_model_with_404_model_not_found(
    http, upstream, make_model, make_key
):
    make_model()
    make_model(name="gone", is_active=False)
    key, secret = make_key()

    responses = {
        "nope": chat(http, secret, model="nope"),
        "gone": chat(http, secret, model="gone"),
        "echo": chat(http, secret, model="echo"),  # an upstream name is not a public name
    }

    for name, response in responses.items():
        error = error_of(response, 404, "model_not_found")
        assert error["param"] == "model" and name in error["message"]
    assert upstream.received == []
    logged = wait_for_logs(3)
    for row, (name, response) in zip(logged, responses.items(), strict=True):
        assert_refusal_logged(
            row, response, key=key, status=404, outcome="model_not_found", model=name
        )


def test_it_refuses_a_model_outside_the_keys_allowed_models_with_403(
    http, upstream, make_model, make_key
):
    allowed = make_model()
    make_model(name="other")
    key, secret = make_key(allowed_models=[allowed])

    refused = chat(http, secret, model="other")
    served = chat(http, secret, model="gpt-test")

    error_of(refused, 403, "model_not_allowed")
    assert served.status_code == 200
    assert [r.model for r in upstream.received] == ["echo"]
    logged = wait_for_logs(2)
    assert_refusal_logged(
        logged[0], refused, key=key, status=403, outcome="forbidden", model="other"
    )
    assert logged[1].outcome == "ok"


def test_it_refuses_a_model_whose_capability_does_not_fit_the_route_with_400(
    http, upstream, make_model, make_key
):
    make_model()
    make_model(name="embed", capability="EMBEDDING")
    key, secret = make_key()

    responses = [
        (CHAT_PATH, "embed", chat(http, secret, model="embed")),
        (
            "/v1/completions",
            "embed",
            http.post(
                "/v1/completions", json={"model": "embed", "prompt": "hi"}, headers=bearer(secret)
            ),
        ),
        ("/v1/embeddings", "gpt-test", embed(http, secret, model="gpt-test")),
    ]

    for _, _, response in responses:
        error_of(response, 400, "unsupported_capability")
    assert upstream.received == []
    logged = wait_for_logs(3)
    for row, (path, model, response) in zip(logged, responses, strict=True):
        assert_refusal_logged(
            row, response, key=key, status=400, outcome="invalid_request", model=model, path=path
        )


def test_it_refuses_a_route_capability_the_key_is_not_allowed_with_403(
    http, upstream, make_model, make_key
):
    make_model()
    make_model(name="embed", capability="EMBEDDING")
    key, secret = make_key(allowed_capabilities=["EMBEDDING"])

    refused = chat(http, secret)
    served = embed(http, secret)

    error_of(refused, 403, "capability_not_allowed")
    assert served.status_code == 200, served.text
    assert [r.path for r in upstream.received] == ["/v1/embeddings"]
    logged = wait_for_logs(2)
    assert_refusal_logged(
        logged[0], refused, key=key, status=403, outcome="forbidden", model="gpt-test"
    )
    assert logged[1].outcome == "ok"


def test_it_applies_the_admission_checks_in_order(http, settings, make_user, make_model, make_key):
    settings.AETHERGATE_MAX_BODY_BYTES = 1000
    chat_model = make_model()
    make_model(name="embed", capability="EMBEDDING")
    make_model(name="scarce", rpm_limit=1)
    _, strict = make_key(
        name="strict", allowed_models=[chat_model], allowed_capabilities=["EMBEDDING"]
    )
    _, embeddings_only = make_key(name="embeddings only", allowed_capabilities=["EMBEDDING"])
    _, one_a_minute = make_key(name="one a minute", rate_limit="1/m")
    _, rich = make_key(name="rich")
    _, broke = make_key(owner=make_user(username="broke", balance=Decimal("0")), name="broke")

    def post(content):
        headers = {**bearer(strict), "content-type": "application/json"}
        return http.post(CHAT_PATH, content=content, headers=headers)

    steps = [
        # 1: the size before the JSON, the JSON before the model.
        (lambda: post(b"[" * 1001), 413, "request_too_large"),
        (lambda: post(b"["), 400, "invalid_json"),
        (lambda: post(b'{"model": 1}'), 400, "invalid_type"),
        # 2 before 3: an unknown model is not found, even for a key restricted to others.
        (lambda: chat(http, strict, model="nope"), 404, "model_not_found"),
        # 3 before 4 and 5: a model outside the allowed list, on the wrong route besides.
        (lambda: chat(http, strict, model="embed"), 403, "model_not_allowed"),
        # 4 before 5: the wrong route before the key's capability.
        (lambda: chat(http, embeddings_only, model="embed"), 400, "unsupported_capability"),
        # 1-5 before 6: those refusals neither meet the rate limit nor use it up.
        (lambda: chat(http, one_a_minute, model="nope"), 404, "model_not_found"),
        (lambda: chat(http, one_a_minute, model="embed"), 400, "unsupported_capability"),
        (lambda: chat(http, one_a_minute), 200, None),
        (lambda: chat(http, one_a_minute), 429, "rate_limit_exceeded"),
        (lambda: chat(http, one_a_minute, model="nope"), 404, "model_not_found"),
        # 6 before 7: an exhausted model limit is reported before an exhausted balance.
        (lambda: chat(http, rich, model="scarce"), 200, None),
        (lambda: chat(http, broke, model="scarce"), 429, "rate_limit_exceeded"),
        (lambda: chat(http, broke), 402, "insufficient_balance"),
    ]
    for number, (send, status, code) in enumerate(steps):
        response = send()
        if code is None:
            assert response.status_code == status, (number, response.text)
        else:
            error_of(response, status, code)


# --------------------------------------------------------------------------- rate limits


def test_it_limits_a_key_to_its_spec_and_names_the_key(http, upstream, make_model, make_key):
    make_model()
    key, secret = make_key(rate_limit="3/m")
    _, other = make_key(name="other", rate_limit="3/m")

    served = [chat(http, secret) for _ in range(3)]
    refused = chat(http, secret)

    assert [r.status_code for r in served] == [200, 200, 200]
    assert [ratelimit_headers(r) for r in served] == [("3", "2"), ("3", "1"), ("3", "0")]
    assert all(RESET_REQUESTS.match(r.headers["x-ratelimit-reset-requests"]) for r in served)
    assert_rate_limited(refused, limit=3, tier="this API key")
    assert 50 <= int(refused.headers["retry-after"]) <= 61
    assert len(upstream.received) == 3
    assert ratelimit_headers(chat(http, other)) == ("3", "2")  # another key of the same user
    logged = wait_for_logs(5)
    assert [r.outcome for r in logged] == ["ok"] * 3 + ["rate_limited", "ok"]
    assert_refusal_logged(
        logged[3], refused, key=key, status=429, outcome="rate_limited", model="gpt-test"
    )


def test_it_limits_a_model_across_keys_and_names_the_model(http, make_model, make_key):
    make_model(rpm_limit=2)
    make_model(name="sibling")  # same endpoint, no limit of its own
    _, first = make_key(name="first")
    _, second = make_key(name="second")

    served = [chat(http, first), chat(http, second)]
    refused = chat(http, first)

    assert [ratelimit_headers(r) for r in served] == [("2", "1"), ("2", "0")]
    assert_rate_limited(refused, limit=2, tier="this model")
    assert_rate_limited(chat(http, second), limit=2, tier="this model")
    assert chat(http, first, model="sibling").status_code == 200
    logged = wait_for_logs(5)
    assert [r.outcome for r in logged] == ["ok", "ok", "rate_limited", "rate_limited", "ok"]


def test_it_limits_an_endpoint_across_its_models_and_names_the_endpoint(
    http, make_endpoint, make_model, make_key
):
    limited = make_endpoint(name="limited", rpm_limit=2)
    make_model(name="a", endpoint=limited)
    make_model(name="b", endpoint=limited)
    make_model(name="elsewhere", endpoint=make_endpoint(name="free"))
    _, secret = make_key()

    served = [chat(http, secret, model="a"), chat(http, secret, model="b")]
    refused = chat(http, secret, model="b")

    assert [ratelimit_headers(r) for r in served] == [("2", "1"), ("2", "0")]
    assert_rate_limited(refused, limit=2, tier="this model's endpoint")
    assert chat(http, secret, model="elsewhere").status_code == 200
    logged = wait_for_logs(4)
    assert [(r.model, r.outcome) for r in logged] == [
        ("a", "ok"),
        ("b", "ok"),
        ("b", "rate_limited"),
        ("elsewhere", "ok"),
    ]


def test_it_applies_day_limits(http, make_endpoint, make_model, make_key):
    make_model(name="daily", day_limit=1)
    make_model(name="plenty")
    make_model(name="on daily endpoint", endpoint=make_endpoint(name="daily", day_limit=1))
    _, secret = make_key(rate_limit="10/m,2/d")
    _, unlimited = make_key(name="unlimited")

    assert ratelimit_headers(chat(http, secret, model="plenty")) == ("2", "1")
    assert ratelimit_headers(chat(http, secret, model="plenty")) == ("2", "0")
    assert_rate_limited(chat(http, secret, model="plenty"), limit=2, tier="this API key")
    assert chat(http, unlimited, model="daily").status_code == 200
    assert_rate_limited(chat(http, unlimited, model="daily"), limit=1, tier="this model")
    assert chat(http, unlimited, model="on daily endpoint").status_code == 200
    refused = chat(http, unlimited, model="on daily endpoint")
    assert_rate_limited(refused, limit=1, tier="this model's endpoint")
    # The reset is a day away, but Retry-After stays within the 1..120 s bound.
    assert float(refused.headers["x-ratelimit-reset-requests"][:-1]) > 86000
    assert int(refused.headers["retry-after"]) == 120


def test_it_counts_a_refused_request_in_no_tier(http, make_endpoint, make_model, make_key):
    make_model(name="scarce", rpm_limit=2)
    make_model(name="roomy", endpoint=make_endpoint(name="second"))
    _, secret = make_key(rate_limit="5/m")

    assert [chat(http, secret, model="scarce").status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(chat(http, secret, model="scarce"), limit=2, tier="this model")
    # The key has used 2 of 5: the refusal by the model took none of the key's quota.
    served = [chat(http, secret, model="roomy") for _ in range(3)]
    assert [ratelimit_headers(r) for r in served] == [("5", "2"), ("5", "1"), ("5", "0")]
    assert_rate_limited(chat(http, secret, model="roomy"), limit=5, tier="this API key")


def test_it_does_not_count_a_request_the_key_refused_against_the_model(http, make_model, make_key):
    make_model(rpm_limit=3)
    _, tight = make_key(name="tight", rate_limit="2/m")
    _, loose = make_key(name="loose")

    assert [chat(http, tight).status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(chat(http, tight), limit=2, tier="this API key")
    assert ratelimit_headers(chat(http, loose)) == ("3", "0")
    assert_rate_limited(chat(http, loose), limit=3, tier="this model")


def test_it_admits_exactly_n_concurrent_requests_per_window(
    async_client_for, upstream, make_model, make_key
):
    make_model(upstream_name="echo+slow=0.05")
    _, secret = make_key(rate_limit="5/m")
    warm_up(async_client_for, secret)

    async def burst():
        async with async_client_for(secret) as client:
            return await asyncio.gather(
                *(
                    client.chat.completions.create(model="gpt-test", messages=MESSAGES)
                    for _ in range(20)
                ),
                return_exceptions=True,
            )

    results = asyncio.run(burst())

    served = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(served) == 5
    assert len(refused) == 15
    assert all(isinstance(e, openai.RateLimitError) for e in refused), refused
    assert {e.code for e in refused} == {"rate_limit_exceeded"}
    assert len(upstream.received) == 5
    logged = wait_for_logs(20, path=CHAT_PATH)
    assert sorted(r.outcome for r in logged) == ["ok"] * 5 + ["rate_limited"] * 15


# --------------------------------------------------------------------------- balance


def test_it_refuses_a_user_without_balance_left_with_402(
    http, client_for, upstream, make_user, make_model, make_key
):
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    broke = make_user(username="broke", balance=Decimal("0"))
    indebted = make_user(username="indebted", balance=Decimal("-1.5"))
    key, secret = make_key(owner=broke)
    _, indebted_secret = make_key(owner=indebted, name="indebted")

    refused = chat(http, secret)
    with pytest.raises(openai.APIStatusError) as raised:
        client_for(indebted_secret).chat.completions.create(model="gpt-test", messages=MESSAGES)

    error_of(refused, 402, "insufficient_balance")
    assert raised.value.status_code == 402
    assert raised.value.code == "insufficient_balance"
    assert upstream.received == []
    logged = wait_for_logs(2)
    assert_refusal_logged(
        logged[0], refused, key=key, status=402, outcome="insufficient_balance", model="gpt-test"
    )
    assert (logged[1].outcome, logged[1].cost) == ("insufficient_balance", 0)
    broke.refresh_from_db()
    indebted.refresh_from_db()
    assert (broke.balance, indebted.balance) == (Decimal("0"), Decimal("-1.5"))


def test_it_never_refuses_a_user_without_a_balance_for_money(http, make_user, make_model, make_key):
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    user = make_user(username="postpaid", balance=None)
    _, secret = make_key(owner=user)

    responses = [chat(http, secret) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    logged = wait_for_logs(3)
    assert [r.cost for r in logged] == [CHAT_COST] * 3
    user.refresh_from_db()
    assert user.balance is None


def test_it_charges_the_users_balance_exactly_the_logged_cost(
    http, make_user, make_model, make_key
):
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    make_model(name="embed", capability="EMBEDDING", price_in=Decimal("0.0001"))
    user = make_user(username="prepaid", balance=Decimal("10"))
    key, secret = make_key(owner=user)

    answered = chat(http, secret)
    (row,) = wait_for_logs(1)

    assert answered.status_code == 200
    assert answered.json()["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert (row.input_units, row.output_units, row.usage_estimated) == (5, 5, False)
    assert row.cost == CHAT_COST == Decimal("0.015")
    assert (row.request_id, row.api_key_id, row.user_id) == (
        answered.headers["x-request-id"],
        key.pk,
        user.pk,
    )
    user.refresh_from_db()
    assert user.balance == Decimal("10") - row.cost

    assert embed(http, secret, text="one two three").status_code == 200
    _, embedding_row = wait_for_logs(2)
    assert (embedding_row.input_units, embedding_row.cost) == (3, Decimal("0.0003"))
    user.refresh_from_db()
    assert user.balance == Decimal("10") - CHAT_COST - Decimal("0.0003")


def test_it_refuses_once_the_balance_is_spent_and_serves_again_after_a_top_up(
    http, make_user, make_model, make_key
):
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    user = make_user(username="prepaid", balance=Decimal("0.02"))
    _, secret = make_key(owner=user)

    assert chat(http, secret).status_code == 200  # 0.02 left → 0.005
    assert chat(http, secret).status_code == 200  # 0.005 left → -0.01
    assert len(wait_for_logs(2)) == 2
    user.refresh_from_db()
    assert user.balance == Decimal("0.02") - 2 * CHAT_COST

    error_of(chat(http, secret), 402, "insufficient_balance")

    user.balance = Decimal("1")
    user.save()
    assert chat(http, secret).status_code == 200


def test_it_keeps_the_balance_exact_under_concurrent_requests(
    async_client_for, make_user, make_model, make_key
):
    make_model(price_in=PRICE_IN, price_out=PRICE_OUT)
    user = make_user(username="busy", balance=Decimal("100"))
    _, secret = make_key(owner=user)
    warm_up(async_client_for, secret)
    count = 50

    async def burst():
        async with async_client_for(secret) as client:
            return await asyncio.gather(
                *(
                    client.chat.completions.create(model="gpt-test", messages=MESSAGES)
                    for _ in range(count)
                )
            )

    answers = asyncio.run(burst())

    assert len(answers) == count
    assert {(a.usage.prompt_tokens, a.usage.completion_tokens) for a in answers} == {(5, 5)}
    logged = wait_for_logs(count, path=CHAT_PATH)
    assert len(logged) == count
    assert {r.outcome for r in logged} == {"ok"}
    assert len({r.request_id for r in logged}) == count
    total = sum((r.cost for r in logged), Decimal("0"))
    user.refresh_from_db()
    assert user.balance == Decimal("100") - total
    assert user.balance == Decimal("100") - count * CHAT_COST == Decimal("99.25")


# --------------------------------------------------------------------------- catalog changes


def test_it_refuses_a_key_deactivated_in_this_process_at_once(http, make_model, make_key):
    make_model()
    key, secret = make_key()
    assert chat(http, secret).status_code == 200

    key.is_active = False
    key.save()
    wait_for(lambda: chat(http, secret).status_code == 403, 2.0, what="the key refused")

    error_of(chat(http, secret), 403, "key_inactive")
    key.is_active = True
    key.save()
    assert chat(http, secret).status_code == 200


def test_it_swaps_a_rotated_key_at_once(http, make_model, make_key):
    make_model()
    key, old = make_key()
    assert chat(http, old).status_code == 200

    new = rotate_key(key=key)

    error_of(chat(http, old), 401, "invalid_api_key")
    served = chat(http, new)
    assert served.status_code == 200
    logged = wait_for_logs(2)
    assert logged[1].request_id == served.headers["x-request-id"]
    assert (logged[1].api_key_id, logged[1].key_prefix) == (key.pk, new[: len(key.prefix)])
    assert key.prefix == new[: len(key.prefix)]


def test_it_serves_a_model_created_or_changed_while_running(http, make_model, make_key):
    first = make_model()
    key, secret = make_key()
    assert list_ids(http, secret) == ["gpt-test"]

    make_model(name="fresh", upstream_name="echo")
    assert chat(http, secret, model="fresh").status_code == 200
    assert list_ids(http, secret) == ["fresh", "gpt-test"]

    first.is_active = False
    first.save()
    error_of(chat(http, secret, model="gpt-test"), 404, "model_not_found")

    key.allowed_models.set([first])  # an allowed list with only an inactive model
    error_of(chat(http, secret, model="fresh"), 403, "model_not_allowed")


def update_without_signals(model, pk, **fields):
    """Change a row the way another process does: no signal reaches this process."""
    return model.objects.filter(pk=pk).update(**fields, updated_at=timezone.now())


def test_it_sees_a_key_deactivated_by_another_process_by_polling(http, make_model, make_key):
    make_model()
    key, secret = make_key()
    assert chat(http, secret).status_code == 200

    update_without_signals(APIKey, key.pk, is_active=False)
    wait_for(lambda: chat(http, secret).status_code == 403, 2.5, what="the key refused")

    error_of(chat(http, secret), 403, "key_inactive")


def test_it_sees_other_processes_changes_to_users_and_models_by_polling(
    http, make_user, make_model, make_key
):
    endpoint = make_model().endpoint
    user = make_user(username="carol", balance=Decimal("5"))
    _, secret = make_key(owner=user)
    _, other = make_key(name="other")
    assert chat(http, secret).status_code == 200
    error_of(chat(http, other, model="made elsewhere"), 404, "model_not_found")

    update_without_signals(User, user.pk, balance=Decimal("0"))
    Model.objects.bulk_create(
        [Model(name="made elsewhere", upstream_name="echo", endpoint=endpoint)]
    )
    wait_for(lambda: chat(http, secret).status_code == 402, 2.5, what="the balance seen")
    wait_for(
        lambda: chat(http, other, model="made elsewhere").status_code == 200,
        2.5,
        what="the new model seen",
    )

    update_without_signals(User, user.pk, is_active=False)
    wait_for(lambda: chat(http, secret).status_code == 403, 2.5, what="the inactive owner seen")
    error_of(chat(http, secret), 403, "user_inactive")


def test_it_sees_a_key_deleted_by_another_process_by_polling(http, make_model, make_key):
    make_model()
    key, secret = make_key()
    _, other = make_key(name="other")
    table = APIKey._meta.db_table

    with connection.cursor() as cursor:  # raw SQL: not even a delete signal
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [key.pk])  # noqa: S608
    assert not APIKey.objects.filter(pk=key.pk).exists()
    wait_for(lambda: chat(http, secret).status_code == 401, 2.5, what="the deleted key refused")

    assert chat(http, other).status_code == 200


async def burst(base_url: str, secret: str, count: int) -> list[int]:
    """`count` concurrent chat requests with `secret`; their statuses."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    CHAT_PATH,
                    json={"model": "gpt-test", "messages": MESSAGES},
                    headers=bearer(secret),
                )
                for _ in range(count)
            )
        )
    return [r.status_code for r in responses]


def test_it_lets_every_concurrent_request_see_a_key_created_just_before(
    gateway, make_model, make_key
):
    make_model()
    _, secret = make_key()

    statuses = asyncio.run(burst(gateway.base_url, secret, 30))

    assert statuses == [200] * 30


def test_it_refuses_every_concurrent_request_of_a_key_deactivated_just_before(
    gateway, http, make_model, make_key
):
    make_model()
    key, secret = make_key()
    assert chat(http, secret).status_code == 200

    key.is_active = False
    key.save()
    statuses = asyncio.run(burst(gateway.base_url, secret, 30))

    assert statuses == [403] * 30
