from django.apps import AppConfig


class LogsConfig(AppConfig):
    name = "logs"
    verbose_name = "Request logs"

    def ready(self):
        from logs import audit

        audit.connect()
