"""Root URLs: Django admin; the consumer `/v1/` API will be routed in asgi.py."""

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

admin.site.site_header = "AetherGate"
admin.site.site_title = "AetherGate admin"
admin.site.index_title = "Gateway administration"
admin.site.site_url = None  # no public site: hide "View site"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
]
