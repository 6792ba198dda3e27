"""Upstream endpoints: where requests are forwarded, with which credential."""

import ipaddress
import re
from urllib.parse import urlsplit

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from aethergate.lib import addresses, crypto
from aethergate.lib.changes import ChangeQuerySet


class EndpointQuerySet(ChangeQuerySet):
    def active(self):
        return self.filter(is_active=True)


_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _valid_host(host: str) -> bool:
    if ":" in host:  # an IPv6 literal, brackets already removed by urlsplit
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return all(_LABEL.match(label) for label in host.split("."))


def validate_upstream_url(value: str) -> None:
    """An http(s) URL with a host, which may be a single label (`http://ollama:11434/v1`).

    Django's URLValidator wants a dotted domain, which rejects Docker
    Compose and Kubernetes service names. Credentials in the URL are refused:
    they belong in the encrypted credential field. The host must pass the
    address policy (`aethergate.lib.addresses`): no metadata, link-local or
    unspecified address, and IP addresses written in their canonical form.
    """
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise ValidationError("Enter a valid URL.", code="invalid") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an http:// or https:// URL.", code="invalid")
    if not _valid_host(parts.hostname):
        raise ValidationError("Enter a valid URL.", code="invalid")
    try:
        addresses.check_host(parts.hostname)
    except addresses.AddressRefused as refusal:
        raise ValidationError(str(refusal), code="address_refused") from None
    if parts.username or parts.password:
        raise ValidationError(
            "Put the upstream's credential in the credential field, not in the URL.",
            code="credentials_in_url",
        )
    if parts.query or parts.fragment:
        raise ValidationError("A base URL has no query or fragment.", code="invalid")


_HEALTH_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")


def validate_health_path(value: str) -> None:
    """A path under the base URL (`/models`, `/health`): no scheme, host, query or spaces."""
    if value and (not _HEALTH_PATH.match(value) or value.startswith("//")):
        raise ValidationError(
            'Enter a path under the base URL, starting with "/", such as /models.',
            code="invalid_health_path",
        )


class UpstreamURLFormField(forms.CharField):
    """Reads a URL typed without a scheme as http: LAN and loopback upstreams usually are."""

    def to_python(self, value):
        value = super().to_python(value)
        if value and "://" not in value:
            value = "http://" + value
        return value


class UpstreamURLField(models.CharField):
    """An upstream's base URL (see validate_upstream_url)."""

    default_validators = [validate_upstream_url]

    def formfield(self, **kwargs):
        return super().formfield(**{"form_class": UpstreamURLFormField, **kwargs})


class Endpoint(models.Model):
    """An upstream server: OpenAI-compatible (Ollama, vLLM, llama.cpp, OpenAI, …) or Anthropic.

    The upstream credential is encrypted at rest and never displayed: admin
    and API only set, replace or clear it (`set_api_key`).
    """

    class Kind(models.TextChoices):
        """Which server software an endpoint is, for the proxy's per-server adjustments."""

        # GENERIC is the default because the proxy's adjustments for it must suit any server.
        GENERIC = "generic", "OpenAI-compatible (other)"
        OPENAI = "openai", "OpenAI"
        VLLM = "vllm", "vLLM"
        OLLAMA = "ollama", "Ollama"
        LLAMA_CPP = "llama_cpp", "llama.cpp server (llama-server)"
        LLAMA_CPP_PYTHON = "llama_cpp_python", "llama-cpp-python server"
        LMSTUDIO = "lmstudio", "LM Studio"
        # Not OpenAI-compatible: it speaks Anthropic's Messages API (POST {base_url}/messages).
        ANTHROPIC = "anthropic", "Anthropic (Messages API)"

    # The fields the management API and the backup carry, in their order;
    # each adds its own around them (aethergate/tests/test_field_lists.py).
    shared_fields = (
        "name",
        "base_url",
        "kind",
        "native_responses",
        "rpm_limit",
        "day_limit",
        "tpm_limit",
        "tpd_limit",
        "connect_timeout",
        "first_byte_timeout",
        "idle_timeout",
        "total_timeout",
        "health_path",
        "is_active",
    )

    name = models.CharField(max_length=100, unique=True)
    base_url = UpstreamURLField(
        "base URL",
        max_length=500,
        help_text="The API's base URL, e.g. http://127.0.0.1:11434/v1 (OpenAI-compatible) or "
        "https://api.anthropic.com/v1 (Anthropic)",
    )
    kind = models.CharField(
        max_length=20,
        choices=Kind.choices,
        default=Kind.GENERIC,
        help_text="The server software behind the URL: it selects the adjustments the gateway "
        'makes to requests and answers for that server. The default, "OpenAI-compatible '
        '(other)" (generic), is safe for any OpenAI-compatible server. "Anthropic" is a '
        "server of Anthropic's Messages API ({base URL}/messages), not OpenAI-compatible.",
    )
    native_responses = models.BooleanField(
        "serves the Responses API",
        default=False,
        help_text="The server also serves OpenAI's Responses API at {base URL}/responses "
        "(OpenAI does; vLLM and llama.cpp's llama-server have one too, of varying "
        "completeness): /v1/responses is passed through to it instead of translated onto "
        "chat completions. Not for kind Anthropic.",
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
    tpm_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="tokens per minute",
        help_text="Input + output tokens across all models on this endpoint. Empty: unlimited.",
    )
    tpd_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="tokens per day",
        help_text="Input + output tokens across all models on this endpoint. Empty: unlimited.",
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
    health_path = models.CharField(
        "health check path",
        max_length=200,
        blank=True,
        default="",
        validators=[validate_health_path],
        help_text="Optional: a path under the base URL to GET (e.g. /models) before sending "
        "requests again to a deployment here whose circuit opened. A 2xx lets one live "
        "request through; anything else keeps it out for a longer cooldown. It never runs a "
        "completion. Empty: the first request after the cooldown is the test.",
    )
    is_active = models.BooleanField("active", default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        # Django's deletes and related managers write through the base manager: this
        # one stamps and announces them (aethergate.lib.changes).
        base_manager_name = "objects"

    def __str__(self):
        return self.name

    def clean(self):
        # One rule for the admin, the API and the backup: all validate with full_clean().
        if self.native_responses and self.kind == self.Kind.ANTHROPIC:
            raise ValidationError(
                {
                    "native_responses": "An Anthropic server does not serve OpenAI's Responses "
                    "API: /v1/responses is translated onto its Messages API."
                },
                code="responses_on_anthropic",
            )

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
