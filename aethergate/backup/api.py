"""The management API's backup route: GET streams an export, POST imports an uploaded one.

Adapters over backup/service.py, which the commands and the admin page call too.
"""

from django.http import StreamingHttpResponse
from django.utils.cache import patch_cache_control
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.authentication import IsActiveStaff
from aethergate.backup import service
from aethergate.backup.schema import BackupError
from aethergate.lib.api import ManagementMixin

# What a plain export shows, and so what it needs: reading every backed-up kind.
VIEW_PERMISSIONS = (
    "accounts.view_user",
    "endpoints.view_endpoint",
    "models_registry.view_model",
    "keys.view_apikey",
)
TRUE = ("1", "true", "yes", "on")


def flag(request, name: str) -> bool:
    """A boolean query parameter (`?dry_run=true`)."""
    return request.query_params.get(name, "").lower() in TRUE


def may_export(user, *, include_secrets: bool) -> bool:
    """Plain exports: the view permission on every kind; with secrets: superusers only."""
    if include_secrets:
        return bool(getattr(user, "is_superuser", False))
    return user.has_perms(VIEW_PERMISSIONS)


class BackupPermission(permissions.BasePermission):
    """GET: may_export(); POST (an import can change every object): superusers only.

    The master key's principal is a superuser, so it may do both.
    """

    def has_permission(self, request, view):
        if request.method == "POST":
            return bool(request.user.is_superuser)
        return may_export(request.user, include_secrets=flag(request, "include_secrets"))


def export_response(*, include_secrets: bool) -> StreamingHttpResponse:
    """The export as a streamed, never-cached JSON download (the API and the admin page)."""
    document, text = service.export_text(include_secrets=include_secrets)
    response = StreamingHttpResponse(service.chunks(text), content_type="application/json")
    stamp = document["exported_at"][:19].replace(":", "")
    suffix = "-with-secrets" if include_secrets else ""
    response["Content-Disposition"] = f'attachment; filename="aethergate-{stamp}{suffix}.json"'
    patch_cache_control(response, no_store=True)
    return response


class TallySerializer(serializers.Serializer):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    unchanged = serializers.IntegerField()


class TalliesSerializer(serializers.Serializer):
    endpoints = TallySerializer()
    models = TallySerializer()
    users = TallySerializer()
    api_keys = TallySerializer()


class ReportSerializer(serializers.Serializer):
    """What an import did, or (dry_run) would have done; the import_backup command's report."""

    source = serializers.CharField(help_text='"AetherGate backup" or "earlier-version backup".')
    dry_run = serializers.BooleanField()
    tallies = TalliesSerializer()
    granted = serializers.ListField(child=serializers.CharField())
    warnings = serializers.ListField(child=serializers.CharField())


EXPORT_EXAMPLE = {
    "format": "aethergate-backup",
    "version": 2,
    "exported_at": "2026-12-01T13:00:00+00:00",
    "users": [{"username": "alice", "is_active": True, "balance": "10"}],
    "endpoints": [
        {"name": "local", "base_url": "http://127.0.0.1:11434/v1"},
        {"name": "gpu", "base_url": "http://10.0.0.5:8000/v1"},
    ],
    "models": [
        {
            "name": "llama3",
            "strategy": "weighted",
            "deployments": [
                {"endpoint": "gpu", "upstream_name": "llama3:8b", "weight": 3, "priority": 0},
                {"endpoint": "local", "upstream_name": "llama3", "weight": 1, "priority": 1},
            ],
        }
    ],
    "api_keys": [{"digest": "9f86d0…", "owner": "alice", "name": "ci"}],
}
REPORT_EXAMPLE = {
    "source": "AetherGate backup",
    "dry_run": True,
    "tallies": {
        "endpoints": {"created": 2, "updated": 0, "unchanged": 0},
        "models": {"created": 1, "updated": 0, "unchanged": 0},
        "users": {"created": 0, "updated": 1, "unchanged": 3},
        "api_keys": {"created": 2, "updated": 0, "unchanged": 0},
    },
    "granted": [],
    "warnings": ['users[0] ("root"): not imported without --grant-privileges: staff.'],
}


class BackupView(ManagementMixin, APIView):
    """Export (GET) and import (POST) users, endpoints, models and API keys."""

    permission_classes = (IsActiveStaff, BackupPermission)
    pagination_class = None

    @extend_schema(
        operation_id="backup_export",
        summary="Download a backup",
        description=(
            "The document `manage.py export_backup` writes, streamed, `Cache-Control: "
            "no-store`. Needs the view permission on users, endpoints, models and API keys; "
            "`include_secrets=true` (upstream credentials in clear, password hashes) needs a "
            "superuser or the master key. Every export is an audit entry."
        ),
        parameters=[
            OpenApiParameter(
                "include_secrets",
                OpenApiTypes.BOOL,
                description="Also export upstream credentials and password hashes.",
            )
        ],
        responses={
            200: OpenApiResponse(
                OpenApiTypes.OBJECT,
                examples=[OpenApiExample("A backup", value=EXPORT_EXAMPLE)],
            )
        },
    )
    def get(self, request):
        return export_response(include_secrets=flag(request, "include_secrets"))

    @extend_schema(
        operation_id="backup_import",
        summary="Import a backup",
        description=(
            "Import an AetherGate backup or the earlier version's, sent as the JSON body (or "
            "as the `file` field of a multipart form), all or nothing, as `manage.py "
            "import_backup`. Superusers and the master key only. `dry_run=true` reports "
            "what would change and saves nothing; importing the same file twice changes "
            "nothing the second time. A refused file is a 400 naming the row and the rule."
        ),
        parameters=[
            OpenApiParameter(
                "dry_run", OpenApiTypes.BOOL, description="Report, then roll everything back."
            ),
            OpenApiParameter(
                "grant_privileges",
                OpenApiTypes.BOOL,
                description="Also import users' staff and superuser flags and password hashes.",
            ),
        ],
        request={
            "application/json": OpenApiTypes.OBJECT,
            "multipart/form-data": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
            },
        },
        examples=[OpenApiExample("A backup", value=EXPORT_EXAMPLE, request_only=True)],
        responses={
            200: OpenApiResponse(
                ReportSerializer,
                examples=[OpenApiExample("A dry run", value=REPORT_EXAMPLE)],
            )
        },
    )
    def post(self, request):
        try:
            text = self._upload(request)
            report = service.import_text(
                text,
                dry_run=flag(request, "dry_run"),
                grant_privileges=flag(request, "grant_privileges"),
            )
        except BackupError as error:
            raise ValidationError({"detail": f"Nothing was imported. {error}"}) from None
        return Response(service.report_data(report))

    def _upload(self, request) -> str:
        # The raw body is read here, bounded, rather than by DRF's parsers, so the
        # backup's own limits (schema.loads) apply instead of a JSON parser's.
        if request.content_type.startswith("multipart/form-data"):
            upload = request.FILES.get("file")
            if upload is None:
                raise BackupError('Send the backup as the multipart field "file".')
            return service.read_upload(upload, upload.size)
        length = request.META.get("CONTENT_LENGTH")
        size = int(length) if length and length.isdigit() else None
        return service.read_upload(request.stream, size) if request.stream else ""
