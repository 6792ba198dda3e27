"""The earlier version's consumer keys work on /v1 once its backup is imported.

Beside the live gateway and upstream stand-in (this directory's conftest.py)
that it needs; the import itself is tested in aethergate/backup/tests/.
"""

import json

from django.core.management import call_command

from aethergate.backup.tests.legacy_sample import ALICE_SECRET, UPSTREAM_CREDENTIAL, legacy_backup


def test_legacy_keys_work_on_v1_after_the_import(gateway, upstream, client_for, tmp_path):
    document = legacy_backup()
    data = document["data"]
    data["endpoints"][0]["base_url"] = upstream.base_url.removesuffix("/v1")  # Ollama, no /v1
    data["endpoints"][1]["base_url"] = upstream.base_url  # OpenAI-compatible, with /v1
    data["models"][0]["litellm_name"] = "ollama/echo"
    data["models"][2]["litellm_name"] = "openai/echo"

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
