"""What every management API resource shares: validation, errors, paging, ordering, docs.

Each app's `api/` builds on these: a CleanModelSerializer per model, a
ManagementViewSet per resource. Settings.REST_FRAMEWORK names the
exception handler defined here (the ordering filter is in ordering.py).
"""

import copy

from django.core.exceptions import NON_FIELD_ERRORS, FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError, transaction
from django.utils.cache import patch_cache_control
from rest_framework import exceptions, serializers, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.fields import get_error_detail
from rest_framework.pagination import PageNumberPagination
from rest_framework.settings import api_settings
from rest_framework.validators import UniqueValidator
from rest_framework.views import exception_handler as drf_exception_handler

from aethergate.lib import audit

UNIQUE_CODES = {"unique", "unique_together"}


class Conflict(exceptions.APIException):
    """409: the request would duplicate an existing object's natural key (or race with one)."""

    status_code = 409
    default_detail = "This conflicts with an existing object."
    default_code = "conflict"


def api_errors(error: DjangoValidationError) -> exceptions.APIException:
    """A Django ValidationError as a DRF error: 400, or 409 (Conflict) if duplicates caused it."""
    detail = get_error_detail(error)
    if not isinstance(detail, dict):
        detail = {NON_FIELD_ERRORS: detail}
    detail = {
        (api_settings.NON_FIELD_ERRORS_KEY if field == NON_FIELD_ERRORS else field): messages
        for field, messages in detail.items()
    }
    codes = {message.code for messages in detail.values() for message in messages}
    if codes and codes <= UNIQUE_CODES:
        return Conflict(detail)
    return serializers.ValidationError(detail)


class CleanModelSerializer(serializers.ModelSerializer):
    """A ModelSerializer that validates with the model's own `full_clean()`.

    Admin forms and the backup importer validate with `full_clean()` too, so
    every entry point applies the same rules, `Model.clean()` included. A
    duplicate natural key (username, endpoint or model name) is a 409
    Conflict, not a 400. Updates write only the columns the request sets, so
    concurrent writes to other columns (charges, last use) are never undone.
    """

    # Columns a service fills in (digests…), left out of full_clean().
    clean_exclude: tuple[str, ...] = ()

    def build_standard_field(self, field_name, model_field):
        field_class, kwargs = super().build_standard_field(field_name, model_field)
        # Uniqueness is checked by full_clean() and answered with 409.
        kwargs["validators"] = [
            v for v in kwargs.get("validators", []) if not isinstance(v, UniqueValidator)
        ]
        return field_class, kwargs

    def apply(self, instance, attrs) -> set[str]:
        """Set `attrs` on the unsaved `instance`; return the names of the columns they set.

        Subclasses handle their write-only inputs (passwords, credentials) here.
        """
        columns = set()
        for name, value in attrs.items():
            try:
                field = instance._meta.get_field(name)
            except FieldDoesNotExist:
                continue
            if field.concrete and not field.many_to_many:
                setattr(instance, name, value)
                columns.add(name)
        return columns

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if self.instance is None:
            instance = self.Meta.model()
        else:
            instance = copy.copy(self.instance)
        columns = self.apply(instance, attrs)
        try:
            instance.full_clean(exclude=self.clean_exclude)
        except DjangoValidationError as error:
            raise api_errors(error) from None
        self._cleaned, self._columns = instance, columns
        return attrs

    def create(self, validated_data):
        instance = self._cleaned
        self.write(instance, None, validated_data)
        return instance

    def update(self, instance, validated_data):
        cleaned, columns = self._cleaned, self._columns
        if any(f.name == "updated_at" for f in cleaned._meta.concrete_fields):
            columns.add("updated_at")  # also the change marker other processes poll
        self.write(cleaned, sorted(columns), validated_data)
        cleaned._prefetched_objects_cache = {}
        return cleaned

    def write(self, instance, update_fields: list[str] | None, validated_data) -> None:
        """Save the validated `instance` and its relations in one transaction.

        `update_fields` is None on create (every column) and the columns the
        request set on update (none: only the relations). A subclass whose write
        spans other rows hands it to its app's service here.
        """
        with transaction.atomic():
            if update_fields is None or update_fields:
                instance.save(update_fields=update_fields)
            self.set_relations(instance, validated_data)

    def set_relations(self, instance, validated_data):
        for field in instance._meta.many_to_many:
            if field.name in validated_data:
                getattr(instance, field.name).set(validated_data[field.name])


def exception_handler(exc, context):
    """DRF's handler, plus database and model errors as 409 or 400 instead of 500.

    A unique-constraint race is 409; a value the column cannot hold (e.g. a
    credit that overflows the balance) and a model ValidationError are 400.
    """
    if isinstance(exc, IntegrityError):
        # full_clean() checked uniqueness; a concurrent request won the race.
        exc = Conflict("This conflicts with an object saved at the same time; retry.")
    elif isinstance(exc, DataError):
        exc = ValidationError("A value is out of range for where it is stored.")
    elif isinstance(exc, DjangoValidationError):
        exc = api_errors(exc)
    return drf_exception_handler(exc, context)


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ManagementMixin:
    """Paginated, and never cached: responses carry account data (and, once, secrets)."""

    pagination_class = Pagination
    # What an extra action needs instead of its method's (lib.permissions.ModelPermissions).
    model_permission: str | None = None

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        # DRF authenticates here, after every middleware: from now on changes
        # are the token's (or master key's) user's, made through the API. The
        # audit middleware restores the actor before it when the request ends.
        audit.set_actor(audit.request_actor(request, audit.Surface.API))

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        patch_cache_control(response, no_store=True)
        return response


class ManagementViewSet(ManagementMixin, viewsets.ModelViewSet):
    """List, retrieve, create, update (PUT/PATCH) and delete one kind of object."""


class ManagementReadOnlyViewSet(ManagementMixin, viewsets.ReadOnlyModelViewSet):
    """List and retrieve one kind of object."""
