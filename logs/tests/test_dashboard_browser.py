"""End to end: the usage dashboard in headless Chromium, over traffic the log writer stored.

Uses the first-run gateway of aethergate/tests/test_browser.py (uvicorn on a fresh SQLite
database). Traffic is written into that database by `write_batch`, as the log writer
writes it; the test then reads what the page shows (totals, tables, the Chart instances'
data) against the database, follows a table link and a chart bar to the filtered
request-log list and checks its totals, checks that the log list fits 1366 px, and saves
screenshots into docs/screenshots/.
"""

import json
import os
import subprocess
import sys

import pytest

from aethergate.tests import test_browser as e2e

pytestmark = pytest.mark.browser
# The first-run gateway and the browser, as fixtures of this module too.
browser, gateway = e2e.browser, e2e.gateway
PROJECT_ROOT, expect = e2e.PROJECT_ROOT, e2e.expect
SHOTS = PROJECT_ROOT / "docs" / "screenshots"

# Run in the gateway's database: three users, their keys, a week of requests through
# write_batch; prints what the database holds for the dashboard's default range.
TRAFFIC = r"""
import json, random
from datetime import timedelta
from decimal import Decimal
from django.db.models import Count, Sum
from django.utils import timezone
from aethergate.testing import make_key, make_user, request_record
from logs.models import RequestLog
from logs.services import write_batch

rng = random.Random(5)
now = timezone.now()
keys = []
for name in ("alice", "bob", "carol"):
    user = make_user(name, balance=Decimal(100))
    keys += [make_key(user, name=f"{name}-{kind}")[0] for kind in ("app", "ci")]
models = {"llama3": ("local", "0.0000004"), "gpt-4o-mini": ("cloud", "0.0000006"),
          "qwen2.5": ("local", "0.0000002")}
records = []
for n in range(600):
    key = keys[n % len(keys)]
    model = ("llama3", "gpt-4o-mini", "qwen2.5")[(n * 7 + n // 5) % 3]
    endpoint, price = models[model]
    outcome = "ok" if n % 13 else ("upstream_error" if n % 2 else "rate_limited")
    units = (rng.randrange(50, 3000), rng.randrange(10, 900)) if outcome == "ok" else (0, 0)
    # Every other answer read most of its prompt from the upstream's cache (a tenth of the
    # input price), one in five wrote some to it; gpt-4o-mini reasons.
    cached = units[0] * 3 // 4 if n % 2 else 0
    written = units[0] // 10 if n % 5 == 0 else 0
    reasoning = units[1] // 5 if model == "gpt-4o-mini" else 0
    latency = int(rng.lognormvariate(6, 0.8)) if outcome != "rate_limited" else 2
    stream = n % 3 == 0
    records.append(request_record(
        key, request_id=f"req_e2e_{n:04}", created_at=now - timedelta(minutes=16 * n + 1),
        model=model, endpoint=endpoint, outcome=outcome,
        status={"ok": 200, "upstream_error": 502, "rate_limited": 429}[outcome],
        input_units=units[0], output_units=units[1], stream=stream,
        cache_read_units=cached, cache_write_units=written, reasoning_units=reasoning,
        cost=(units[0] - cached + units[1]) * Decimal(price) + cached * Decimal(price) / 10,
        latency_ms=latency, ttft_ms=latency // 4 if stream and outcome == "ok" else None))
write_batch(records)
hour = now.replace(minute=0, second=0, microsecond=0)
since = hour + timedelta(hours=1) - timedelta(days=7)
rows = RequestLog.objects.filter(created_at__gte=since)
totals = rows.aggregate(requests=Count("id"), cost=Sum("cost"), input=Sum("input_units"),
                        cached=Sum("cache_read_units"))
by_model = {m: {"requests": n, "cost": str(c)} for m, n, c in
            rows.values_list("model").annotate(Count("id"), Sum("cost"))}
print(json.dumps({"requests": totals["requests"], "cost": str(totals["cost"]),
                  "input_units": totals["input"], "cache_read_units": totals["cached"],
                  "by_model": by_model}))
"""


def _traffic(gateway) -> dict:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "aethergate.settings",
        "AETHERGATE_ENV_FILE": "",
        "DEBUG": "false",
        "SECRET_KEY": "browser-test-traffic-writer-key-not-for-any-deployment",
        "DATABASE_URL": f"sqlite:///{gateway.workdir / 'db.sqlite3'}",
        "REDIS_URL": "",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", TRAFFIC],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _in_the_days_last_hour() -> bool:
    """Whether it is now 23:xx in the gateway's time zone (UTC), when the dashboard's 7-day
    range starts at midnight and so covers 7 day buckets, not 8."""
    from datetime import UTC, datetime

    return datetime.now(UTC).hour == 23


def _money(amount: str) -> str:
    """format_money with the default settings ($, 2 decimals), for amounts of a cent or more."""
    from decimal import ROUND_HALF_EVEN, Decimal

    return f"${Decimal(amount).quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):,.2f}"


def _chart(page, canvas_id: str) -> dict:
    """The labels and datasets of the Chart instance drawn on `canvas_id`."""
    return page.evaluate(
        """(id) => {
            const chart = Chart.getChart(document.getElementById(id));
            return chart && {type: chart.config.type, labels: chart.data.labels,
                             data: chart.data.datasets.map((d) => d.data)};
        }""",
        canvas_id,
    )


def test_the_dashboard_charts_and_tables_match_the_database(browser, gateway):
    expected = _traffic(gateway)
    SHOTS.mkdir(parents=True, exist_ok=True)
    e2e._drive(browser, gateway, SHOTS, lambda page, gw, shots: _walk(page, gw, expected))


def _walk(page, gateway, expected):
    page.set_viewport_size({"width": 1366, "height": 768})
    e2e._log_in(page, gateway)
    expect(page.locator("#usage-module")).to_be_visible()  # linked from the index
    page.locator("#usage-link").click()  # and from the top of every page
    expect(page.locator("#content h1")).to_have_text("Usage")

    # The numbers beside the charts are the database's.
    totals = page.locator("#usage-totals")
    expect(totals.locator('[data-total="requests"]')).to_have_text(str(expected["requests"]))
    expect(totals.locator('[data-total="cost"]')).to_have_text(_money(expected["cost"]))
    expect(totals.locator('[data-total="input_units"]')).to_have_text(str(expected["input_units"]))
    expect(totals.locator('[data-total="cache_read_units"]')).to_have_text(
        str(expected["cache_read_units"])
    )

    # Every chart is drawn, with the data of its table.
    canvases = page.locator("canvas")
    expect(canvases).to_have_count(9)
    for canvas_id in ("chart-requests", "chart-units", "chart-cost", "chart-by_model",
                      "chart-by_user", "chart-by_key", "chart-by_endpoint", "chart-outcomes",
                      "chart-timings"):  # fmt: skip
        assert _chart(page, canvas_id), f"no Chart on #{canvas_id}"
    requests = _chart(page, "chart-requests")
    # 7 days back from the end of this hour: 8 day buckets, or 7 in the day's last hour.
    days = 7 if _in_the_days_last_hour() else 8
    assert requests["type"] == "bar" and len(requests["labels"]) == days
    assert sum(requests["data"][0]) == expected["requests"]
    by_model = _chart(page, "chart-by_model")
    assert sorted(by_model["labels"]) == sorted(expected["by_model"])
    for label, cost in zip(by_model["labels"], by_model["data"][0], strict=True):
        assert cost == pytest.approx(float(expected["by_model"][label]["cost"]))
    table = page.locator("#usage-by_model tbody tr")
    expect(table).to_have_count(len(expected["by_model"]))
    for model, sums in expected["by_model"].items():
        row = page.locator(f'#usage-by_model tr[data-label="{model}"]')
        expect(row.locator('[data-field="requests"]')).to_have_text(str(sums["requests"]))
        expect(row.locator('[data-field="cost"]')).to_have_text(_money(sums["cost"]))

    page.screenshot(path=SHOTS / "usage-1366x768.png")
    page.screenshot(path=SHOTS / "usage-1366-full.png", full_page=True)
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.screenshot(path=SHOTS / "usage-1920x1080.png")
    page.set_viewport_size({"width": 1366, "height": 768})

    # A table row's link: the filtered request-log list, whose totals are the row's.
    page.locator('#usage-by_model tr[data-label="llama3"] a').click()
    expect(page.locator("#content h1")).to_contain_text("request log")
    llama3 = expected["by_model"]["llama3"]
    expect(page.locator('#log-totals [data-total="requests"]')).to_have_text(
        str(llama3["requests"])
    )
    expect(page.locator('#log-totals [data-total="cost"]')).to_have_text(_money(llama3["cost"]))
    # The log list fits a 1366 px screen: its table does not overflow its container.
    widths = page.evaluate(
        """() => ({table: document.querySelector('#result_list').scrollWidth,
                   room: document.querySelector('#changelist .results').clientWidth})"""
    )
    assert widths["table"] <= widths["room"], widths
    page.screenshot(path=SHOTS / "usage-logs-1366x768.png")

    # A row with cached tokens: its page breaks its units down.
    cached_row = page.locator("#result_list tbody tr", has_text="cached").first
    expected_units = cached_row.locator("td.field-units span").first.inner_text()
    cached_row.locator("th a, td a").first.click()
    units = page.locator("table.usage-units")
    expect(units).to_be_visible()
    expect(units.locator('[data-units="input"]')).to_have_text(expected_units.split(" / ")[0])
    assert int(units.locator('[data-units="cache-read"]').inner_text()) > 0
    units.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "usage-log-row-1366x768.png")
    page.go_back()

    # A chart's bar: the same, by clicking the first bar of the per-model chart.
    page.go_back()
    first = _chart(page, "chart-by_model")["labels"][0]
    point = page.evaluate(
        """() => { const chart = Chart.getChart(document.getElementById('chart-by_model'));
                   const bar = chart.getDatasetMeta(0).data[0];
                   return {x: Math.round(bar.x - 2), y: Math.round(bar.y)}; }"""
    )
    page.locator("#chart-by_model").click(position=point)
    expect(page.locator('#log-totals [data-total="requests"]')).to_have_text(
        str(expected["by_model"][first]["requests"])
    )
