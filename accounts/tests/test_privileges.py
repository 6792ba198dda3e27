"""Privilege rules in the API and the admin: superusers, staff flags, passwords, tokens."""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.models import APIToken, User
from aethergate.testing import CHANGE, make_staff

pytestmark = pytest.mark.django_db

ROOT_PASSWORD = "pw-root-123"  # the `staff` fixture's


@pytest.fixture
def clerk(db):
    """A staff member who holds every model permission but is not a superuser."""
    return make_staff("clerk", CHANGE, email="clerk@example.com")


@pytest.fixture
def clerk_api(clerk, bearer):
    _, secret = services.create_api_token(user=clerk, name="tests")
    return bearer(secret)


@pytest.fixture
def clerk_admin(clerk):
    client = Client()
    client.force_login(clerk)
    return client


@pytest.fixture
def consumer(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-old-pass-phrase")


def admin_login_works(username, password):
    response = Client().post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": "/admin/"},
    )
    return response.status_code == 302


# The issue's attack, through the API ------------------------------------------
@pytest.mark.parametrize(
    "target, refusal, password",
    [
        ("staff", "Only a superuser may change a superuser.", ROOT_PASSWORD),
        ("consumer", "Only a superuser may set another user's password.", "alice-old-pass-phrase"),
    ],
)
def test_a_staff_token_cannot_set_another_users_password(
    request, clerk_api, target, refusal, password
):
    user = request.getfixturevalue(target)

    response = clerk_api.patch(
        f"/api/v1/users/{user.pk}/", {"password": "taken-over-pass-phrase"}, format="json"
    )

    assert response.status_code == 403
    assert response.json() == {"detail": refusal}
    user.refresh_from_db()
    assert user.check_password(password)
    assert not admin_login_works(user.username, "taken-over-pass-phrase")


def test_the_superuser_still_logs_in_with_their_own_password(staff):
    assert admin_login_works("root", ROOT_PASSWORD)


@pytest.mark.parametrize(
    "method, suffix, body",
    [
        ("patch", "", {"is_active": False}),
        ("patch", "", {"is_staff": False}),
        ("patch", "", {"email": "evil@example.com"}),
        ("put", "", {"username": "root", "is_staff": False}),
        ("delete", "", None),
        ("post", "credit/", {"amount": "5"}),
    ],
)
def test_a_staff_token_cannot_change_a_superuser_in_any_way(clerk_api, staff, method, suffix, body):
    before = User.objects.filter(pk=staff.pk).values().get()

    response = getattr(clerk_api, method)(f"/api/v1/users/{staff.pk}/{suffix}", body, format="json")

    assert response.status_code == 403
    assert User.objects.filter(pk=staff.pk).values().get() == before


def test_a_staff_token_cannot_create_staff(clerk_api):
    response = clerk_api.post(
        "/api/v1/users/", {"username": "mallory", "is_staff": True}, format="json"
    )

    assert response.status_code == 403
    assert response.json() == {"detail": "Only a superuser may change is_staff."}
    assert not User.objects.filter(username="mallory").exists()


def test_a_staff_token_cannot_grant_or_remove_staff(clerk_api, consumer, django_user_model):
    colleague = make_staff("colleague")

    grant = clerk_api.patch(f"/api/v1/users/{consumer.pk}/", {"is_staff": True}, format="json")
    demote = clerk_api.patch(f"/api/v1/users/{colleague.pk}/", {"is_staff": False}, format="json")

    assert (grant.status_code, demote.status_code) == (403, 403)
    consumer.refresh_from_db()
    colleague.refresh_from_db()
    assert not consumer.is_staff
    assert colleague.is_staff


def test_a_staff_member_may_set_their_own_password(clerk_api, clerk):
    response = clerk_api.patch(
        f"/api/v1/users/{clerk.pk}/", {"password": "my-own-new-pass-phrase"}, format="json"
    )

    assert response.status_code == 200
    clerk.refresh_from_db()
    assert clerk.check_password("my-own-new-pass-phrase")


def test_a_staff_token_may_still_edit_consumers(clerk_api, consumer):
    # is_staff sent unchanged (as a PUT-style full body does) is not a privilege change.
    response = clerk_api.patch(
        f"/api/v1/users/{consumer.pk}/",
        {"organization": "Initech", "is_staff": False, "is_active": False},
        format="json",
    )

    assert response.status_code == 200
    consumer.refresh_from_db()
    assert (consumer.organization, consumer.is_active) == ("Initech", False)


def test_a_superuser_token_may_change_superusers_and_staff(root_api, consumer):
    other_root = User.objects.create_superuser("root2", password="pw-root2-123")

    password = root_api.patch(
        f"/api/v1/users/{other_root.pk}/", {"password": "root2-new-pass-phrase"}, format="json"
    )
    promote = root_api.patch(f"/api/v1/users/{consumer.pk}/", {"is_staff": True}, format="json")

    assert (password.status_code, promote.status_code) == (200, 200)
    other_root.refresh_from_db()
    consumer.refresh_from_db()
    assert other_root.check_password("root2-new-pass-phrase")
    assert consumer.is_staff


def test_a_token_holder_without_change_user_cannot_edit_users(bearer, consumer):
    viewer = make_staff("viewer", ("view",))
    _, secret = services.create_api_token(user=viewer, name="ro")

    response = bearer(secret).patch(
        f"/api/v1/users/{consumer.pk}/", {"organization": "X"}, format="json"
    )

    assert response.status_code == 403
    consumer.refresh_from_db()
    assert consumer.organization == ""


# The admin ----------------------------------------------------------------------
def change_form(user, **overrides):
    return {
        "username": user.username,
        "email": user.email,
        "organization": user.organization,
        "balance": "",
        "initial-balance": "",
        "budget_period": user.budget_period,
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
        **overrides,
    }


def test_the_admin_refuses_a_staff_members_edit_of_a_superuser(clerk_admin, staff):
    url = reverse("admin:accounts_user_change", args=[staff.pk])

    page = clerk_admin.get(url)
    saved = clerk_admin.post(url, change_form(staff, email="evil@example.com"))

    assert page.status_code == 200
    assert 'name="email"' not in page.content.decode()  # shown read-only
    assert saved.status_code == 403
    staff.refresh_from_db()
    assert staff.email == "root@example.com"


def test_the_admin_hides_privilege_fields_from_staff_members(clerk_admin, consumer):
    url = reverse("admin:accounts_user_change", args=[consumer.pk])
    page = clerk_admin.get(url).content.decode()

    clerk_admin.post(
        url,
        change_form(
            consumer,
            organization="Initech",
            is_staff="on",
            is_superuser="on",
            user_permissions=[Permission.objects.get(codename="change_user").pk],
        ),
    )

    for field in ("is_staff", "is_superuser", "groups", "user_permissions"):
        assert f'name="{field}"' not in page, field
    consumer.refresh_from_db()
    assert consumer.organization == "Initech"
    assert not (consumer.is_staff or consumer.is_superuser)
    assert not consumer.user_permissions.exists()


def test_the_admin_refuses_a_staff_member_setting_another_users_password(
    clerk_admin, clerk, consumer, staff
):
    for target in (consumer, staff):
        url = reverse("admin:auth_user_password_change", args=[target.pk])
        response = clerk_admin.post(
            url,
            {
                "password1": "taken-over-pass-phrase",
                "password2": "taken-over-pass-phrase",
                "usable_password": "true",
            },
        )
        assert response.status_code == 403, target
    consumer.refresh_from_db()
    staff.refresh_from_db()
    assert consumer.check_password("alice-old-pass-phrase")
    assert staff.check_password(ROOT_PASSWORD)
    assert not admin_login_works("root", "taken-over-pass-phrase")


def test_the_admin_lets_a_staff_member_set_their_own_password(clerk_admin, clerk):
    response = clerk_admin.post(
        reverse("admin:auth_user_password_change", args=[clerk.pk]),
        {
            "password1": "my-own-new-pass-phrase",
            "password2": "my-own-new-pass-phrase",
            "usable_password": "true",
        },
    )

    assert response.status_code == 302
    clerk.refresh_from_db()
    assert clerk.check_password("my-own-new-pass-phrase")


def test_the_admin_list_and_actions_cannot_deactivate_a_superuser(clerk_admin, staff, consumer):
    changelist = reverse("admin:accounts_user_changelist")

    clerk_admin.post(
        changelist,
        {"action": "deactivate_selected", "_selected_action": [staff.pk, consumer.pk]},
    )
    listed = clerk_admin.post(
        changelist,
        {
            "form-TOTAL_FORMS": "1",
            "form-INITIAL_FORMS": "1",
            "form-0-id": str(staff.pk),
            "_save": "Save",
        },
    )

    assert listed.status_code == 403
    staff.refresh_from_db()
    consumer.refresh_from_db()
    assert staff.is_active
    assert not consumer.is_active


def test_the_admin_refuses_deleting_a_superuser_to_staff_members(clerk_admin, staff):
    response = clerk_admin.post(
        reverse("admin:accounts_user_delete", args=[staff.pk]), {"post": "yes"}
    )

    assert response.status_code == 403
    assert User.objects.filter(pk=staff.pk).exists()


def test_a_superuser_may_tick_is_superuser_in_the_admin(admin_client, consumer):
    admin_client.post(
        reverse("admin:accounts_user_change", args=[consumer.pk]),
        change_form(consumer, is_staff="on", is_superuser="on"),
    )

    consumer.refresh_from_db()
    assert consumer.is_staff and consumer.is_superuser


# API tokens (admin only: the API has no token resource) --------------------------
def test_a_staff_member_cannot_issue_a_token_for_someone_else(clerk_admin, staff):
    colleague = make_staff("colleague")

    for owner in (staff, colleague):
        response = clerk_admin.post(
            reverse("admin:accounts_apitoken_add"), {"user": owner.pk, "name": "stolen"}
        )
        assert response.status_code == 200, owner  # the form again, with the refusal
        assert "Select a valid choice" in response.content.decode()
    assert not APIToken.objects.exists()


def test_a_staff_member_issues_their_own_token(clerk_admin, clerk):
    response = clerk_admin.post(
        reverse("admin:accounts_apitoken_add"), {"user": clerk.pk, "name": "mine"}
    )

    assert response.status_code == 200
    assert "agt-" in response.content.decode()
    assert APIToken.objects.get().user == clerk


def test_a_staff_member_sees_and_revokes_only_their_own_tokens(clerk_admin, clerk, staff):
    root_token, _ = services.create_api_token(user=staff, name="root")
    own, _ = services.create_api_token(user=clerk, name="mine")

    listing = clerk_admin.get(reverse("admin:accounts_apitoken_changelist")).content.decode()
    clerk_admin.post(
        reverse("admin:accounts_apitoken_changelist"),
        {"action": "revoke_selected", "_selected_action": [root_token.pk, own.pk]},
    )
    other = clerk_admin.get(reverse("admin:accounts_apitoken_change", args=[root_token.pk]))

    assert root_token.prefix not in listing
    assert own.prefix in listing
    assert other.status_code == 302  # the admin's "no such object" redirect
    root_token.refresh_from_db()
    own.refresh_from_db()
    assert root_token.revoked_at is None
    assert own.revoked_at is not None
