"""Fixtures shared by every app's tests."""

import os

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


# --------------------------------------------------------------------------- personas
# The people of aethergate.testing, as fixtures; a test module may override one.


@pytest.fixture
def alice(db):
    """The prepaid consumer: balance 10, of Acme."""
    from aethergate.testing import prepaid_consumer

    return prepaid_consumer()


@pytest.fixture
def bob(db):
    """A second consumer, without a prepaid balance."""
    from aethergate.testing import second_consumer

    return second_consumer()


@pytest.fixture
def staff(db):
    """The superuser `root` (password ROOT_PASSWORD), logged in nowhere yet; use
    `admin_client` for a logged-in client."""
    from aethergate.testing import superuser

    return superuser()


@pytest.fixture
def ops(db):
    """A staff user (not a superuser) who holds management API tokens and every model
    permission (view, add, change, delete) on the gateway's models, but no privileges.
    """
    from aethergate.testing import CHANGE, make_staff

    return make_staff("ops", CHANGE)


@pytest.fixture
def api_client_class():
    """The client class `bearer` and `api` build; a test module may override it."""
    from rest_framework.test import APIClient

    return APIClient


@pytest.fixture
def bearer(api_client_class):
    """`bearer(token, scheme="Bearer")`: a management API client that presents `token`."""

    def client_with(token: str, scheme: str = "Bearer"):
        client = api_client_class()
        client.credentials(HTTP_AUTHORIZATION=f"{scheme} {token}")
        return client

    return client_with


@pytest.fixture
def api(ops, bearer):
    """A management API client authenticated with a staff API token of `ops`."""
    from aethergate.testing import api_token

    return bearer(api_token(ops))


@pytest.fixture
def root_api(staff, bearer):
    """A management API client authenticated with a staff API token of the superuser `staff`."""
    from aethergate.testing import api_token

    return bearer(api_token(staff, "root"))


@pytest.fixture
def announced():
    """The models `aethergate.lib.changes.changed` was sent for while the test runs, in order.

    It is sent when a write commits: under the `db` fixture nothing commits, so wrap
    the write in `django_capture_on_commit_callbacks(execute=True)`.
    """
    from aethergate.lib import changes

    sent = []

    def receiver(sender, **kwargs):
        sent.append(sender)

    changes.changed.connect(receiver, weak=False, dispatch_uid="test-announced")
    yield sent
    changes.changed.disconnect(dispatch_uid="test-announced")


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory):
    """Test on a SQLite file, as deployed, not Django's in-memory shared-cache default.

    In shared-cache memory, a table lock held by the gateway's writer thread
    fails another thread at once ("database table is locked"); a file in WAL
    mode with a busy timeout waits instead, exactly as production does.
    """
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = str(
            tmp_path_factory.mktemp("db") / "test.sqlite3"
        )


@pytest.fixture(scope="module")
def redis_server():
    """A private redis-server for this module's tests, which may stop and restart it.

    Skipped when the binary is missing, except in CI (AETHERGATE_REQUIRE_SERVICES=1).
    """
    from proxy.tests.processes import RedisServer

    if not RedisServer.available():
        if os.environ.get("AETHERGATE_REQUIRE_SERVICES"):
            pytest.fail("redis-server is not installed", pytrace=False)
        pytest.skip("redis-server is not installed")
    with RedisServer() as server:
        yield server
