"""Every field of a user, key, endpoint, model and deployment reaches the admin, the API and
the backup.

Each model's `shared_fields` feeds its API serializer and its backup kind; the
admin lays fields out in fieldsets by hand. A deployment is shown within its
model on each: the model page's inline, the model's `deployments` in the API
and in the backup. So that a new field cannot be forgotten by one surface,
every concrete and many-to-many field must be shown by each surface or left
out of it below, with the reason.
"""

import pytest
from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.auth.models import Group
from django.test import RequestFactory

from accounts.api.serializers import UserSerializer
from accounts.models import User
from aethergate.backup.schema import DEPLOYMENT_FIELDS, SCHEMA
from endpoints.api.serializers import EndpointSerializer
from endpoints.models import Endpoint
from keys.api.serializers import KeySerializer
from keys.models import APIKey
from models_registry.api.serializers import CatalogModelSerializer, DeploymentSerializer
from models_registry.models import Deployment, Model

# The admin's pages read the database (whether any group exists).
pytestmark = pytest.mark.django_db

SERIALIZERS = {
    User: UserSerializer,
    APIKey: KeySerializer,
    Endpoint: EndpointSerializer,
    Model: CatalogModelSerializer,
    Deployment: DeploymentSerializer,
}
KINDS = {User: "users", APIKey: "api_keys", Endpoint: "endpoints", Model: "models"}

BOOKKEEPING = "set by every save; a restore writes its own"
NESTED = "shown within its model, whose deployment it is"
TIMES = "bookkeeping, not configuration"
CREDENTIAL = "stored encrypted; carried in clear as `{}`, which only sets it"
PERMISSIONS = (
    "Django permissions and groups, granted in the admin only; a restored staff "
    "member is given them again there"
)

# model → surface → field → why the surface leaves the field out.
LEFT_OUT = {
    User: {
        "admin": {"updated_at": "bookkeeping, shown in the API"},
        "api": {"groups": PERMISSIONS, "user_permissions": PERMISSIONS},
        "backup": {
            "last_login": "login history, not configuration",
            "updated_at": BOOKKEEPING,
            "groups": PERMISSIONS,
            "user_permissions": PERMISSIONS,
        },
    },
    APIKey: {
        "admin": {
            "digest": "the SHA-256 of the secret: shown nowhere but the backup",
            "updated_at": "bookkeeping, shown in the API",
        },
        "api": {"digest": "the SHA-256 of the secret: shown nowhere but the backup"},
        "backup": {
            "last_used_at": "usage, not configuration",
            "updated_at": BOOKKEEPING,
        },
    },
    Endpoint: {
        "admin": {"api_key_encrypted": CREDENTIAL.format("new_api_key")},
        "api": {"api_key_encrypted": CREDENTIAL.format("api_key")},
        "backup": {
            "api_key_encrypted": CREDENTIAL.format("api_key") + ", with --include-secrets",
            "created_at": BOOKKEEPING,
            "updated_at": BOOKKEEPING,
        },
    },
    Model: {
        "admin": {},
        "api": {},
        "backup": {"created_at": BOOKKEEPING, "updated_at": BOOKKEEPING},
    },
    Deployment: {
        "admin": {"model": NESTED, "created_at": TIMES, "updated_at": TIMES},
        "api": {"model": NESTED, "created_at": TIMES, "updated_at": TIMES},
        "backup": {"model": NESTED, "created_at": BOOKKEEPING, "updated_at": BOOKKEEPING},
    },
}


def model_fields(model) -> set[str]:
    """Every field a row holds: concrete and many-to-many, but the automatic primary key."""
    return {
        f.name
        for f in model._meta.get_fields()
        if (f.concrete or f.many_to_many) and not f.auto_created
    }


def admin_fields(model) -> set[str]:
    """The fields on the admin's change page for an existing row, as a superuser sees it
    once a group exists (the user page offers groups only then)."""
    Group.objects.get_or_create(name="support")
    request = RequestFactory().get("/admin/")
    request.user = User(username="root", is_staff=True, is_superuser=True)
    if model is Deployment:  # edited inline, on its model's page
        model_admin = admin.site.get_model_admin(Model)
        inlines = model_admin.get_inline_instances(request, Model())
        inline = next(i for i in inlines if i.model is Deployment)
        return set(flatten_fieldsets(inline.get_fieldsets(request)))
    model_admin = admin.site.get_model_admin(model)
    return set(flatten_fieldsets(model_admin.get_fieldsets(request, model())))


def api_fields(model) -> set[str]:
    return set(SERIALIZERS[model].Meta.fields)


def backup_fields(model) -> set[str]:
    if model is Deployment:
        return set(DEPLOYMENT_FIELDS)
    kind = SCHEMA[KINDS[model]]
    return {kind.key, *kind.fields, *kind.extra}


SURFACES = {"admin": admin_fields, "api": api_fields, "backup": backup_fields}
CASES = [
    pytest.param(model, surface, id=f"{model.__name__}-{surface}")
    for model in LEFT_OUT
    for surface in SURFACES
]


@pytest.mark.parametrize(("model", "surface"), CASES)
def test_each_surface_shows_every_field_or_says_why_not(model, surface):
    missing = model_fields(model) - SURFACES[surface](model) - LEFT_OUT[model][surface].keys()

    assert not missing, (
        f"{model.__name__} fields missing from the {surface}: {sorted(missing)}. Add them "
        f"(to `shared_fields`, or the admin's fieldsets), or to LEFT_OUT with the reason."
    )


@pytest.mark.parametrize(("model", "surface"), CASES)
def test_no_field_left_out_is_shown_by_the_surface_or_lacking_in_the_model(model, surface):
    left_out = LEFT_OUT[model][surface].keys()

    assert not left_out & SURFACES[surface](model), "shown after all: drop it from LEFT_OUT"
    assert left_out <= model_fields(model), "no such field: drop it from LEFT_OUT"
