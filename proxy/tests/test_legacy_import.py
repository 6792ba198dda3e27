"""The earlier version's consumer keys work on /v1 once its backup is imported.

Beside the live gateway and upstream stand-in (this directory's conftest.py)
that it needs; the import itself is tested in aethergate/backup/tests/.
Imported with the command, and through the admin's "Backup and restore" page.
"""

import io
import json

from django.core.management import call_command
from django.test import Client

from accounts.models import User
from aethergate.backup.admin import STAGED
from aethergate.backup.tests.legacy_sample import ALICE_SECRET, UPSTREAM_CREDENTIAL, legacy_backup


def pointed_at(upstream) -> dict:
    """The earlier version's sample backup, its endpoints pointed at the upstream stand-in."""
    document = legacy_backup()
    data = document["data"]
    data["endpoints"][0]["base_url"] = upstream.base_url.removesuffix("/v1")  # Ollama, no /v1
    data["endpoints"][1]["base_url"] = upstream.base_url  # OpenAI-compatible, with /v1
    data["models"][0]["litellm_name"] = "ollama/echo"
    data["models"][2]["litellm_name"] = "openai/echo"
    return document


def test_legacy_keys_work_on_v1_after_the_import(gateway, upstream, client_for, tmp_path):
    document = pointed_at(upstream)

    path = tmp_path / "aethergate-backup-2025-05-01.json"
    path.write_text(json.dumps(document, indent=2))
    call_command("import_backup", str(path))
    client = client_for(ALICE_SECRET)
    answer = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi there"}]
    )
    local = client.chat.completions.create(
        model="llama3", messages=[{"role": "user", "content": "hello"}]
    )

    assert answer.model == "gpt-4o"
    assert answer.choices[0].message.content == "Hello from upstream: hi there"
    assert local.model == "llama3"
    first, second = upstream.received
    assert (first.path, first.model) == ("/v1/chat/completions", "echo")
    assert first.headers["authorization"] == f"Bearer {UPSTREAM_CREDENTIAL}"
    assert (second.path, second.model) == ("/v1/chat/completions", "echo")
    assert "authorization" not in second.headers


def test_legacy_keys_work_on_v1_after_an_import_through_the_admin_page(
    gateway, upstream, client_for
):
    admin = Client()
    admin.force_login(User.objects.create_superuser("boss", "boss@example.com"))
    upload = io.BytesIO(json.dumps(pointed_at(upstream)).encode())
    upload.name = "aethergate-backup-2025-05-01.json"

    dry = admin.post("/admin/backup/", {"file": upload})
    token = admin.session[STAGED]["token"]
    done = admin.post("/admin/backup/", {"confirm": token})
    answer = client_for(ALICE_SECRET).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi there"}]
    )

    assert dry.context["report"].source == "earlier-version backup"
    assert done.context["report"].tallies["api_keys"].created >= 1
    assert answer.choices[0].message.content == "Hello from upstream: hi there"
    assert upstream.received[0].headers["authorization"] == f"Bearer {UPSTREAM_CREDENTIAL}"
