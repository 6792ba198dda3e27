"""Users (API consumers and staff, with an optional prepaid balance) and staff API tokens."""

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from aethergate.lib import hashed_secrets
from aethergate.lib.changes import ChangeQuerySet

MONEY = {"max_digits": 20, "decimal_places": 10}


class BudgetPeriod(models.TextChoices):
    """How often a budget starts again, at midnight in AETHERGATE_BUDGET_TIME_ZONE."""

    NONE = "none", "Never (one total)"
    DAY = "day", "Every day"
    WEEK = "week", "Every week (from Monday)"
    MONTH = "month", "Every month (from the 1st)"


class Budgeted(models.Model):
    """A spend budget: a hard limit that refuses (402), a soft one that alerts, and a period.

    Shared by users (all their keys together) and keys; enforced by proxy.budgets.
    """

    budget = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        verbose_name="budget (hard limit)",
        help_text="Spend allowed per period; requests beyond it are refused (402). "
        "Empty: no budget.",
    )
    budget_soft = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        verbose_name="budget alert at",
        help_text="Spend per period that sends one alert (webhook and log); requests go on. "
        "Empty: no alert.",
    )
    budget_period = models.CharField(
        max_length=8,
        choices=BudgetPeriod.choices,
        default=BudgetPeriod.MONTH,
        help_text="When spend counts from zero again, in the gateway's budget time zone.",
    )

    class Meta:
        abstract = True

    def clean(self):
        super().clean()
        if self.budget is not None and self.budget_soft is not None:
            if self.budget_soft > self.budget:
                raise ValidationError(
                    {"budget_soft": "The alert must be at or below the hard limit."}
                )


class UserManager(DjangoUserManager.from_queryset(ChangeQuerySet)):
    """Django's user manager, with writes that send no signal announced (lib.changes)."""


class User(Budgeted, AbstractUser):  # noqa: DJ008 -- AbstractUser has __str__
    """A consumer (owns API keys) or a staff member (`is_staff`), or both.

    `balance` is None when the user is not on prepaid billing: requests are
    not refused for money, but their cost is still recorded.
    """

    # The fields the management API and the backup carry, in their order;
    # each adds its own around them (aethergate/tests/test_field_lists.py).
    shared_fields = (
        "username",
        "email",
        "first_name",
        "last_name",
        "organization",
        "balance",
        "budget",
        "budget_soft",
        "budget_period",
        "is_active",
        "is_staff",
        "is_superuser",
        "date_joined",
    )

    organization = models.CharField(max_length=200, blank=True)
    balance = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        help_text="Prepaid credit. Empty: no prepaid enforcement (cost is still tracked).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = UserManager()

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        ordering = ["username"]
        # Django's deletes and related managers write through the base manager: this
        # one stamps and announces them (aethergate.lib.changes).
        base_manager_name = "objects"


TOKEN_PREFIX = "agt-"  # noqa: S105 -- the public marker of a token, not a secret
TOKEN_DISPLAY_LENGTH = len(TOKEN_PREFIX) + 8

# How a presented token is hashed to be looked up: the only form in which a token is stored.
token_digest = hashed_secrets.digest


def looks_like_token(text: str) -> bool:
    """Whether `text` is a whole token, not a display prefix (see hashed_secrets.is_whole)."""
    return hashed_secrets.is_whole(text, TOKEN_PREFIX, TOKEN_DISPLAY_LENGTH)


class APITokenQuerySet(models.QuerySet):
    def with_secret(self, presented: str):
        """The token (at most one) whose whole secret is `presented`, found by its digest."""
        return self.filter(digest=token_digest(presented))

    def usable(self, at=None):
        """Tokens that may authenticate at `at` (default: now): live, unexpired, user active."""
        at = at or timezone.now()
        return self.filter(revoked_at__isnull=True, user__is_active=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=at)
        )


class APIToken(models.Model):
    """A staff member's token for the management API (`Authorization: Token …` or `Bearer …`).

    The token exists in clear only in the response that issues it; the row
    keeps its SHA-256 `digest` and a short `prefix` for people to recognise it.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, help_text="What uses it, e.g. “CI” or “billing”.")
    prefix = models.CharField(max_length=16, editable=False, db_index=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = APITokenQuerySet.as_manager()

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    def clean(self):
        # Only staff may call the management API, so a token for anyone else
        # would be refused on every request; say so when it is issued.
        if self._state.adding and self.user_id is not None:
            if not (self.user.is_staff and self.user.is_active):
                raise ValidationError({"user": "API tokens can only be issued to active staff."})

    def new_token(self) -> str:
        """Give this row a fresh token (not saved) and return it: its only clear copy."""
        token, self.digest, self.prefix = hashed_secrets.issue(TOKEN_PREFIX, TOKEN_DISPLAY_LENGTH)
        return token

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class LoginFailure(models.Model):
    """One failed admin login or API token attempt, counted against one `key`.

    A key is "user:<username>", "token:<display prefix>" or "address:<client>";
    one failure makes a row for its account and one for its address. Rows
    older than the counting window are deleted as new failures arrive.
    """

    key = models.CharField(max_length=200)
    at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["key", "at"], name="login_failure_key_at")]

    def __str__(self):
        return f"{self.key} at {self.at:%Y-%m-%d %H:%M:%S}"


class Lockout(models.Model):
    """An account or client address refused logins (right password included) until `until`."""

    key = models.CharField(max_length=200, unique=True)
    surface = models.CharField(max_length=16, help_text="Where the last failure came from.")
    address = models.CharField(max_length=64, blank=True, help_text="The last failure's client.")
    failures = models.PositiveIntegerField()
    locked_at = models.DateTimeField()
    until = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-locked_at"]

    def __str__(self):
        return self.key
