"""Management API views for the model catalog."""

from django.db.models import Prefetch

from aethergate.lib.api import ManagementViewSet
from models_registry.api.filters import ModelFilter
from models_registry.api.serializers import CatalogModelSerializer
from models_registry.models import Deployment, Model


class ModelViewSet(ManagementViewSet):
    """Public model names served by their deployments. Fallback loops are refused (400)."""

    # A fixed number of queries however many models and deployments a page holds.
    queryset = Model.objects.select_related("fallback", "context_fallback").prefetch_related(
        Prefetch(
            "deployments",
            queryset=Deployment.objects.select_related("endpoint").order_by(
                "priority", "-weight", "pk"
            ),
        )
    )
    serializer_class = CatalogModelSerializer
    filterset_class = ModelFilter
    search_fields = ("name", "deployments__upstream_name")
    ordering_fields = ("id", "name", "created_at", "price_in", "price_out")
    ordering = ("name",)
