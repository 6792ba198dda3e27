"""The admin's frame: app order, icon, Groups hidden until used, delete titles, the
secret notice, and list pages whose queries do not grow with their rows."""

from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.contrib.staticfiles import finders
from django.db import connection, reset_queries
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from aethergate import testing
from endpoints.models import Endpoint
from keys import services as key_services

pytestmark = pytest.mark.django_db


def test_it_lists_apps_in_the_order_staff_set_a_gateway_up(admin_client):
    response = admin_client.get(reverse("admin:index"))

    apps = {app["app_label"]: app for app in response.context["app_list"]}
    assert list(apps)[:5] == ["endpoints", "models_registry", "accounts", "keys", "logs"]
    assert set(list(apps)[5:]) <= {"auth", "proxy", "aethergate"}
    names = {label: [m["object_name"] for m in app["models"]] for label, app in apps.items()}
    assert names["accounts"] == ["User", "APIToken", "Lockout"]
    assert names["logs"] == ["RequestLog", "AuditEntry"]


def test_it_hides_groups_until_one_exists(admin_client, alice):
    groups = reverse("admin:auth_group_changelist")
    user_page = reverse("admin:accounts_user_change", args=[alice.pk])

    assert groups not in admin_client.get(reverse("admin:index")).content.decode()
    assert 'name="groups"' not in admin_client.get(user_page).content.decode()
    Group.objects.create(name="support")

    assert groups in admin_client.get(reverse("admin:index")).content.decode()
    assert 'name="groups"' in admin_client.get(user_page).content.decode()


def test_admin_pages_link_the_icon_and_favicon_ico_is_answered(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    icon = admin_client.get("/favicon.ico")

    assert '<link rel="icon" href="/static/aethergate/favicon.svg" type="image/svg+xml">' in page
    assert icon.status_code == 302
    assert icon["Location"] == "/static/aethergate/favicon.svg"
    drawn = finders.find("aethergate/favicon.svg")
    assert drawn
    with open(drawn) as svg:
        assert svg.read().startswith('<svg xmlns="http://www.w3.org/2000/svg"')


@pytest.mark.parametrize(
    ("make", "admin_url", "title"),
    [
        (lambda: testing.prepaid_consumer(), "admin:accounts_user_delete", "Delete user alice"),
        (
            lambda: Endpoint.objects.create(name="vllm", base_url=testing.LOCAL_UPSTREAM),
            "admin:endpoints_endpoint_delete",
            "Delete endpoint vllm",
        ),
        (
            lambda: key_services.create_key(owner=testing.second_consumer(), name="ci")[0],
            "admin:keys_apikey_delete",
            "Delete API key ci (ag-",  # a key reads with its prefix
        ),
    ],
)
def test_delete_pages_are_titled_with_the_object(admin_client, make, admin_url, title):
    obj = make()

    page = admin_client.get(reverse(admin_url, args=[obj.pk])).content.decode()

    assert f"<h1>{title}" in page
    assert f"<title>{title}" in page


def test_a_new_secret_is_a_notice_not_an_error(admin_client, alice):
    response = admin_client.post(
        reverse("admin:keys_apikey_add"),
        {"name": "laptop", "owner": alice.pk, "budget_period": "month"},
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert '<li class="warning" id="secret-notice">Copy this secret now.' in page
    assert "errornote" not in page
    assert 'class="button copy-secret"' in page


# --------------------------------------------------------------------------- list pages


def _queries(client, url) -> int:
    # Each request empties the query log (request_started): start from empty too.
    reset_queries()
    with CaptureQueriesContext(connection) as page:
        response = client.get(url)
    assert response.status_code == 200
    return len(page)


def _add_rows(start: int, count: int) -> None:
    """`count` more of each listed thing: users with keys, endpoints with models."""
    for n in range(start, start + count):
        user = testing.prepaid_consumer(f"user{n}", balance=Decimal("1.5"))
        key_services.create_key(owner=user, name=f"key{n}")
        endpoint = Endpoint.objects.create(name=f"ep{n}", base_url=testing.LOCAL_UPSTREAM)
        testing.make_model(f"model{n}", "x", endpoint=endpoint, price_in=Decimal("0.00000015"))


@pytest.mark.parametrize(
    "changelist",
    [
        "admin:accounts_user_changelist",
        "admin:models_registry_model_changelist",
        "admin:endpoints_endpoint_changelist",
        "admin:keys_apikey_changelist",
    ],
)
def test_list_pages_cost_the_same_queries_for_many_rows(admin_client, changelist):
    url = reverse(changelist)
    _add_rows(0, 2)
    _queries(admin_client, url)  # the session's first use
    few = _queries(admin_client, url)

    _add_rows(2, 20)
    many = _queries(admin_client, url)

    assert few == many
    # Session, user, groups shown?, count, rows, … (the models' deployments and their
    # endpoints, prefetched for the served-by column): not one per row.
    assert few <= 9
