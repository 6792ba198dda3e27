from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AdminConfig(admin_apps.AdminConfig):
    """Django's admin, with AetherGate's site (aethergate/admin_site.py) as `admin.site`."""

    default = False  # named in INSTALLED_APPS; "aethergate" itself is AetherGateConfig
    default_site = "aethergate.admin_site.AdminSite"


class AetherGateConfig(AppConfig):
    """The project package as an app: cross-app operations (backup) and shared templates."""

    name = "aethergate"
    verbose_name = "AetherGate"

    def ready(self):
        from aethergate.lib.commands import install_command_actor

        install_command_actor()
