"""Management API serializers for users."""

from decimal import Decimal

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, serializers

from accounts import services
from accounts.models import User
from accounts.permissions import user_change_refusal
from aethergate.lib.api import CleanModelSerializer


class UserSerializer(CleanModelSerializer):
    """A consumer or staff member. `password` is write-only; `is_superuser` is read-only.

    Writes follow accounts.permissions: a caller who is not a superuser gets
    403 for setting `is_staff` or another user's password (a superuser's
    whole row is refused earlier, by the view).
    """

    password = serializers.CharField(
        write_only=True,
        required=False,
        style={"input_type": "password"},
        help_text="Sets the password (write-only). Omitted on create: no usable password.",
    )

    class Meta:
        model = User
        fields = ("id", *User.shared_fields, "password", "last_login", "updated_at")
        read_only_fields = ("is_superuser", "date_joined", "last_login", "updated_at")

    def validate_balance(self, balance):
        current = self.instance.balance if self.instance is not None else None
        try:
            services.validate_balance(balance, current=current)
        except DjangoValidationError as error:
            raise serializers.ValidationError(error.messages) from None
        return balance

    def create(self, validated_data):
        return services.create_user(**validated_data)

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
        if self.instance is None:
            changed = {name for name, value in attrs.items() if value}
        else:
            changed = {
                name
                for name, value in attrs.items()
                if name == "password" or getattr(self.instance, name) != value
            }
        actor = self.context["request"].user
        reason = user_change_refusal(actor=actor, target=self.instance, changed=changed)
        if reason:
            raise exceptions.PermissionDenied(reason)
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
