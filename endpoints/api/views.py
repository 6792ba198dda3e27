"""Management API views for endpoints."""

from aethergate.lib.api import ManagementViewSet
from endpoints.api.serializers import EndpointSerializer
from endpoints.models import Endpoint


class EndpointViewSet(ManagementViewSet):
    """Upstream servers. Deleting one deletes its deployments: the models they served stay, with
    their deployments elsewhere (if none, unserved); logs are kept."""

    queryset = Endpoint.objects.all()
    serializer_class = EndpointSerializer
    filterset_fields = ("is_active",)
    search_fields = ("name", "base_url")
    ordering_fields = ("id", "name", "created_at", "updated_at")
    ordering = ("name",)
