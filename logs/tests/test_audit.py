"""The audit log: who changed what, from where, through every surface; secrets never stored."""

import getpass
import io
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from accounts import services as accounts
from accounts.models import APIToken, User
from endpoints.models import Endpoint
from keys import services as keys
from keys.models import APIKey
from logs.models import AuditEntry

pytestmark = pytest.mark.django_db

ADDRESS = "203.0.113.7"


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123", balance=5)


@pytest.fixture
def endpoint():
    return Endpoint.objects.create(name="local", base_url="http://127.0.0.1:11434/v1")


def last(**filters) -> AuditEntry:
    return AuditEntry.objects.filter(**filters).order_by("id").last()


# Admin --------------------------------------------------------------------------------


def test_it_records_an_admin_change_with_the_staff_user_and_address(client, staff, endpoint):
    client.force_login(staff)
    changelist = reverse("admin:endpoints_endpoint_changelist")
    client.post(
        changelist,
        {"action": "deactivate_selected", "_selected_action": [endpoint.pk]},
        REMOTE_ADDR=ADDRESS,
    )

    entry = last(object_kind="endpoint")
    assert (entry.surface, entry.actor, entry.actor_name) == ("admin", staff, "root")
    assert (entry.address, entry.action) == (ADDRESS, "deactivate")
    assert (entry.object_id, entry.object_name) == (str(endpoint.pk), "local")
    assert entry.changes == {"is_active": [True, False]}


def test_it_records_the_admin_balance_edit_made_with_an_update(client, staff, alice):
    client.force_login(staff)
    page = client.get(reverse("admin:accounts_user_change", args=[alice.pk]))
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k not in ("password",)}
    data.update(
        {
            "balance": "12.50",
            "balance_seen": "5",
            "date_joined_0": alice.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": alice.date_joined.strftime("%H:%M:%S"),
            "api_keys-TOTAL_FORMS": "0",
            "api_keys-INITIAL_FORMS": "0",
            "api_tokens-TOTAL_FORMS": "0",
            "api_tokens-INITIAL_FORMS": "0",
        }
    )
    for name in ("is_active", "is_staff", "is_superuser"):
        if not data.get(name):
            data.pop(name, None)
    data.pop("groups", None)
    data.pop("user_permissions", None)
    data.pop("last_login", None)
    data.pop("date_joined", None)
    response = client.post(
        reverse("admin:accounts_user_change", args=[alice.pk]), data, REMOTE_ADDR=ADDRESS
    )
    assert response.status_code == 302, response.context and response.context["adminform"].errors

    alice.refresh_from_db()
    assert alice.balance == Decimal("12.5")
    entry = last(object_kind="user", changes__has_key="balance")
    assert (entry.surface, entry.actor_name, entry.address) == ("admin", "root", ADDRESS)
    assert [Decimal(v) for v in entry.changes["balance"]] == [Decimal(5), Decimal("12.5")]


def test_it_records_the_admin_token_revocation_made_with_an_update(client, staff, ops):
    token, _ = accounts.create_api_token(user=ops, name="ci")
    client.force_login(staff)
    client.post(
        reverse("admin:accounts_apitoken_changelist"),
        {"action": "revoke_selected", "_selected_action": [token.pk]},
        REMOTE_ADDR=ADDRESS,
    )

    token.refresh_from_db()
    assert token.revoked_at is not None
    entry = last(object_kind="API token")
    assert (entry.surface, entry.actor_name, entry.address, entry.action) == (
        "admin",
        "root",
        ADDRESS,
        "revoke",
    )
    assert entry.object_id == str(token.pk)


# Management API -------------------------------------------------------------------------


def test_it_records_an_api_change_with_the_token_user_and_hides_the_credential(
    root_api, staff, endpoint
):
    response = root_api.patch(
        f"/api/v1/endpoints/{endpoint.pk}/",
        {"rpm_limit": 10, "api_key": "sk-upstream-secret-value"},
        REMOTE_ADDR=ADDRESS,
    )
    assert response.status_code == 200, response.content

    entry = last(object_kind="endpoint")
    assert (entry.surface, entry.actor, entry.actor_name) == ("api", staff, "root")
    assert (entry.address, entry.action) == (ADDRESS, "update")
    assert entry.changes == {"rpm_limit": [None, 10], "api_key_encrypted": "changed"}


def test_it_records_an_api_rotation_and_credit(root_api, alice):
    key, _ = keys.create_key(owner=alice, name="ci")
    assert root_api.post(f"/api/v1/keys/{key.pk}/rotate/").status_code == 200
    response = root_api.post(f"/api/v1/users/{alice.pk}/credit/", {"amount": "2.5"})
    assert response.status_code == 200, response.content

    rotation = last(object_kind="API key")
    assert (rotation.surface, rotation.action, rotation.actor_name) == ("api", "rotate", "root")
    assert rotation.changes["digest"] == "changed"
    assert rotation.changes["prefix"][0] != rotation.changes["prefix"][1]
    credit = last(object_kind="user", action="credit")
    assert credit.surface == "api"
    assert [Decimal(v) for v in credit.changes["balance"]] == [Decimal(5), Decimal("7.5")]


def test_it_names_the_master_key_as_the_actor(settings, api_client_class, endpoint):
    settings.MASTER_API_KEY = "master-key-for-tests-only"
    client = api_client_class()
    client.credentials(HTTP_X_ADMIN_KEY="master-key-for-tests-only")
    response = client.delete(f"/api/v1/endpoints/{endpoint.pk}/", REMOTE_ADDR=ADDRESS)
    assert response.status_code == 204

    entry = last(object_kind="endpoint")
    assert (entry.surface, entry.actor, entry.actor_name) == ("api", None, "master key")
    assert (entry.action, entry.object_name, entry.address) == ("delete", "local", ADDRESS)


def test_an_api_create_records_the_new_values(root_api, alice, endpoint):
    response = root_api.post(
        "/api/v1/models/",
        {
            "name": "llama3",
            "capability": "TEXT",
            "deployments": [{"endpoint": "local", "upstream_name": "llama3:8b"}],
        },
    )
    assert response.status_code == 201, response.content

    entry = last(object_kind="model")
    assert (entry.action, entry.object_name, entry.surface) == ("create", "llama3", "api")
    assert entry.changes["capability"] == [None, "TEXT"]
    deployment = last(object_kind="deployment")
    assert (deployment.action, deployment.object_name, deployment.surface) == (
        "create",
        "llama3: llama3:8b on local",
        "api",
    )
    assert deployment.changes["upstream_name"] == [None, "llama3:8b"]
    assert deployment.changes["endpoint"] == [None, endpoint.pk]


def test_it_records_each_deployment_a_new_set_changes_or_removes(root_api, endpoint):
    from aethergate.testing import deploy, make_endpoint, make_model

    llama = make_model("llama3", "llama3:8b", endpoint=endpoint)
    deploy(llama, endpoint, "llama3:q4")
    gone = deploy(llama, make_endpoint("gpu", "http://gpu.example/v1"), "llama3:70b")
    AuditEntry.objects.all().delete()

    response = root_api.patch(
        f"/api/v1/models/{llama.pk}/",
        {
            "deployments": [
                {"endpoint": "local", "upstream_name": "llama3:8b", "weight": 3},
                {"endpoint": "local", "upstream_name": "llama3:q4"},
            ]
        },
    )
    assert response.status_code == 200, response.content

    entries = AuditEntry.objects.filter(object_kind="deployment").order_by("id")
    assert [(e.action, e.object_name, e.changes) for e in entries] == [
        ("delete", "llama3: llama3:70b on gpu", {}),
        ("update", "llama3: llama3:8b on local", {"weight": [1, 3]}),
    ]
    assert entries[0].object_id == str(gone.pk)
    assert {e.surface for e in entries} == {"api"}


def test_deleting_an_endpoint_records_the_deployments_it_takes_with_it(root_api, endpoint):
    from aethergate.testing import make_model

    make_model("llama3", "llama3:8b", endpoint=endpoint)
    make_model("qwen", "qwen3:8b", endpoint=endpoint)

    assert root_api.delete(f"/api/v1/endpoints/{endpoint.pk}/").status_code == 204

    deleted = AuditEntry.objects.filter(object_kind="deployment", action="delete")
    assert sorted(deleted.values_list("object_name", flat=True)) == [
        "llama3: llama3:8b on local",
        "qwen: qwen3:8b on local",
    ]
    assert last(object_kind="endpoint").action == "delete"


# Commands --------------------------------------------------------------------------------


def test_it_records_a_command_with_its_name_and_the_os_user(alice):
    call_command("deactivate_user", "alice")
    call_command("set_balance", "alice", "9")

    deactivation = last(action="deactivate")
    assert (deactivation.surface, deactivation.command) == ("command", "deactivate_user")
    assert deactivation.actor_name == getpass.getuser()
    assert (deactivation.object_kind, deactivation.object_name) == ("user", "alice")
    assert deactivation.changes == {"is_active": [True, False]}
    balance = last(object_kind="user", changes__has_key="balance")
    assert (balance.command, balance.action) == ("set_balance", "update")
    assert [Decimal(v) for v in balance.changes["balance"]] == [Decimal(5), Decimal(9)]


def test_it_records_command_rotation_and_revocation(alice, ops):
    key, _ = keys.create_key(owner=alice, name="ci")
    token, _ = accounts.create_api_token(user=ops, name="ci")
    call_command("rotate_key", str(key.pk), stdout=io.StringIO())
    call_command("revoke_api_token", str(token.pk))

    assert last(action="rotate").command == "rotate_key"
    revoke = last(action="revoke")
    assert (revoke.command, revoke.object_id) == ("revoke_api_token", str(token.pk))


# What is and is not recorded --------------------------------------------------------------


def test_a_deleted_users_history_keeps_the_name_of_who_acted(client, staff, alice):
    keys.create_key(owner=alice, name="ci")
    client.force_login(staff)
    client.post(reverse("admin:accounts_user_delete", args=[alice.pk]), {"post": "yes"})
    staff_pk = staff.pk
    staff.delete()

    deleted = {(e.object_kind, e.action) for e in AuditEntry.objects.filter(action="delete")}
    assert {("user", "delete"), ("API key", "delete")} <= deleted
    by_root = AuditEntry.objects.filter(actor_name="root", action="delete")
    assert by_root.count() >= 2
    assert not AuditEntry.objects.filter(actor_id=staff_pk).exists()


def test_usage_is_not_audited(ops):
    _, secret = accounts.create_api_token(user=ops, name="ci")
    before = AuditEntry.objects.count()
    assert accounts.authenticate_api_token(secret) is not None  # writes last_used_at
    assert AuditEntry.objects.count() == before


def test_no_secret_is_ever_stored_in_the_audit_log(root_api, alice, endpoint, monkeypatch):
    key, key_secret = keys.create_key(owner=alice, name="ci")
    rotated_secret = keys.rotate_key(key=key)
    alice.is_staff = True
    alice.save()
    token, token_secret = accounts.create_api_token(user=alice, name="ci")
    endpoint.set_api_key("sk-upstream-first")
    endpoint.save()
    root_api.patch(f"/api/v1/endpoints/{endpoint.pk}/", {"api_key": "sk-upstream-second"})
    alice.set_password("pw-alice-changed-456")
    alice.save()
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "pw-bob-789")
    call_command("createsuperuser", "--noinput", username="bob", email="bob@example.com")

    secrets = {
        "pw-alice-123",
        "pw-alice-changed-456",
        "pw-bob-789",
        "sk-upstream-first",
        "sk-upstream-second",
        key_secret,
        rotated_secret,
        token_secret,
        User.objects.get(pk=alice.pk).password,
        User.objects.get(username="bob").password,
        APIKey.objects.get(pk=key.pk).digest,
        APIToken.objects.get(pk=token.pk).digest,
        Endpoint.objects.get(pk=endpoint.pk).api_key_encrypted,
        *(t.digest for t in APIToken.objects.all()),
    }
    rows = json.dumps(list(AuditEntry.objects.values()), default=str)
    assert AuditEntry.objects.filter(changes__password="changed").count() >= 2
    assert AuditEntry.objects.filter(changes__api_key_encrypted="changed").count() >= 2
    for secret in secrets:
        assert secret and secret not in rows
    created_by_django = last(object_name="bob", action="create")
    assert (created_by_django.command, created_by_django.changes["password"]) == (
        "createsuperuser",
        "changed",
    )


# Reading and pruning the audit log ------------------------------------------------------


@pytest.fixture
def history(alice, ops):
    """Three entries of different surfaces, kinds and dates."""
    AuditEntry.objects.all().delete()
    old = timezone.now() - timedelta(days=400)
    return [
        AuditEntry.objects.create(
            at=old, surface="command", actor_name="operator", command="set_balance",
            action="update", object_kind="user", object_id=str(alice.pk), object_name="alice",
            changes={"balance": ["5", "9"]},
        ),
        AuditEntry.objects.create(
            surface="api", actor=ops, actor_name="ops", address=ADDRESS, action="rotate",
            object_kind="API key", object_id="7", object_name="ci (ag-abc…)",
            changes={"digest": "changed"},
        ),
        AuditEntry.objects.create(
            surface="admin", actor_name="root", address="198.51.100.2", action="deactivate",
            object_kind="endpoint", object_id="3", object_name="local",
            changes={"is_active": [True, False]},
        ),
    ]  # fmt: skip


def test_the_admin_lists_filters_and_searches_entries_read_only(admin_client, history):
    changelist = reverse("admin:logs_auditentry_changelist")
    page = admin_client.get(changelist)
    assert page.status_code == 200
    assert [e.pk for e in page.context["cl"].result_list] == [e.pk for e in history[::-1]]

    by_surface = admin_client.get(changelist, {"surface": "api"}).context["cl"].result_list
    assert [e.action for e in by_surface] == ["rotate"]
    by_kind = admin_client.get(changelist, {"object_kind": "endpoint"}).context["cl"].result_list
    assert [e.object_name for e in by_kind] == ["local"]
    by_actor = admin_client.get(changelist, {"actor__id__exact": history[1].actor_id})
    assert [e.actor_name for e in by_actor.context["cl"].result_list] == ["ops"]
    found = admin_client.get(changelist, {"q": "198.51.100.2"}).context["cl"].result_list
    assert [e.action for e in found] == ["deactivate"]

    detail = admin_client.get(reverse("admin:logs_auditentry_change", args=[history[1].pk]))
    assert "changed (secret)" in detail.content.decode()
    assert admin_client.get(reverse("admin:logs_auditentry_add")).status_code == 403
    delete = reverse("admin:logs_auditentry_delete", args=[history[0].pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.filter(pk=history[0].pk).exists()


def test_the_api_exports_entries_paginated_and_filtered(api, history):
    response = api.get("/api/v1/audit/", {"page_size": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert [e["action"] for e in body["results"]] == ["deactivate", "rotate"]
    assert body["next"]

    rotated = api.get("/api/v1/audit/", {"actor": "ops"}).json()["results"]
    assert [(e["surface"], e["address"], e["changes"]) for e in rotated] == [
        ("api", ADDRESS, {"digest": "changed"})
    ]
    since = (timezone.now() - timedelta(days=1)).isoformat()
    recent = api.get("/api/v1/audit/", {"since": since, "surface": "admin"}).json()
    assert [e["object_name"] for e in recent["results"]] == ["local"]


def test_the_api_audit_log_is_read_only_and_staff_only(api, api_client_class, history):
    entry = history[0]
    assert api.delete(f"/api/v1/audit/{entry.pk}/").status_code == 405
    assert api.patch(f"/api/v1/audit/{entry.pk}/", {"action": "x"}).status_code == 405
    assert api.post("/api/v1/audit/", {"action": "x"}).status_code == 405
    assert api_client_class().get("/api/v1/audit/").status_code == 401
    assert AuditEntry.objects.get(pk=entry.pk).action == "update"


def test_the_schema_describes_the_audit_export(api):
    schema = api.get("/api/v1/schema/", {"format": "json"}).json()
    assert "get" in schema["paths"]["/api/v1/audit/"]
    assert "delete" not in schema["paths"]["/api/v1/audit/{id}/"]


def test_prune_audit_deletes_entries_before_a_date_and_records_that_it_did(history):
    out = io.StringIO()
    month_ago = (timezone.now() - timedelta(days=30)).date().isoformat()
    call_command("prune_audit", "--before", month_ago, stdout=out)

    assert "Deleted 1 audit entry" in out.getvalue()
    assert not AuditEntry.objects.filter(pk=history[0].pk).exists()
    prune = last(action="prune")
    assert (prune.command, prune.changes) == ("prune_audit", {"deleted": 1})
    assert AuditEntry.objects.count() == 3


def test_prune_audit_by_age_and_dry_run(history):
    out = io.StringIO()
    call_command("prune_audit", "--older-than", "365", "--dry-run", stdout=out)
    assert "Would delete 1 audit entry" in out.getvalue()
    assert AuditEntry.objects.count() == 3

    call_command("prune_audit", "--older-than=365", stdout=io.StringIO())
    assert AuditEntry.objects.filter(action="update").count() == 0


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--before", "yesterday"],
        ["--older-than", "0"],
        ["--before=2026-01-01", "--older-than=3"],
    ],
)
def test_prune_audit_refuses_a_missing_or_bad_cutoff(args, history):
    from django.core.management import CommandError

    with pytest.raises(CommandError):
        call_command("prune_audit", *args)
    assert AuditEntry.objects.count() == 3


def test_listing_entries_costs_the_same_queries_for_many_rows(admin_client, api, history):
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    def count(get, url):
        # Each request empties the query log (request_started): start from empty too.
        reset_queries()
        with CaptureQueriesContext(connection) as page:
            get(url)
        return len(page)

    def queries():
        return (
            count(admin_client.get, reverse("admin:logs_auditentry_changelist")),
            count(api.get, "/api/v1/audit/"),
        )

    queries()  # the token's first use writes its last_used_at
    few = queries()
    assert min(few) > 0
    AuditEntry.objects.bulk_create(
        AuditEntry(surface="api", actor=history[1].actor, actor_name="ops", action="update",
                   object_kind="user", object_id=str(n), object_name=f"user{n}")
        for n in range(40)
    )  # fmt: skip
    assert queries() == few


def test_it_records_a_change_of_allowed_models(root_api, alice):
    from models_registry.models import Model

    llama = Model.objects.create(name="llama3")
    key, _ = keys.create_key(owner=alice, name="ci")
    response = root_api.patch(f"/api/v1/keys/{key.pk}/", {"allowed_models": ["llama3"]})
    assert response.status_code == 200, response.content

    entry = last(object_kind="API key", changes__has_key="allowed_models")
    assert (entry.surface, entry.action) == ("api", "update")
    assert entry.changes == {"allowed_models": [[], [llama.pk]]}


@pytest.mark.django_db(transaction=True)
def test_the_actor_holds_under_asgi_for_admin_and_api(staff, endpoint):
    """Through Django's ASGI handler (as served), views run in threads: the actor follows."""
    import asyncio

    from django.test import AsyncClient

    _, secret = accounts.create_api_token(user=staff, name="asgi")
    changelist = reverse("admin:endpoints_endpoint_changelist")

    async def changes():
        patched = await AsyncClient().patch(
            f"/api/v1/endpoints/{endpoint.pk}/",
            {"rpm_limit": 7},
            content_type="application/json",
            headers={"authorization": f"Bearer {secret}"},
        )
        admin = AsyncClient()
        await admin.aforce_login(staff)
        await admin.post(
            changelist, {"action": "deactivate_selected", "_selected_action": [endpoint.pk]}
        )
        return patched.status_code, patched.content

    status, content = asyncio.run(changes())
    assert status == 200, content
    api_entry, admin_entry = AuditEntry.objects.filter(object_kind="endpoint").order_by("id")[1:]
    assert (api_entry.surface, api_entry.actor_name, api_entry.changes) == (
        "api",
        "root",
        {"rpm_limit": [None, 7]},
    )
    assert (admin_entry.surface, admin_entry.actor_name, admin_entry.action) == (
        "admin",
        "root",
        "deactivate",
    )
    assert api_entry.address == admin_entry.address == "127.0.0.1"


def test_an_import_is_recorded_as_the_import_command(endpoint, tmp_path):
    backup = tmp_path / "backup.json"
    call_command("export_backup", "--output", str(backup), stdout=io.StringIO())
    endpoint.delete()

    call_command("import_backup", str(backup), stdout=io.StringIO())

    entry = last(object_kind="endpoint", action="create")
    assert (entry.surface, entry.command, entry.object_name) == (
        "command",
        "import_backup",
        "local",
    )
