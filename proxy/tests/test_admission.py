"""Admission at `/v1` over a real server: what needs the database, the log writer or a real
client — keys and models changed while the gateway runs (in this process or another), balances
charged in the database, request ids and model listing through the SDK.

Every test runs the real gateway (uvicorn in a thread) in front of the upstream stand-in and
observes it from outside: HTTP answers, `RequestLog` rows, balances in the database. The rules
themselves are tested in process: test_auth.py, test_admission_rules.py, test_listing.py,
test_routes.py, test_validation.py, test_asgi_io.py, test_accounting.py.
"""

import asyncio
from datetime import timedelta
from decimal import Decimal

import httpx
import openai
import pytest
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from aethergate.testing import FakeClock, wait_for, wait_for_logs
from keys.models import APIKey
from keys.services import rotate_key
from logs.models import RequestLog
from models_registry.models import Deployment, Model
from proxy.tests import fakes
from proxy.tests.test_listing import listed_ids

CHAT_PATH = "/v1/chat/completions"

# The stand-in answers "Hello from upstream: hi there": 2 + 3 prompt tokens, 5 completion tokens.
MESSAGES = [{"role": "user", "content": "hi there"}]
PROMPT_TOKENS, COMPLETION_TOKENS = 5, 5
PRICE_IN, PRICE_OUT = Decimal("0.001"), Decimal("0.002")
CHAT_COST = PROMPT_TOKENS * PRICE_IN + COMPLETION_TOKENS * PRICE_OUT  # 0.015

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
    answer = fakes.Answer(response.status_code, dict(response.headers), response.content)
    return fakes.error_of(answer, status, code)


def rows(**filters) -> list[RequestLog]:
    """Log rows in request order: by request start, not by when the writer stored them."""
    return list(RequestLog.objects.filter(**filters).order_by("created_at", "id"))


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


# --------------------------------------------------------------------------- authentication


def test_it_refuses_a_key_whose_expiry_passes_while_the_gateway_runs(
    gateway, http, make_model, make_key
):
    make_model()
    _, secret = make_key(expires_at=timezone.now() + timedelta(hours=1))

    assert chat(http, secret).status_code == 200
    # An hour later, with nothing written: the expiry is judged at each request.
    gateway.app.runtime.clock = FakeClock(timezone.now() + timedelta(hours=1))

    error_of(chat(http, secret), 403, "key_expired")


# --------------------------------------------------------------------------- request ids


def test_it_sends_the_request_id_through_the_sdk(client_for, make_model, make_key):
    make_model()
    key, secret = make_key()

    raw = client_for(secret).chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES
    )

    request_id = raw.headers["x-request-id"]
    assert fakes.REQUEST_ID.match(request_id)
    (row,) = wait_for_logs(1)
    assert (row.request_id, row.api_key_id, row.outcome) == (request_id, key.pk, "ok")


# --------------------------------------------------------------------------- models


@pytest.fixture
def catalog(make_endpoint, make_model):
    """A text model, an embedding model, and three models /v1 must not list."""
    chat_model = make_model(name="gpt-test")
    embed_model = make_model(name="embed", capability="EMBEDDING")
    make_model(name="gone", is_active=False)
    make_model(name="orphan", endpoint=make_endpoint(name="off", is_active=False))
    Model.objects.create(name="loose")  # no deployment
    return chat_model, embed_model


def list_ids(http, secret) -> list[str]:
    response = http.get("/v1/models", headers=bearer(secret))
    assert response.status_code == 200, response.text
    return listed_ids(response.json())


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


# --------------------------------------------------------------------------- balance


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
    """Change a row the way another process does: nothing reaches this process but the
    polled marker (a plain QuerySet, not the model's announcing one)."""
    return QuerySet(model).filter(pk=pk).update(**fields, updated_at=timezone.now())


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
    endpoint = make_model().deployments.get().endpoint
    user = make_user(username="carol", balance=Decimal("5"))
    _, secret = make_key(owner=user)
    _, other = make_key(name="other")
    assert chat(http, secret).status_code == 200
    error_of(chat(http, other, model="made elsewhere"), 404, "model_not_found")

    update_without_signals(User, user.pk, balance=Decimal("0"))
    (made,) = QuerySet(Model).bulk_create([Model(name="made elsewhere")])
    QuerySet(Deployment).bulk_create(
        [Deployment(model=made, endpoint=endpoint, upstream_name="echo")]
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
