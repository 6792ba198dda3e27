"""No consumer secret or upstream credential is stored in clear anywhere in the database."""

import pytest
from django.db import connection
from django.urls import reverse

from keys.tests.test_admin import SECRET

pytestmark = pytest.mark.django_db

CREDENTIAL = "sk-upstream-credential-0123456789"


def every_stored_value() -> str:
    """All rows of all tables, as text: what someone with a copy of the DB would see."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


def test_secrets_are_absent_from_every_table_and_the_database_file(admin_client, django_user_model):
    owner = django_user_model.objects.create_user("alice")
    created = admin_client.post(
        reverse("admin:keys_apikey_add"),
        {"name": "ci", "owner": owner.pk, "is_active": "on", "budget_period": "month"},
    )
    first = SECRET.search(created.content.decode())[1]
    key_id = owner.api_keys.get().pk
    rotated = admin_client.post(reverse("admin:keys_apikey_rotate", args=[key_id]), {"post": "yes"})
    second = SECRET.search(rotated.content.decode())[1]
    admin_client.post(
        reverse("admin:endpoints_endpoint_add"),
        {
            "name": "openai",
            "base_url": "https://api.openai.com/v1",
            "kind": "openai",
            "new_api_key": CREDENTIAL,
            "is_active": "on",
            "connect_timeout": "5",
            "first_byte_timeout": "120",
            "idle_timeout": "60",
            "total_timeout": "600",
        },
    )

    stored = every_stored_value()
    assert "ag-" in stored  # the display prefixes are there, so the scan sees the keys table
    for secret in (first, second, CREDENTIAL):
        assert secret not in stored
        assert secret[8:] not in stored  # nor any long tail of it

    if connection.vendor == "sqlite":
        # The exact bytes a database file of this content holds.
        raw = connection.connection.serialize()
        assert b"ag-" in raw
        for secret in (first, second, CREDENTIAL):
            assert secret.encode() not in raw
