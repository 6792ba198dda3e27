"""Management API serializers for endpoints; the upstream credential is write-only."""

from rest_framework import serializers

from aethergate.lib.api import CleanModelSerializer
from endpoints.models import Endpoint


class EndpointSerializer(CleanModelSerializer):
    """An upstream server. Its credential is write-only (`api_key`); `has_credential` tells."""

    api_key = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        allow_null=True,
        style={"input_type": "password"},
        help_text='Upstream credential (write-only): a value sets or replaces it, "" or null '
        "clears it, omitted keeps it. Stored encrypted, never returned.",
    )
    has_credential = serializers.BooleanField(read_only=True)

    class Meta:
        model = Endpoint
        fields = (
            "id",
            *Endpoint.shared_fields,
            "api_key",
            "has_credential",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("created_at", "updated_at")

    def apply(self, instance, attrs):
        attrs = dict(attrs)
        sent = "api_key" in attrs
        credential = attrs.pop("api_key", None)
        columns = super().apply(instance, attrs)
        if sent:
            instance.set_api_key(credential or "")
            columns.add("api_key_encrypted")
        return columns
