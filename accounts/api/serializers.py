"""Management API serializers for users, and the base every resource's serializer shares."""

import copy
from decimal import Decimal

from django.contrib.auth import password_validation
from django.core.exceptions import NON_FIELD_ERRORS, FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from rest_framework import exceptions, serializers
from rest_framework.fields import get_error_detail
from rest_framework.settings import api_settings
from rest_framework.validators import UniqueValidator

from accounts.models import User

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
        with transaction.atomic():
            instance.save()
            self.set_relations(instance, validated_data)
        return instance

    def update(self, instance, validated_data):
        cleaned, columns = self._cleaned, self._columns
        if any(f.name == "updated_at" for f in cleaned._meta.concrete_fields):
            columns.add("updated_at")  # also the change marker other processes poll
        with transaction.atomic():
            if columns:
                cleaned.save(update_fields=sorted(columns))
            self.set_relations(cleaned, validated_data)
        cleaned._prefetched_objects_cache = {}
        return cleaned

    def set_relations(self, instance, validated_data):
        for field in instance._meta.many_to_many:
            if field.name in validated_data:
                getattr(instance, field.name).set(validated_data[field.name])


class UserSerializer(CleanModelSerializer):
    """A consumer or staff member. `password` is write-only; `is_superuser` is read-only."""

    password = serializers.CharField(
        write_only=True,
        required=False,
        style={"input_type": "password"},
        help_text="Sets the password (write-only). Omitted on create: no usable password.",
    )

    class Meta:
        model = User
        fields = (
            "id",
            "username",
            "email",
            "first_name",
            "last_name",
            "organization",
            "balance",
            "is_active",
            "is_staff",
            "is_superuser",
            "password",
            "date_joined",
            "last_login",
            "updated_at",
        )
        read_only_fields = ("is_superuser", "date_joined", "last_login", "updated_at")

    def validate_balance(self, balance):
        # A balance may fall below zero through usage; staff may not set one there.
        current = self.instance.balance if self.instance is not None else None
        if balance is not None and balance < 0 and balance != current:
            raise serializers.ValidationError("A balance cannot be set below zero.")
        return balance

    def apply(self, instance, attrs):
        attrs = dict(attrs)
        password = attrs.pop("password", None)
        columns = super().apply(instance, attrs)
        if password:
            instance.set_password(password)
            columns.add("password")
        elif instance._state.adding:
            instance.set_unusable_password()
        return columns

    def validate(self, attrs):
        attrs = super().validate(attrs)
        if attrs.get("password"):
            try:
                password_validation.validate_password(attrs["password"], self._cleaned)
            except DjangoValidationError as error:
                raise serializers.ValidationError({"password": error.messages}) from None
        return attrs


class CreditSerializer(serializers.Serializer):
    """An amount to add to a prepaid balance in one atomic update."""

    amount = serializers.DecimalField(
        max_digits=20,
        decimal_places=10,
        help_text="Added to the balance; negative to take credit away. Not zero.",
    )

    def validate_amount(self, amount):
        if amount == Decimal(0):
            raise serializers.ValidationError("The amount cannot be zero.")
        return amount
