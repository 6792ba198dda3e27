"""Upstream endpoints: where requests are forwarded, with which credential."""

from django.core.validators import MinValueValidator
from django.db import models

from aethergate.lib import crypto


class EndpointQuerySet(models.QuerySet):
    def active(self):
        return self.filter(is_active=True)


class UpstreamURLField(models.URLField):
    """A URL that forms read as http when typed without a scheme.

    Upstreams on a LAN or loopback are usually plain http (Ollama, llama.cpp).
    """

    def formfield(self, **kwargs):
        return super().formfield(**{"assume_scheme": "http", **kwargs})


class Endpoint(models.Model):
    """An OpenAI-compatible upstream server (Ollama, vLLM, llama.cpp, OpenAI, …).

    The upstream credential is encrypted at rest and never displayed: admin
    and API only set, replace or clear it (`set_api_key`).
    """

    name = models.CharField(max_length=100, unique=True)
    base_url = UpstreamURLField(
        "base URL",
        max_length=500,
        help_text="OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1",
    )
    # Only the Fernet token is stored; it is decrypted where a request needs it.
    api_key_encrypted = models.TextField(blank=True, default="", editable=False)
    rpm_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="requests per minute",
        help_text="Across all models on this endpoint. Empty: unlimited.",
    )
    day_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="requests per day",
        help_text="Across all models on this endpoint. Empty: unlimited.",
    )
    connect_timeout = models.FloatField(
        default=5.0, validators=[MinValueValidator(0.1)], help_text="Seconds to open a connection."
    )
    first_byte_timeout = models.FloatField(
        default=120.0,
        validators=[MinValueValidator(0.1)],
        help_text="Seconds to wait for the first byte of the answer.",
    )
    idle_timeout = models.FloatField(
        default=60.0,
        validators=[MinValueValidator(0.1)],
        help_text="Seconds of silence allowed between two chunks of a stream.",
    )
    total_timeout = models.FloatField(
        default=600.0,
        validators=[MinValueValidator(0.1)],
        help_text="Seconds a whole request may take.",
    )
    is_active = models.BooleanField("active", default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def has_credential(self) -> bool:
        return bool(self.api_key_encrypted)

    @property
    def api_key(self) -> str:
        """The upstream credential in clear, for the request that sends it."""
        return crypto.decrypt(self.api_key_encrypted) if self.api_key_encrypted else ""

    def set_api_key(self, plaintext: str) -> None:
        """Store `plaintext` encrypted (not saved); an empty value clears it."""
        self.api_key_encrypted = crypto.encrypt(plaintext) if plaintext else ""
