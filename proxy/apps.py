from django.apps import AppConfig
from django.db.models.signals import m2m_changed, post_delete, post_save


class ProxyConfig(AppConfig):
    name = "proxy"
    verbose_name = "Inference proxy"

    def ready(self):
        from accounts.models import User
        from endpoints.models import Endpoint
        from keys.models import APIKey
        from models_registry.models import Model
        from proxy.app import proxy

        # Any change to what /v1 reads marks this process's catalog stale.
        for model in (User, APIKey, Model, Endpoint):
            post_save.connect(proxy.invalidate, sender=model, weak=False)
            post_delete.connect(proxy.invalidate, sender=model, weak=False)
        m2m_changed.connect(proxy.invalidate, sender=APIKey.allowed_models.through, weak=False)
