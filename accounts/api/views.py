"""Management API views for users."""

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response

from accounts import services
from accounts.api.serializers import CreditSerializer, UserSerializer
from accounts.models import User
from accounts.permissions import user_change_refusal
from aethergate.lib.api import Conflict, ManagementViewSet


class UserViewSet(ManagementViewSet):
    """Consumers and staff. Deleting a user deletes their keys and tokens; logs are kept."""

    queryset = User.objects.all()
    serializer_class = UserSerializer
    filterset_fields = ("is_active", "is_staff", "organization")
    search_fields = ("username", "email", "organization", "first_name", "last_name")
    ordering_fields = ("id", "username", "date_joined", "balance", "organization")
    ordering = ("username",)

    def check_object_permissions(self, request, obj):
        """Model permissions, then: only a superuser may write to a superuser (delete included)."""
        super().check_object_permissions(request, obj)
        if request.method not in SAFE_METHODS:
            reason = user_change_refusal(actor=request.user, target=obj)
            if reason:
                self.permission_denied(request, message=reason)

    @extend_schema(request=CreditSerializer, responses=UserSerializer)
    @action(
        detail=True, methods=["post"], model_permission="change", serializer_class=CreditSerializer
    )
    def credit(self, request, pk=None):
        """Add `amount` to the prepaid balance atomically (usage charged meanwhile is kept)."""
        user = self.get_object()
        serializer = CreditSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            services.credit_balance(user=user, amount=serializer.validated_data["amount"])
        except services.NoPrepaidBalance:
            raise Conflict(
                {"balance": ["This user has no prepaid balance (null); set one with PATCH first."]}
            ) from None
        return Response(UserSerializer(user, context=self.get_serializer_context()).data)
