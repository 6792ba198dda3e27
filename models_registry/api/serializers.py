"""Management API serializers for the model catalog; relations are written by name."""

from rest_framework import serializers

from aethergate.lib.api import CleanModelSerializer
from endpoints.models import Endpoint
from models_registry.models import Model


class CatalogModelSerializer(CleanModelSerializer):
    """A public model name served by `upstream_name` on `endpoint` (both by name)."""

    endpoint = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Endpoint.objects.all(),
        allow_null=True,
        required=False,
        help_text="Endpoint name. Null: not served until one is set.",
    )
    fallback = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Model.objects.all(),
        allow_null=True,
        required=False,
        help_text="Name of the model tried when this one's upstream fails before answering.",
    )

    class Meta:
        model = Model
        fields = ("id", *Model.shared_fields, "created_at", "updated_at")
        read_only_fields = ("created_at", "updated_at")
