"""Issuing and rotating consumer keys: the one place secrets are created."""

from django.db import transaction
from django.utils import timezone

from keys.models import APIKey


def create_key(*, owner, name: str, **fields) -> tuple[APIKey, str]:
    """Validate and save a new key; return it with its secret (shown once, never stored)."""
    allowed_models = fields.pop("allowed_models", None)
    key = APIKey(owner=owner, name=name, **fields)
    secret = key.new_secret()
    key.full_clean()
    with transaction.atomic():
        key.save()
        if allowed_models:
            key.allowed_models.set(allowed_models)
    return key, secret


def rotate_key(*, key: APIKey) -> str:
    """Replace the key's secret in place (same id, settings and history); return the new one.

    The old secret stops working as soon as the transaction commits.
    """
    with transaction.atomic():
        locked = APIKey.objects.select_for_update().get(pk=key.pk)
        secret = locked.new_secret()
        locked.rotated_at = timezone.now()
        locked.save(update_fields=["digest", "prefix", "rotated_at", "updated_at"])
    key.refresh_from_db()
    return secret
