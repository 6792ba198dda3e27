"""The admin site AetherGate installs as Django's default (`aethergate.apps.AdminConfig`)."""

from django.contrib import admin
from django.urls import path, reverse

from accounts.forms import ThrottledAdminLoginForm

# The index lists apps in the order staff set a gateway up; any other app follows.
APP_ORDER = ("endpoints", "models_registry", "accounts", "keys", "logs")
# Within its app, each of these comes first (users before API tokens, request logs
# before audit entries); the rest keep Django's alphabetical order.
FIRST_MODELS = frozenset({"user", "requestlog"})


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

    def get_app_list(self, request, app_label=None):
        apps = super().get_app_list(request, app_label)
        for app in apps:
            app["models"].sort(key=lambda model: model["object_name"].lower() not in FIRST_MODELS)
        # Stable sorts: what is not named keeps Django's alphabetical order, after.
        return sorted(
            apps,
            key=lambda app: (
                APP_ORDER.index(app["app_label"])
                if app["app_label"] in APP_ORDER
                else len(APP_ORDER)
            ),
        )

    def login(self, request, extra_context=None):
        response = super().login(request, extra_context)
        locked = getattr(request, "login_locked_out", None)
        if locked is not None:
            response.status_code = 429
            response["Retry-After"] = str(locked.retry_after)
        return response
