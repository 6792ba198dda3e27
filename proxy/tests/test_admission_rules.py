"""Admission at `/v1` (`proxy.admission`), in process, in the documented order: the key, then
the model, allowed, capability, limits and balance.

Each refusal is asserted by what the client receives, the record the log
writer is handed and what reached (or did not reach) the upstream; the
limiter is the in-process one on a fake clock.
"""

import asyncio
import itertools
import re
from decimal import Decimal

import pytest

from aethergate.lib.ratelimit import Decision, LocalLimiter, Rate
from proxy import admission
from proxy.errors import APIError
from proxy.snapshot import BudgetInfo
from proxy.tests import fakes
from proxy.tests.fakes import SECRET, call, error_of

CHAT_PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi there"}]
RESET_REQUESTS = re.compile(r"^\d+\.\d{3}s$")
PER_MINUTE = (Rate(2, 60),)


def chat(rt, secret=SECRET, model="gpt-test", **extra) -> fakes.Answer:
    return call(
        rt, "POST", CHAT_PATH, {"model": model, "messages": MESSAGES, **extra}, secret=secret
    )


def embed(rt, secret=SECRET, model="embed") -> fakes.Answer:
    return call(rt, "POST", "/v1/embeddings", {"model": model, "input": "hi"}, secret=secret)


def two_models(**key_fields):
    """A runtime with `gpt-test` (TEXT) and `embed` (EMBEDDING), one key of `key_fields`."""
    key = fakes.key_info(**key_fields)
    models = [fakes.model_info(id=1), fakes.model_info("embed", id=2, capability="EMBEDDING")]
    upstream = fakes.FakeUpstream(
        default=lambda c: (
            fakes.FakeResponse(200, [fakes.embedding_answer([0.5])])
            if c.path == "/embeddings"
            else fakes.answer_ok(c)
        )
    )
    return fakes.runtime(fakes.snapshot({SECRET: key}, models), upstream=upstream), key


def assert_refusal_logged(record, answer, *, key, status, outcome, model="", path=CHAT_PATH):
    assert record.request_id == answer.headers["x-request-id"]
    assert (record.status, record.outcome, record.model, record.path) == (
        status,
        outcome,
        model,
        path,
    )
    assert (record.user_id, record.username) == (key.user_id, key.username)
    assert (record.api_key_id, record.key_prefix) == (key.id, key.prefix)
    assert record.cost == 0
    assert (record.input_units, record.output_units) == (0, 0)


def ratelimit_headers(answer) -> tuple[str | None, str | None]:
    return (
        answer.headers.get("x-ratelimit-limit-requests"),
        answer.headers.get("x-ratelimit-remaining-requests"),
    )


def assert_rate_limited(answer, *, limit: int, tier: str) -> dict:
    """Assert a 429 with every rate-limit header, naming `tier`; return the error."""
    error = error_of(answer, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert 1 <= int(answer.headers["retry-after"]) <= 120
    assert ratelimit_headers(answer) == (str(limit), "0")
    assert RESET_REQUESTS.match(answer.headers["x-ratelimit-reset-requests"])
    tiers = ["this API key", "this model's endpoint", "this model"]
    named = next(t for t in tiers if t in error["message"])
    assert named == tier, error["message"]
    return error


# --------------------------------------------------------------------------- model and capability


def test_it_answers_an_unknown_model_with_404_model_not_found():
    rt, key = two_models()

    # "gone": inactive models are not in the snapshot (test_listing shows it for the database);
    # "echo": an upstream name is not a public name.
    answers = {name: chat(rt, model=name) for name in ("nope", "gone", "echo")}

    for name, answer in answers.items():
        error = error_of(answer, 404, "model_not_found")
        assert error["param"] == "model" and name in error["message"]
    assert rt.upstream.calls == []
    for record, (name, answer) in zip(rt.writer.records, answers.items(), strict=True):
        assert_refusal_logged(
            record, answer, key=key, status=404, outcome="model_not_found", model=name
        )


def test_it_refuses_a_model_outside_the_keys_allowed_models_with_403():
    key = fakes.key_info(models=frozenset({"gpt-test"}))
    models = [fakes.model_info(id=1), fakes.model_info("other", id=2, upstream_name="other-up")]
    rt = fakes.runtime(fakes.snapshot({SECRET: key}, models))

    refused = chat(rt, model="other")
    served = chat(rt, model="gpt-test")

    error = error_of(refused, 403, "model_not_allowed")
    assert error["type"] == "permission_error"
    assert served.status == 200
    assert [c.body["model"] for c in rt.upstream.calls] == ["echo"]
    assert_refusal_logged(
        rt.writer.records[0], refused, key=key, status=403, outcome="forbidden", model="other"
    )
    assert rt.writer.records[1].outcome == "ok"


def test_it_refuses_a_model_whose_capability_does_not_fit_the_route_with_400():
    rt, key = two_models()

    answers = [
        (CHAT_PATH, "embed", chat(rt, model="embed")),
        (
            "/v1/completions",
            "embed",
            call(rt, "POST", "/v1/completions", {"model": "embed", "prompt": "hi"}),
        ),
        ("/v1/embeddings", "gpt-test", embed(rt, model="gpt-test")),
    ]

    for _, _, answer in answers:
        assert error_of(answer, 400, "unsupported_capability")["param"] == "model"
    assert rt.upstream.calls == []
    for record, (path, model, answer) in zip(rt.writer.records, answers, strict=True):
        assert_refusal_logged(
            record, answer, key=key, status=400, outcome="invalid_request", model=model, path=path
        )


def test_it_refuses_a_route_capability_the_key_is_not_allowed_with_403():
    rt, key = two_models(capabilities=frozenset({"EMBEDDING"}))

    refused = chat(rt)
    served = embed(rt)

    error_of(refused, 403, "capability_not_allowed")
    assert served.status == 200, served.body
    assert [c.path for c in rt.upstream.calls] == ["/embeddings"]
    assert_refusal_logged(
        rt.writer.records[0], refused, key=key, status=403, outcome="forbidden", model="gpt-test"
    )
    assert rt.writer.records[1].outcome == "ok"


def test_admit_checks_the_allowed_models_before_the_capability():
    key = fakes.key_info(models=frozenset({"gpt-test"}), capabilities=frozenset({"TEXT"}))
    embed_model = fakes.model_info("embed", capability="EMBEDDING")

    with pytest.raises(APIError) as refused:
        admission.admit(key, embed_model, "TEXT")

    assert refused.value.code == "model_not_allowed"
    admission.admit(key, fakes.model_info(), "TEXT")  # allowed, and of the route's capability


def test_it_applies_the_admission_checks_in_order(settings):
    settings.AETHERGATE_MAX_BODY_BYTES = 1000
    keys = {
        "ag-strict": fakes.key_info(
            id=1, models=frozenset({"gpt-test"}), capabilities=frozenset({"EMBEDDING"})
        ),
        "ag-embeddings-only": fakes.key_info(id=2, capabilities=frozenset({"EMBEDDING"})),
        "ag-one-a-minute": fakes.key_info(id=3, rate_limit="1/m"),
        "ag-rich": fakes.key_info(id=4),
        "ag-broke": fakes.key_info(id=5, user_id=5, username="broke"),
        "ag-off": fakes.key_info(id=6, is_active=False),
    }
    models = [
        fakes.model_info(id=1),
        fakes.model_info("embed", id=2, capability="EMBEDDING"),
        fakes.model_info("scarce", id=3, rate_limit="1/m"),
    ]
    rt = fakes.runtime(fakes.snapshot(keys, models, balances={5: Decimal("0")}))

    def post(content: bytes, key: str = "ag-strict"):
        return call(rt, "POST", CHAT_PATH, content, secret=key)

    steps = [
        # 0: the key before the body: its size, its JSON, its model.
        (lambda: post(b"[" * 1001, key=fakes.FAKE_KEY), 401, "invalid_api_key"),
        (lambda: post(b"[", key="ag-off"), 403, "key_inactive"),
        (lambda: chat(rt, "ag-off", model="nope"), 403, "key_inactive"),
        # 1: the size before the JSON, the JSON before the model.
        (lambda: post(b"[" * 1001), 413, "request_too_large"),
        (lambda: post(b"["), 400, "invalid_json"),
        (lambda: post(b'{"model": 1}'), 400, "invalid_type"),
        # 2 before 3: an unknown model is not found, even for a key restricted to others.
        (lambda: chat(rt, "ag-strict", model="nope"), 404, "model_not_found"),
        # 3 before 4 and 5: a model outside the allowed list, on the wrong route besides.
        (lambda: chat(rt, "ag-strict", model="embed"), 403, "model_not_allowed"),
        # 4 before 5: the wrong route before the key's capability.
        (lambda: chat(rt, "ag-embeddings-only", model="embed"), 400, "unsupported_capability"),
        # 1-5 before 6: those refusals neither meet the rate limit nor use it up.
        (lambda: chat(rt, "ag-one-a-minute", model="nope"), 404, "model_not_found"),
        (lambda: chat(rt, "ag-one-a-minute", model="embed"), 400, "unsupported_capability"),
        (lambda: chat(rt, "ag-one-a-minute"), 200, None),
        (lambda: chat(rt, "ag-one-a-minute"), 429, "rate_limit_exceeded"),
        (lambda: chat(rt, "ag-one-a-minute", model="nope"), 404, "model_not_found"),
        # 6 before 7: an exhausted model limit is reported before an exhausted balance.
        (lambda: chat(rt, "ag-rich", model="scarce"), 200, None),
        (lambda: chat(rt, "ag-broke", model="scarce"), 429, "rate_limit_exceeded"),
        (lambda: chat(rt, "ag-broke"), 402, "insufficient_balance"),
    ]
    for number, (send, status, code) in enumerate(steps):
        answer = send()
        if code is None:
            assert answer.status == status, (number, answer.body)
        else:
            error_of(answer, status, code)
    assert len(rt.upstream.calls) == 2


# --------------------------------------------------------------------------- rate limits


def test_it_limits_a_key_to_its_spec_and_names_the_key():
    keys = {
        SECRET: fakes.key_info(rate_limit="3/m"),
        "ag-other": fakes.key_info(id=8, rate_limit="3/m"),
    }
    rt = fakes.runtime(fakes.snapshot(keys))

    served = [chat(rt) for _ in range(3)]
    refused = chat(rt)

    assert [a.status for a in served] == [200, 200, 200]
    assert [ratelimit_headers(a) for a in served] == [("3", "2"), ("3", "1"), ("3", "0")]
    assert {a.headers["x-ratelimit-reset-requests"] for a in served} == {"61.000s"}
    assert_rate_limited(refused, limit=3, tier="this API key")
    assert refused.headers["retry-after"] == "61"
    assert len(rt.upstream.calls) == 3
    assert ratelimit_headers(chat(rt, "ag-other")) == ("3", "2")  # another key of the same user
    assert [r.outcome for r in rt.writer.records] == ["ok"] * 3 + ["rate_limited", "ok"]
    assert_refusal_logged(
        rt.writer.records[3],
        refused,
        key=keys[SECRET],
        status=429,
        outcome="rate_limited",
        model="gpt-test",
    )


def test_it_serves_a_limited_key_again_once_its_window_has_passed():
    clock = fakes.FakeClock()
    rt = fakes.runtime(fakes.snapshot({SECRET: fakes.key_info(rate_limit="1/m")}), clock=clock)

    assert chat(rt).status == 200
    clock.advance(60)
    refused = chat(rt)  # still within the window's last step
    clock.advance(1)
    served = chat(rt)

    assert (refused.status, refused.headers["retry-after"]) == (429, "1")
    assert served.status == 200 and ratelimit_headers(served) == ("1", "0")


def test_it_limits_a_model_across_keys_and_names_the_model():
    keys = {"ag-first": fakes.key_info(id=1), "ag-second": fakes.key_info(id=2)}
    models = [fakes.model_info(id=1, rates=PER_MINUTE), fakes.model_info("sibling", id=2)]
    rt = fakes.runtime(fakes.snapshot(keys, models))

    served = [chat(rt, "ag-first"), chat(rt, "ag-second")]
    refused = chat(rt, "ag-first")

    assert [ratelimit_headers(a) for a in served] == [("2", "1"), ("2", "0")]
    assert_rate_limited(refused, limit=2, tier="this model")
    assert_rate_limited(chat(rt, "ag-second"), limit=2, tier="this model")
    assert chat(rt, "ag-first", model="sibling").status == 200  # same endpoint, no limit of its own
    assert [r.outcome for r in rt.writer.records] == [
        "ok",
        "ok",
        "rate_limited",
        "rate_limited",
        "ok",
    ]


def test_it_limits_an_endpoint_across_its_models_and_names_the_endpoint():
    limited = fakes.endpoint_info(id=2, name="limited", rates=PER_MINUTE)
    free = fakes.endpoint_info(id=3, name="free")
    models = [
        fakes.model_info("a", id=1, endpoint=limited),
        fakes.model_info("b", id=2, endpoint=limited),
        fakes.model_info("elsewhere", id=3, endpoint=free),
    ]
    rt = fakes.runtime(fakes.snapshot(models=models))

    served = [chat(rt, model="a"), chat(rt, model="b")]
    refused = chat(rt, model="b")

    assert [ratelimit_headers(a) for a in served] == [("2", "1"), ("2", "0")]
    assert_rate_limited(refused, limit=2, tier="this model's endpoint")
    assert chat(rt, model="elsewhere").status == 200
    assert [(r.model, r.endpoint, r.outcome) for r in rt.writer.records] == [
        ("a", "limited", "ok"),
        ("b", "limited", "ok"),
        ("b", "", "rate_limited"),
        ("elsewhere", "free", "ok"),
    ]


def test_it_applies_day_limits():
    daily = (Rate(1, 86400),)
    keys = {SECRET: fakes.key_info(id=1, rate_limit="10/m,2/d"), "ag-free": fakes.key_info(id=2)}
    models = [
        fakes.model_info("daily", id=1, rates=daily),
        fakes.model_info("plenty", id=2),
        fakes.model_info(
            "on daily endpoint", id=3, endpoint=fakes.endpoint_info(id=2, name="d", rates=daily)
        ),
    ]
    rt = fakes.runtime(fakes.snapshot(keys, models))

    assert ratelimit_headers(chat(rt, model="plenty")) == ("2", "1")
    assert ratelimit_headers(chat(rt, model="plenty")) == ("2", "0")
    assert_rate_limited(chat(rt, model="plenty"), limit=2, tier="this API key")
    assert chat(rt, "ag-free", model="daily").status == 200
    assert_rate_limited(chat(rt, "ag-free", model="daily"), limit=1, tier="this model")
    assert chat(rt, "ag-free", model="on daily endpoint").status == 200
    refused = chat(rt, "ag-free", model="on daily endpoint")
    assert_rate_limited(refused, limit=1, tier="this model's endpoint")
    # The reset is a day away, but Retry-After stays within the 1..120 s bound.
    assert float(refused.headers["x-ratelimit-reset-requests"][:-1]) > 86000
    assert refused.headers["retry-after"] == "120"


def test_it_counts_a_refused_request_in_no_tier():
    models = [
        fakes.model_info("scarce", id=1, rates=PER_MINUTE),
        fakes.model_info("roomy", id=2, endpoint=fakes.endpoint_info(id=2, name="second")),
    ]
    rt = fakes.runtime(fakes.snapshot({SECRET: fakes.key_info(rate_limit="5/m")}, models))

    assert [chat(rt, model="scarce").status for _ in range(2)] == [200, 200]
    assert_rate_limited(chat(rt, model="scarce"), limit=2, tier="this model")
    # The key has used 2 of 5: the refusal by the model took none of the key's quota.
    served = [chat(rt, model="roomy") for _ in range(3)]
    assert [ratelimit_headers(a) for a in served] == [("5", "2"), ("5", "1"), ("5", "0")]
    assert_rate_limited(chat(rt, model="roomy"), limit=5, tier="this API key")


def test_it_does_not_count_a_request_the_key_refused_against_the_model():
    keys = {"ag-tight": fakes.key_info(id=1, rate_limit="2/m"), "ag-loose": fakes.key_info(id=2)}
    models = [fakes.model_info(id=1, rate_limit="3/m")]
    rt = fakes.runtime(fakes.snapshot(keys, models))

    assert [chat(rt, "ag-tight").status for _ in range(2)] == [200, 200]
    assert_rate_limited(chat(rt, "ag-tight"), limit=2, tier="this API key")
    assert ratelimit_headers(chat(rt, "ag-loose")) == ("3", "0")
    assert_rate_limited(chat(rt, "ag-loose"), limit=3, tier="this model")


def test_it_admits_exactly_n_concurrent_requests_per_window():
    release = asyncio.Event()

    async def held(upstream_call):
        await release.wait()
        return fakes.answer_ok(upstream_call)

    rt = fakes.runtime(
        fakes.snapshot({SECRET: fakes.key_info(rate_limit="5/m")}),
        upstream=fakes.FakeUpstream(default=held),
    )
    body = {"model": "gpt-test", "messages": MESSAGES}

    async def burst():
        tasks = [asyncio.create_task(fakes.acall(rt, "POST", CHAT_PATH, body)) for _ in range(20)]
        # The admitted ones are held upstream, so the first 15 to finish are the refused
        # ones; a sixth admission would hold a 15th forever (hence the time limit).
        async with asyncio.timeout(5):
            first = [await t for t in itertools.islice(asyncio.as_completed(tasks), 15)]
        held_upstream = len(rt.upstream.calls)
        release.set()
        return first, held_upstream, await asyncio.gather(*tasks)

    first, held_upstream, answers = asyncio.run(burst())

    assert {a.status for a in first} == {429}
    assert held_upstream == 5
    assert sorted(a.status for a in answers) == [200] * 5 + [429] * 15
    for answer in answers:
        if answer.status == 429:
            error_of(answer, 429, "rate_limit_exceeded")
    assert sorted(r.outcome for r in rt.writer.records) == ["ok"] * 5 + ["rate_limited"] * 15


def test_a_fallback_model_is_counted_against_its_own_limits_but_not_the_key_again():
    key = fakes.key_info(rate_limit="1/m")
    model = fakes.model_info("backup", id=9, rates=PER_MINUTE)

    assert admission.checks(None, model) == [("m9", PER_MINUTE[0])]
    assert admission.checks(key, model) == [("k7", Rate(1, 60)), ("m9", PER_MINUTE[0])]
    assert admission.checks(key, fakes.model_info(id=1, endpoint=None)) == [("k7", Rate(1, 60))]


def test_the_retry_after_is_at_least_one_second_and_at_most_two_minutes():
    class Refusing:
        def __init__(self, retry_after):
            self.retry_after = retry_after

        async def hit(self, checks, tokens=0):
            return Decision(False, 5, 0, 0.2, self.retry_after, "k7")

    for wait, header in ((0.0001, "1"), (1.2, "2"), (3600, "120")):
        with pytest.raises(APIError) as refused:
            asyncio.run(admission.limit(Refusing(wait), fakes.key_info(), fakes.model_info()))
        assert refused.value.headers["retry-after"] == header
        assert refused.value.headers["x-ratelimit-reset-requests"] == "0.200s"


def test_a_request_under_no_limit_has_no_ratelimit_headers():
    decision = asyncio.run(admission.limit(LocalLimiter(), fakes.key_info(), fakes.model_info()))

    assert decision.allowed
    assert admission.ratelimit_headers(decision) == {}
    assert ratelimit_headers(chat(fakes.runtime())) == (None, None)


# --------------------------------------------------------------------------- balance


def test_it_refuses_a_user_without_balance_left_with_402():
    keys = {
        "ag-broke": fakes.key_info(id=1, user_id=1, username="broke"),
        "ag-indebted": fakes.key_info(id=2, user_id=2, username="indebted"),
    }
    balances = {1: Decimal("0"), 2: Decimal("-1.5")}
    rt = fakes.runtime(fakes.snapshot(keys, balances=balances))

    refused = [chat(rt, "ag-broke"), chat(rt, "ag-indebted")]

    for answer in refused:
        assert error_of(answer, 402, "insufficient_balance")["type"] == "insufficient_quota"
    assert rt.upstream.calls == []
    for record, answer, secret in zip(rt.writer.records, refused, keys, strict=True):
        assert_refusal_logged(
            record,
            answer,
            key=keys[secret],
            status=402,
            outcome="insufficient_balance",
            model="gpt-test",
        )
    assert (rt.catalog.balance(1), rt.catalog.balance(2)) == (Decimal("0"), Decimal("-1.5"))


def test_it_never_refuses_a_user_without_a_balance_for_money():
    rt = fakes.runtime()  # the key's user has no balance: postpaid

    answers = [chat(rt) for _ in range(3)]

    assert [a.status for a in answers] == [200, 200, 200]
    # 3 tokens in at 0.001, 2 out at 0.002: charged, if never limited.
    assert [r.cost for r in rt.writer.records] == [Decimal("0.007")] * 3
    assert rt.catalog.balance(3) is None


def test_it_refuses_once_the_charges_made_use_up_the_balance():
    rt = fakes.runtime(fakes.snapshot(balances={3: Decimal("0.01")}))

    served = [chat(rt), chat(rt)]  # 0.01 left → 0.003 → -0.004
    refused = chat(rt)

    assert [a.status for a in served] == [200, 200]
    error_of(refused, 402, "insufficient_balance")
    assert rt.catalog.balance(3) == Decimal("0.01") - 2 * Decimal("0.007")


def test_check_balance_refuses_only_a_balance_at_or_below_zero():
    for balance in (None, Decimal("0.0000000001"), Decimal("5")):
        admission.check_balance(balance)
    for balance in (Decimal("0"), Decimal("-0.01")):
        with pytest.raises(APIError) as refused:
            admission.check_balance(balance)
        assert (refused.value.status, refused.value.outcome) == (402, "insufficient_balance")


# --------------------------------------------------------------------------- unpriced models


def budget(scope: str) -> BudgetInfo:
    return BudgetInfo(scope, "alice", Decimal("50"), None, "month")


@pytest.mark.parametrize(
    ("policy", "unpriced", "metered", "refused"),
    [
        ("refuse", True, True, True),
        ("refuse", True, False, False),  # nobody's spending is measured against a limit
        ("refuse", False, True, False),
        ("serve", True, True, False),  # served, and logged with its cost unknown
    ],
)
def test_check_priced_refuses_only_a_metered_request_on_an_unpriced_model_under_refuse(
    settings, policy, unpriced, metered, refused
):
    settings.AETHERGATE_UNPRICED_MODELS = policy
    model = fakes.model_info(unpriced=unpriced)

    if not refused:
        admission.check_priced(model, metered)
        return
    with pytest.raises(APIError) as error:
        admission.check_priced(model, metered)
    assert (error.value.status, error.value.code, error.value.outcome) == (
        403,
        "model_unpriced",
        "forbidden",
    )
    assert "gpt-test" in error.value.message


def test_under_refuse_keys_with_a_balance_or_a_budget_are_refused_an_unpriced_model(settings):
    settings.AETHERGATE_UNPRICED_MODELS = "refuse"
    keys = {
        "ag-prepaid": fakes.key_info(id=1, user_id=1),
        "ag-budgeted": fakes.key_info(id=2, user_id=2, budgets=(budget("k2"),)),
        "ag-owner-budgeted": fakes.key_info(id=3, user_id=3, budgets=(budget("u3"),)),
        "ag-postpaid": fakes.key_info(id=4, user_id=4),
    }
    models = [fakes.model_info(id=1, unpriced=True, price_in=Decimal(0), price_out=Decimal(0))]
    rt = fakes.runtime(fakes.snapshot(keys, models, balances={1: Decimal("5")}))

    answers = {secret: chat(rt, secret) for secret in keys}

    for secret in ("ag-prepaid", "ag-budgeted", "ag-owner-budgeted"):
        error_of(answers[secret], 403, "model_unpriced")
    assert answers["ag-postpaid"].status == 200
    assert len(rt.upstream.calls) == 1
    assert [(r.outcome, r.cost, r.cost_unknown) for r in rt.writer.records] == [
        ("forbidden", 0, False),
        ("forbidden", 0, False),
        ("forbidden", 0, False),
        ("ok", 0, True),
    ]
    assert rt.catalog.balance(1) == Decimal("5")


def test_a_balance_used_up_is_reported_before_an_unpriced_model(settings):
    settings.AETHERGATE_UNPRICED_MODELS = "refuse"
    models = [fakes.model_info(id=1, unpriced=True)]
    rt = fakes.runtime(fakes.snapshot(models=models, balances={3: Decimal("0")}))

    error_of(chat(rt), 402, "insufficient_balance")
