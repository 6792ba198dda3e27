"""End to end: prices, token and concurrency limits and budgets set in the admin, in headless
Chromium at a laptop's 1366x768: a model's cache prices and limits, the unpriced flag in
the list and on a model's page, a key's rate limit, concurrency and budget.

Uses the first-run gateway of test_browser.py (uvicorn on a fresh SQLite database).
Screenshots (`limits-*.png`) go to docs/screenshots/ when AETHERGATE_SCREENSHOTS_TO_DOCS=1.
"""

import re

import pytest

from aethergate.tests import test_browser as e2e

pytestmark = pytest.mark.browser
browser, gateway, expect = e2e.browser, e2e.gateway, e2e.expect


def test_limits_prices_and_budgets_on_a_laptop_screen(browser, gateway, tmp_path_factory):
    e2e._drive(
        browser,
        gateway,
        tmp_path_factory.mktemp("limits-screenshots"),
        _walk,
        viewport=e2e.LAPTOP,
    )


def _add_model(page, name, **fields):
    """A model on the `gpu-box` endpoint, with `fields` (input ids without `id_`) filled."""
    page.goto(e2e.MODELS + "add/")
    page.locator("#id_name").fill(name)
    e2e._add_deployment(page, 0, "gpu-box", name)
    for field, value in fields.items():
        if field == "is_free":
            page.locator("#id_is_free").check()
        else:
            page.locator(f"#id_{field}").fill(value)
    e2e._save(page)
    e2e._success(page, "was added successfully")


def _scroll_to_fieldset(page, heading):
    """Scroll the page's fieldset named `heading` to the top of the screen."""
    page.locator("fieldset h2", has_text=heading).evaluate("h2 => h2.scrollIntoView()")
    page.evaluate("window.scrollBy(0, -12)")


def _walk(page, gateway, shots):
    e2e._log_in(page, gateway)
    page.goto(e2e.ENDPOINTS + "add/")
    page.locator("#id_name").fill("gpu-box")
    page.locator("#id_base_url").fill("http://127.0.0.1:9/v1")
    page.locator("#id_tpm_limit").fill("2000000")
    e2e._save(page)
    e2e._success(page, "was added successfully")

    # A hosted model with prices, cache prices and limits; the cache labels follow the
    # billing unit as the input price's do.
    page.goto(e2e.MODELS + "add/")
    expect(page.locator("label[for=id_price_cache_read]")).to_have_text(
        "Cache-read price (per 1M tokens):"
    )
    page.locator("#id_billing_unit").select_option("REQUEST")
    expect(page.locator("label[for=id_price_cache_write]")).to_have_text(
        "Cache-write price (per request):"
    )
    _add_model(
        page,
        "claude-sonnet",
        price_in="3",
        price_out="15",
        price_cache_read="0.3",
        price_cache_write="3.75",
        rpm_limit="500",
        tpm_limit="400000",
        tpd_limit="20000000",
        max_concurrent="16",
        max_output_tokens="8192",
    )
    # One nobody priced (as imported models are), and a local one that is free on purpose.
    _add_model(page, "llama3-70b")
    _add_model(page, "qwen-local", is_free=True)

    # The list flags the unpriced one, and its filter finds it.
    page.goto(e2e.MODELS)
    expect(e2e._row(page, "llama3-70b").locator("td.field-billing .unpriced-badge")).to_have_text(
        "unpriced"
    )
    expect(e2e._row(page, "qwen-local").locator("td.field-billing .free-note")).to_have_text("free")
    expect(e2e._row(page, "claude-sonnet").locator("td.field-billing")).to_have_text("Token")
    expect(e2e._row(page, "claude-sonnet").locator("td.field-input_price")).to_have_text(
        "$3.00 / 1M tokens"
    )
    e2e._assert_list_fits(page, e2e.MODELS)
    e2e._viewport_shot(page, shots, "limits-models-list-1366x768.png")
    page.get_by_role("link", name="Unpriced", exact=True).click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.get_by_role("link", name="llama3-70b", exact=True)).to_have_count(1)

    # The unpriced model's page says what that means, above its prices.
    e2e._open_change_page(page, e2e.MODELS, "llama3-70b")
    warning = page.locator("#unpriced-warning")
    expect(warning).to_contain_text("what its requests cost is unknown")
    expect(warning).to_contain_text("AETHERGATE_UNPRICED_MODELS=serve")
    e2e._viewport_shot(page, shots, "limits-model-unpriced-1366x768.png")

    # The priced model's page: prices per 1M tokens, cache prices, then its limits.
    e2e._open_change_page(page, e2e.MODELS, "claude-sonnet")
    expect(page.locator("#unpriced-warning")).to_have_count(0)
    expect(page.locator("#id_price_cache_read")).to_have_value("0.3")
    expect(page.locator("#id_price_cache_write")).to_have_value("3.75")
    expect(page.locator("#id_tpm_limit")).to_have_value("400000")
    expect(page.locator("#id_tpd_limit")).to_have_value("20000000")
    assert page.locator("#id_tpd_limit").evaluate("i => i.scrollWidth <= i.clientWidth")
    expect(page.locator("#id_max_output_tokens")).to_have_value("8192")
    e2e._shot(page, shots, "limits-model-1366-full.png")
    # From its prices to its last limits, which a laptop's screen shows at once.
    page.locator(".field-price_in").first.evaluate("row => row.scrollIntoView()")
    e2e._viewport_shot(page, shots, "limits-model-1366x768.png")

    # A key with token rates, a concurrency limit and a budget whose alert is too high:
    # refused on its field; then lowered and saved.
    e2e._add_consumer(page, "agent-team", "agents@example.com", "Agents", "500")
    page.goto(e2e.KEYS + "add/")
    page.locator("#id_name").fill("coding-agent")
    e2e._pick_autocomplete(page, "owner", "agent-team")
    expect(page.locator("#id_rate_limit_helptext")).to_contain_text("COUNTtok/UNIT")
    page.locator("#id_rate_limit").fill("60/m,100000tok/m,2000000tok/d")
    page.locator("#id_max_concurrent").fill("4")
    page.locator("#id_budget").fill("25")
    page.locator("#id_budget_soft").fill("30")
    page.locator("#id_budget_period").select_option("week")
    e2e._save(page)
    expect(page.locator(".field-budget_soft .errorlist")).to_contain_text(
        "The alert must be at or below the hard limit."
    )
    page.locator("#id_budget_soft").fill("20")
    e2e._save(page)
    expect(page.locator("#content h1")).to_have_text("API key created")

    e2e._open_change_page(page, e2e.KEYS, "coding-agent")
    expect(page.locator("#id_rate_limit")).to_have_value("60/m,100000tok/m,2000000tok/d")
    expect(page.locator("#id_max_concurrent")).to_have_value("4")
    expect(page.locator("#id_budget")).to_have_value("25")
    expect(page.locator("#id_budget_soft")).to_have_value("20")
    expect(page.locator("#id_budget_period")).to_have_value("week")
    _scroll_to_fieldset(page, "Limits")
    e2e._viewport_shot(page, shots, "limits-key-1366x768.png")

    assert not re.search(r"Traceback|Internal Server Error", gateway.log_text())
