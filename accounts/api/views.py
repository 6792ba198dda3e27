"""Management API views for users, and the base every resource's viewset shares."""

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError
from django.urls import reverse
from django.utils.cache import patch_cache_control
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularSwaggerView
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotAuthenticated, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from accounts import services
from accounts.api.serializers import Conflict, CreditSerializer, UserSerializer, api_errors
from accounts.models import User


def exception_handler(exc, context):
    """DRF's handler, plus database and model errors as 409 or 400 instead of 500.

    A unique-constraint race is 409; a value the column cannot hold (e.g. a
    credit that overflows the balance) and a model ValidationError are 400.
    """
    if isinstance(exc, IntegrityError):
        # full_clean() checked uniqueness; a concurrent request won the race.
        exc = Conflict("This conflicts with an object saved at the same time; retry.")
    elif isinstance(exc, DataError):
        exc = ValidationError("A value is out of range for where it is stored.")
    elif isinstance(exc, DjangoValidationError):
        exc = api_errors(exc)
    return drf_exception_handler(exc, context)


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ManagementMixin:
    """Paginated, and never cached: responses carry account data (and, once, secrets)."""

    pagination_class = Pagination

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        patch_cache_control(response, no_store=True)
        return response


class ManagementViewSet(ManagementMixin, viewsets.ModelViewSet):
    """List, retrieve, create, update (PUT/PATCH) and delete one kind of object."""


class ManagementReadOnlyViewSet(ManagementMixin, viewsets.ReadOnlyModelViewSet):
    """List and retrieve one kind of object."""


class DocsView(SpectacularSwaggerView):
    """The Swagger UI page; a browser without credentials is sent to the admin login first."""

    def handle_exception(self, exc):
        if isinstance(exc, NotAuthenticated):
            return redirect_to_login(self.request.get_full_path(), reverse("admin:login"))
        return super().handle_exception(exc)


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
