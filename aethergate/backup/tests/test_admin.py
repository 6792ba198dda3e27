"""The admin's "Backup and restore" page: download, dry run, confirm, permissions."""

import io
import json
import os

import pytest
from django.test import Client

from accounts.models import User
from aethergate.backup import export_backup
from aethergate.backup.admin import STAGED, STAGED_SECONDS, staging_dir, sweep
from aethergate.backup.tests.conftest import without_time
from aethergate.testing import VIEW, make_staff
from endpoints.models import Endpoint
from logs.models import AuditEntry

pytestmark = pytest.mark.django_db

URL = "/admin/backup/"


def session(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def root(data):
    return session(User.objects.get(username="root"))


def upload(client, document, **fields):
    file = io.BytesIO(json.dumps(document).encode())
    file.name = "backup.json"
    return client.post(URL, {"file": file, **fields})


def test_the_index_links_the_page_for_those_who_may_open_it(data, root):
    nobody = session(make_staff("nobody"))

    assert URL in root.get("/admin/").content.decode()
    assert URL not in nobody.get("/admin/").content.decode()
    assert nobody.get(URL).status_code == 403


def test_the_download_is_the_export_and_never_cached(data, root):
    response = root.get(f"{URL}?download=1&include_secrets=1")

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    document = json.loads(b"".join(response.streaming_content))
    assert without_time(document) == without_time(
        json.loads(json.dumps(export_backup(include_secrets=True)))
    )


def test_a_viewer_may_download_a_plain_backup_but_not_secrets_nor_import(data):
    viewer = session(make_staff("viewer", VIEW))
    before = Endpoint.objects.count()

    page = viewer.get(URL)

    assert page.status_code == 200
    assert "include_secrets" not in page.content.decode()
    assert "Restore from a backup" not in page.content.decode()
    assert viewer.get(f"{URL}?download=1").status_code == 200
    assert viewer.get(f"{URL}?download=1&include_secrets=1").status_code == 403
    assert upload(viewer, {"format": "aethergate-backup", "version": 1}).status_code == 403
    assert Endpoint.objects.count() == before


def test_an_upload_is_dry_run_then_imported_on_confirmation(data, root):
    document = json.loads(json.dumps(export_backup()))
    document["endpoints"].append({"name": "new", "base_url": "http://127.0.0.1:9000/v1"})

    dry = upload(root, document)

    assert dry.status_code == 200
    assert dry.context["report"].dry_run is True
    assert dry.context["report"].tallies["endpoints"].created == 1
    assert "Dry run of backup.json" in dry.content.decode()
    assert not Endpoint.objects.filter(name="new").exists()
    token = root.session[STAGED]["token"]
    assert (staging_dir() / f"{token}.json").stat().st_mode & 0o077 == 0

    done = root.post(URL, {"confirm": token})

    assert done.context["report"].dry_run is False
    assert "Imported backup.json" in done.content.decode()
    assert Endpoint.objects.filter(name="new").exists()
    assert not (staging_dir() / f"{token}.json").exists()
    actions = list(
        AuditEntry.objects.filter(object_kind="backup")
        .order_by("id")
        .values_list("action", "surface")
    )
    assert actions == [("dry-run import", "admin"), ("import", "admin")]


def test_a_confirmation_is_accepted_once(data, root):
    document = json.loads(json.dumps(export_backup()))
    document["endpoints"].append({"name": "new", "base_url": "http://127.0.0.1:9000/v1"})
    upload(root, document)
    token = root.session[STAGED]["token"]
    root.post(URL, {"confirm": token})
    Endpoint.objects.filter(name="new").delete()

    again = root.post(URL, {"confirm": token})

    assert "upload the file again" in again.content.decode()
    assert not Endpoint.objects.filter(name="new").exists()


def test_a_bad_file_is_refused_with_its_reason_and_nothing_is_staged(data, root):
    response = upload(root, {"format": "aethergate-backup", "version": 1, "users": [{}]})

    assert "Nothing was imported. users[0]" in response.content.decode()
    assert STAGED not in root.session


def test_the_sweep_deletes_only_uploads_left_unconfirmed_too_long():
    old, recent = staging_dir() / "old-test-upload.json", staging_dir() / "new-test-upload.json"
    for path in (old, recent):
        path.write_text("{}")
    now = recent.stat().st_mtime
    os.utime(old, (now - STAGED_SECONDS - 1, now - STAGED_SECONDS - 1))

    sweep(now=now)

    assert not old.exists()
    assert recent.exists()
    recent.unlink()
