"""Consumer API keys: stored only as a SHA-256 digest and a display prefix."""

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Budgeted
from aethergate.lib import hashed_secrets
from aethergate.lib.capabilities import Capability
from aethergate.lib.changes import ChangeQuerySet
from aethergate.lib.ratelimit import validate_spec

SECRET_PREFIX = "ag-"  # noqa: S105 -- the public marker of a key, not a secret
DISPLAY_PREFIX_LENGTH = len(SECRET_PREFIX) + 8

# How a presented key is hashed to be looked up: the only form in which a key is stored.
digest = hashed_secrets.digest


def looks_like_secret(text: str) -> bool:
    """Whether `text` is a whole key, not a display prefix (see hashed_secrets.is_whole)."""
    return hashed_secrets.is_whole(text, SECRET_PREFIX, DISPLAY_PREFIX_LENGTH)


def validate_capabilities(value):
    if not isinstance(value, list) or not all(v in Capability.values for v in value):
        raise ValidationError(
            "Must be a list of capabilities among: %(allowed)s.",
            params={"allowed": ", ".join(Capability.values)},
            code="invalid_capabilities",
        )


class CapabilityListField(models.JSONField):
    """A list of capabilities, edited as checkboxes in forms."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("default", list)
        kwargs.setdefault("blank", True)
        kwargs.setdefault("validators", [validate_capabilities])
        super().__init__(*args, **kwargs)

    def formfield(self, **kwargs):
        return models.Field.formfield(
            self,
            form_class=forms.MultipleChoiceField,
            choices=Capability.choices,
            widget=forms.CheckboxSelectMultiple,
            **kwargs,
        )


def refusal(*, is_active: bool, user_active: bool, expires_at, now) -> tuple[str, str] | None:
    """Why a key may not authenticate at `now`, as (code, message); None when it may.

    The one rule: `/v1` applies it to its snapshot, `APIKey.refusal()` to a
    row, and `APIKeyQuerySet.usable()` is the same test written as a filter.
    """
    if not is_active:
        return "key_inactive", "This API key has been deactivated."
    if expires_at is not None and expires_at <= now:
        return "key_expired", "This API key has expired."
    if not user_active:
        return "user_inactive", "The account this API key belongs to is inactive."
    return None


# How each refusal is named where people list keys (admin, list_keys, the management API).
STATES = {
    None: "usable",
    "key_inactive": "inactive",
    "key_expired": "expired",
    "user_inactive": "owner inactive",
}


class APIKeyQuerySet(ChangeQuerySet):
    def usable(self, *, now=None):
        """Keys that may authenticate at `now` (default: now): those `refusal` lets through."""
        now = now or timezone.now()
        return self.filter(is_active=True, owner__is_active=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )


class APIKey(Budgeted):
    """A gateway-issued key a consumer presents as `Authorization: Bearer …`.

    The secret exists in clear only in the response that issues it; the row
    keeps its SHA-256 `digest` and a short `prefix` for people to recognise it.
    """

    # The fields the management API and the backup carry, in their order;
    # each adds its own around them (aethergate/tests/test_field_lists.py).
    shared_fields = (
        "prefix",
        "name",
        "owner",
        "is_active",
        "log_content",
        "rate_limit",
        "max_concurrent",
        "budget",
        "budget_soft",
        "budget_period",
        "allowed_capabilities",
        "allowed_models",
        "expires_at",
        "created_at",
        "rotated_at",
    )

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, editable=False, db_index=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    is_active = models.BooleanField("active", default=True)
    log_content = models.BooleanField(
        default=False, help_text="Record prompt and completion text in request logs."
    )
    rate_limit = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_spec],
        help_text='Requests or tokens (input + output) per window, e.g. "60/m" or '
        '"60/m,1000/d,100000tok/m,2000000tok/d". Empty: unlimited.',
    )
    max_concurrent = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="concurrent requests",
        help_text="Requests in flight at once, across every gateway process. Empty: unlimited.",
    )
    allowed_capabilities = CapabilityListField(
        help_text="What this key may call. None ticked: every capability."
    )
    allowed_models = models.ManyToManyField(
        "models_registry.Model",
        blank=True,
        related_name="+",
        help_text="Models this key may use. None chosen: every model its capabilities allow.",
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = APIKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        # Django's deletes and related managers write through the base manager: this
        # one stamps and announces them (aethergate.lib.changes).
        base_manager_name = "objects"

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def model_choices(cls) -> models.QuerySet:
        """Every model `allowed_models` may name.

        Reached through the field, not imported: models_registry sits above keys.
        """
        return cls.allowed_models.field.related_model.objects.all()

    def new_secret(self) -> str:
        """Give this key a fresh secret (not saved) and return it: its only clear copy."""
        secret, self.digest, self.prefix = hashed_secrets.issue(
            SECRET_PREFIX, DISPLAY_PREFIX_LENGTH
        )
        return secret

    def refusal(self, *, now=None) -> tuple[str, str] | None:
        """Why this key may not authenticate at `now` (see `refusal`); None when it may."""
        return refusal(
            is_active=self.is_active,
            user_active=self.owner.is_active,
            expires_at=self.expires_at,
            now=now or timezone.now(),
        )

    def state(self, *, now=None) -> str:
        """This key's state at `now` for people to read: `refusal()` named by STATES."""
        refused = self.refusal(now=now)
        return STATES[refused and refused[0]]
