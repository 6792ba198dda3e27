"""A version-2 export written before budgets, token limits and cache prices still imports.

files/aethergate-v2-export.json is such an export, as that AetherGate wrote it
(its version-1 sibling imported, then exported by the commit before the schema
for limits and budgets). The format keeps version 2: the new fields are
optional like every plain field (absent: the default for a new row, kept for a
known one), so the importer neither refuses nor misreads a file without them.
"""

import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command

from accounts.models import User
from aethergate import backup
from aethergate.backup.schema import SCHEMA
from endpoints.models import Endpoint
from keys.models import APIKey
from models_registry.models import Model

pytestmark = pytest.mark.django_db

V2_EXPORT = Path(__file__).parent / "files" / "aethergate-v2-export.json"
# The fields added after the file was written, per kind: it has none of them.
NEW_FIELDS = {
    "users": {"budget", "budget_soft", "budget_period"},
    "endpoints": {"tpm_limit", "tpd_limit"},
    "models": {
        "price_cache_read",
        "price_cache_write",
        "is_free",
        "tpm_limit",
        "tpd_limit",
        "max_concurrent",
        "max_output_tokens",
    },
    "api_keys": {"max_concurrent", "budget", "budget_soft", "budget_period"},
}


def v2_document() -> dict:
    return json.loads(V2_EXPORT.read_text())


def test_the_file_is_a_version_2_export_without_the_new_fields():
    document = v2_document()

    assert document["version"] == 2
    for kind, fields in NEW_FIELDS.items():
        assert fields <= set(SCHEMA[kind].fields), "the schema carries them now"
        assert document[kind], kind
        assert all(not fields & set(row) for row in document[kind]), kind


def test_it_imports_with_the_defaults_for_what_it_lacks(capsys):
    call_command("import_backup", str(V2_EXPORT))

    assert "Imported an AetherGate backup:" in capsys.readouterr().out
    alice = User.objects.get(username="alice")
    assert (alice.balance, alice.budget, alice.budget_soft, alice.budget_period) == (
        Decimal("10.5"),
        None,
        None,
        "month",
    )
    key = APIKey.objects.get(name="ci")
    assert (key.rate_limit, key.max_concurrent, key.budget, key.budget_soft) == (
        "60/m",
        None,
        None,
        None,
    )
    assert key.budget_period == "month"
    openai = Endpoint.objects.get(name="openai")
    assert (openai.rpm_limit, openai.tpm_limit, openai.tpd_limit) == (100, None, None)
    gpt = Model.objects.get(name="gpt-4o")
    assert (gpt.price_in, gpt.price_cache_read, gpt.price_cache_write) == (
        Decimal("0.0000025"),
        None,
        None,
    )
    assert (gpt.tpm_limit, gpt.tpd_limit, gpt.max_concurrent, gpt.max_output_tokens) == (
        None,
        None,
        None,
        None,
    )
    # Priced 0 and, as every model then, not marked free: flagged, as a migrated
    # database flags it.
    llama = Model.objects.get(name="llama3")
    assert (llama.is_free, llama.unpriced, gpt.unpriced) == (False, True, False)


def test_importing_it_again_changes_nothing():
    backup.import_backup(v2_document())

    report = backup.import_backup(v2_document())

    assert all(t.created == t.updated == 0 for t in report.tallies.values())


def test_it_leaves_the_new_fields_set_since_as_they_are():
    backup.import_backup(v2_document())
    User.objects.filter(username="alice").update(budget=Decimal(20), budget_period="week")
    APIKey.objects.filter(name="ci").update(max_concurrent=2, budget=Decimal(5))
    Endpoint.objects.filter(name="openai").update(tpm_limit=90_000)
    Model.objects.filter(name="llama3").update(is_free=True, max_output_tokens=512)

    report = backup.import_backup(v2_document())

    assert all(t.created == t.updated == 0 for t in report.tallies.values())
    alice = User.objects.get(username="alice")
    assert (alice.budget, alice.budget_period) == (Decimal(20), "week")
    key = APIKey.objects.get(name="ci")
    assert (key.max_concurrent, key.budget) == (2, Decimal(5))
    assert Endpoint.objects.get(name="openai").tpm_limit == 90_000
    llama = Model.objects.get(name="llama3")
    assert (llama.is_free, llama.max_output_tokens) == (True, 512)


def test_the_export_after_it_carries_the_new_fields_at_version_2():
    backup.import_backup(v2_document())

    document = backup.export_backup()

    assert document["version"] == 2
    for kind, fields in NEW_FIELDS.items():
        assert fields <= set(document[kind][0]), kind
