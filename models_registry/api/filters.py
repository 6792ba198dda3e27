"""Filters for the model catalog in the management API."""

import django_filters
from django.db.models import Q

from models_registry.models import Deployment, Model


class ModelFilter(django_filters.FilterSet):
    endpoint = django_filters.CharFilter(
        method="filter_endpoint", label="Endpoint id or name: models with a deployment on it"
    )

    class Meta:
        model = Model
        fields = ("is_active", "capability", "billing_unit", "strategy", "endpoint")

    def filter_endpoint(self, queryset, name, value):
        match = Q(endpoint__name=value)
        if value.isdigit():
            match |= Q(endpoint_id=int(value))
        # A subquery, not a join: a model with two deployments there is listed once.
        return queryset.filter(pk__in=Deployment.objects.filter(match).values("model_id"))
