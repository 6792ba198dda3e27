"""The model catalog: public names clients send, mapped to upstream models."""

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from accounts.models import MONEY
from aethergate.lib.capabilities import Capability
from aethergate.lib.changes import ChangeQuerySet
from endpoints.models import Endpoint

MAX_FALLBACK_DEPTH = 5


class BillingUnit(models.TextChoices):
    """What a model's prices are per; `price_basis` says how staff enter and read them."""

    TOKEN = "TOKEN", "Token"
    IMAGE = "IMAGE", "Image"
    MINUTE = "MINUTE", "Minute of audio"
    REQUEST = "REQUEST", "Request"

    @property
    def price_basis(self) -> tuple[int, str]:
        """(units, words): prices are entered and shown for this many units, so named.

        Token prices are quoted per million tokens, as upstreams publish them;
        the database keeps the price of one unit.
        """
        return (1_000_000, "1M tokens") if self is BillingUnit.TOKEN else (1, self.label.lower())


BILLING_UNIT_RULES = (
    "Token: the input price is charged per prompt token, the output price per completion "
    "token. Image: the output price per image returned. Minute of audio: the input price per "
    "minute of input audio (fractions count: 90 s is 1.5 minutes; seconds rounded up). "
    "Request: the input price once per successful request. The unit must suit the "
    "capability: chat and embeddings take token or request; images also image; speech to "
    "text also minute. Prices are entered per 1M tokens for Token models and per "
    "image, minute or request for the others; stored per single unit."
)


# The billing units each capability's routes measure (proxy.usage): what a model of
# that capability may be billed in. The first is the usual one.
UNITS_FOR = {
    Capability.TEXT: (BillingUnit.TOKEN, BillingUnit.REQUEST),
    Capability.EMBEDDING: (BillingUnit.TOKEN, BillingUnit.REQUEST),
    Capability.IMAGE: (BillingUnit.IMAGE, BillingUnit.TOKEN, BillingUnit.REQUEST),
    Capability.AUDIO_STT: (BillingUnit.MINUTE, BillingUnit.TOKEN, BillingUnit.REQUEST),
    Capability.AUDIO_TTS: (BillingUnit.TOKEN, BillingUnit.REQUEST),
}


def unit_error(capability: str, billing_unit: str) -> str:
    """Why a model of `capability` cannot be billed in `billing_unit`; "" when it can."""
    units = UNITS_FOR.get(capability, ())
    if not units or billing_unit in units or billing_unit not in BillingUnit.values:
        return ""  # an unknown value is the field's own choices to refuse
    allowed = ", ".join(str(unit.label).lower() for unit in units)
    return (
        f"{Capability(capability).label} cannot be billed per "
        f"{BillingUnit(billing_unit).label.lower()}: choose one of {allowed}."
    )


def is_unpriced(billing_unit: str, price_in, price_out, is_free: bool) -> bool:
    """Whether a model's unit is billed at a price nobody set: zero, and not marked free.

    The one rule behind the admin's and the API's flag and the proxy's
    `cost_unknown` (and its refusal, per AETHERGATE_UNPRICED_MODELS).
    """
    if is_free:
        return False
    if billing_unit == BillingUnit.TOKEN:
        return not price_in and not price_out
    if billing_unit == BillingUnit.IMAGE:
        return not price_out
    return not price_in


class ModelQuerySet(ChangeQuerySet):
    def active(self):
        return self.filter(is_active=True)


class Model(models.Model):
    """A public model name, served by its deployments (`Deployment`): upstream models on endpoints.

    `strategy` spreads requests over the deployments; `fallback` is tried once
    every deployment failed before the first byte reached the client, and
    `context_fallback` instead when the upstream said the request is too long
    for its context. Prices are per billing unit, in the same currency as balances.
    """

    # The fields the management API and the backup carry, in their order;
    # each adds its own around them (aethergate/tests/test_field_lists.py).
    shared_fields = (
        "name",
        "capability",
        "billing_unit",
        "price_in",
        "price_out",
        "price_cache_read",
        "price_cache_write",
        "is_free",
        "rpm_limit",
        "day_limit",
        "tpm_limit",
        "tpd_limit",
        "max_concurrent",
        "max_output_tokens",
        "strategy",
        "fallback",
        "context_fallback",
        "is_active",
    )

    class Strategy(models.TextChoices):
        """How a request picks among the available deployments of the first tier that has one."""

        WEIGHTED = "weighted", "Weighted random"
        LEAST_BUSY = "least_busy", "Fewest requests in flight"
        FASTEST = "fastest", "Lowest recent time to first byte"

    name = models.CharField(
        max_length=200, unique=True, help_text="Public name clients send, e.g. llama3."
    )
    capability = models.CharField(
        max_length=20, choices=Capability.choices, default=Capability.TEXT
    )
    billing_unit = models.CharField(
        max_length=20,
        choices=BillingUnit.choices,
        default=BillingUnit.TOKEN,
        help_text=BILLING_UNIT_RULES,
    )
    price_in = models.DecimalField(
        **MONEY,
        default=0,
        validators=[MinValueValidator(0)],
        verbose_name="input price",
        help_text="Per input unit (e.g. per prompt token).",
    )
    price_out = models.DecimalField(
        **MONEY,
        default=0,
        validators=[MinValueValidator(0)],
        verbose_name="output price",
        help_text="Per output unit (e.g. per completion token).",
    )
    price_cache_read = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        verbose_name="cache-read price",
        help_text="Per input token read from the upstream's prompt cache. Empty: the input price.",
    )
    price_cache_write = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        verbose_name="cache-write price",
        help_text="Per input token written to the upstream's prompt cache. Empty: the input price.",
    )
    is_free = models.BooleanField(
        "free on purpose",
        default=False,
        help_text="Tick for a model that costs nothing (a local server): without it, a model "
        "whose prices are all zero is flagged as unpriced, and its requests logged with "
        "their cost unknown.",
    )
    rpm_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="requests per minute",
        help_text="Across all keys. Empty: unlimited.",
    )
    day_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="requests per day",
        help_text="Across all keys. Empty: unlimited.",
    )
    tpm_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="tokens per minute",
        help_text="Input + output tokens across all keys. Empty: unlimited.",
    )
    tpd_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="tokens per day",
        help_text="Input + output tokens across all keys. Empty: unlimited.",
    )
    max_concurrent = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="concurrent requests",
        help_text="Requests in flight at once across all keys and gateway processes. "
        "Empty: unlimited.",
    )
    max_output_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="output tokens reserved",
        help_text="What a request that sets no max_tokens is assumed to produce, reserved "
        "against token limits and budgets until its real usage is known. Empty: "
        "AETHERGATE_DEFAULT_MAX_OUTPUT_TOKENS.",
    )
    fallback = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="fallback_for",
        help_text="Tried when every deployment of this model failed before answering.",
    )
    context_fallback = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="context_fallback_for",
        verbose_name="context-length fallback",
        help_text="Tried instead when the upstream refuses the request as too long for "
        "its context (a model with a longer one). Empty: that refusal reaches the client.",
    )
    strategy = models.CharField(
        max_length=20,
        choices=Strategy.choices,
        default=Strategy.WEIGHTED,
        verbose_name="balancing",
        help_text="How requests are spread over the deployments of one priority. Weighted "
        "random follows the weights; fewest in flight and lowest time to first byte are "
        "measured by each gateway process on its own traffic. Requests of one session "
        "(a user field, prompt_cache_key, X-Session-Id) stay on one deployment while it "
        "is healthy, whatever the strategy.",
    )
    is_active = models.BooleanField("active", default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ModelQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        # Django's deletes and related managers write through the base manager: this
        # one stamps and announces them (aethergate.lib.changes).
        base_manager_name = "objects"

    def __str__(self):
        return self.name

    @property
    def unpriced(self) -> bool:
        return is_unpriced(self.billing_unit, self.price_in, self.price_out, self.is_free)

    def clean(self):
        """Refuse a billing unit the capability's routes cannot measure, and a fallback
        chain that loops back or is deeper than the proxy follows."""
        error = unit_error(self.capability, self.billing_unit)
        if error:
            raise ValidationError({"billing_unit": error})
        for field in ("fallback", "context_fallback"):
            self._check_chain(field)

    def _check_chain(self, field: str) -> None:
        seen = {self.pk} if self.pk else set()
        current, depth = getattr(self, field), 0
        while current is not None:
            if current.pk in seen or current is self:
                raise ValidationError({field: "This fallback chain loops back on itself."})
            depth += 1
            if depth > MAX_FALLBACK_DEPTH:
                raise ValidationError(
                    {field: f"A fallback chain may be at most {MAX_FALLBACK_DEPTH} deep."}
                )
            seen.add(current.pk)
            current = getattr(current, field)


class DeploymentQuerySet(ChangeQuerySet):
    def serving(self):
        """The deployments requests may be sent to: weighted, on an active endpoint."""
        return self.filter(weight__gt=0, endpoint__is_active=True)


class Deployment(models.Model):
    """One way to serve a model: `upstream_name` on `endpoint`, with a weight and a priority.

    The proxy sends a request to a deployment of the lowest priority number that
    is available (its circuit closed), picked among them by the model's strategy;
    higher numbers are used only when every deployment before them is unavailable.
    """

    # The fields the management API and the backup carry, in their order.
    shared_fields = ("endpoint", "upstream_name", "weight", "priority")

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="deployments")
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deployments")
    upstream_name = models.CharField(
        max_length=200, help_text="Model name this endpoint expects, e.g. llama3:8b."
    )
    weight = models.PositiveIntegerField(
        default=1,
        help_text="Share of the requests among deployments of the same priority (weighted "
        "random). 0 sends it none: a drained replica.",
    )
    priority = models.PositiveSmallIntegerField(
        default=0,
        help_text="0 is used first. A higher number is a standby tier: used only while "
        "every deployment with a lower number is unavailable.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["model", "priority", "-weight", "pk"]
        base_manager_name = "objects"
        constraints = [
            models.UniqueConstraint(
                fields=["model", "endpoint", "upstream_name"], name="unique_deployment"
            )
        ]

    def __str__(self):
        return f"{self.upstream_name} on {self.endpoint}"
