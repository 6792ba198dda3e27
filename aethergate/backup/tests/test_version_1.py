"""An AetherGate export of format version 1 (before deployments) still imports.

files/aethergate-v1-export.json is such an export, as that version wrote it:
each model with one `endpoint` (or null) and its `upstream_name`.
"""

import hashlib
import json
from pathlib import Path

import pytest
from django.core.management import call_command

from aethergate import backup
from aethergate.testing import deploy, served_by
from endpoints.models import Endpoint
from keys.models import APIKey
from models_registry.models import Model

pytestmark = pytest.mark.django_db

V1_EXPORT = Path(__file__).parent / "files" / "aethergate-v1-export.json"
V1_SECRET = "ag-V1exportKey_0123456789abcdefghijklmnopqrstuv"


def v1_document() -> dict:
    return json.loads(V1_EXPORT.read_text())


def served() -> dict[str, list[tuple]]:
    """Every model's deployments (aethergate.testing.served_by), by model name."""
    return {model.name: served_by(model) for model in Model.objects.all()}


def counts(report) -> dict:
    return {kind: (t.created, t.updated, t.unchanged) for kind, t in sorted(report.tallies.items())}


def test_the_file_is_a_version_1_export_with_endpoints_on_models():
    document = v1_document()

    assert document["version"] == 1
    assert {"endpoint", "upstream_name"} <= set(document["models"][0])


def test_a_version_1_export_imports_each_endpoint_as_one_deployment(capsys):
    call_command("import_backup", str(V1_EXPORT))

    assert "Imported an AetherGate backup:" in capsys.readouterr().out
    assert served() == {
        "embed": [],  # its endpoint was null: nowhere to send it, then as now
        "gpt-4o": [("openai", "gpt-4o-2024-08-06", 1, 0)],
        "llama3": [("local", "llama3:8b", 1, 0)],
    }
    llama = Model.objects.get(name="llama3")
    assert (llama.fallback.name, llama.rpm_limit, llama.strategy) == ("gpt-4o", 10, "weighted")
    assert Endpoint.objects.get(name="openai").kind == "openai"
    key = APIKey.objects.get(name="ci")
    assert key.digest == hashlib.sha256(V1_SECRET.encode()).hexdigest()
    assert list(key.allowed_models.values_list("name", flat=True)) == ["llama3"]


def test_importing_it_again_changes_nothing():
    backup.import_backup(v1_document())

    report = backup.import_backup(v1_document())

    assert counts(report) == {
        "api_keys": (0, 0, 1),
        "endpoints": (0, 0, 2),
        "models": (0, 0, 3),
        "users": (0, 0, 1),
    }
    assert report.warnings == []


def test_its_endpoint_replaces_the_deployments_a_model_has_now():
    backup.import_backup(v1_document())
    llama = Model.objects.get(name="llama3")
    deploy(llama, Endpoint.objects.get(name="openai"), "llama3-hosted")
    Model.objects.filter(name="embed").update(is_active=True)
    deploy(Model.objects.get(name="embed"), Endpoint.objects.get(name="local"), "nomic")

    report = backup.import_backup(v1_document())

    assert counts(report)["models"] == (0, 2, 1)
    assert served()["llama3"] == [("local", "llama3:8b", 1, 0)]
    assert served()["embed"] == []


def test_a_version_1_row_without_endpoint_leaves_the_deployments_and_says_so():
    backup.import_backup(v1_document())
    document = {
        "format": "aethergate-backup",
        "version": 1,
        "models": [{"name": "llama3", "upstream_name": "llama3:70b", "rpm_limit": 5}],
    }

    report = backup.import_backup(document)

    assert served()["llama3"] == [("local", "llama3:8b", 1, 0)]
    assert Model.objects.get(name="llama3").rpm_limit == 5
    assert report.warnings == [
        'models[0] ("llama3"): upstream_name without endpoint: not imported (a deployment '
        "needs both); the model's deployments are left as they are."
    ]


def test_a_version_1_row_with_an_endpoint_but_no_upstream_name_serves_the_models_name():
    document = v1_document()
    del document["models"][2]["upstream_name"]

    backup.import_backup(document)

    assert served()["llama3"] == [("local", "llama3", 1, 0)]


def test_an_unknown_endpoint_in_a_version_1_row_is_named_and_nothing_is_kept():
    document = v1_document()
    document["models"][2]["endpoint"] = "gone"

    with pytest.raises(backup.BackupError) as error:
        backup.import_backup(document)

    assert str(error.value) == (
        'models[2] ("llama3"): deployments[0]: endpoint: no endpoint named "gone" in the '
        "backup or the database."
    )
    assert not Model.objects.exists() and not Endpoint.objects.exists()


def test_the_export_after_it_is_version_2():
    backup.import_backup(v1_document())

    document = backup.export_backup()

    assert document["version"] == 2
    llama = next(m for m in document["models"] if m["name"] == "llama3")
    assert "endpoint" not in llama and "upstream_name" not in llama
    assert llama["deployments"] == [
        {"endpoint": "local", "upstream_name": "llama3:8b", "weight": 1, "priority": 0}
    ]
