"""The admin site AetherGate installs as Django's default (`aethergate.apps.AdminConfig`)."""

from django.contrib import admin

from accounts.forms import ThrottledAdminLoginForm


class AdminSite(admin.AdminSite):
    """Django's admin with AetherGate's titles and a throttled login (429 when locked out)."""

    site_header = "AetherGate"
    site_title = "AetherGate admin"
    index_title = "Gateway administration"
    site_url = None  # no public site: hide "View site"
    login_form = ThrottledAdminLoginForm

    def login(self, request, extra_context=None):
        response = super().login(request, extra_context)
        locked = getattr(request, "login_locked_out", None)
        if locked is not None:
            response.status_code = 429
            response["Retry-After"] = str(locked.retry_after)
        return response
