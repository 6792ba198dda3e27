"""Management API views for the model catalog."""

from aethergate.lib.api import ManagementViewSet
from models_registry.api.filters import ModelFilter
from models_registry.api.serializers import CatalogModelSerializer
from models_registry.models import Model


class ModelViewSet(ManagementViewSet):
    """Public model names mapped to upstream models. Fallback loops are refused (400)."""

    queryset = Model.objects.select_related("endpoint", "fallback")
    serializer_class = CatalogModelSerializer
    filterset_class = ModelFilter
    search_fields = ("name", "upstream_name")
    ordering_fields = ("id", "name", "created_at", "price_in", "price_out")
    ordering = ("name",)
