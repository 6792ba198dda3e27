"""Staff flows for API keys in Django admin."""

import re
from decimal import Decimal

import pytest
from django.urls import reverse

from aethergate.testing import VIEW, make_staff
from keys import services
from keys.models import APIKey, digest
from models_registry.models import Model

pytestmark = pytest.mark.django_db

SECRET = re.compile(r'<code class="api-key-secret">(ag-[A-Za-z0-9_-]+)</code>')


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("alice")


@pytest.fixture
def key(owner):
    key, _ = services.create_key(owner=owner, name="ci", rate_limit="60/m")
    return key


def add_form(owner, **overrides):
    return {
        "name": "laptop",
        "owner": owner.pk,
        "is_active": "on",
        "rate_limit": "60/m",
        "allowed_capabilities": ["TEXT"],
        "budget_period": "month",
        **overrides,
    }


def test_it_shows_a_new_secret_once_and_stores_only_its_digest(admin_client, owner):
    response = admin_client.post(reverse("admin:keys_apikey_add"), add_form(owner))

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    secret = SECRET.search(response.content.decode())[1]
    assert "will not be shown again" in response.content.decode()
    key = APIKey.objects.get()
    assert key.digest == digest(secret)
    assert key.allowed_capabilities == ["TEXT"]
    for url in (
        reverse("admin:keys_apikey_change", args=[key.pk]),
        reverse("admin:keys_apikey_changelist"),
        reverse("admin:accounts_user_change", args=[owner.pk]),
    ):
        page = admin_client.get(url).content.decode()
        assert key.prefix in page
        assert secret not in page
        assert key.digest not in page


def test_the_change_page_offers_rotation_and_hides_the_digest(admin_client, key):
    page = admin_client.get(reverse("admin:keys_apikey_change", args=[key.pk])).content.decode()
    assert reverse("admin:keys_apikey_rotate", args=[key.pk]) in page
    assert key.digest not in page
    assert 'name="digest"' not in page


def test_rotation_asks_for_confirmation_first(admin_client, key):
    url = reverse("admin:keys_apikey_rotate", args=[key.pk])
    response = admin_client.get(url)

    assert response.status_code == 200
    assert "Yes, rotate" in response.content.decode()
    old_digest = key.digest
    key.refresh_from_db()
    assert key.digest == old_digest


def test_confirmed_rotation_shows_the_new_secret_once_and_keeps_the_row(admin_client, key):
    old_digest = key.digest
    response = admin_client.post(
        reverse("admin:keys_apikey_rotate", args=[key.pk]), {"post": "yes"}
    )

    secret = SECRET.search(response.content.decode())[1]
    assert "no-store" in response["Cache-Control"]
    key.refresh_from_db()
    assert key.digest == digest(secret) != old_digest
    assert (key.name, key.rate_limit) == ("ci", "60/m")
    assert APIKey.objects.count() == 1
    assert "previous secret no longer works" in response.content.decode()


def test_the_rotate_action_rotates_every_selected_key(admin_client, owner, key):
    other, _ = services.create_key(owner=owner, name="other")
    before = {key.pk: key.digest, other.pk: other.digest}
    changelist = reverse("admin:keys_apikey_changelist")
    form = {"action": "rotate_selected", "_selected_action": [key.pk, other.pk]}

    confirm = admin_client.post(changelist, form)
    assert "Yes, rotate" in confirm.content.decode()
    assert {k.pk: k.digest for k in APIKey.objects.all()} == before

    done = admin_client.post(changelist, {**form, "post": "yes"})
    secrets = SECRET.findall(done.content.decode())
    assert len(secrets) == 2
    assert {k.digest for k in APIKey.objects.all()} == {digest(s) for s in secrets}


def test_editing_limits_and_settings_does_not_rotate(admin_client, key):
    model = Model.objects.create(name="llama3")
    old_digest, old_prefix = key.digest, key.prefix
    response = admin_client.post(
        reverse("admin:keys_apikey_change", args=[key.pk]),
        {
            "name": "renamed",
            "owner": key.owner.pk,
            "is_active": "on",
            "rate_limit": "120/m,1000/d,100000tok/m",
            "max_concurrent": "3",
            "budget": "12.5",
            "budget_soft": "10",
            "budget_period": "week",
            "allowed_capabilities": ["TEXT", "EMBEDDING"],
            "allowed_models": [model.pk],
            "log_content": "on",
            "expires_at_0": "2030-01-01",
            "expires_at_1": "00:00:00",
        },
    )

    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.digest, key.prefix) == (old_digest, old_prefix)
    assert key.name == "renamed"
    assert (key.rate_limit, key.max_concurrent) == ("120/m,1000/d,100000tok/m", 3)
    assert (key.budget, key.budget_soft, key.budget_period) == (
        Decimal("12.5"),
        Decimal("10"),
        "week",
    )
    assert key.allowed_capabilities == ["TEXT", "EMBEDDING"]
    assert list(key.allowed_models.all()) == [model]
    assert key.log_content
    assert key.expires_at.year == 2030


def test_an_invalid_rate_limit_is_refused_with_a_clear_message(admin_client, owner):
    response = admin_client.post(
        reverse("admin:keys_apikey_add"), add_form(owner, rate_limit="60 per minute")
    )

    assert response.status_code == 200
    assert "COUNT/UNIT" in response.content.decode()
    assert not APIKey.objects.exists()


def test_a_new_key_gets_its_budget_and_concurrency_limit_through_the_service(admin_client, owner):
    response = admin_client.post(
        reverse("admin:keys_apikey_add"),
        add_form(owner, max_concurrent="2", budget="5", budget_soft="4.5", budget_period="day"),
    )

    assert response.status_code == 200
    key = APIKey.objects.get()
    assert key.digest == digest(SECRET.search(response.content.decode())[1])
    assert (key.max_concurrent, key.budget, key.budget_soft, key.budget_period) == (
        2,
        Decimal("5"),
        Decimal("4.5"),
        "day",
    )


def test_the_key_page_shows_its_budget_exactly_and_explains_token_rates(admin_client, key):
    APIKey.objects.filter(pk=key.pk).update(budget=Decimal("12.5"), max_concurrent=4)

    page = admin_client.get(reverse("admin:keys_apikey_change", args=[key.pk]))

    form = page.context["adminform"].form
    assert (form["budget"].value(), form["budget_soft"].value()) == ("12.5", "")
    assert form["max_concurrent"].value() == 4
    html = page.content.decode()
    assert "12.5000000000" not in html
    assert "<code>60/m,1000/d,100000tok/m,2000000tok/d</code>" in html
    assert "then counted for what it really used" in html
    # The concurrency limit stands next to the rate limit, on its line.
    assert 'class="form-row field-rate_limit field-max_concurrent"' in html
    assert "a request must fit both" in html


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"budget": "3", "budget_soft": "4"}, "budget_soft", "at or below the hard limit"),
        ({"budget_soft": "-2"}, "budget_soft", "greater than or equal to 0"),
        ({"budget": "a lot"}, "budget", "Enter a number"),
        ({"budget_period": "year"}, "budget_period", "Select a valid choice"),
        ({"max_concurrent": "0"}, "max_concurrent", "greater than or equal to 1"),
        ({"rate_limit": "10tok/x"}, "rate_limit", '"10tok/x" is not a rate'),
    ],
)
def test_bad_limits_and_budgets_are_refused_on_their_field(
    admin_client, key, fields, field, message
):
    url = reverse("admin:keys_apikey_change", args=[key.pk])

    response = admin_client.post(url, add_form(key.owner, name="ci", **fields))

    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors[field])
    key.refresh_from_db()
    assert (key.rate_limit, key.max_concurrent, key.budget, key.budget_soft) == (
        "60/m",
        None,
        None,
        None,
    )


def test_a_read_only_key_page_shows_the_budget_for_people(client, key):
    APIKey.objects.filter(pk=key.pk).update(budget=Decimal("2500"), budget_soft=Decimal("2000"))
    client.force_login(make_staff("viewer", VIEW))

    page = client.get(reverse("admin:keys_apikey_change", args=[key.pk])).content.decode()

    assert '<div class="readonly">$2,500.00</div>' in page
    assert '<div class="readonly">$2,000.00</div>' in page
    assert 'name="budget"' not in page
    assert "2500.0000000000" not in page


def test_keys_are_deactivated_and_activated_from_the_list(admin_client, key):
    changelist = reverse("admin:keys_apikey_changelist")
    admin_client.post(changelist, {"action": "deactivate_selected", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert not key.is_active

    admin_client.post(changelist, {"action": "activate_selected", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.is_active


def test_the_list_checkbox_deactivates_a_key(admin_client, key):
    response = admin_client.post(
        reverse("admin:keys_apikey_changelist"),
        {
            "form-TOTAL_FORMS": "1",
            "form-INITIAL_FORMS": "1",
            "form-0-id": key.pk,
            "_save": "Save",
        },
    )

    assert response.status_code == 302
    key.refresh_from_db()
    assert not key.is_active


def test_a_whole_key_in_the_search_box_is_not_looked_up_or_echoed(admin_client, owner):
    _, secret = services.create_key(owner=owner, name="findme")
    changelist = reverse("admin:keys_apikey_changelist")

    response = admin_client.get(changelist, {"q": secret, "is_active__exact": "1"})
    page = admin_client.get(response["Location"])

    assert response.status_code == 302
    assert response["Location"] == f"{changelist}?is_active__exact=1"
    content = page.content.decode()
    assert secret not in content
    assert "findme" in content  # the unfiltered list, not a search result
    assert "not searched here" in content
    assert "Find by secret" in content


def test_the_admin_creates_keys_through_the_service(admin_client, owner, create_key_calls):
    llama = Model.objects.create(name="llama3")

    response = admin_client.post(
        reverse("admin:keys_apikey_add"), add_form(owner, allowed_models=[llama.pk])
    )

    assert response.status_code == 200
    assert [(call["owner"], call["name"]) for call in create_key_calls] == [(owner, "laptop")]
    key = APIKey.objects.get()
    assert key.digest == digest(SECRET.search(response.content.decode())[1])
    assert list(key.allowed_models.all()) == [llama]


def test_the_list_shows_and_filters_each_keys_state(admin_client, owner, django_user_model):
    usable, _ = services.create_key(owner=owner, name="usable")
    services.create_key(owner=owner, name="off", is_active=False)
    bob = django_user_model.objects.create_user("bob", is_active=False)
    services.create_key(owner=bob, name="orphan")
    changelist = reverse("admin:keys_apikey_changelist")

    page = admin_client.get(changelist)
    usable_only = admin_client.get(changelist, {"state": "usable"})
    refused = admin_client.get(changelist, {"state": "refused"})

    rows = {key.name: key.state() for key in page.context["cl"].result_list}
    assert rows == {"usable": "usable", "off": "inactive", "orphan": "owner inactive"}
    assert "owner inactive" in page.content.decode()
    assert list(usable_only.context["cl"].result_list) == [usable]
    assert {key.name for key in refused.context["cl"].result_list} == {"off", "orphan"}


def test_a_display_prefix_is_still_searched(admin_client, owner):
    key, _ = services.create_key(owner=owner, name="findme")
    services.create_key(owner=owner, name="other")

    page = admin_client.get(reverse("admin:keys_apikey_changelist"), {"q": key.prefix})

    assert list(page.context["cl"].result_list) == [key]


def test_the_find_form_posts_the_secret_and_opens_its_key(admin_client, owner):
    key, secret = services.create_key(owner=owner, name="findme")
    services.create_key(owner=owner, name="other")
    url = reverse("admin:keys_apikey_find")

    form = admin_client.get(url).content.decode()
    response = admin_client.post(url, {"secret": f"  {secret}\n"})

    assert 'method="post"' in form
    assert 'type="password" name="secret"' in form
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:keys_apikey_change", args=[key.pk])
    assert secret not in response["Location"]


def test_the_find_form_says_when_no_key_has_the_secret(admin_client, owner):
    _, secret = services.create_key(owner=owner, name="findme")
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")

    response = admin_client.post(reverse("admin:keys_apikey_find"), {"secret": wrong})

    assert response.status_code == 200
    assert "No API key has that secret." in response.content.decode()
    assert wrong not in response.content.decode()


def test_the_key_list_links_to_the_find_form(admin_client):
    page = admin_client.get(reverse("admin:keys_apikey_changelist")).content.decode()

    assert reverse("admin:keys_apikey_find") in page


def test_the_delete_page_says_request_logs_are_kept(admin_client, key):
    url = reverse("admin:keys_apikey_delete", args=[key.pk])
    page = admin_client.get(url).content.decode()
    assert 'id="delete-notes"' in page
    assert "0 request logs are kept" in page

    admin_client.post(url, {"post": "yes"})
    assert not APIKey.objects.exists()
