from django.apps import AppConfig


class AetherGateConfig(AppConfig):
    """The project package as an app: cross-app operations (backup) and shared templates."""

    name = "aethergate"
    verbose_name = "AetherGate"

    def ready(self):
        from aethergate.lib.commands import install_command_actor

        install_command_actor()
