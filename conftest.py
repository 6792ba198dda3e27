"""Fixtures shared by every app's tests."""

import pytest


@pytest.fixture(autouse=True)
def _plain_static_storage(settings, tmp_path_factory):
    # The manifest storage used in production needs `collectstatic` first;
    # tests render admin pages without it (and WhiteNoise wants STATIC_ROOT
    # to exist, which it does not in a fresh clone).
    settings.STATIC_ROOT = tmp_path_factory.getbasetemp()
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def staff(django_user_model):
    """A superuser logged in nowhere yet; use `admin_client` for a logged-in client."""
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")
