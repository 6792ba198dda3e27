"""import_prices: a pinned price file prices the catalog, keeps what staff set by hand, writes
nothing on a dry run, and refuses a bad file with a clear error."""

import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from aethergate.testing import deploy, make_endpoint, make_model
from logs.models import AuditEntry
from models_registry import prices
from models_registry.models import Model, PriceImport

pytestmark = pytest.mark.django_db

SAMPLE = Path(settings.BASE_DIR) / "data" / "prices.sample.json"
M = Decimal(1_000_000)


def price_file(tmp_path, entries: dict, name="prices.json", **top) -> str:
    """A price file of `entries` (its "models") in `tmp_path`; `top` adds or replaces keys."""
    path = tmp_path / name
    data = {"format": "aethergate-prices", "version": 1, "currency": "USD",
            "source": "test catalogue", "models": entries}  # fmt: skip
    path.write_text(json.dumps({**data, **top}))
    return str(path)


def run(*args) -> str:
    out = io.StringIO()
    call_command("import_prices", *args, stdout=out)
    return out.getvalue()


def stored(name: str) -> tuple:
    """A model's prices per 1M units, as stored: in, cache read, cache write, out."""
    model = Model.objects.get(name=name)
    read, write = model.price_cache_read, model.price_cache_write
    return (model.price_in * M, read and read * M, write and write * M, model.price_out * M)


SONNET = {"input": "3", "cache_read": "0.30", "cache_write": "3.75", "output": "15"}


@pytest.fixture
def catalog(local):
    """sonnet (by name), gpt-mini (served as an OpenRouter upstream name), an image model."""
    make_model("claude-sonnet-4-5", "claude-sonnet-4-5", endpoint=local)
    make_model("gpt-mini", "openai/gpt-4o-mini", endpoint=local)
    make_model("painter", "dall-e", endpoint=local, capability="IMAGE", billing_unit="IMAGE")


def test_it_prices_models_by_name_and_by_upstream_name_per_1m_tokens(catalog, tmp_path):
    path = price_file(tmp_path, {
        "claude-sonnet-4-5": SONNET,
        "openai/gpt-4o-mini": {"input": 0.15, "output": 0.6},
        "painter": {"unit": "IMAGE", "output": "0.04"},
        "not-served-here": {"input": "1", "output": "2"},
    })  # fmt: skip

    out = run(path)

    sonnet = Model.objects.get(name="claude-sonnet-4-5")
    assert prices.Prices.of(sonnet) == prices.Prices(
        Decimal("0.000003"), Decimal("0.000015"), Decimal("0.0000003"), Decimal("0.00000375")
    )
    mini = Model.objects.get(name="gpt-mini")
    assert (mini.price_in, mini.price_out) == (Decimal("0.00000015"), Decimal("0.0000006"))
    assert (mini.price_cache_read, mini.price_cache_write) == (None, None)  # the input price
    assert Model.objects.get(name="painter").price_out == Decimal("0.04")  # per image
    assert not Model.objects.get(name="gpt-mini").unpriced
    assert "gpt-mini (deployment openai/gpt-4o-mini): in 0, cache read = in" in out
    assert "-> in 0.15, cache read = in, cache write = in, out 0.6 per 1M tokens" in out
    assert "Models: 3 updated, 0 unchanged, 0 kept, 0 skipped." in out
    assert "in no model's name or deployment (1): not-served-here" in out
    # Each write is the model's own save: audited as this command, announced to the proxy.
    entry = AuditEntry.objects.filter(object_name="claude-sonnet-4-5", action="update").get()
    assert (entry.surface, entry.command) == ("command", "import_prices")
    assert set(entry.changes) == {"price_in", "price_out", "price_cache_read", "price_cache_write"}
    assert PriceImport.objects.get(model=sonnet).source == "test catalogue"


def test_a_reimport_keeps_a_price_staff_changed_and_updates_the_others(catalog, tmp_path):
    mini = {"input": "0.15", "output": "0.60"}
    run(price_file(tmp_path, {"claude-sonnet-4-5": SONNET, "openai/gpt-4o-mini": mini}))
    sonnet = Model.objects.get(name="claude-sonnet-4-5")
    sonnet.price_out = Decimal("0.00002")  # staff's price, set in the admin: $20 per 1M
    sonnet.save()
    cheaper = {"claude-sonnet-4-5": {**SONNET, "output": "12"},
               "openai/gpt-4o-mini": {"input": "0.10", "output": "0.40"}}  # fmt: skip

    out = run(price_file(tmp_path, cheaper, name="v2.json"))

    assert stored("claude-sonnet-4-5")[3] == Decimal(20)  # kept
    assert (
        "kept       claude-sonnet-4-5: in 3, cache read 0.3, cache write 3.75, out 20 per 1M" in out
    )
    assert "; the file has in 3, cache read 0.3, cache write 3.75, out 12 per 1M tokens" in out
    assert "(changed by hand since the last import; --force replaces them)" in out
    assert (stored("gpt-mini")[0], stored("gpt-mini")[3]) == (Decimal("0.1"), Decimal("0.4"))
    # Until forced: then the file wins.
    run(price_file(tmp_path, cheaper, name="v2.json"), "--force")
    assert stored("claude-sonnet-4-5")[3] == Decimal(12)


def test_a_model_priced_or_marked_free_by_hand_before_any_import_is_kept(local, tmp_path):
    make_model("priced", "priced", endpoint=local, price_in=Decimal("0.000001"))
    make_model("free", "free", endpoint=local, is_free=True)
    path = price_file(tmp_path, {"priced": SONNET, "free": SONNET})

    out = run(path)

    assert stored("priced")[0] == 1 and stored("free")[0] == 0
    assert "priced by hand, not by an import; --force replaces them" in out
    assert "marked free on purpose" in out
    assert not PriceImport.objects.exists()


def test_the_overrides_file_wins_over_the_catalogue_on_every_import(catalog, tmp_path):
    mini = {"input": "0.15", "output": "0.6"}
    catalogue = price_file(tmp_path, {"claude-sonnet-4-5": SONNET, "openai/gpt-4o-mini": mini})
    # The operator's own price for gpt-mini, by its public name: it beats the upstream's.
    overrides = price_file(tmp_path, {"gpt-mini": {"input": "0.5", "output": "1"}},
                           name="ours.json")  # fmt: skip

    run(catalogue, "--overrides", overrides)
    again = run(catalogue, "--overrides", overrides)

    assert (stored("gpt-mini")[0], stored("gpt-mini")[3]) == (Decimal("0.5"), Decimal(1))
    assert stored("claude-sonnet-4-5")[0] == Decimal(3)
    assert "Models: 0 updated, 2 unchanged" in again
    assert PriceImport.objects.get(model__name="gpt-mini").source == "operator overrides"
    assert "in no model's name" not in again  # the upstream name's entry did match: overridden


def test_a_dry_run_says_what_would_change_and_writes_nothing(catalog, tmp_path):
    path = price_file(tmp_path, {"claude-sonnet-4-5": SONNET})
    audited = AuditEntry.objects.count()

    out = run(path, "--dry-run")

    assert out.startswith("Dry run: nothing was saved. It would have:")
    assert "updated    claude-sonnet-4-5: in 0, cache read = in, cache write = in, out 0" in out
    assert stored("claude-sonnet-4-5") == (0, None, None, 0)
    assert not PriceImport.objects.exists()
    assert AuditEntry.objects.count() == audited


def test_a_model_in_another_unit_or_with_disagreeing_deployments_is_skipped(local, tmp_path):
    gpu = make_endpoint("gpu", "http://gpu.example/v1")
    both = make_model("both", "a", endpoint=local)
    deploy(both, gpu, "b")
    make_model("painter", "painter", endpoint=local, capability="IMAGE", billing_unit="IMAGE")
    one, two = {"input": "1", "output": "1"}, {"input": "2", "output": "2"}
    path = price_file(tmp_path, {"a": one, "b": two, "painter": SONNET})

    out = run(path)

    assert (
        "skipped    both (deployment a)" in out and "priced differently in the file (a, b)" in out
    )
    assert "billed per image, the file prices it per 1M tokens" in out
    assert stored("both")[0] == 0 and Model.objects.get(name="painter").price_out == 0


BAD_FILES = [
    ("not json", "is not JSON"),
    (json.dumps([1]), 'its "format" must be "aethergate-prices"'),
    (json.dumps({"format": "litellm", "version": 1}), '"format" must be'),
    (
        json.dumps({"format": "aethergate-prices", "version": 2}),
        "has version 2; this command reads 1",
    ),
    (json.dumps({"format": "aethergate-prices", "version": True}), "has version True"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_a_file_that_is_not_a_price_file_is_refused_clearly(catalog, tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)

    with pytest.raises(CommandError, match="Nothing was imported") as refused:
        run(str(path))

    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("models", "top", "message"),
    [
        ({"m": {"input": "-1", "output": "1"}}, {}, 'model "m": -1 is not a price'),
        ({"m": {"input": "abc", "output": "1"}}, {}, "'abc' is not a price"),
        ({"m": {"input": True, "output": "1"}}, {}, "True is not a price"),
        ({"m": {"input": "NaN", "output": "1"}}, {}, "NaN is not a price"),
        ({"m": {"input": "0.00001", "output": "1"}}, {}, "at most 4 decimal places per 1M tokens"),
        ({"m": {"input": "1"}}, {}, "no output price, which a Token model needs"),
        ({"m": {"input": "1", "output": "1", "ouput": "2"}}, {}, "unknown keys: ouput"),
        ({"m": {"unit": "LITRE", "input": "1"}}, {}, "unit 'LITRE' is not one of"),
        ({"m": [1, 2]}, {}, 'model "m": not an object'),
        ({"m": {"input": "1e30", "output": "1"}}, {}, "more than a price column holds"),
        ({}, {"currency": "EUR"}, "prices in 'EUR', and balances here are in 'USD'"),
        ({}, {"models": []}, 'has no "models" object'),
        ({}, {"extra": 1}, "unknown keys: extra"),
    ],
)
def test_a_bad_entry_refuses_the_whole_file_and_writes_nothing(
    catalog, tmp_path, models, top, message
):
    good = {"claude-sonnet-4-5": SONNET}
    path = price_file(tmp_path, {**good, **models}, **top)

    with pytest.raises(CommandError, match="Nothing was imported") as refused:
        run(path)

    assert message in str(refused.value)
    assert stored("claude-sonnet-4-5") == (0, None, None, 0)


def test_a_missing_or_unreadable_file_is_a_command_error(tmp_path):
    with pytest.raises(CommandError, match="No such file"):
        run(str(tmp_path / "nope.json"))
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CommandError, match="not UTF-8 text"):
        run(str(binary))
    with pytest.raises(CommandError, match="Cannot read"):
        run(str(tmp_path))  # a directory


def test_the_shipped_sample_is_a_valid_price_file_with_sources():
    sample = prices.read(SAMPLE, currency="USD")

    assert sample.source and len(sample.entries) >= 3
    assert all(entry.source.startswith(("Anthropic", "DeepSeek", "OpenRouter"))
               for entry in sample.entries.values())  # fmt: skip
    assert sample.entries["deepseek-chat"].prices.price_cache_read == Decimal("0.00000007")
