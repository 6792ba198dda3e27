"""AetherGate's own backup: export, round trip, idempotent and all-or-nothing import, commands."""

import io
import json
import os
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.hashers import make_password
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models.signals import post_save
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from aethergate import backup
from aethergate.backup.tests.conftest import CREDENTIAL, ROOT_PASSWORD, wipe, without_time
from aethergate.testing import served_by
from endpoints.models import Endpoint
from keys.models import APIKey, digest
from models_registry.models import Model

pytestmark = pytest.mark.django_db


@pytest.fixture
def saves():
    """The model classes post_save was sent for, in order, while the test runs.

    The audit log's own rows, which record those saves, are left out.
    """
    sent = []

    def receiver(sender, **kwargs):
        if sender.__name__ != "AuditEntry":
            sent.append(sender.__name__)

    post_save.connect(receiver, weak=False, dispatch_uid="test-backup-saves")
    yield sent
    post_save.disconnect(dispatch_uid="test-backup-saves")


def export(**options) -> dict:
    return json.loads(backup.dumps(backup.export_backup(**options)))


def import_(document, **options) -> backup.ImportReport:
    return backup.import_backup(json.loads(json.dumps(document)), **options)


def counts(report) -> dict:
    return {kind: (t.created, t.updated, t.unchanged) for kind, t in sorted(report.tallies.items())}


# --------------------------------------------------------------------------- export


def test_it_exports_every_kind_sorted_by_natural_key_without_secrets(data):
    document = export()

    assert document["format"] == "aethergate-backup" and document["version"] == 2
    assert [u["username"] for u in document["users"]] == ["alice", "bob", "root"]
    assert [e["name"] for e in document["endpoints"]] == ["local", "openai"]
    assert [m["name"] for m in document["models"]] == ["embed", "gpt-4o", "llama3"]
    digests = [k["digest"] for k in document["api_keys"]]
    assert digests == sorted(digests) and len(digests) == 3
    assert document["users"][0] == {
        "username": "alice",
        "email": "alice@example.com",
        "first_name": "Alice",
        "last_name": "",
        "organization": "Acme",
        "balance": "10.5",
        "budget": None,
        "budget_soft": None,
        "budget_period": "month",
        "is_active": True,
        "is_staff": False,
        "is_superuser": False,
        "date_joined": User.objects.get(username="alice").date_joined.isoformat(),
    }
    assert document["endpoints"][1] == {
        "name": "openai",
        "base_url": "https://api.openai.com/v1",
        "kind": "openai",
        "native_responses": True,
        "rpm_limit": 100,
        "day_limit": 5000,
        "tpm_limit": None,
        "tpd_limit": None,
        "connect_timeout": 3.5,
        "first_byte_timeout": 120.0,
        "idle_timeout": 60.0,
        "total_timeout": 300.0,
        "health_path": "/models",
        "is_active": True,
        "has_credential": True,
    }
    assert document["endpoints"][0]["has_credential"] is False
    assert document["endpoints"][0]["kind"] == "generic"
    assert document["endpoints"][0]["native_responses"] is False
    assert document["endpoints"][0]["health_path"] == ""
    assert document["models"][2] == {
        "name": "llama3",
        "capability": "TEXT",
        "billing_unit": "TOKEN",
        "price_in": "0",
        "price_out": "0",
        "price_cache_read": None,
        "price_cache_write": None,
        "is_free": False,
        "rpm_limit": 10,
        "day_limit": None,
        "tpm_limit": None,
        "tpd_limit": None,
        "max_concurrent": None,
        "max_output_tokens": None,
        "strategy": "least_busy",
        "is_active": True,
        "deployments": [
            {"endpoint": "local", "upstream_name": "llama3:8b", "weight": 1, "priority": 0},
            {"endpoint": "local", "upstream_name": "llama3:8b-q4", "weight": 2, "priority": 1},
        ],
        "fallback": "gpt-4o",
        "context_fallback": "gpt-4o",
    }
    assert document["models"][1]["price_in"] == "0.0000025"
    assert document["models"][1]["deployments"] == [
        {"endpoint": "openai", "upstream_name": "gpt-4o-2024-08-06", "weight": 1, "priority": 0}
    ]
    assert document["models"][0]["deployments"] == []
    ci = next(k for k in document["api_keys"] if k["name"] == "ci")
    key = APIKey.objects.get(name="ci")
    assert ci == {
        "digest": digest(data["ci"]),
        "prefix": data["ci"][:11],
        "owner": "alice",
        "name": "ci",
        "is_active": True,
        "log_content": True,
        "rate_limit": "60/m,1000/d",
        "max_concurrent": None,
        "budget": None,
        "budget_soft": None,
        "budget_period": "month",
        "allowed_capabilities": ["TEXT", "EMBEDDING"],
        "allowed_models": ["gpt-4o", "llama3"],
        "expires_at": key.expires_at.isoformat(),
        "created_at": key.created_at.isoformat(),
        "rotated_at": None,
    }
    text = backup.dumps(backup.export_backup())
    assert CREDENTIAL not in text and '"password"' not in text and '"api_key"' not in text
    assert all(secret not in text for secret in data.values())


def test_it_exports_credentials_and_password_hashes_only_with_include_secrets(data):
    document = export(include_secrets=True)

    endpoints = {e["name"]: e for e in document["endpoints"]}
    assert endpoints["openai"]["api_key"] == CREDENTIAL
    assert endpoints["local"]["api_key"] == ""
    assert "has_credential" not in endpoints["openai"]
    users = {u["username"]: u for u in document["users"]}
    assert users["root"]["password"] == User.objects.get(username="root").password
    assert all(secret not in backup.dumps(document) for secret in data.values())


def test_two_exports_are_identical_but_for_their_time(data):
    assert without_time(export()) == without_time(export())


# --------------------------------------------------------------------------- round trip


def test_it_round_trips_through_an_empty_database(data):
    before = export(include_secrets=True)
    wipe()

    report = import_(before, grant_privileges=True)

    assert counts(report) == {
        "api_keys": (3, 0, 0),
        "endpoints": (2, 0, 0),
        "models": (3, 0, 0),
        "users": (3, 0, 0),
    }
    assert report.warnings == []
    assert report.granted == ['users[2] ("root"): staff, superuser, password']
    assert without_time(export(include_secrets=True)) == without_time(before)
    # The restored rows work: keys by digest, the admin's password, the credential.
    assert set(APIKey.objects.values_list("digest", flat=True)) == {
        digest(s) for s in data.values()
    }
    assert User.objects.get(username="root").check_password(ROOT_PASSWORD)
    openai = Endpoint.objects.get(name="openai")
    assert (openai.api_key, openai.native_responses) == (CREDENTIAL, True)


def test_without_secrets_the_round_trip_loses_only_credentials_and_passwords(data):
    before = export()
    wipe()

    report = import_(before, grant_privileges=True)

    assert report.granted == ['users[2] ("root"): staff, superuser']
    after = export()
    assert after["endpoints"][1]["has_credential"] is False
    after["endpoints"][1]["has_credential"] = True
    assert without_time(after) == without_time(before)
    assert not User.objects.get(username="root").has_usable_password()
    assert report.warnings == [
        'endpoints[1] ("openai"): created without its upstream credential (the backup was made '
        "without --include-secrets): set it in the admin.",
        'users[2] ("root"): created without a password (the backup has none): set one with '
        "`manage.py changepassword root`.",
    ]


def set_limits_and_budgets() -> None:
    """Every budget, token and concurrency limit, and cache price, set on `data`'s rows."""
    User.objects.filter(username="alice").update(
        budget=Decimal("50"), budget_soft=Decimal("40.25"), budget_period="week"
    )
    APIKey.objects.filter(name="ci").update(
        rate_limit="60/m,1000/d,100000tok/m,2000000tok/d",
        max_concurrent=4,
        budget=Decimal("5.5"),
        budget_soft=Decimal("0.000001"),
        budget_period="none",
    )
    Endpoint.objects.filter(name="openai").update(tpm_limit=450_000, tpd_limit=10_000_000)
    Model.objects.filter(name="gpt-4o").update(
        price_cache_read=Decimal("0.00000125"),
        price_cache_write=Decimal("0.000003125"),
        tpm_limit=30_000,
        tpd_limit=1_000_000,
        max_concurrent=8,
        max_output_tokens=2048,
    )
    Model.objects.filter(name="llama3").update(is_free=True, price_cache_read=Decimal(0))


def test_every_limit_budget_and_cache_price_round_trips(data):
    set_limits_and_budgets()
    before = export(include_secrets=True)
    wipe()

    report = import_(before, grant_privileges=True)

    assert counts(report)["models"] == (3, 0, 0)
    assert without_time(export(include_secrets=True)) == without_time(before)
    users = {u["username"]: u for u in before["users"]}
    assert (users["alice"]["budget"], users["alice"]["budget_soft"]) == ("50", "40.25")
    assert users["alice"]["budget_period"] == "week"
    ci = next(k for k in before["api_keys"] if k["name"] == "ci")
    assert (ci["max_concurrent"], ci["budget"], ci["budget_soft"], ci["budget_period"]) == (
        4,
        "5.5",
        "0.000001",
        "none",
    )
    models = {m["name"]: m for m in before["models"]}
    assert (models["gpt-4o"]["price_cache_read"], models["gpt-4o"]["price_cache_write"]) == (
        "0.00000125",
        "0.000003125",
    )
    assert (models["llama3"]["is_free"], models["llama3"]["price_cache_read"]) == (True, "0")
    # What the restored rows hold, as the proxy's snapshot reads them.
    key = APIKey.objects.get(name="ci")
    assert (key.rate_limit, key.max_concurrent, key.budget, key.budget_soft) == (
        "60/m,1000/d,100000tok/m,2000000tok/d",
        4,
        Decimal("5.5"),
        Decimal("0.000001"),
    )
    assert key.owner.budget_soft == Decimal("40.25")
    openai = Endpoint.objects.get(name="openai")
    assert (openai.tpm_limit, openai.tpd_limit) == (450_000, 10_000_000)
    gpt = Model.objects.get(name="gpt-4o")
    assert (gpt.tpm_limit, gpt.tpd_limit, gpt.max_concurrent, gpt.max_output_tokens) == (
        30_000,
        1_000_000,
        8,
        2048,
    )
    assert gpt.price_cache_write == Decimal("0.000003125")
    assert not Model.objects.get(name="llama3").unpriced


def test_a_second_import_changes_nothing_and_says_so(data, saves):
    document = export(include_secrets=True)
    wipe()
    import_(document)
    stamps = {
        model: dict(model.objects.values_list("pk", "updated_at"))
        for model in (User, Endpoint, Model, APIKey)
    }
    saves.clear()

    with CaptureQueriesContext(connection) as queries:
        report = import_(document)

    assert counts(report) == {
        "api_keys": (0, 0, 3),
        "endpoints": (0, 0, 2),
        "models": (0, 0, 3),
        "users": (0, 0, 3),
    }
    writes = [
        q["sql"] for q in queries if q["sql"].split()[0].upper() in ("INSERT", "UPDATE", "DELETE")
    ]
    assert writes == [] and saves == []
    assert stamps == {
        model: dict(model.objects.values_list("pk", "updated_at"))
        for model in (User, Endpoint, Model, APIKey)
    }


def test_importing_an_export_into_its_own_database_changes_nothing(data):
    report = import_(export())

    assert all(t.created == t.updated == 0 for t in report.tallies.values())


def test_it_updates_what_differs_with_save_and_keeps_credentials_the_file_leaves_out(data, saves):
    document = export()
    document["models"][1]["price_in"] = "0.000003"
    document["endpoints"][1]["base_url"] = "https://eu.api.openai.com/v1"
    ci = next(k for k in document["api_keys"] if k["name"] == "ci")
    ci["allowed_models"] = ["gpt-4o"]
    document["users"][0]["balance"] = None
    endpoint_stamp = Endpoint.objects.get(name="openai").updated_at
    saves.clear()

    report = import_(document)

    assert counts(report) == {
        "api_keys": (0, 1, 2),
        "endpoints": (0, 1, 1),
        "models": (0, 1, 2),
        "users": (0, 1, 2),
    }
    openai = Endpoint.objects.get(name="openai")
    assert openai.base_url == "https://eu.api.openai.com/v1"
    assert openai.api_key == CREDENTIAL
    assert openai.updated_at > endpoint_stamp
    assert Model.objects.get(name="gpt-4o").price_in == Decimal("0.000003")
    assert list(APIKey.objects.get(name="ci").allowed_models.values_list("name", flat=True)) == [
        "gpt-4o"
    ]
    assert User.objects.get(username="alice").balance is None
    assert saves == ["Endpoint", "Model", "User"]


def test_it_sets_or_clears_a_credential_the_file_gives(data):
    document = export(include_secrets=True)
    document["endpoints"][0]["api_key"] = "sk-new-local-credential"
    document["endpoints"][1]["api_key"] = ""

    report = import_(document)

    assert report.tallies["endpoints"].updated == 2
    assert Endpoint.objects.get(name="local").api_key == "sk-new-local-credential"
    assert not Endpoint.objects.get(name="openai").has_credential


def test_the_files_deployments_replace_a_models_set(data, saves):
    llama = Model.objects.get(name="llama3")
    kept = llama.deployments.get(upstream_name="llama3:8b").pk
    document = export()
    document["models"][2]["deployments"] = [
        {"endpoint": "local", "upstream_name": "llama3:8b", "weight": 5, "priority": 0},
        {"endpoint": "openai", "upstream_name": "gpt-4o-mini"},
    ]
    saves.clear()

    report = import_(document)

    assert counts(report)["models"] == (0, 1, 2)
    assert served_by(llama) == [("local", "llama3:8b", 5, 0), ("openai", "gpt-4o-mini", 1, 0)]
    assert llama.deployments.get(upstream_name="llama3:8b").pk == kept  # updated in place
    assert saves == ["Deployment", "Deployment"]  # the weight, the new one
    assert counts(import_(document))["models"] == (0, 0, 3)


def test_a_model_row_without_deployments_leaves_its_set_as_it_is(data):
    llama = Model.objects.get(name="llama3")
    before = served_by(llama)
    document = {
        "format": "aethergate-backup",
        "version": 2,
        "models": [{"name": "llama3", "rpm_limit": 20}],
    }

    report = import_(document)

    assert counts(report)["models"] == (0, 1, 0)
    assert served_by(llama) == before
    assert Model.objects.get(name="llama3").rpm_limit == 20


def test_an_empty_list_of_deployments_removes_them(data):
    document = export()
    document["models"][2]["deployments"] = []

    report = import_(document)

    assert counts(report)["models"] == (0, 1, 2)
    assert not Model.objects.get(name="llama3").deployments.exists()


def test_a_dry_run_reports_but_saves_nothing(data):
    document = export(include_secrets=True)
    wipe()

    report = import_(document, dry_run=True)

    assert report.dry_run and report.tallies["api_keys"].created == 3
    assert not User.objects.exists() and not Endpoint.objects.exists()
    assert not Model.objects.exists() and not APIKey.objects.exists()


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "Not valid JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", "A backup is a JSON object; this file holds a list."),
        ('{"format": "other", "version": 1}', 'Unknown backup format "other".'),
        (
            '{"format": "aethergate-backup", "version": 3}',
            "This is a version 3 AetherGate backup; this AetherGate reads versions 1 and 2.",
        ),
        (
            '{"format": "aethergate-backup", "version": true}',
            "This is a version True AetherGate backup; this AetherGate reads versions 1 and 2.",
        ),
        ('{"hello": 1}', "Not a backup"),
        ('{"format": "aethergate-backup", "version": 1, "users": {}}', '"users" must be a list'),
        ('{"format": "aethergate-backup", "version": 1, "models": [3]}', "models[0]: expected"),
        (
            '{"format": "aethergate-backup", "version": 1, "users": [{"email": "x@y.z"}]}',
            "users[0]: username is missing or not a text.",
        ),
        (
            '{"format": "aethergate-backup", "version": 1, "users": [{"username": "x", "pw": 1}]}',
            'users[0] ("x"): unknown field(s): pw.',
        ),
        (
            '{"format": "aethergate-backup", "version": 1, '
            '"endpoints": [{"name": "a"}, {"name": "a"}]}',
            'endpoints[1] ("a"): the same name as endpoints[0].',
        ),
        (
            '{"format": "aethergate-backup", "version": 2, '
            '"models": [{"name": "m", "deployments": {"endpoint": "local"}}]}',
            'models[0] ("m"): deployments: expected a list, not dict.',
        ),
        (
            '{"format": "aethergate-backup", "version": 2, '
            '"models": [{"name": "m", "deployments": ["local"]}]}',
            'models[0] ("m"): deployments[0]: expected an object, not str.',
        ),
        (
            '{"format": "aethergate-backup", "version": 2, "models": [{"name": "m", '
            '"deployments": [{"endpoint": "local", "upstream_name": "x", "id": 3}]}]}',
            'models[0] ("m"): deployments[0]: unknown field(s): id.',
        ),
        (
            '{"format": "aethergate-backup", "version": 2, '
            '"models": [{"name": "m", "deployments": [{"endpoint": "local"}]}]}',
            'models[0] ("m"): deployments[0]: upstream_name is missing or not a text.',
        ),
        (
            '{"format": "aethergate-backup", "version": 2, "models": [{"name": "m", '
            '"deployments": [{"endpoint": "local", "upstream_name": "x", "weight": "3"}]}]}',
            'models[0] ("m"): deployments[0]: weight: expected a whole number.',
        ),
        (
            '{"format": "aethergate-backup", "version": 2, "models": [{"name": "m", '
            '"deployments": [{"endpoint": "local", "upstream_name": "x", "priority": true}]}]}',
            'models[0] ("m"): deployments[0]: priority: expected a whole number.',
        ),
        (
            '{"format": "aethergate-backup", "version": 2, '
            '"models": [{"name": "m", "endpoint": "local", "upstream_name": "x"}]}',
            'models[0] ("m"): unknown field(s): endpoint, upstream_name.',
        ),
        (
            '{"format": "aethergate-backup", "version": 1, '
            '"api_keys": [{"digest": "abc", "name": "k", "prefix": "ag-x"}]}',
            'api_keys[0] ("k", ag-x…): digest: must be the 64 lowercase hex digits',
        ),
    ],
)
def test_it_refuses_a_malformed_file_and_changes_nothing(data, text, message):
    before = export(include_secrets=True)

    with pytest.raises(backup.BackupError) as error:
        backup.import_backup(backup.loads(text))

    assert message in str(error.value)
    assert without_time(export(include_secrets=True)) == without_time(before)


def test_one_invalid_row_rejects_the_whole_file_and_is_named(data):
    before = export(include_secrets=True)
    document = export(include_secrets=True)
    document["endpoints"][0]["base_url"] = "http://127.0.0.1:8080/v1"  # valid, earlier row
    document["users"].append({"username": "carol", "balance": "5"})  # valid, new
    document["models"][1]["price_in"] = "-1"

    with pytest.raises(backup.BackupError) as error:
        import_(document)

    assert str(error.value) == (
        'models[1] ("gpt-4o"): price_in: Ensure this value is greater than or equal to 0.'
    )
    assert without_time(export(include_secrets=True)) == without_time(before)


@pytest.mark.parametrize(
    ("kind", "index", "change", "message"),
    [
        (
            "models",
            2,
            {"deployments": [{"endpoint": "nope", "upstream_name": "x"}]},
            'models[2] ("llama3"): deployments[0]: endpoint: no endpoint named "nope"',
        ),
        (
            "models",
            2,
            {"deployments": [{"endpoint": "local", "upstream_name": "x", "weight": -1}]},
            'models[2] ("llama3"): deployments[0]: weight: Ensure this value is greater than',
        ),
        (
            "models",
            2,
            {"deployments": [{"endpoint": "local", "upstream_name": ""}]},
            'models[2] ("llama3"): deployments[0]: upstream_name: This field cannot be blank.',
        ),
        (
            "models",
            2,
            {"deployments": [{"endpoint": "local", "upstream_name": "x"}] * 2},
            'models[2] ("llama3"): deployments[1]: Another deployment of this model has this',
        ),
        ("models", 2, {"fallback": "nope"}, 'models[2] ("llama3"): fallback: no model named'),
        (
            "models",
            2,
            {"context_fallback": "nope"},
            'models[2] ("llama3"): context_fallback: no model named "nope"',
        ),
        ("models", 2, {"strategy": "random"}, "strategy: Value 'random' is not a valid choice."),
        ("api_keys", 0, {"owner": "nobody"}, 'owner: no user named "nobody" in the backup'),
        ("api_keys", 0, {"allowed_models": ["nope"]}, 'allowed_models: no model named "nope"'),
        ("users", 0, {"email": "not-an-email"}, 'users[0] ("alice"): email: Enter a valid'),
        ("api_keys", 0, {"rate_limit": "lots"}, 'rate_limit: "lots" is not a rate'),
        ("endpoints", 0, {"day_limit": 0}, "day_limit: Ensure this value is greater than or"),
        ("endpoints", 1, {"kind": "triton"}, "kind: Value 'triton' is not a valid choice."),
        (
            "endpoints",
            1,
            {"kind": "anthropic"},  # and native_responses, as exported
            'endpoints[1] ("openai"): native_responses: An Anthropic server does not serve',
        ),
        ("endpoints", 1, {"tpm_limit": 0}, "tpm_limit: Ensure this value is greater than or"),
        ("users", 0, {"budget": "-1"}, 'users[0] ("alice"): budget: Ensure this value is'),
        (
            "users",
            0,
            {"budget": "10", "budget_soft": "20"},
            'users[0] ("alice"): budget_soft: The alert must be at or below the hard limit.',
        ),
        (
            "api_keys",
            0,
            {"budget_period": "year"},
            "budget_period: Value 'year' is not a valid choice.",
        ),
        ("api_keys", 0, {"rate_limit": "10tok/x"}, 'rate_limit: "10tok/x" is not a rate'),
        ("api_keys", 0, {"max_concurrent": 0}, "max_concurrent: Ensure this value is greater"),
        ("api_keys", 0, {"budget_soft": "lots"}, "budget_soft: “lots” value must be a decimal"),
        ("models", 1, {"price_cache_read": "-0.1"}, 'models[1] ("gpt-4o"): price_cache_read:'),
        ("models", 1, {"max_output_tokens": 0}, "max_output_tokens: Ensure this value is"),
        ("models", 1, {"is_free": "maybe"}, "is_free: “maybe” value must be either True or"),
    ],
)
def test_a_bad_row_or_unknown_reference_is_named_and_nothing_changes(
    data, kind, index, change, message
):
    before = export(include_secrets=True)
    document = export(include_secrets=True)
    document[kind][index].update(change)

    with pytest.raises(backup.BackupError) as error:
        import_(document)

    assert message in str(error.value)
    assert without_time(export(include_secrets=True)) == without_time(before)


def test_an_export_from_before_kinds_imports_new_endpoints_as_generic_and_keeps_known_ones(data):
    document = export(include_secrets=True)
    for row in document["endpoints"]:
        del row["kind"]
    Endpoint.objects.filter(name="local").delete()

    report = import_(document)

    assert counts(report)["endpoints"] == (1, 0, 1)
    kinds = dict(Endpoint.objects.values_list("name", "kind"))
    assert kinds == {"local": "generic", "openai": "openai"}


def test_it_refuses_fallbacks_that_loop(data):
    document = export()
    document["models"][1]["fallback"] = "llama3"  # gpt-4o → llama3 → gpt-4o

    with pytest.raises(backup.BackupError) as error:
        import_(document)

    assert "fallback: This fallback chain loops back on itself." in str(error.value)
    assert Model.objects.get(name="gpt-4o").fallback is None


def test_it_resolves_fallbacks_to_models_later_in_the_file():
    document = {
        "format": "aethergate-backup",
        "version": 2,
        "models": [
            {"name": "a", "fallback": "b", "context_fallback": "c"},
            {"name": "b", "fallback": "c"},
            {"name": "c"},
        ],
    }

    import_(document)
    report = import_(document)

    a = Model.objects.get(name="a")
    assert (a.fallback.name, a.context_fallback.name) == ("b", "c")
    assert Model.objects.get(name="b").fallback.name == "c"
    assert report.tallies["models"].unchanged == 3


def test_it_refuses_context_fallbacks_that_loop(data):
    document = export()
    document["models"][1]["context_fallback"] = "llama3"  # gpt-4o → llama3 → gpt-4o

    with pytest.raises(backup.BackupError) as error:
        import_(document)

    assert 'models[1] ("gpt-4o"): context_fallback: This fallback chain loops back' in str(
        error.value
    )
    assert Model.objects.get(name="gpt-4o").context_fallback is None


# --------------------------------------------------------------------------- commands


def test_export_backup_writes_the_document_to_stdout(data, capsys):
    call_command("export_backup")

    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert without_time(document) == without_time(export())
    assert CREDENTIAL not in captured.out + captured.err


def test_export_backup_creates_the_output_file_readable_only_by_its_owner(data, tmp_path, capsys):
    path = tmp_path / "backup.json"

    call_command("export_backup", "--output", str(path), "--include-secrets")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["endpoints"][1]["api_key"] == CREDENTIAL
    out = capsys.readouterr().out
    assert "Wrote" in out and "3 users, 2 endpoints, 3 models, 3 API keys" in out
    assert "in clear" in out and CREDENTIAL not in out


def test_export_backup_refuses_to_overwrite_a_file_unless_forced(data, tmp_path):
    path = tmp_path / "backup.json"
    path.write_text("keep me")
    os.chmod(path, 0o644)  # a wider mode, which --force must not inherit

    with pytest.raises(CommandError, match="exists; pass --force"):
        call_command("export_backup", "--output", str(path))
    assert path.read_text() == "keep me"

    call_command("export_backup", "--output", str(path), "--force")
    assert json.loads(path.read_text())["format"] == "aethergate-backup"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["backup.json"]


def test_import_backup_prints_a_summary_per_kind(data, tmp_path, capsys):
    path = tmp_path / "backup.json"
    path.write_text(backup.dumps(backup.export_backup(include_secrets=True)))
    wipe()

    call_command("import_backup", str(path))
    call_command("import_backup", str(path))

    out = capsys.readouterr().out
    first, second = out.split("Imported an AetherGate backup:")[1:]
    assert "endpoints  2 created, 0 updated, 0 unchanged" in first
    assert "API keys   3 created, 0 updated, 0 unchanged" in first
    assert "users      0 created, 0 updated, 3 unchanged" in second
    assert CREDENTIAL not in out and "sha" not in out
    assert all(digest(secret) not in out for secret in data.values())


def test_import_backup_reads_stdin_and_dry_runs(data, capsys):
    text = backup.dumps(backup.export_backup())
    wipe()

    call_command("import_backup", "-", "--dry-run", stdin=io.StringIO(text))

    out = capsys.readouterr().out
    assert "Dry run of an AetherGate backup: nothing was saved." in out
    assert "models     3 created" in out
    assert "Warnings (2):" in out
    assert not User.objects.exists()


def test_import_backup_fails_with_the_row_and_a_non_zero_exit(data, tmp_path):
    document = export()
    document["models"][1]["price_in"] = "-1"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))

    with pytest.raises(CommandError) as error:
        call_command("import_backup", str(path))

    assert str(error.value) == (
        'Nothing was imported. models[1] ("gpt-4o"): price_in: '
        "Ensure this value is greater than or equal to 0."
    )
    assert Model.objects.get(name="gpt-4o").price_in == Decimal("0.0000025")


def test_import_backup_names_a_missing_file(tmp_path):
    with pytest.raises(CommandError, match="No such file"):
        call_command("import_backup", str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        (
            "http://169.254.169.254/latest/meta-data",
            "169.254.169.254 is a cloud metadata service, never an upstream.",
        ),
        ("http://[::ffff:127.0.0.1]:11434/v1", "Write the address as 127.0.0.1."),
        ("http://0x7f000001:11434/v1", "Write the address as 127.0.0.1."),
    ],
)
def test_import_backup_refuses_an_endpoint_the_address_policy_refuses(
    data, tmp_path, base_url, reason
):
    before = export(include_secrets=True)
    document = export()
    document["endpoints"][0]["base_url"] = base_url
    path = tmp_path / "imds.json"
    path.write_text(json.dumps(document))

    with pytest.raises(CommandError) as error:
        call_command("import_backup", str(path))

    assert str(error.value).startswith('Nothing was imported. endpoints[0] ("local"): base_url: ')
    assert str(error.value).endswith(reason)
    assert "\n" not in str(error.value)
    assert without_time(export(include_secrets=True)) == without_time(before)


# --------------------------------------------------------------------------- privileges


def attacker_backup(data, password_hash):
    """The issue's file: a chosen superuser with a chosen password hash, beside real rows."""
    document = export(include_secrets=True)
    document["users"].append(
        {"username": "mallory", "is_staff": True, "is_superuser": True, "password": password_hash}
    )
    return document


def admin_login_works(username, password):
    response = Client().post(
        "/admin/login/", {"username": username, "password": password, "next": "/admin/"}
    )
    return response.status_code == 302


def test_an_import_without_the_flag_grants_no_privileges_and_says_so(data, tmp_path, capsys):
    path = tmp_path / "backup.json"
    path.write_text(json.dumps(attacker_backup(data, make_password("mallory-pass-123"))))
    wipe()

    call_command("import_backup", str(path))

    out = capsys.readouterr().out
    mallory, root = User.objects.get(username="mallory"), User.objects.get(username="root")
    for user in (mallory, root):
        assert not (user.is_staff or user.is_superuser), user
        assert not user.has_usable_password(), user
    assert not admin_login_works("mallory", "mallory-pass-123")
    assert not admin_login_works("root", ROOT_PASSWORD)
    assert (
        'users[2] ("root"): not imported without --grant-privileges: staff, superuser, '
        "password." in out
    )
    assert 'users[3] ("mallory"): not imported without --grant-privileges' in out
    assert "Privileges granted" not in out
    # Consumer keys are digests: they work whatever happened to their owners' privileges.
    assert APIKey.objects.usable().filter(digest=digest(data["ci"])).exists()


def test_with_the_flag_the_command_lists_every_privilege_it_grants(data, tmp_path, capsys):
    path = tmp_path / "backup.json"
    path.write_text(json.dumps(attacker_backup(data, make_password("mallory-pass-123"))))
    wipe()

    call_command("import_backup", str(path), "--grant-privileges")
    first = capsys.readouterr().out
    call_command("import_backup", str(path), "--grant-privileges")
    second = capsys.readouterr().out

    assert "Privileges granted (2):" in first
    assert '  - users[2] ("root"): staff, superuser, password' in first
    assert '  - users[3] ("mallory"): staff, superuser, password' in first
    assert "Privileges granted" not in second  # nothing new to grant
    assert admin_login_works("root", ROOT_PASSWORD)
    assert User.objects.get(username="mallory").is_superuser


def test_without_the_flag_existing_users_keep_their_privileges_and_password(data):
    document = attacker_backup(data, make_password("x"))
    root = next(u for u in document["users"] if u["username"] == "root")
    root.update(is_superuser=False, is_staff=False, password=make_password("other-pass-123"))
    alice = next(u for u in document["users"] if u["username"] == "alice")
    alice.update(is_staff=True)

    report = import_(document)

    root_user = User.objects.get(username="root")
    assert root_user.is_superuser and root_user.is_staff
    assert root_user.check_password(ROOT_PASSWORD)
    assert not User.objects.get(username="alice").is_staff
    assert report.granted == []
    assert 'users[0] ("alice"): not imported without --grant-privileges: staff.' in report.warnings
    assert 'users[2] ("root"): not imported without --grant-privileges: password.' in (
        report.warnings
    )


def test_a_dry_run_with_the_flag_says_what_it_would_grant(data, tmp_path, capsys):
    path = tmp_path / "backup.json"
    path.write_text(backup.dumps(backup.export_backup(include_secrets=True)))
    wipe()

    call_command("import_backup", str(path), "--dry-run", "--grant-privileges")

    out = capsys.readouterr().out
    assert 'Privileges would grant (1):\n  - users[2] ("root"): staff, superuser, password' in out
    assert not User.objects.exists()


# --------------------------------------------------------------------------- hostile files

DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000
DEEP_IN_A_ROW = (
    '{"format": "aethergate-backup", "version": 1, "users": [{"username": "x", "email": '
    + "[" * 500
    + "]" * 500
    + "}]}"
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "Nothing was imported. Not valid JSON: Expecting property name"),
        (b"[1, 2]", "Nothing was imported. A backup is a JSON object; this file holds a list."),
        (b'"just text"', "Nothing was imported. A backup is a JSON object; this file holds a str"),
        (DEEP_ARRAY.encode(), "Nothing was imported. Nested more than 32 levels deep"),
        (DEEP_OBJECT.encode(), "Nothing was imported. Nested more than 32 levels deep"),
        (DEEP_IN_A_ROW.encode(), "Nothing was imported. Nested more than 32 levels deep"),
        (b'{"format": "aethergate-backup", "users": ["\xff\xfe"]}', "not UTF-8 text"),
        (b"", "Nothing was imported. Not valid JSON: Expecting value"),
    ],
    ids=["not-json", "list", "string", "deep-array", "deep-object", "deep-in-row", "utf8", "empty"],
)
def test_import_backup_refuses_a_malformed_file_in_one_line(data, tmp_path, content, message):
    before = export(include_secrets=True)
    path = tmp_path / "bad.json"
    path.write_bytes(content)

    with pytest.raises(CommandError) as error:
        call_command("import_backup", str(path))

    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert without_time(export(include_secrets=True)) == without_time(before)


def test_import_backup_refuses_a_file_over_the_size_limit_unread(data, tmp_path, settings):
    settings.AETHERGATE_BACKUP_MAX_BYTES = 1000
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"format": "aethergate-backup", "pad": "x" * 2000}))

    with pytest.raises(CommandError) as error:
        call_command("import_backup", str(path))
    with pytest.raises(CommandError) as piped:
        call_command("import_backup", "-", stdin=io.StringIO(path.read_text()))

    assert str(error.value) == f"Nothing was imported. {path} is larger than 1000 bytes."
    assert (
        str(piped.value) == "Nothing was imported. Too large: a backup is at most 1000 bytes here."
    )


def test_a_deeply_nested_file_exits_non_zero_without_a_traceback(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP_ARRAY)
    root = Path(__file__).resolve().parents[3]
    env = {
        **os.environ,
        "AETHERGATE_ENV_FILE": "",
        "DEBUG": "false",
        "SECRET_KEY": "test-only-secret-key-not-for-any-deployment",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}",
    }

    result = subprocess.run(
        [sys.executable, str(root / "manage.py"), "import_backup", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "CommandError: Nothing was imported. Nested more than 32 levels deep: not a backup."
    ]
