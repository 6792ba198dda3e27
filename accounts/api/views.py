"""Management API views for users."""

from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts import services
from accounts.api.serializers import CreditSerializer, UserSerializer
from accounts.models import User
from aethergate.lib.api import Conflict, ManagementViewSet


class UserViewSet(ManagementViewSet):
    """Consumers and staff. Deleting a user deletes their keys and tokens; logs are kept."""

    queryset = User.objects.all()
    serializer_class = UserSerializer
    filterset_fields = ("is_active", "is_staff", "organization")
    search_fields = ("username", "email", "organization", "first_name", "last_name")
    ordering_fields = ("id", "username", "date_joined", "balance", "organization")
    ordering = ("username",)

    @extend_schema(request=CreditSerializer, responses=UserSerializer)
    @action(detail=True, methods=["post"], serializer_class=CreditSerializer)
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
