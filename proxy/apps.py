from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save


def _announce(**_signal):
    from aethergate.lib.changes import catalog_changed

    catalog_changed.send(sender=None)


def _invalidate_on_commit(**_signal):
    from proxy import broadcast

    # After the commit, not at save(): a rebuild started inside the writing
    # transaction would read the old rows and be taken as current.
    transaction.on_commit(_announce)
    transaction.on_commit(broadcast.publish)


class ProxyConfig(AppConfig):
    name = "proxy"
    verbose_name = "Inference proxy"

    def ready(self):
        from accounts.models import User
        from endpoints.models import Endpoint
        from keys.models import APIKey
        from models_registry.models import Model

        # Any change to what /v1 reads marks this process's catalog stale.
        for model in (User, APIKey, Model, Endpoint):
            post_save.connect(_invalidate_on_commit, sender=model)
            post_delete.connect(_invalidate_on_commit, sender=model)
        m2m_changed.connect(_invalidate_on_commit, sender=APIKey.allowed_models.through)
