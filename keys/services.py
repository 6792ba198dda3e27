"""Issuing, rotating and finding consumer keys; secrets are made only here."""

from django.db import transaction
from django.utils import timezone

from keys.models import APIKey, digest, looks_like_secret


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


PREFIX_MAX_LENGTH = APIKey._meta.get_field("prefix").max_length


class KeyNotFound(LookupError):
    """No key, or more than one, answers to a reference; the message says which."""


def find_key_by_secret(secret: str) -> APIKey:
    """The key whose whole secret is `secret`, looked up by digest; KeyNotFound if none.

    The message never repeats the secret.
    """
    secret = secret.strip()
    found = APIKey.objects.select_related("owner").filter(digest=digest(secret)).first()
    if not secret or found is None:
        raise KeyNotFound("No API key has that secret.")
    return found


def find_key(reference: str) -> APIKey:
    """The key an operator means by `reference`: its id, its display prefix or a pasted secret.

    A prefix may be shortened as long as it names one key. A whole secret is
    looked up by digest, so it is never compared or echoed in clear; so is
    any text longer than a prefix can be (an imported key of the earlier
    version may carry another marker).
    """
    reference = reference.strip()
    keys = APIKey.objects.select_related("owner")
    if reference.isdigit():
        found = keys.filter(pk=int(reference)).first()
        if found is None:
            raise KeyNotFound(f"There is no API key with id {reference}.")
        return found
    if looks_like_secret(reference) or len(reference) > PREFIX_MAX_LENGTH:
        return find_key_by_secret(reference)
    # SQLite's LIKE ignores case; prefixes are case-sensitive, so filter again here.
    candidates = keys.filter(prefix__startswith=reference) if reference else keys.none()
    matches = [key for key in candidates if key.prefix.startswith(reference)]
    if not matches:
        raise KeyNotFound(f'There is no API key with id or prefix "{reference}".')
    if len(matches) > 1:
        raise KeyNotFound(
            f'{len(matches)} API keys have a prefix starting with "{reference}"; '
            "give a longer prefix or the key's id (see list_keys)."
        )
    return matches[0]
