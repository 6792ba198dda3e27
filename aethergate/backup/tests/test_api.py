"""The management API's backup route: export, import, dry run, permissions, limits, audit."""

import io
import json

import pytest
from django.core.management import call_command
from django.db.models import Max
from rest_framework.test import APIClient

from accounts.models import User
from aethergate.backup.tests.conftest import wipe, without_time
from aethergate.backup.tests.legacy_sample import legacy_backup
from aethergate.testing import VIEW, api_token, make_staff
from endpoints.models import Endpoint
from keys.models import APIKey
from logs.models import AuditEntry
from models_registry.models import Model

pytestmark = pytest.mark.django_db

MASTER = "master-key-for-backup-tests-0123456789"
URL = "/api/v1/backup/"
BACKED_UP = (User, Endpoint, Model, APIKey)


@pytest.fixture
def master(settings):
    settings.MASTER_API_KEY = MASTER
    return APIClient(HTTP_X_ADMIN_KEY=MASTER)


def downloaded(response) -> dict:
    assert response.status_code == 200, response.content
    return json.loads(b"".join(response.streaming_content))


def command_export(**options) -> dict:
    out = io.StringIO()
    call_command("export_backup", stdout=out, stderr=io.StringIO(), **options)
    return json.loads(out.getvalue())


def post(client, document, **params):
    query = "&".join(f"{name}=true" for name in params)
    return client.post(f"{URL}?{query}", json.dumps(document), content_type="application/json")


def snapshot() -> dict:
    """Row counts and the latest updated_at of every backed-up kind."""
    return {
        model.__name__: (
            model.objects.count(),
            model.objects.aggregate(latest=Max("updated_at"))["latest"]
            if any(f.name == "updated_at" for f in model._meta.concrete_fields)
            else None,
        )
        for model in BACKED_UP
    }


def test_the_export_equals_the_commands_document(data, master):
    response = master.get(URL)

    assert response.streaming
    assert "no-store" in response["Cache-Control"]
    assert response["Content-Disposition"].startswith('attachment; filename="aethergate-')
    assert without_time(downloaded(response)) == without_time(command_export())


def test_the_export_with_secrets_equals_the_commands(data, master):
    response = master.get(f"{URL}?include_secrets=true")

    document = downloaded(response)
    assert without_time(document) == without_time(command_export(include_secrets=True))
    assert "api_key" in document["endpoints"][0]


def test_a_round_trip_through_an_empty_database_is_exact(data, master):
    before = downloaded(master.get(f"{URL}?include_secrets=true"))
    wipe()

    response = post(master, before, grant_privileges=True)
    after = downloaded(master.get(f"{URL}?include_secrets=true"))

    assert response.status_code == 200, response.content
    assert response.json()["tallies"]["api_keys"] == {"created": 3, "updated": 0, "unchanged": 0}
    assert without_time(after) == without_time(before)


def test_a_second_import_changes_nothing(data, master):
    document = downloaded(master.get(f"{URL}?include_secrets=true"))

    response = post(master, document, grant_privileges=True)

    tallies = response.json()["tallies"]
    assert all(t["created"] == t["updated"] == 0 for t in tallies.values())


def test_a_dry_run_reports_the_changes_and_changes_nothing(data, master):
    document = downloaded(master.get(URL))
    document["endpoints"][0]["rpm_limit"] = 7
    document["users"].append({"username": "carol", "email": "carol@example.com"})
    before = snapshot()

    response = post(master, document, dry_run=True)

    assert response.status_code == 200, response.content
    report = response.json()
    assert report["dry_run"] is True
    assert report["source"] == "AetherGate backup"
    assert report["tallies"]["endpoints"]["updated"] == 1
    assert report["tallies"]["users"]["created"] == 1
    assert snapshot() == before
    assert not User.objects.filter(username="carol").exists()
    assert Endpoint.objects.get(name=document["endpoints"][0]["name"]).rpm_limit != 7


def test_it_imports_an_earlier_version_backup_sent_as_a_multipart_file(master):
    upload = io.BytesIO(json.dumps(legacy_backup()).encode())
    upload.name = "aethergate-backup-2025-05-01.json"

    response = master.post(URL, {"file": upload}, format="multipart")

    assert response.status_code == 200, response.content
    assert response.json()["source"] == "earlier-version backup"
    assert APIKey.objects.filter(owner__username="alice").exists()


def test_it_refuses_a_bad_file_and_names_the_row(data, master):
    before = snapshot()

    response = post(master, {"format": "aethergate-backup", "version": 1, "users": [{}]})

    assert response.status_code == 400
    assert response.json()["detail"].startswith("Nothing was imported. users[0]")
    assert snapshot() == before


def test_it_refuses_an_upload_over_the_size_limit(data, master, settings):
    settings.AETHERGATE_BACKUP_MAX_BYTES = 100
    document = {"format": "aethergate-backup", "version": 1, "users": [{"username": "x" * 200}]}

    response = post(master, document)

    assert response.status_code == 400
    assert "Too large" in response.json()["detail"]
    assert not User.objects.filter(username="x" * 200).exists()


def test_it_refuses_a_document_nested_too_deep(master):
    deep = {"format": "aethergate-backup", "version": 1}
    inner = deep
    for _ in range(40):
        inner["x"] = {}
        inner = inner["x"]

    response = post(master, deep)

    assert response.status_code == 400
    assert "Nested more than" in response.json()["detail"]


def test_staff_without_superuser_get_403_for_import_and_secrets(data, api, master):
    document = downloaded(master.get(URL))
    before = snapshot()

    assert api.get(f"{URL}?include_secrets=true").status_code == 403
    assert post(api, document).status_code == 403
    assert post(api, document, dry_run=True).status_code == 403
    assert snapshot() == before


def test_a_plain_export_needs_the_view_permission_on_every_backed_up_kind(data, bearer):
    viewer = bearer(api_token(make_staff("viewer", VIEW)))
    nobody = bearer(api_token(make_staff("nobody")))
    keys_only = bearer(api_token(make_staff("keys-only", VIEW, apps=("keys",))))

    assert viewer.get(URL).status_code == 200
    assert nobody.get(URL).status_code == 403
    assert keys_only.get(URL).status_code == 403


def test_a_superusers_token_may_export_secrets_and_import(data, bearer):
    boss = bearer(api_token(User.objects.create_superuser("boss", "boss@example.com")))
    document = downloaded(boss.get(f"{URL}?include_secrets=true"))

    response = post(boss, document, dry_run=True)

    assert response.status_code == 200


def test_every_export_and_import_is_an_audit_entry_and_a_refused_file_none(data, api, master):
    downloaded(api.get(URL))
    document = downloaded(master.get(f"{URL}?include_secrets=true"))
    post(master, document, dry_run=True)
    post(master, document, grant_privileges=True)
    post(master, {"format": "nope"})
    command_export()

    entries = list(AuditEntry.objects.filter(object_kind="backup").order_by("id"))
    assert [(e.action, e.actor_name, e.surface) for e in entries] == [
        ("export", "ops", "api"),
        ("export", "master key", "api"),
        ("dry-run import", "master key", "api"),
        ("import", "master key", "api"),
        ("export", entries[4].actor_name, "command"),
    ]
    assert entries[4].command == "export_backup"
    assert entries[0].changes["include_secrets"] is False
    assert entries[1].changes["include_secrets"] is True
    assert entries[1].changes["counts"]["api_keys"] == 3
    assert entries[2].changes["report"]["tallies"]["api_keys"]["unchanged"] == 3
    assert entries[3].changes["grant_privileges"] is True


def test_both_operations_are_in_the_schema_with_examples(api):
    schema = api.get("/api/v1/schema/?format=json").json()

    operations = schema["paths"]["/api/v1/backup/"]
    assert operations["get"]["operationId"] == "backup_export"
    assert operations["post"]["operationId"] == "backup_import"
    assert operations["get"]["responses"]["200"]["content"]["application/json"]["examples"]
    assert operations["post"]["responses"]["200"]["content"]["application/json"]["examples"]
    assert operations["post"]["requestBody"]["content"]["application/json"]["examples"]
