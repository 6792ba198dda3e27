"""Staff flows for users in Django admin."""

from decimal import Decimal

import pytest
from django.db.models import F
from django.urls import reverse

from keys import services
from keys.models import APIKey

pytestmark = pytest.mark.django_db


def change_form(user, **overrides):
    return {
        "username": user.username,
        "email": user.email,
        "organization": user.organization,
        "balance": "" if user.balance is None else str(user.balance),
        "initial-balance": "" if user.balance is None else str(user.balance),
        "budget_period": user.budget_period,
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
        **overrides,
    }


def test_staff_create_a_consumer_without_a_password(admin_client, django_user_model):
    response = admin_client.post(
        reverse("admin:accounts_user_add"),
        {
            "username": "carol",
            "email": "carol@example.com",
            "organization": "Acme",
            "balance": "12.50",
            "usable_password": "false",
        },
    )

    assert response.status_code == 302
    carol = django_user_model.objects.get(username="carol")
    assert (carol.organization, carol.balance) == ("Acme", Decimal("12.50"))
    assert not carol.has_usable_password()
    assert not carol.is_staff


def test_a_negative_balance_cannot_be_set(admin_client, django_user_model):
    response = admin_client.post(
        reverse("admin:accounts_user_add"),
        {"username": "dave", "balance": "-1", "usable_password": "false"},
    )

    assert response.status_code == 200
    assert "cannot be set below zero" in response.content.decode()
    assert not django_user_model.objects.filter(username="dave").exists()


def test_a_balance_spent_below_zero_does_not_block_other_edits(admin_client, django_user_model):
    user = django_user_model.objects.create_user("erin", balance=Decimal("-0.25"))

    response = admin_client.post(
        reverse("admin:accounts_user_change", args=[user.pk]),
        change_form(user, organization="Initech"),
    )

    assert response.status_code == 302
    user.refresh_from_db()
    assert (user.organization, user.balance) == ("Initech", Decimal("-0.25"))


def test_saving_a_user_keeps_charges_settled_while_the_form_was_open(
    admin_client, django_user_model
):
    user = django_user_model.objects.create_user("ivy", balance=Decimal("10"))
    shown = change_form(user, organization="Umbrella")
    django_user_model.objects.filter(pk=user.pk).update(balance=F("balance") - Decimal("0.5"))

    admin_client.post(reverse("admin:accounts_user_change", args=[user.pk]), shown)

    user.refresh_from_db()
    assert (user.organization, user.balance) == ("Umbrella", Decimal("9.5"))


def test_a_top_up_is_added_to_the_current_balance(admin_client, django_user_model):
    user = django_user_model.objects.create_user("jack", balance=Decimal("10"))
    form = change_form(user, balance="110")
    django_user_model.objects.filter(pk=user.pk).update(balance=F("balance") - Decimal("0.5"))

    admin_client.post(reverse("admin:accounts_user_change", args=[user.pk]), form)

    user.refresh_from_db()
    assert user.balance == Decimal("109.5")


def test_the_balance_is_shown_for_people_and_edited_exactly(admin_client, django_user_model):
    user = django_user_model.objects.create_user("lea", balance=Decimal("1234.5"))
    url = reverse("admin:accounts_user_change", args=[user.pk])

    page = admin_client.get(url)
    listed = admin_client.get(reverse("admin:accounts_user_changelist")).content.decode()

    assert page.context["adminform"].form["balance"].value() == "1234.5"
    assert 'value="1234.5"' in page.content.decode()
    assert "Now $1,234.50." in page.content.decode()
    assert "$1,234.50" in listed
    assert "1234.5000000000" not in listed
    response = admin_client.post(
        url, change_form(user, balance="20.125", **{"initial-balance": "1234.5"}), follow=True
    )
    user.refresh_from_db()
    assert user.balance == Decimal("20.125")
    assert "The balance of lea is now $20.12." in response.content.decode()


def test_a_read_only_user_page_shows_the_balance_for_people(client, ops, django_user_model):
    root = django_user_model.objects.create_superuser("boss", "", None, balance=Decimal("7.5"))
    client.force_login(ops)

    page = client.get(reverse("admin:accounts_user_change", args=[root.pk])).content.decode()

    assert '<div class="readonly">$7.50</div>' in page
    assert "7.5000000000" not in page
    assert 'name="balance"' not in page


def test_a_users_budget_is_set_on_its_page_and_shown_exactly(admin_client, django_user_model):
    user = django_user_model.objects.create_user("lea", balance=Decimal("5"))
    url = reverse("admin:accounts_user_change", args=[user.pk])

    response = admin_client.post(
        url, change_form(user, budget="250", budget_soft="200.5", budget_period="day")
    )
    page = admin_client.get(url)

    assert response.status_code == 302
    user.refresh_from_db()
    assert (user.budget, user.budget_soft, user.budget_period) == (
        Decimal("250"),
        Decimal("200.5"),
        "day",
    )
    assert user.balance == Decimal("5")
    form = page.context["adminform"].form
    assert (form["budget"].value(), form["budget_soft"].value()) == ("250", "200.5")
    html = page.content.decode()
    assert "250.0000000000" not in html
    fieldsets = [fieldset.name for fieldset in page.context["adminform"]]
    assert fieldsets.index("Budget") == fieldsets.index("Gateway") + 1
    assert "a request must fit both" in html


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"budget": "10", "budget_soft": "11"}, "budget_soft", "at or below the hard limit"),
        ({"budget": "-1"}, "budget", "greater than or equal to 0"),
        ({"budget_period": "year"}, "budget_period", "Select a valid choice"),
    ],
)
def test_a_bad_budget_is_refused_on_its_field(
    admin_client, django_user_model, fields, field, message
):
    user = django_user_model.objects.create_user("lea")

    response = admin_client.post(
        reverse("admin:accounts_user_change", args=[user.pk]), change_form(user, **fields)
    )

    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors[field])
    user.refresh_from_db()
    assert (user.budget, user.budget_soft, user.budget_period) == (None, None, "month")


def test_a_read_only_user_page_shows_the_budget_for_people(client, ops, django_user_model):
    root = django_user_model.objects.create_superuser(
        "boss", "", None, budget=Decimal("1500"), budget_soft=Decimal("0.00012")
    )
    client.force_login(ops)

    page = client.get(reverse("admin:accounts_user_change", args=[root.pk])).content.decode()

    assert '<div class="readonly">$1,500.00</div>' in page
    assert '<div class="readonly">$0.00012</div>' in page
    assert '<div class="readonly">Every month (from the 1st)</div>' in page
    assert 'name="budget"' not in page
    assert "1500.0000000000" not in page


def test_prepaid_billing_is_switched_on_and_off(admin_client, django_user_model):
    user = django_user_model.objects.create_user("kim")
    url = reverse("admin:accounts_user_change", args=[user.pk])

    admin_client.post(url, change_form(user, balance="5"))
    user.refresh_from_db()
    assert user.balance == Decimal("5")

    admin_client.post(url, change_form(user, balance=""))
    user.refresh_from_db()
    assert user.balance is None


def test_users_are_deactivated_from_the_list_but_not_oneself(admin_client, django_user_model):
    staff = django_user_model.objects.get(username="admin")
    user = django_user_model.objects.create_user("frank")

    admin_client.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "deactivate_selected", "_selected_action": [user.pk, staff.pk]},
    )

    user.refresh_from_db()
    staff.refresh_from_db()
    assert not user.is_active
    assert staff.is_active


def test_the_user_page_lists_keys_without_secrets(admin_client, django_user_model):
    user = django_user_model.objects.create_user("gina")
    key, secret = services.create_key(owner=user, name="gina-laptop")

    page = admin_client.get(reverse("admin:accounts_user_change", args=[user.pk])).content.decode()

    assert "gina-laptop" in page
    assert key.prefix in page
    assert secret not in page


def test_deleting_a_user_lists_their_keys_and_says_logs_are_kept(admin_client, django_user_model):
    user = django_user_model.objects.create_user("hank")
    services.create_key(owner=user, name="hank-ci")
    url = reverse("admin:accounts_user_delete", args=[user.pk])

    page = admin_client.get(url).content.decode()
    assert "hank-ci" in page
    assert "0 request logs are kept" in page

    admin_client.post(url, {"post": "yes"})
    assert not django_user_model.objects.filter(username="hank").exists()
    assert not APIKey.objects.exists()
