"""Importing the earlier FastAPI version's backup: mappings, idempotency, the command.

That its keys then work on /v1 is proved in proxy/tests/test_legacy_import.py,
beside the live gateway and upstream stand-in it needs.
"""

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from aethergate import backup
from aethergate.backup.tests.legacy_sample import (
    ALICE_SECRET,
    ANTHROPIC_CREDENTIAL,
    BOB_SECRET,
    OLD_SECRET,
    UPSTREAM_CREDENTIAL,
    legacy_backup,
    sha256,
)
from aethergate.testing import served_by
from endpoints.models import Endpoint
from keys.models import APIKey
from models_registry.models import Deployment, Model


def import_(document, **options) -> backup.ImportReport:
    return backup.import_backup(json.loads(json.dumps(document)), **options)


def everything() -> dict:
    """The imported state, to compare before and after a refused import."""
    document = backup.export_backup(include_secrets=True)
    return {k: v for k, v in document.items() if k != "exported_at"}


@pytest.fixture
def write_file(tmp_path):
    def write(document) -> str:
        path = tmp_path / "aethergate-backup-2025-05-01.json"
        path.write_text(json.dumps(document, indent=2))
        return str(path)

    return write


# --------------------------------------------------------------------------- mappings


@pytest.mark.django_db
def test_it_maps_endpoints_renaming_duplicates_and_fixing_ollama_and_anthropic_urls():
    import_(legacy_backup())

    endpoints = {e.name: e for e in Endpoint.objects.all()}
    assert set(endpoints) == {"Local Ollama", "OpenAI", "Local Ollama (2)", "Anthropic"}
    local, openai, second, anthropic = (
        endpoints["Local Ollama"],
        endpoints["OpenAI"],
        endpoints["Local Ollama (2)"],
        endpoints["Anthropic"],
    )
    assert local.base_url == "http://localhost:11434/v1"
    assert second.base_url == "http://10.0.0.5:11434/v1"
    assert openai.base_url == "https://api.openai.com/v1"
    assert anthropic.base_url == "https://api.anthropic.com/v1"
    assert openai.api_key == UPSTREAM_CREDENTIAL
    assert UPSTREAM_CREDENTIAL not in openai.api_key_encrypted
    assert (anthropic.api_key, anthropic.rpm_limit) == (ANTHROPIC_CREDENTIAL, 50)
    assert ANTHROPIC_CREDENTIAL not in anthropic.api_key_encrypted
    assert not local.has_credential
    assert (local.rpm_limit, local.day_limit) == (None, None)  # 0 meant "none"
    assert (openai.rpm_limit, openai.day_limit) == (500, None)  # and so did -1
    assert (second.day_limit, second.is_active) == (10000, False)


@pytest.mark.django_db
def test_it_gives_each_endpoint_the_kind_its_models_litellm_names_show():
    import_(legacy_backup())

    assert dict(Endpoint.objects.values_list("name", "kind")) == {
        "Local Ollama": "ollama",
        "Local Ollama (2)": "ollama",
        "OpenAI": "openai",
        "Anthropic": "anthropic",
    }


def one_endpoint(base_url: str, litellm_names: list[str]) -> dict:
    """An earlier-version backup of one endpoint serving models of these LiteLLM names."""
    models = [
        {"id": f"m{index}", "litellm_name": name, "endpoint_id": 1}
        for index, name in enumerate(litellm_names)
    ]
    endpoints = [{"id": 1, "name": "upstream", "base_url": base_url}]
    return {"version": 1, "data": {"endpoints": endpoints, "models": models}}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("base_url", "litellm_names", "kind"),
    [
        ("http://10.0.0.5:11434", ["ollama/llama3", "ollama_chat/qwen3"], "ollama"),
        ("http://10.0.0.5:11434", ["ollama/llama3", "anthropic/claude-3-5-haiku"], "ollama"),
        ("https://api.anthropic.com", ["anthropic/claude-3-5-haiku"], "anthropic"),
        ("https://api.anthropic.com/v1/", ["anthropic/claude-3-5-haiku"], "anthropic"),
        (None, ["anthropic/claude-3-5-haiku", "anthropic/claude-3-opus"], "anthropic"),
        ("", ["anthropic/claude-3-5-haiku", "gemini/gemini-1.5-pro"], "anthropic"),
        ("https://api.anthropic.com/v1", ["anthropic/claude-3-5-haiku", "openai/x"], "generic"),
        ("https://openrouter.ai/api/v1", ["anthropic/claude-3-5-haiku"], "generic"),
        ("http://10.0.0.5:11434/v1", ["ollama/llama3", "openai/llama3"], "generic"),
        ("https://api.openai.com/v1", ["openai/gpt-4o", "gpt-4o-mini"], "openai"),
        ("https://api.openai.com/v1", ["openai/gpt-4o", "hosted_vllm/qwen3"], "generic"),
        ("https://openrouter.ai/api/v1", ["openai/gpt-4o"], "generic"),
        ("http://10.0.0.5:8000/v1", ["hosted_vllm/qwen3"], "generic"),
        ("https://api.openai.com/v1", [], "generic"),
    ],
)
def test_an_endpoints_kind_is_ollama_openai_or_anthropic_only_on_a_sure_sign(
    base_url, litellm_names, kind
):
    import_(one_endpoint(base_url, litellm_names))

    assert Endpoint.objects.get().kind == kind


@pytest.mark.django_db
def test_anthropic_models_are_served_on_an_endpoint_of_theirs_alone_and_inactive_elsewhere():
    endpoints = [
        {"id": 1, "name": "Claude", "base_url": None, "api_key": ANTHROPIC_CREDENTIAL},
        {"id": 2, "name": "Mixed", "base_url": "https://api.anthropic.com", "api_key": "sk-x"},
    ]
    models = [
        {"id": "haiku", "litellm_name": "anthropic/claude-3-5-haiku", "endpoint_id": 1},
        {"id": "sonnet", "litellm_name": "anthropic/claude-3-5-sonnet", "endpoint_id": 2},
        {"id": "gpt", "litellm_name": "openai/gpt-4o", "endpoint_id": 2},
    ]

    report = import_({"version": 1, "data": {"endpoints": endpoints, "models": models}})

    claude, mixed = Endpoint.objects.order_by("name")
    assert (claude.kind, claude.base_url, claude.api_key) == (
        "anthropic",
        "https://api.anthropic.com/v1",
        ANTHROPIC_CREDENTIAL,
    )
    assert (mixed.kind, mixed.base_url) == ("generic", "https://api.anthropic.com")
    served = {m.name: (served_by(m), m.is_active) for m in Model.objects.all()}
    assert served == {
        "haiku": ([("Claude", "claude-3-5-haiku", 1, 0)], True),
        "sonnet": ([("Mixed", "claude-3-5-sonnet", 1, 0)], False),
        "gpt": ([("Mixed", "gpt-4o", 1, 0)], True),
    }
    assert [w for w in report.warnings if "priced 0" not in w] == [
        'models[1] ("sonnet"): "anthropic/claude-3-5-sonnet" needs an endpoint of kind '
        "Anthropic, which its endpoint cannot be (it also serves other providers' models, or is "
        'not at Anthropic\'s address); imported inactive with upstream name "claude-3-5-sonnet": '
        "deploy it on an Anthropic endpoint, then activate it.",
        'endpoint "Claude": base URL (none) → https://api.anthropic.com/v1 '
        "(Anthropic's Messages API).",
    ]


@pytest.mark.django_db
def test_a_repeated_import_keeps_a_kind_chosen_where_the_file_gave_no_sure_sign():
    import_(one_endpoint("http://10.0.0.5:8000/v1", ["openai/qwen3"]))
    Endpoint.objects.update(kind=Endpoint.Kind.VLLM)

    report = import_(one_endpoint("http://10.0.0.5:8000/v1", ["openai/qwen3"]))

    assert report.tallies["endpoints"].unchanged == 1
    assert Endpoint.objects.get().kind == "vllm"


@pytest.mark.django_db
def test_it_maps_litellm_names_prices_limits_and_fallbacks():
    import_(legacy_backup())

    models = {m.name: m for m in Model.objects.select_related("fallback")}
    # Each model's one endpoint, with its LiteLLM name's model part, is its one deployment.
    mapped = {name: (served_by(m), m.is_active) for name, m in models.items()}
    assert mapped == {
        "llama3": ([("Local Ollama", "llama3", 1, 0)], True),
        "llama3-big": ([("Local Ollama (2)", "llama3:70b", 1, 0)], True),
        "gpt-4o": ([("OpenAI", "gpt-4o", 1, 0)], True),
        "gpt-4o-mini": ([("OpenAI", "gpt-4o-mini", 1, 0)], True),
        "claude-sonnet": ([("Anthropic", "claude-3-5-sonnet-20240620", 1, 0)], True),
        "embed": ([], True),  # no endpoint: no deployment
    }
    llama = models["llama3"]
    assert (llama.price_in, llama.price_out) == (Decimal("0.000001"), Decimal("0.000002"))
    assert models["gpt-4o-mini"].price_in == Decimal("0.00000015")
    assert models["embed"].price_in == Decimal("0.00000001")
    assert (llama.rpm_limit, llama.day_limit) == (None, 1000)
    assert models["gpt-4o"].rpm_limit == 60
    assert llama.fallback.name == "gpt-4o-mini"
    assert models["claude-sonnet"].fallback.name == "gpt-4o"
    assert (models["embed"].capability, models["embed"].billing_unit) == ("EMBEDDING", "TOKEN")


@pytest.mark.django_db
def test_it_maps_users_on_prepaid_balances_without_passwords():
    import_(legacy_backup())

    alice, bob = User.objects.order_by("username")
    assert (alice.email, alice.organization, alice.balance) == (
        "alice@example.com",
        "Acme",
        Decimal("10"),
    )
    assert alice.date_joined == datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert (bob.email, bob.organization, bob.balance, bob.is_active) == (
        "",
        "",
        Decimal("0.5"),
        False,
    )
    assert bob.date_joined == datetime(2025, 2, 1, tzinfo=UTC)
    for user in (alice, bob):
        assert not user.has_usable_password()
        assert not user.is_staff and not user.is_superuser


@pytest.mark.django_db
def test_it_keeps_consumer_keys_by_their_digest():
    import_(legacy_backup())

    keys = {k.name: k for k in APIKey.objects.select_related("owner")}
    default, batch, old = keys["default"], keys["batch"], keys["old laptop"]
    assert default.digest == sha256(ALICE_SECRET) and default.prefix == "sk-AbCdE"
    assert (default.owner.username, default.is_active, default.log_content) == (
        "alice",
        True,
        True,
    )
    assert (default.rate_limit, default.allowed_capabilities) == ("60/m", ["TEXT"])
    assert (batch.owner.username, batch.rate_limit, batch.allowed_capabilities) == ("bob", "", [])
    assert (old.is_active, old.rate_limit) == (False, "10/s,1000/day")
    assert old.allowed_capabilities == ["TEXT", "EMBEDDING"]
    assert not default.allowed_models.exists()


@pytest.mark.django_db
def test_it_warns_about_what_it_changed_or_could_not_carry_over():
    report = import_(legacy_backup())

    assert report.source == "earlier-version backup"
    assert report.warnings == [
        'endpoints[2] ("Local Ollama"): another endpoint has this name; '
        'imported as "Local Ollama (2)".',
        'models[1] ("llama3-big"): priced 0 in the backup, so unpriced here (its requests '
        "logged with their cost unknown) unless marked “free on purpose”: tick that if it "
        "costs nothing, or set its prices.",
        'models[5] ("embed"): has no endpoint (the earlier version used its default Ollama '
        'URL); imported without a deployment: add one (upstream name "BAAI/bge-m3") on its '
        "endpoint before using it.",
        'endpoint "Anthropic": base URL https://api.anthropic.com → https://api.anthropic.com/v1 '
        "(Anthropic's Messages API).",
        'endpoint "Local Ollama": base URL http://localhost:11434 → http://localhost:11434/v1 '
        "(Ollama's OpenAI-compatible API).",
        'endpoint "Local Ollama (2)": base URL http://10.0.0.5:11434/ → '
        "http://10.0.0.5:11434/v1 (Ollama's OpenAI-compatible API).",
    ]
    assert {kind: t.created for kind, t in report.tallies.items()} == {
        "users": 2,
        "endpoints": 4,
        "models": 6,
        "api_keys": 3,
    }


@pytest.mark.django_db
def test_the_earlier_versions_rows_carry_no_budget_token_or_concurrency_limit():
    # Its backup has none (users: a balance; keys: a request rate; endpoints and models:
    # requests per minute and day; models: an input and an output price): the defaults.
    import_(legacy_backup())

    for user in User.objects.all():
        assert (user.budget, user.budget_soft, user.budget_period) == (None, None, "month")
    for key in APIKey.objects.all():
        assert (key.max_concurrent, key.budget, key.budget_soft) == (None, None, None)
    for endpoint in Endpoint.objects.all():
        assert (endpoint.tpm_limit, endpoint.tpd_limit) == (None, None)
    for model in Model.objects.all():
        assert (model.tpm_limit, model.tpd_limit, model.max_concurrent) == (None, None, None)
        assert (model.max_output_tokens, model.price_cache_read, model.is_free) == (
            None,
            None,
            False,
        )


@pytest.mark.django_db
def test_a_model_priced_0_is_imported_unpriced_with_a_warning_and_free_once_ticked():
    def unpriced() -> list[str]:
        return sorted(m.name for m in Model.objects.all() if m.unpriced)

    report = import_(legacy_backup())
    assert unpriced() == ["llama3-big"]
    Model.objects.filter(name="llama3-big").update(is_free=True)

    again = import_(legacy_backup())

    assert [w for w in report.warnings if "priced 0" in w] == [
        w for w in again.warnings if "priced 0" in w
    ]
    assert len([w for w in report.warnings if "priced 0" in w]) == 1
    assert again.tallies["models"].updated == 0  # free on purpose, as ticked: kept
    assert unpriced() == []


@pytest.mark.django_db
def test_a_float_price_with_noise_is_rounded_to_ten_decimals_with_a_warning():
    noisy = 0.1 * 3 / 1e5  # what a float division left in the earlier version's database
    assert str(noisy) != "3e-06"
    document = legacy_backup()
    document["data"]["models"][2]["price_in"] = noisy

    report = import_(document)

    assert Model.objects.get(name="gpt-4o").price_in == Decimal("0.000003")
    assert f'models[2] ("gpt-4o"): price_in {noisy} rounded to 0.000003 (10 decimals).' in (
        report.warnings
    )


@pytest.mark.django_db
def test_a_billing_unit_its_capability_cannot_measure_is_imported_as_the_usual_one():
    document = legacy_backup()
    document["data"]["models"][2]["billing_unit"] = "MINUTE"  # gpt-4o, a chat model

    report = import_(document)

    assert Model.objects.get(name="gpt-4o").billing_unit == "TOKEN"
    assert (
        'models[2] ("gpt-4o"): Text (chat, completions) cannot be billed per minute of audio: '
        "choose one of token, request. Imported as billed per token: check its prices."
    ) in report.warnings


# --------------------------------------------------------------------------- idempotent, atomic


@pytest.mark.django_db
def test_importing_it_again_changes_nothing():
    import_(legacy_backup())
    stamps = {
        model: dict(model.objects.values_list("pk", "updated_at"))
        for model in (User, Endpoint, Model, APIKey)
    }

    with CaptureQueriesContext(connection) as queries:
        report = import_(legacy_backup())

    assert {kind: (t.created, t.updated) for kind, t in report.tallies.items()} == {
        "users": (0, 0),
        "endpoints": (0, 0),
        "models": (0, 0),
        "api_keys": (0, 0),
    }
    assert sum(t.unchanged for t in report.tallies.values()) == 15
    writes = [
        q["sql"] for q in queries if q["sql"].split()[0].upper() in ("INSERT", "UPDATE", "DELETE")
    ]
    assert writes == []
    assert stamps == {
        model: dict(model.objects.values_list("pk", "updated_at"))
        for model in (User, Endpoint, Model, APIKey)
    }


@pytest.mark.django_db
def test_a_changed_legacy_file_updates_rows_in_place():
    import_(legacy_backup())
    document = legacy_backup()
    document["data"]["users"][0]["balance"] = 42.25
    document["data"]["endpoints"][1]["api_key"] = "sk-new-credential"

    report = import_(document)

    assert (report.tallies["users"].updated, report.tallies["endpoints"].updated) == (1, 1)
    assert User.objects.get(username="alice").balance == Decimal("42.25")
    assert Endpoint.objects.get(name="OpenAI").api_key == "sk-new-credential"
    assert Endpoint.objects.count() == 4


@pytest.mark.django_db
def test_a_models_new_endpoint_in_the_file_replaces_its_deployment():
    import_(legacy_backup())
    llama = Model.objects.get(name="llama3")
    Deployment.objects.create(
        model=llama, endpoint=Endpoint.objects.get(name="OpenAI"), upstream_name="extra"
    )
    document = legacy_backup()
    document["data"]["models"][0]["endpoint_id"] = 3  # "Local Ollama (2)"

    report = import_(document)

    assert report.tallies["models"].updated == 1
    assert served_by(llama) == [("Local Ollama (2)", "llama3", 1, 0)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["models"][2].update(capability="VIDEO"),
            "models[2] (\"gpt-4o\"): capability: Value 'VIDEO' is not a valid choice.",
        ),
        (
            lambda d: d["models"][0].update(endpoint_id=9),
            'models[0] ("llama3"): endpoint_id: no endpoint with id 9.',
        ),
        (
            lambda d: d["models"][0].update(fallback_model_id="gpt-5"),
            'models[0] ("llama3"): fallback: no model named "gpt-5" in the backup or the database.',
        ),
        (
            lambda d: d["api_keys"][1].update(user_id="no-such-user"),
            "api_keys[1] (\"batch\", sk-ZyXwV…): user_id: no user with id 'no-such-user'.",
        ),
        (
            lambda d: d["api_keys"][0].update(rate_limit_model="lots"),
            'api_keys[0] ("default", sk-AbCdE…): rate_limit: "lots" is not a rate',
        ),
        (
            lambda d: d["users"][1].update(balance="ten"),
            "users[1] (\"bob\"): balance: 'ten' is not a number.",
        ),
        (
            lambda d: d["models"][3].update(litellm_name=None),
            'models[3] ("gpt-4o-mini"): litellm_name is missing or not a text.',
        ),
        (lambda d: d.update(models={}), "data.models must be a list, not dict."),
    ],
)
def test_a_bad_entry_rejects_the_whole_file_and_is_named(change, message):
    import_(legacy_backup())
    before = everything()
    document = legacy_backup()
    document["data"]["users"][0]["balance"] = 99.0  # a valid change the refusal must undo
    change(document["data"])

    with pytest.raises(backup.BackupError) as error:
        import_(document)

    assert message in str(error.value)
    assert everything() == before


@pytest.mark.django_db
def test_it_refuses_an_unknown_legacy_version():
    document = legacy_backup()
    document["version"] = 2

    with pytest.raises(backup.BackupError, match="only version 1 is supported"):
        import_(document)
    assert not User.objects.exists()


# --------------------------------------------------------------------------- the command


@pytest.mark.django_db
def test_import_backup_recognises_the_earlier_format_and_reports(write_file, capsys):
    path = write_file(legacy_backup())

    call_command("import_backup", path, "--dry-run")
    call_command("import_backup", path)
    call_command("import_backup", path)

    out = capsys.readouterr().out
    dry, first, second = out.split("earlier-version backup")[1:]
    assert "nothing was saved" in dry and "models     6 created" in dry
    assert "models     6 created, 0 updated, 0 unchanged" in first
    assert "API keys   0 created, 0 updated, 3 unchanged" in second
    assert "Warnings (6):" in first
    assert UPSTREAM_CREDENTIAL not in out
    assert all(sha256(s) not in out for s in (ALICE_SECRET, BOB_SECRET, OLD_SECRET))


@pytest.mark.django_db
def test_import_backup_fails_cleanly_on_a_bad_legacy_file(write_file):
    document = legacy_backup()
    document["data"]["api_keys"][0]["user_id"] = "ghost"

    with pytest.raises(CommandError, match=r"Nothing was imported\. api_keys\[0\]"):
        call_command("import_backup", write_file(document))

    assert not Endpoint.objects.exists() and not User.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        (
            "http://169.254.169.254",
            "169.254.169.254 is a cloud metadata service, never an upstream.",
        ),
        (
            "http://metadata.google.internal",
            "metadata.google.internal is a cloud metadata service, never an upstream.",
        ),
        ("http://127.1:11434", "Write the address as 127.0.0.1."),
    ],
)
def test_import_backup_refuses_a_legacy_endpoint_the_address_policy_refuses(
    write_file, base_url, reason
):
    document = legacy_backup()
    document["data"]["endpoints"][0]["base_url"] = base_url

    with pytest.raises(CommandError) as error:
        call_command("import_backup", write_file(document))

    message = str(error.value)
    assert message.startswith('Nothing was imported. endpoints[0] ("Local Ollama"): base_url: ')
    assert message.endswith(reason)
    assert "\n" not in message
    assert not Endpoint.objects.exists() and not User.objects.exists()
