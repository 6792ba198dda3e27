"""The admin site AetherGate installs as Django's default (`aethergate.apps.AdminConfig`)."""

from django.contrib import admin
from django.urls import path, reverse

from accounts.forms import ThrottledAdminLoginForm


class AdminSite(admin.AdminSite):
    """Django's admin with AetherGate's titles and a throttled login (429 when locked out).

    It adds pages of its own: "Backup and restore" (aethergate/backup/admin.py) and
    the usage dashboard (logs/dashboard.py), linked from the index for those who may
    open them, the dashboard also from the top of every page.
    """

    site_header = "AetherGate"
    site_title = "AetherGate admin"
    index_title = "Gateway administration"
    site_url = None  # no public site: hide "View site"
    login_form = ThrottledAdminLoginForm
    index_template = "admin/aethergate/index.html"

    def get_urls(self):
        # Imported here: the backup code imports every app's models, not loaded yet
        # when this site is created.
        from aethergate.backup.admin import backup_view
        from logs.dashboard import usage_view

        def backup_page(request):
            return backup_view(request, self)

        def usage_page(request):
            return usage_view(request, self)

        return [
            path("backup/", self.admin_view(backup_page), name="backup"),
            path("usage/", self.admin_view(usage_page), name="usage"),
            *super().get_urls(),
        ]

    def each_context(self, request):
        from logs.dashboard import may_view

        context = super().each_context(request)
        if may_view(request.user):
            context["usage_url"] = reverse("admin:usage", current_app=self.name)
        return context

    def index(self, request, extra_context=None):
        from aethergate.backup.admin import may_open

        extra = dict(extra_context or {})
        if may_open(request.user):
            extra["backup_url"] = reverse("admin:backup", current_app=self.name)
        return super().index(request, extra)

    def login(self, request, extra_context=None):
        response = super().login(request, extra_context)
        locked = getattr(request, "login_locked_out", None)
        if locked is not None:
            response.status_code = 429
            response["Retry-After"] = str(locked.retry_after)
        return response
