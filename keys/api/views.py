"""Management API views for consumer keys: CRUD without rotating, and rotation."""

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.response import Response

from aethergate.lib.api import ManagementViewSet
from keys import services
from keys.api.serializers import IssuedKeySerializer, KeySerializer
from keys.models import APIKey


class KeyViewSet(ManagementViewSet):
    """Consumer keys. Editing never rotates; the secret is shown on create and rotate only."""

    queryset = APIKey.objects.select_related("owner").prefetch_related("allowed_models")
    serializer_class = KeySerializer
    filterset_fields = ("owner", "owner__username", "is_active", "log_content")
    search_fields = ("name", "prefix", "owner__username")
    ordering_fields = ("id", "name", "created_at", "rotated_at", "last_used_at", "expires_at")
    ordering = ("-created_at", "-id")

    @extend_schema(responses={201: IssuedKeySerializer})
    def create(self, request, *args, **kwargs):
        """Issue a key; the response carries its `secret`, which is never shown again."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key = serializer.save()
        data = IssuedKeySerializer(key, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=IssuedKeySerializer)
    @action(detail=True, methods=["post"], model_permission="change")
    def rotate(self, request, pk=None):
        """Replace the key's secret (same id and settings); the old one stops working now."""
        key = self.get_object()
        key.issued_secret = services.rotate_key(key=key)
        return Response(IssuedKeySerializer(key, context=self.get_serializer_context()).data)
