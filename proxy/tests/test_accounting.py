"""Accounting for `/v1` requests (`proxy.accounting`): the charge rule, the record handed to the
log writer, the balance ledger, metrics and the access log; pure and in process."""

import logging
from decimal import Decimal

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from logs.models import Outcome
from proxy import accounting, usage
from proxy.accounting import Exchange
from proxy.tests import fakes
from proxy.tests.fakes import FAKE_KEY, REQUEST_ID, call, error_of

CHAT_PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi there"}]
CHAT = {"model": "gpt-test", "messages": MESSAGES}
# fakes.answer_ok reports 3 tokens in, 2 out; fakes.model_info's prices are 0.001 and 0.002.
CHAT_COST = 3 * Decimal("0.001") + 2 * Decimal("0.002")


# --------------------------------------------------------------------------- the charge rule


def exchange(outcome=Outcome.OK, units=(0, 0), **model_fields) -> Exchange:
    ex = Exchange(path=CHAT_PATH, model=fakes.model_info(**model_fields), outcome=outcome)
    ex.input_units, ex.output_units = units
    return ex


def test_a_request_is_charged_its_units_at_its_models_prices():
    assert exchange(units=(1000, 10)).charge() == Decimal("1.020")
    assert exchange(units=(0, 0)).charge() == 0


def test_a_failure_that_produced_no_units_costs_nothing():
    for outcome in (Outcome.UPSTREAM_ERROR, Outcome.CLIENT_DISCONNECTED, Outcome.RATE_LIMITED):
        assert exchange(outcome, billing_unit="REQUEST", price_in=Decimal("0.5")).charge() == 0
        assert exchange(outcome).charge() == 0


def test_a_failure_after_units_were_produced_is_charged_for_them():
    ex = exchange(Outcome.CLIENT_DISCONNECTED, units=(100, 7))

    assert ex.charge() == Decimal("0.114")


def test_a_request_priced_model_charges_its_input_price_per_request_whatever_the_units():
    for units in ((0, 0), (5, 5), (100_000, 100_000)):
        ex = exchange(units=units, billing_unit="REQUEST", price_in=Decimal("0.05"))
        assert ex.charge() == Decimal("0.05")


def test_a_request_for_no_known_model_costs_nothing():
    ex = Exchange(path=CHAT_PATH, model_name="nope")
    ex.input_units = 10

    assert ex.charge() == 0


def test_the_charge_is_what_the_ledger_counts_against_the_balance():
    request_priced = fakes.model_info("per-call", id=2, billing_unit="REQUEST", price_in=Decimal(1))
    snap = fakes.snapshot(models=[fakes.model_info(id=1), request_priced], balances={3: Decimal(5)})
    rt = fakes.runtime(snap)

    call(rt, "POST", CHAT_PATH, CHAT)
    call(rt, "POST", CHAT_PATH, {**CHAT, "model": "per-call"})
    call(rt, "POST", CHAT_PATH, {**CHAT, "model": "nope"})

    assert [r.cost for r in rt.writer.records] == [CHAT_COST, Decimal(1), 0]
    assert rt.catalog.balance(3) == Decimal(5) - CHAT_COST - 1


def test_an_upstream_failure_is_logged_without_a_charge():
    upstream = fakes.FakeUpstream(default=lambda c: fakes.error_answer(500, "boom"))
    rt = fakes.runtime(fakes.snapshot(balances={3: Decimal(5)}), upstream=upstream)

    answer = call(rt, "POST", CHAT_PATH, CHAT)

    assert answer.status >= 500
    (record,) = rt.writer.records
    assert (record.outcome, record.cost, record.input_units) == ("upstream_error", 0, 0)
    assert rt.catalog.balance(3) == Decimal(5)


def test_cached_input_is_charged_at_the_cache_prices():
    ex = exchange(
        price_in=Decimal("0.01"), price_cache_read=Decimal("0.001"),
        price_cache_write=Decimal("0.02"), price_out=Decimal("0.1"),
    )  # fmt: skip
    ex.set_usage(usage.Usage(100, 10, cache_read=60, cache_write=30, reasoning=4))

    # 10 uncached at 0.01, 60 read at 0.001, 30 written at 0.02, 10 out (4 reasoning) at 0.1.
    assert ex.charge() == Decimal("0.1") + Decimal("0.06") + Decimal("0.6") + Decimal("1")


def test_a_request_on_an_unpriced_model_costs_nothing_and_its_cost_is_unknown():
    ex = exchange(units=(100, 10), unpriced=True, price_in=Decimal(0), price_out=Decimal(0),
                  price_cache_read=Decimal("0.5"))  # fmt: skip
    ex.key = fakes.key_info()

    assert ex.charge() == 0
    assert ex.record(elapsed=0.1, cost=ex.charge()).cost_unknown is True
    # A failure that produced nothing would have cost nothing at any price: known.
    failed = exchange(Outcome.UPSTREAM_ERROR, unpriced=True)
    failed.key = fakes.key_info()
    assert failed.record(elapsed=0.1, cost=failed.charge()).cost_unknown is False


def test_an_answer_with_cached_tokens_is_recorded_with_its_components():
    reported = {
        "prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52,
        "prompt_tokens_details": {"cached_tokens": 32},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }  # fmt: skip
    answers = {
        False: fakes.FakeResponse(200, [fakes.chat_answer(usage=reported)]),
        True: fakes.FakeResponse(200, fakes.sse(
            fakes.chunk("Hel"), fakes.chunk(finish="stop"), fakes.chunk(usage=reported))),
    }  # fmt: skip
    for stream, response in answers.items():
        rt = fakes.runtime(
            fakes.snapshot(balances={3: Decimal(5)}), upstream=fakes.FakeUpstream(default=response)
        )

        assert call(rt, "POST", CHAT_PATH, {**CHAT, "stream": stream}).status == 200

        (record,) = rt.writer.records
        assert (record.input_units, record.cache_read_units, record.cache_write_units,
                record.output_units, record.reasoning_units) == (40, 32, 0, 12, 5)  # fmt: skip
        assert (record.usage_estimated, record.cost_unknown) == (False, False)
        # fakes.model_info prices the cache read as the input: 40 in at 0.001, 12 out at 0.002.
        assert record.cost == Decimal("0.064")
        assert rt.catalog.balance(3) == Decimal(5) - Decimal("0.064")


def test_a_malformed_answer_after_a_counted_one_leaves_no_components_behind():
    ex = exchange()
    ex.set_usage(usage.Usage(9, 3, cache_read=4, cache_write=1, reasoning=2), estimated=True)

    ex.set_usage(usage.NOTHING)

    assert (ex.input_units, ex.cache_read_units, ex.cache_write_units, ex.output_units,
            ex.reasoning_units, ex.estimated) == (0, 0, 0, 0, 0, False)  # fmt: skip


# --------------------------------------------------------------------------- the record


def test_the_record_names_the_key_and_its_owner_and_the_times_taken():
    # The other fields of an answered request's record: test_relay.py.
    key = fakes.key_info(id=11, user_id=12, username="carol", prefix="ag-carol")
    rt = fakes.runtime(fakes.snapshot(keys={fakes.SECRET: key}))

    answer = call(rt, "POST", CHAT_PATH, CHAT)

    (record,) = rt.writer.records
    assert record.request_id == answer.headers["x-request-id"]
    assert (record.user_id, record.username, record.api_key_id, record.key_prefix) == (
        12,
        "carol",
        11,
        "ag-carol",
    )
    assert isinstance(record.latency_ms, int) and record.latency_ms >= 0
    assert isinstance(record.ttft_ms, int) and record.ttft_ms <= record.latency_ms
    assert record.created_at <= timezone.now()


def test_the_record_holds_no_content_for_a_key_that_does_not_log_it_whatever_was_gathered():
    for log_content in (False, True):
        ex = Exchange(path=CHAT_PATH, key=fakes.key_info(log_content=log_content), prompt="p")
        ex.completion.append("c")

        record = ex.record(elapsed=0.5, cost=Decimal(0))

        expected = ("p", "c") if log_content else ("", "")
        assert (record.prompt_text, record.completion_text) == expected
        assert record.latency_ms == 500


def test_a_path_longer_than_its_column_is_cut_in_the_record():
    rt = fakes.runtime()
    path = "/v1/models/" + "m" * 200

    call(rt, "GET", path)

    (record,) = rt.writer.records
    assert record.path == path[:100]
    assert record.model == "m" * 200


def test_a_model_name_longer_than_its_column_is_cut_in_the_record():
    rt = fakes.runtime()
    name = "m" * 201

    call(rt, "POST", CHAT_PATH, {**CHAT, "model": name})

    (record,) = rt.writer.records
    assert record.model == name[:200]


def test_a_request_without_a_key_is_neither_logged_nor_charged():
    rt = fakes.runtime(fakes.snapshot(balances={3: Decimal(5)}))

    error_of(call(rt, "POST", CHAT_PATH, CHAT, secret=FAKE_KEY), 401, "invalid_api_key")

    assert rt.writer.records == []
    assert rt.catalog.balance(3) == Decimal(5)


def test_it_gives_every_response_a_unique_request_id_that_its_record_keeps():
    rt = fakes.runtime(fakes.snapshot(keys={fakes.SECRET: fakes.key_info(rate_limit="2/m")}))
    answers = {
        "ok": call(rt, "POST", CHAT_PATH, CHAT),
        "ok again": call(rt, "POST", CHAT_PATH, CHAT),
        "429": call(rt, "POST", CHAT_PATH, CHAT),
        "401": call(rt, "POST", CHAT_PATH, CHAT, secret=FAKE_KEY),
        "401 without header": call(rt, "GET", "/v1/models", secret=None),
        "404 unknown url": call(rt, "POST", "/v1/nope"),
        "404 unknown url without key": call(rt, "GET", "/v1/nope", secret=None),
        "405 wrong method without key": call(rt, "GET", CHAT_PATH, secret=None),
        "400": call(rt, "POST", CHAT_PATH, b"{"),
        "models": call(rt, "GET", "/v1/models"),
    }
    assert {case: a.status for case, a in answers.items()} == {
        "ok": 200,
        "ok again": 200,
        "429": 429,
        "401": 401,
        "401 without header": 401,
        "404 unknown url": 404,
        "404 unknown url without key": 404,
        "405 wrong method without key": 405,
        "400": 400,
        "models": 200,
    }

    ids = {case: a.headers.get("x-request-id") for case, a in answers.items()}
    for case, request_id in ids.items():
        assert request_id and REQUEST_ID.match(request_id), (case, request_id)
    assert len(set(ids.values())) == len(ids)

    logged_cases = ["ok", "ok again", "429", "400", "models"]
    assert [r.request_id for r in rt.writer.records] == [ids[case] for case in logged_cases]
    assert [r.outcome for r in rt.writer.records] == [
        "ok",
        "ok",
        "rate_limited",
        "invalid_request",
        "ok",
    ]


# --------------------------------------------------------------------------- metrics and log


def requests_counted(model: str, status: int, outcome: str) -> float:
    labels = {"model": model, "status": str(status), "outcome": outcome}
    return REGISTRY.get_sample_value("aethergate_requests_total", labels) or 0.0


def test_metrics_name_a_model_only_once_it_is_known_to_exist():
    rt = fakes.runtime()
    unknown = "made-up-by-a-client-0d3f"
    before = (requests_counted("gpt-test", 200, "ok"), requests_counted("", 404, "model_not_found"))

    call(rt, "POST", CHAT_PATH, CHAT)
    call(rt, "POST", CHAT_PATH, {**CHAT, "model": unknown})

    after = (requests_counted("gpt-test", 200, "ok"), requests_counted("", 404, "model_not_found"))
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert requests_counted(unknown, 404, "model_not_found") == 0
    labels = {s.labels.get("model") for m in REGISTRY.collect() for s in m.samples}
    assert unknown not in labels


def test_a_failing_metric_or_access_log_still_logs_and_bills_the_request(monkeypatch, caplog):
    def broken(*args):
        raise ValueError("Counters can only be incremented by non-negative amounts.")

    monkeypatch.setattr(accounting, "observe", broken)
    rt = fakes.runtime(fakes.snapshot(balances={3: Decimal(5)}))

    with caplog.at_level(logging.ERROR, logger="proxy.faults"):
        answers = [call(rt, "POST", CHAT_PATH, CHAT) for _ in range(3)]

    assert [a.status for a in answers] == [200] * 3
    assert [r.cost for r in rt.writer.records] == [CHAT_COST] * 3
    assert rt.catalog.balance(3) == Decimal(5) - 3 * CHAT_COST
    assert rt.faults.count == 3
    # Logged once (within the report interval), not once per request.
    (report,) = [r for r in caplog.records if r.name == "proxy.faults"]
    assert answers[0].headers["x-request-id"] in report.getMessage()


@pytest.mark.parametrize("enabled", [True, False], ids=["on", "off"])
def test_the_access_log_has_one_line_per_request_when_enabled(settings, caplog, enabled):
    settings.AETHERGATE_ACCESS_LOG = enabled
    rt = fakes.runtime()

    with caplog.at_level(logging.INFO, logger="aethergate.requests"):
        answer = call(rt, "POST", CHAT_PATH, CHAT)
        call(rt, "POST", CHAT_PATH, {**CHAT, "model": "nope"}, secret=None)

    lines = [r for r in caplog.records if r.name == "aethergate.requests"]
    if not enabled:
        assert lines == []
        return
    ok, refused = lines
    assert ok.request_id == answer.headers["x-request-id"]
    assert (ok.status, ok.outcome, ok.model, ok.endpoint) == (200, "ok", "gpt-test", "stand-in")
    assert (ok.input_units, ok.output_units, ok.cost) == (3, 2, str(CHAT_COST))
    assert (ok.key_prefix, ok.user) == (fakes.key_info().prefix, "alice")
    assert (refused.status, refused.model, refused.key_prefix, refused.user) == (401, "", "", "")
    assert fakes.SECRET not in caplog.text


def test_cached_tokens_are_counted_under_their_own_direction():
    details = {"cached_tokens": 32, "cache_write_tokens": 6}
    reported = {"prompt_tokens": 40, "completion_tokens": 12, "prompt_tokens_details": details}
    upstream = fakes.FakeUpstream(
        default=fakes.FakeResponse(200, [fakes.chat_answer(usage=reported)])
    )
    model = fakes.model_info("cache-metrics")
    rt = fakes.runtime(fakes.snapshot(models=[model]), upstream=upstream)

    def counted():
        directions = ("input", "cache_read", "cache_write", "output")
        return [
            REGISTRY.get_sample_value(
                "aethergate_tokens_total", {"model": "cache-metrics", "direction": direction}
            )
            or 0.0
            for direction in directions
        ]

    before = counted()
    call(rt, "POST", CHAT_PATH, {**CHAT, "model": "cache-metrics"})

    assert [n - m for n, m in zip(counted(), before, strict=True)] == [40, 32, 6, 12]
