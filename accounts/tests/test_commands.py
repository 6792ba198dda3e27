"""The ensure_admin command used by first run."""

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_it_creates_an_admin_with_a_generated_password_shown_once(capsys, django_user_model):
    call_command("ensure_admin")

    out = capsys.readouterr().out
    admin = django_user_model.objects.get()
    password = out.split("password: ")[1].split()[0]
    assert admin.is_superuser and admin.is_staff
    assert admin.check_password(password)


def test_it_uses_the_configured_credentials(settings, django_user_model):
    settings.AETHERGATE_ADMIN_USERNAME = "ops"
    settings.AETHERGATE_ADMIN_PASSWORD = "a-long-configured-password"

    call_command("ensure_admin")

    assert django_user_model.objects.get().username == "ops"
    assert django_user_model.objects.get().check_password("a-long-configured-password")


def test_it_does_nothing_when_an_admin_exists_and_tells_how_to_reset_its_password(
    capsys, django_user_model
):
    django_user_model.objects.create_superuser("boss", "", "pw")

    call_command("ensure_admin")

    assert django_user_model.objects.count() == 1
    assert django_user_model.objects.get().check_password("pw")
    out = capsys.readouterr().out
    assert "An admin account exists already (boss); nothing to do." in out
    assert "python manage.py changepassword boss" in out
