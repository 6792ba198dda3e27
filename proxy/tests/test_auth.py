"""Authentication at `/v1` (`proxy.auth`), in process: the header, the snapshot, the throttle.

Refusals at this step are not logged: without a key there is no account to
log them under.
"""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from proxy import auth
from proxy.errors import APIError
from proxy.tests import fakes
from proxy.tests.fakes import FAKE_KEY, SECRET, call, error_of
from proxy.throttle import InvalidKeyThrottle

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
REQUESTS = (
    ("POST", "/v1/chat/completions", CHAT),
    ("GET", "/v1/models", None),
    ("POST", "/v1/embeddings", {"model": "embed", "input": "x"}),
)


def with_header(value: bytes) -> dict:
    return {"secret": None, "headers": [(b"authorization", value)]}


def secret_parts(secret: str, size: int = 6) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def test_it_answers_every_unauthenticated_request_with_one_identical_401():
    near_miss = SECRET[:-1] + ("A" if SECRET[-1] != "A" else "B")
    presented = {
        "no header": {"secret": None},
        "basic scheme, real key": with_header(f"Basic {SECRET}".encode()),
        "token scheme, real key": with_header(f"Token {SECRET}".encode()),
        "bare real key": with_header(SECRET.encode()),
        "bearer without token": with_header(b"Bearer"),
        "bearer and a space": with_header(b"Bearer "),
        "bearer and spaces": with_header(b"Bearer   "),
        "unknown key": {"secret": FAKE_KEY},
        "real key, one character off": {"secret": near_miss},
    }
    bodies = set()
    for case, how in presented.items():
        rt = fakes.runtime()
        for method, path, body in REQUESTS:
            answer = call(rt, method, path, body, **how)

            error_of(answer, 401, "invalid_api_key")
            bodies.add(answer.body)
            seen = answer.body.decode() + json.dumps(answer.headers)
            for leaked in (SECRET, FAKE_KEY, near_miss):
                for part in secret_parts(leaked):
                    assert part not in seen, (case, part)
        assert rt.writer.records == []
        assert rt.upstream.calls == []

    assert len(bodies) == 1, bodies


def test_it_takes_the_bearer_scheme_in_any_case_and_the_secret_without_surrounding_spaces():
    for value in (f"bearer {SECRET}", f"BEARER {SECRET}", f"Bearer   {SECRET}  "):
        assert auth.presented_secret([value.encode()]) == SECRET


def test_it_answers_a_header_that_is_not_utf8_with_the_same_401():
    rt = fakes.runtime()

    answer = call(rt, "GET", "/v1/models", **with_header(b"Bearer ag-\xff\xfe"))

    error_of(answer, 401, "invalid_api_key")


def test_it_refuses_a_request_with_two_authorization_headers():
    rt = fakes.runtime()
    headers = [(b"authorization", b"Bearer ag-someone-else")]

    answer = call(rt, "POST", "/v1/chat/completions", CHAT, headers=headers)

    error = error_of(answer, 400, "duplicate_authorization")
    assert "ag-someone-else" not in error["message"] and SECRET not in error["message"]
    assert rt.upstream.calls == []


def test_it_takes_the_key_from_x_api_key_as_the_anthropic_sdks_send_it():
    rt = fakes.runtime()

    answer = call(rt, "GET", "/v1/models", secret=None, headers=[(b"x-api-key", SECRET.encode())])

    assert answer.status == 200
    assert [r.api_key_id for r in rt.writer.records] == [fakes.key_info().id]


@pytest.mark.parametrize("order", ["bearer first", "x-api-key first"])
def test_of_a_bearer_and_an_x_api_key_the_one_this_gateway_issued_counts(order):
    # Claude Code sends both when both ANTHROPIC_AUTH_TOKEN and ANTHROPIC_API_KEY are set.
    rt = fakes.runtime()
    other = b"sk-ant-api03-a-real-anthropic-key"
    if order == "bearer first":
        headers = [(b"authorization", b"Bearer " + SECRET.encode()), (b"x-api-key", other)]
    else:
        headers = [(b"authorization", b"Bearer " + other), (b"x-api-key", SECRET.encode())]

    answer = call(rt, "GET", "/v1/models", secret=None, headers=headers)

    assert answer.status == 200
    assert other.decode() not in answer.body.decode()


def test_it_answers_401_when_neither_of_two_keys_is_one_it_issued_and_400_for_two_x_api_keys():
    rt = fakes.runtime()
    both = [(b"authorization", b"Bearer sk-one-unknown"), (b"x-api-key", b"sk-two-unknown")]
    twice = [(b"x-api-key", SECRET.encode()), (b"x-api-key", b"sk-other")]
    empty = [(b"x-api-key", b"  ")]

    error_of(call(rt, "GET", "/v1/models", secret=None, headers=both), 401, "invalid_api_key")
    error_of(call(rt, "GET", "/v1/models", secret=None, headers=empty), 401, "invalid_api_key")
    error_of(
        call(rt, "GET", "/v1/models", secret=None, headers=twice), 400, "duplicate_authorization"
    )
    assert rt.writer.records == []


def keys_in_every_state() -> dict:
    now = timezone.now()
    return {
        "working": fakes.key_info(id=1, expires_at=now + timedelta(hours=1)),
        "off": fakes.key_info(id=2, is_active=False),
        "old": fakes.key_info(id=3, expires_at=now - timedelta(seconds=1)),
        "bob's": fakes.key_info(id=4, username="bob", user_id=4, user_active=False),
    }


def test_it_refuses_inactive_and_expired_keys_and_keys_of_inactive_owners_with_403():
    keys = keys_in_every_state()
    rt = fakes.runtime(fakes.snapshot(keys={f"ag-{name}-secret": k for name, k in keys.items()}))
    refused = {"off": "key_inactive", "old": "key_expired", "bob's": "user_inactive"}

    for name, code in refused.items():
        secret = f"ag-{name}-secret"
        for method, path, body in REQUESTS[:2]:
            error = error_of(call(rt, method, path, body, secret=secret), 403, code)
            assert error["type"] == "permission_error"
            assert secret not in error["message"]
    assert call(rt, "POST", "/v1/chat/completions", CHAT, secret="ag-working-secret").status == 200
    assert call(rt, "GET", "/v1/models", secret="ag-working-secret").status == 200

    assert [(r.path, r.status, r.api_key_id) for r in rt.writer.records] == [
        ("/v1/chat/completions", 200, 1),
        ("/v1/models", 200, 1),
    ]
    assert len(rt.upstream.calls) == 1


def test_it_refuses_a_key_from_the_moment_it_expires():
    now = timezone.now()
    snap = fakes.snapshot(keys={SECRET: fakes.key_info(expires_at=now)})

    assert auth.identify(SECRET, snap, now=now - timedelta(microseconds=1)).id == 7
    for later in (now, now + timedelta(days=1)):
        with pytest.raises(APIError) as refused:
            auth.identify(SECRET, snap, now=later)
        assert (refused.value.status, refused.value.code) == (403, "key_expired")


def test_it_answers_an_unknown_key_with_503_while_the_database_cannot_be_read():
    rt = fakes.runtime()
    rt.catalog.available = False

    unknown = call(rt, "GET", "/v1/models", secret=FAKE_KEY)
    known = call(rt, "GET", "/v1/models")

    error_of(unknown, 503, "service_unavailable")
    assert unknown.headers["retry-after"] == "5"
    assert known.status == 200  # a key in the snapshot keeps working from it
    assert rt.key_throttle.retry_after("127.0.0.1") == 0


def test_it_answers_503_when_no_snapshot_could_ever_be_read():
    rt = fakes.runtime()
    rt.catalog.snapshot = None
    rt.catalog.available = False

    answer = call(rt, "GET", "/v1/models")

    error_of(answer, 503, "service_unavailable")


# --------------------------------------------------------------------------- the throttle


def test_an_address_sending_invalid_keys_is_throttled_without_a_lookup():
    clock = fakes.FakeClock()
    rt = fakes.runtime(clock=clock)
    rt.key_throttle = InvalidKeyThrottle(5, clock=clock)

    answers = [call(rt, "GET", "/v1/models", secret=f"ag-wrong-{i}") for i in range(6)]

    assert [a.status for a in answers] == [401] * 5 + [429]
    error_of(answers[-1], 429, "too_many_invalid_keys")
    assert answers[-1].headers["retry-after"] == "60"
    # The address is refused whatever it sends, until its minute is over.
    error_of(call(rt, "GET", "/v1/models"), 429, "too_many_invalid_keys")
    assert call(rt, "GET", "/v1/models", client=("10.0.0.2", 1)).status == 200
    clock.advance(59)
    assert call(rt, "GET", "/v1/models").headers["retry-after"] == "1"
    clock.advance(1)
    assert call(rt, "GET", "/v1/models").status == 200
    assert rt.writer.records[-1].status == 200


def test_the_throttle_counts_only_unknown_or_malformed_keys():
    clock = fakes.FakeClock()
    keys = {SECRET: fakes.key_info(), "ag-off": fakes.key_info(id=8, is_active=False)}
    rt = fakes.runtime(fakes.snapshot(keys=keys), clock=clock)
    rt.key_throttle = InvalidKeyThrottle(2, clock=clock)

    statuses = [call(rt, "GET", "/v1/models").status for _ in range(3)]
    statuses += [call(rt, "GET", "/v1/models", secret="ag-off").status for _ in range(3)]
    statuses.append(call(rt, "GET", "/v1/models", headers=[(b"authorization", b"Bearer x")]).status)
    statuses.append(call(rt, "GET", "/v1/models", secret=None).status)

    assert statuses == [200] * 3 + [403] * 3 + [400, 401]
    assert call(rt, "GET", "/v1/models", secret="ag-wrong").status == 401
    assert call(rt, "GET", "/v1/models").status == 429  # two invalid keys: the limit
