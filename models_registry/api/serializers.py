"""Management API serializers for the model catalog; relations are written by name."""

from django.core.exceptions import NON_FIELD_ERRORS
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers
from rest_framework.settings import api_settings

from aethergate.lib.api import CleanModelSerializer
from endpoints.models import Endpoint
from models_registry import services
from models_registry.models import Deployment, Model

# The fields of the API before deployments: a write may still carry them (see below).
LEGACY = ("endpoint", "upstream_name")
BOTH = "Send either deployments, or endpoint and upstream_name (one deployment), not both."
NO_ENDPOINT = (
    "This model has no deployment whose upstream name to change: send endpoint too, or deployments."
)


def api_row_errors(rows: list[dict]) -> dict[int, dict]:
    """services.DeploymentsInvalid's rows as DRF words a list's errors: by index, only the
    rows in error, with DRF's key for a row's own errors."""
    return {
        index: {
            api_settings.NON_FIELD_ERRORS_KEY if name == NON_FIELD_ERRORS else name: messages
            for name, messages in errors.items()
        }
        for index, errors in enumerate(rows)
        if errors
    }


def by_name(queryset, help_text: str, **options) -> serializers.SlugRelatedField:
    """A relation written and read as the related object's name: optional, null for none."""
    return serializers.SlugRelatedField(
        slug_field="name",
        queryset=queryset,
        allow_null=True,
        required=False,
        help_text=help_text,
        **options,
    )


class DeploymentSerializer(serializers.ModelSerializer):
    """One deployment of a model: `upstream_name` on `endpoint` (by name), weight, priority."""

    endpoint = serializers.SlugRelatedField(
        slug_field="name", queryset=Endpoint.objects.all(), help_text="Endpoint name."
    )

    class Meta:
        model = Deployment
        fields = Deployment.shared_fields


@extend_schema_serializer(deprecate_fields=LEGACY)
class CatalogModelSerializer(CleanModelSerializer):
    """A public model name served by its `deployments`; fallbacks by name. Prices are per
    single unit (a token, an image, …); the cache prices, null, are the input price.

    A write that carries `deployments` replaces the model's set with it (one
    already stored with the same endpoint and upstream name is updated in place,
    so the gateway's health state for it carries on); one without leaves the set
    as it is. A deployment's endpoint must exist, no two may share endpoint and
    upstream name, weight and priority are 0 or more. Errors are DRF's for a
    list: `{"deployments": {"1": {"endpoint": [...]}}}`, by index, rows in error only.

    For scripts written before deployments, a write may instead carry the old
    top-level `endpoint` and `upstream_name` (write-only, deprecated; reads no
    longer return them): they are taken as the model's one deployment (weight 1,
    priority 0), replacing the set. Left out, `upstream_name` is the model's
    first deployment's (else the model's name) and `endpoint` the first
    deployment's (a model without one is refused); `endpoint: null` removes
    every deployment. With `deployments` as well, the write is refused.
    """

    deployments = DeploymentSerializer(
        many=True,
        required=False,
        help_text="Where the model is served, listed by priority then weight (heaviest "
        "first). Sent, it replaces the set; left out, the set is kept.",
    )
    fallback = by_name(
        Model.objects.all(),
        "Name of the model tried when every deployment of this one fails before answering.",
    )
    context_fallback = by_name(
        Model.objects.all(),
        "Name of the model tried instead when the upstream refuses the request as too long "
        "for its context.",
    )
    unpriced = serializers.BooleanField(
        read_only=True,
        help_text="Whether the prices its billing unit uses are all 0 and it is not marked "
        "is_free: its cost is unknown (logged so), and with AETHERGATE_UNPRICED_MODELS=refuse "
        "it is refused to keys with a budget or a prepaid balance.",
    )
    endpoint = by_name(
        Endpoint.objects.all(),
        "Deprecated: send deployments. Endpoint name of the model's one deployment; null: "
        "no deployment.",
        write_only=True,
    )
    upstream_name = serializers.CharField(
        max_length=Deployment._meta.get_field("upstream_name").max_length,
        required=False,
        write_only=True,
        help_text="Deprecated: send deployments. Upstream name of the model's one deployment.",
    )

    class Meta:
        model = Model
        fields = (
            "id",
            *Model.shared_fields,
            "deployments",
            "unpriced",
            *LEGACY,
            "created_at",
            "updated_at",
        )
        read_only_fields = ("created_at", "updated_at")

    def validate_deployments(self, rows):
        try:
            services.clean_deployments(self.instance or Model(), rows)
        except services.DeploymentsInvalid as error:
            raise serializers.ValidationError(api_row_errors(error.rows)) from None
        return rows

    def validate(self, attrs):
        sent = [name for name in LEGACY if name in attrs]
        if sent:
            if "deployments" in attrs:
                raise serializers.ValidationError({name: [BOTH] for name in sent})
            attrs["deployments"] = self._legacy_deployments(attrs.pop("endpoint", ...), attrs)
            attrs.pop("upstream_name", None)
        return super().validate(attrs)

    def _legacy_deployments(self, endpoint, attrs) -> list[dict]:
        """The one deployment the old fields stand for (`endpoint` is ... when not sent)."""
        first = None
        if self.instance is not None:
            first = (
                self.instance.deployments.select_related("endpoint")
                .order_by("priority", "-weight", "pk")
                .first()
            )
        if endpoint is ...:
            if first is None:
                raise serializers.ValidationError({"upstream_name": [NO_ENDPOINT]})
            endpoint = first.endpoint
        if endpoint is None:
            return []
        name = attrs.get("name") or (self.instance.name if self.instance else "")
        upstream = attrs.get("upstream_name") or (first.upstream_name if first else name)
        rows = [{"endpoint": endpoint, "upstream_name": upstream}]
        try:
            services.clean_deployments(self.instance or Model(), rows)
        except services.DeploymentsInvalid as error:
            # Named as the caller named them: the top-level fields.
            raise serializers.ValidationError(error.rows[0]) from None
        return rows

    def write(self, instance, update_fields, validated_data):
        services.save_model(
            instance, update_fields=update_fields, deployments=validated_data.get("deployments")
        )
