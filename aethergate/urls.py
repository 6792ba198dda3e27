"""Root URLs: Django admin and the management API; the consumer `/v1/` API is routed in asgi.py."""

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path, reverse
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.exceptions import NotAuthenticated
from rest_framework.routers import APIRootView

from aethergate.backup.api import BackupView


class DocsView(SpectacularSwaggerView):
    """The Swagger UI page; a browser without credentials is sent to the admin login first."""

    def handle_exception(self, exc):
        if isinstance(exc, NotAuthenticated):
            return redirect_to_login(self.request.get_full_path(), reverse("admin:login"))
        return super().handle_exception(exc)


def favicon(request):
    """`/favicon.ico`, which browsers ask for on pages that link no icon: the admin's icon."""
    # Resolved per request and not permanent: the manifest storage names the file by
    # its content hash, which changes when the icon does.
    return HttpResponseRedirect(static("aethergate/favicon.svg"))


api_root = {name: f"{name[:-1]}-list" for name in ("users", "keys", "endpoints", "models", "logs")}
api = [
    path(
        "",
        APIRootView.as_view(
            api_root_dict={**api_root, "audit": "audit-list", "stats": "stats", "backup": "backup"}
        ),
        name="root",
    ),
    path("", include("accounts.api.urls")),
    path("", include("keys.api.urls")),
    path("", include("endpoints.api.urls")),
    path("", include("models_registry.api.urls")),
    path("", include("logs.api.urls")),
    path("backup/", BackupView.as_view(), name="backup"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", DocsView.as_view(url_name="api:schema"), name="docs"),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("favicon.ico", favicon),
    path("admin/", admin.site.urls),
    path("api/v1/", include((api, "api"))),
]
