"""The audit log's recorders: model signals and services' announcements become AuditEntry rows.

Every save and delete of a user, API token, consumer key, endpoint, model or
deployment (admin, API, command, importer alike; a deployment deleted with its
endpoint or model too) is compared with the row as stored and
recorded with the current actor (`aethergate.lib.audit`); writes made with
`QuerySet.update()`, which no signal sees, are announced by the service that
makes them (`audit.record()`). Secret columns are recorded as "changed" only.

Usage is not audited: the per-request writes of the `/v1` hot path (request
logs, balance debits by the log writer, keys' and tokens' `last_used_at`) and
logins' `last_login` are not changes anyone made.
"""

from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from accounts.models import APIToken, User
from aethergate.lib import audit
from endpoints.models import Endpoint
from keys.models import APIKey
from logs.models import AuditEntry
from models_registry.models import Deployment, Model

AUDITED = (User, APIToken, APIKey, Endpoint, Model, Deployment)

# Usage and bookkeeping columns, written without anyone changing anything.
IGNORED = frozenset({"updated_at", "last_login", "last_used_at"})
# Stored as digests, hashes or ciphertext: recorded as "changed", never by value.
SECRET = frozenset({"password", "digest", "api_key_encrypted"})


def write(*, action: str, kind: str, object_id, name: str, changes: dict, deleted_user=None):
    """Save one entry for the current actor. `deleted_user`: a user row going away with it."""
    actor = audit.current()
    actor_id, actor_name = None, actor.name
    user = actor.user
    if user is not None and getattr(user, "is_authenticated", False):
        actor_id = user.pk
        actor_name = user.get_username() if user.pk else str(user)
    if deleted_user is not None and actor_id == deleted_user:
        actor_id = None  # the snapshot keeps the name; the row is being deleted
    AuditEntry.objects.create(
        surface=actor.surface,
        actor_id=actor_id,
        actor_name=actor_name[:150],
        command=actor.command[:100],
        address=(actor.address or "")[:64],
        action=action,
        object_kind=kind[:50],
        object_id=str(object_id)[:64],
        object_name=name[:200],
        changes=changes,
    )


def _fields(model, update_fields=None):
    return [
        f
        for f in model._meta.concrete_fields
        if f.name not in IGNORED and (update_fields is None or f.name in update_fields)
    ]


def _shown(field, old, new):
    return audit.CHANGED if field.name in SECRET else [old, new]


def _kind(instance) -> str:
    return str(instance._meta.verbose_name)


def _name(instance) -> str:
    if isinstance(instance, Deployment):
        # "llama3:8b on gpu" alone does not say whose: the entry names the model too.
        return f"{instance.model.name}: {instance}"
    return str(instance)


def _remember(sender, instance, update_fields=None, **kwargs):
    instance._audit_before = None
    if instance._state.adding or instance.pk is None:
        return
    attnames = [f.attname for f in _fields(sender, update_fields)]
    instance._audit_before = sender._base_manager.filter(pk=instance.pk).values(*attnames).first()


def _saved(sender, instance, created, update_fields=None, **kwargs):
    before = getattr(instance, "_audit_before", None)
    fields = _fields(sender, update_fields)
    if created or before is None:
        changes = {
            f.name: _shown(f, None, value)
            for f in fields
            if (value := f.value_from_object(instance)) not in (None, "")
        }
        action = "create"
    else:
        changes = {
            f.name: _shown(f, before[f.attname], value)
            for f in fields
            if (value := f.value_from_object(instance)) != before[f.attname]
        }
        if not changes:
            return  # e.g. a save that changed nothing but updated_at
        if set(changes) == {"is_active"}:
            action = "activate" if instance.is_active else "deactivate"
        elif "digest" in changes:
            action = "rotate"
        else:
            action = "update"
    write(
        action=action,
        kind=_kind(instance),
        object_id=instance.pk,
        name=_name(instance),
        changes=changes,
    )


def _deleted(sender, instance, **kwargs):
    write(
        action="delete",
        kind=_kind(instance),
        object_id=instance.pk,
        name=_name(instance),
        changes={},
        deleted_user=instance.pk if sender is User else None,
    )
    if sender is User:
        # Entries written during this cascade (its keys, its tokens) may name it.
        AuditEntry.objects.filter(actor_id=instance.pk).update(actor=None)


def _related_ids(instance, field_name):
    return sorted(getattr(instance, field_name).values_list("pk", flat=True))


def _m2m(field_name):
    def receiver(sender, instance, action, reverse, **kwargs):
        if reverse:
            # e.g. group.user_set.add(user): not a path AetherGate's surfaces offer.
            return
        if action.startswith("pre_"):
            instance.__dict__.setdefault("_audit_m2m", {})[field_name] = _related_ids(
                instance, field_name
            )
            return
        before = getattr(instance, "_audit_m2m", {}).pop(field_name, None)
        after = _related_ids(instance, field_name)
        if before is None or before == after:
            return
        write(
            action="update",
            kind=_kind(instance),
            object_id=instance.pk,
            name=_name(instance),
            changes={field_name: [before, after]},
        )

    return receiver


def _announced(sender, *, action, kind, object_id, name, changes, **kwargs):
    write(action=action, kind=kind, object_id=object_id, name=name, changes=changes)


_receivers = []  # m2m receivers are closures: keep them alive (signals hold weak references)


def connect() -> None:
    """Connect the recorders (LogsConfig.ready)."""
    for model in AUDITED:
        uid = f"audit:{model._meta.label}"
        pre_save.connect(_remember, sender=model, dispatch_uid=uid)
        post_save.connect(_saved, sender=model, dispatch_uid=uid)
        post_delete.connect(_deleted, sender=model, dispatch_uid=uid)
        for field in model._meta.many_to_many:
            receiver = _m2m(field.name)
            _receivers.append(receiver)
            m2m_changed.connect(
                receiver, sender=field.remote_field.through, dispatch_uid=f"{uid}.{field.name}"
            )
    audit.recorded.connect(_announced, dispatch_uid="audit:announced")
