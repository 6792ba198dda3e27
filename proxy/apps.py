from django.apps import AppConfig
from django.db.models.signals import m2m_changed, post_delete, post_save

from aethergate.lib import changes

_M2M_WRITES = frozenset({"post_add", "post_remove", "post_clear"})


def catalog_models() -> tuple:
    """The models whose rows the `/v1` catalog holds (each writes through lib.changes)."""
    from accounts.models import User
    from endpoints.models import Endpoint
    from keys.models import APIKey
    from models_registry.models import Deployment, Model

    return (User, APIKey, Model, Endpoint, Deployment)


def _saved_or_deleted(sender, using=None, **_signal):
    changes.announce(sender, using=using)


def _m2m_changed(sender, action, using=None, **_signal):
    if action in _M2M_WRITES:
        changes.announce(sender, using=using)


def _publish(**_signal):
    from proxy import broadcast

    broadcast.publish()


class ProxyConfig(AppConfig):
    name = "proxy"
    verbose_name = "Inference proxy"

    def ready(self):
        from keys.models import APIKey

        # Every write to what /v1 reads is announced once it commits: save() and
        # delete() through their signals, QuerySet.update() and bulk writes through
        # the models' lib.changes QuerySet. Announcements go to the other processes;
        # each running Runtime hears them itself (proxy.runtime).
        for model in catalog_models():
            post_save.connect(_saved_or_deleted, sender=model)
            post_delete.connect(_saved_or_deleted, sender=model)
        m2m_changed.connect(_m2m_changed, sender=APIKey.allowed_models.through)
        changes.changed.connect(_publish)
