"""The earlier FastAPI version's backup, translated into this format's rows.

Its document is `{"version": 1, "timestamp", "data": {"endpoints", "models",
"users", "api_keys"}}`, with integer or UUID ids for references and models
named by LiteLLM (`litellm_name`, such as `ollama/llama3`); a model there has
one endpoint (`endpoint_id`), here one deployment on it. The translation only
renames and converts; the importer then checks and saves the rows as it does an
AetherGate export's.
"""

from datetime import UTC
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from urllib.parse import urlsplit

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import User
from aethergate.backup.schema import KINDS, BackupError, decimal_text
from endpoints.models import Endpoint
from models_registry.models import UNITS_FOR, BillingUnit, is_unpriced, unit_error

MONEY_STEP = Decimal(10) ** -User._meta.get_field("balance").decimal_places


def _legacy_limit(value):
    # The earlier version read 0 or less as "no limit".
    if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
        return None
    return value


def _legacy_money(value, where: str, name: str, warnings: list[str]):
    """A float amount as a Decimal string (via str(), so 1e-06 stays 0.000001)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BackupError(f"{where}: {name}: {value!r} is not a number.")
    try:
        amount = Decimal(str(value))
        rounded = amount.quantize(MONEY_STEP, rounding=ROUND_HALF_EVEN)
        if not rounded.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise BackupError(f"{where}: {name}: {value!r} is not a number.") from None
    if rounded != amount:
        warnings.append(
            f"{where}: {name} {value} rounded to {decimal_text(rounded)} (10 decimals)."
        )
    return decimal_text(rounded)


def _priced_zero(row: dict) -> bool:
    """Whether a translated model row's prices leave it unpriced (is_unpriced, not free)."""
    prices = (Decimal(row.get(name) or 0) for name in ("price_in", "price_out"))
    return is_unpriced(row.get("billing_unit", BillingUnit.TOKEN), *prices, False)


def _legacy_time(value, where: str, name: str):
    if value is None:
        return None
    try:
        moment = parse_datetime(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise BackupError(f"{where}: {name}: {value!r} is not an ISO date and time.")
    if timezone.is_naive(moment):
        # The earlier version stored UTC without an offset.
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _copy(source: dict, mapping: dict[str, str]) -> dict:
    """The entries of `source` present under the old names, renamed."""
    return {new: source[old] for old, new in mapping.items() if old in source}


def _entries(data: dict, kind: str) -> list[tuple[int, dict]]:
    items = data.get(kind)
    if items is None:
        return []
    if not isinstance(items, list):
        raise BackupError(f"data.{kind} must be a list, not {type(items).__name__}.")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise BackupError(f"{kind}[{index}]: expected an object, not {type(item).__name__}.")
    return list(enumerate(items))


def _register(ids: dict, old_id, value, where: str) -> None:
    if old_id is None:
        return
    if not isinstance(old_id, str | int) or isinstance(old_id, bool):
        raise BackupError(f"{where}: id {old_id!r} is not a text or a number.")
    if old_id in ids:
        raise BackupError(f"{where}: the same id as another entry ({old_id!r}).")
    ids[old_id] = value


OLLAMA = {"ollama", "ollama_chat"}
OPENAI_COMPATIBLE = {"openai", "hosted_vllm"}
ANTHROPIC = "anthropic"
# The LiteLLM providers whose models this gateway serves (the others are imported inactive).
SERVED = OLLAMA | OPENAI_COMPATIBLE | {ANTHROPIC}
OPENAI_HOST = "api.openai.com"
ANTHROPIC_HOST = "api.anthropic.com"
ANTHROPIC_BASE_URL = "https://api.anthropic.com/v1"


def _legacy_kind(providers: set[str], base_url) -> str | None:
    """The kind of an endpoint whose served models had these LiteLLM providers, if sure.

    Only a sure sign gives a server's kind; without one, None: the endpoint is
    created generic (which suits every OpenAI-compatible server), and one
    imported before keeps the kind staff may have chosen since. Anthropic's models
    are served only by an endpoint of theirs alone, at Anthropic's address or at
    none (LiteLLM's default for them).
    """
    if providers and providers <= OLLAMA:
        return Endpoint.Kind.OLLAMA
    try:
        host = urlsplit(base_url).hostname if isinstance(base_url, str) else None
    except ValueError:  # a bad URL: the importer's validation names it
        host = None
    if providers == {"openai"} and host == OPENAI_HOST:
        return Endpoint.Kind.OPENAI
    if providers == {ANTHROPIC} and (host == ANTHROPIC_HOST or base_url in (None, "")):
        return Endpoint.Kind.ANTHROPIC
    return None


def _litellm_parts(litellm: str) -> tuple[str, str]:
    """A LiteLLM model name's provider and upstream model name."""
    provider, _, upstream = litellm.strip().partition("/")
    if not upstream:  # A bare name: LiteLLM sends it to OpenAI.
        return "openai", provider
    return provider, upstream


def _anthropic_endpoints(items: list[tuple[int, dict]], endpoint_rows: dict) -> set[int]:
    """The endpoint rows (by identity) that become kind Anthropic: those whose served
    models are all `anthropic/…`, at Anthropic's address or at none."""
    providers: dict[int, set[str]] = {}
    for _, item in items:
        litellm, endpoint_id = item.get("litellm_name"), item.get("endpoint_id")
        row = endpoint_rows.get(endpoint_id) if isinstance(endpoint_id, str | int) else None
        if isinstance(litellm, str) and row is not None:
            provider, _ = _litellm_parts(litellm)
            if provider in SERVED:
                providers.setdefault(id(row), set()).add(provider)
    return {
        id(row)
        for row in endpoint_rows.values()
        if _legacy_kind(providers.get(id(row), set()), row.get("base_url"))
        == Endpoint.Kind.ANTHROPIC
    }


def translate(data: dict) -> tuple[dict, list[str]]:
    """Translate the earlier version's `data` into this format's rows, plus warnings.

    Each list keeps its order, so errors name the same `kind[index]` as the file.
    """
    warnings: list[str] = []
    ignored = sorted(set(data) - set(KINDS))
    if ignored:
        warnings.append(f"Not imported (AetherGate has no such data): {', '.join(ignored)}.")

    endpoints, endpoint_rows, names = [], {}, set()
    for index, item in _entries(data, "endpoints"):
        name = item.get("name")
        unique = name
        if isinstance(name, str):
            # Names were not unique in the earlier version; they are here.
            suffix = 2
            while unique in names:
                unique, suffix = f"{name} ({suffix})", suffix + 1
            if unique != name:
                warnings.append(
                    f'endpoints[{index}] ("{name}"): another endpoint has this name; '
                    f'imported as "{unique}".'
                )
            names.add(unique)
        row = {"name": unique, **_copy(item, {"base_url": "base_url", "is_active": "is_active"})}
        for limit in ("rpm_limit", "day_limit"):
            if limit in item:
                row[limit] = _legacy_limit(item[limit])
        if item.get("api_key"):
            row["api_key"] = item["api_key"]
        _register(endpoint_rows, item.get("id"), row, f"endpoints[{index}]")
        endpoints.append(row)

    models, ollama_endpoints = [], []
    # Per endpoint row (by identity: its name may be anything until checked), the
    # providers of the models it serves after the import.
    providers: dict[int, set[str]] = {}
    model_items = _entries(data, "models")
    anthropic_endpoints = _anthropic_endpoints(model_items, endpoint_rows)
    for index, item in model_items:
        name = item.get("id")
        where = f'models[{index}] ("{name}")'
        litellm = item.get("litellm_name")
        if not isinstance(litellm, str) or not litellm.strip():
            raise BackupError(f"{where}: litellm_name is missing or not a text.")
        provider, upstream = _litellm_parts(litellm)
        served = provider in OLLAMA | OPENAI_COMPATIBLE
        row = {
            "name": name,
            **_copy(item, {"capability": "capability", "billing_unit": "billing_unit"}),
            **_copy(item, {"is_active": "is_active", "fallback_model_id": "fallback"}),
        }
        mismatch = unit_error(row.get("capability", "TEXT"), row.get("billing_unit", "TOKEN"))
        if mismatch:
            row["billing_unit"] = UNITS_FOR[row["capability"]][0]
            warnings.append(
                f"{where}: {mismatch} Imported as billed per "
                f"{BillingUnit(row['billing_unit']).label.lower()}: check its prices."
            )
        for price in ("price_in", "price_out"):
            if price in item:
                row[price] = _legacy_money(item[price], where, price, warnings)
        if _priced_zero(row):
            # The earlier version billed such a model 0 without a word; here it is
            # flagged, unless staff mark it free (it had no such mark to carry over).
            warnings.append(
                f"{where}: priced 0 in the backup, so unpriced here (its requests logged with "
                "their cost unknown) unless marked “free on purpose”: tick that if it costs "
                "nothing, or set its prices."
            )
        for limit in ("rpm_limit", "day_limit"):
            if limit in item:
                row[limit] = _legacy_limit(item[limit])
        endpoint_id = item.get("endpoint_id")
        if endpoint_id is None:
            row["deployments"] = []
            warnings.append(
                f"{where}: has no endpoint (the earlier version used its default Ollama URL); "
                f'imported without a deployment: add one (upstream name "{upstream}") on its '
                "endpoint before using it."
            )
        elif endpoint_id not in endpoint_rows:
            raise BackupError(f"{where}: endpoint_id: no endpoint with id {endpoint_id!r}.")
        else:
            endpoint = endpoint_rows[endpoint_id]
            row["deployments"] = [{"endpoint": endpoint["name"], "upstream_name": upstream}]
            if provider in OLLAMA:
                ollama_endpoints.append(endpoint)
            served = served or (provider == ANTHROPIC and id(endpoint) in anthropic_endpoints)
            if served:
                # The others are imported inactive: they say nothing of this server.
                providers.setdefault(id(endpoint), set()).add(provider)
        if not served and provider == ANTHROPIC:
            row["is_active"] = False
            warnings.append(
                f'{where}: "{litellm}" needs an endpoint of kind Anthropic, which its endpoint '
                "cannot be (it also serves other providers' models, or is not at Anthropic's "
                f'address); imported inactive with upstream name "{upstream}": deploy it on an '
                "Anthropic endpoint, then activate it."
            )
        elif not served:
            row["is_active"] = False
            warnings.append(
                f'{where}: "{litellm}" is not served by an OpenAI-compatible API; imported '
                f'inactive with upstream name "{upstream}": point it at an OpenAI-compatible '
                "endpoint (a proxy or the provider's compatibility URL), then activate it."
            )
        models.append(row)

    for row in endpoints:
        kind = _legacy_kind(providers.get(id(row), set()), row.get("base_url"))
        if kind:
            row["kind"] = kind
        url = row.get("base_url")
        if kind == Endpoint.Kind.ANTHROPIC and url != ANTHROPIC_BASE_URL:
            # LiteLLM took Anthropic's bare host (or nothing) and added /v1/messages itself.
            row["base_url"] = ANTHROPIC_BASE_URL
            warnings.append(
                f'endpoint "{row["name"]}": base URL {url or "(none)"} → {ANTHROPIC_BASE_URL} '
                "(Anthropic's Messages API)."
            )

    for row in ollama_endpoints:
        url = row.get("base_url")
        if isinstance(url, str) and not url.rstrip("/").endswith("/v1"):
            # Ollama's OpenAI-compatible API lives under /v1.
            row["base_url"] = url.rstrip("/") + "/v1"
            warnings.append(
                f'endpoint "{row["name"]}": base URL {url} → {row["base_url"]} '
                "(Ollama's OpenAI-compatible API)."
            )

    users, usernames = [], {}
    for index, item in _entries(data, "users"):
        where = f'users[{index}] ("{item.get("username")}")'
        row = _copy(item, {"username": "username", "is_active": "is_active"})
        row.update({k: item[k] or "" for k in ("email", "organization") if k in item})
        # Every user of the earlier version was on prepaid billing.
        balance = _legacy_money(item.get("balance"), where, "balance", warnings)
        if balance is None:
            warnings.append(f"{where}: no balance in the backup; imported with balance 0.")
        row["balance"] = balance or "0"
        if "created_at" in item:
            row["date_joined"] = _legacy_time(item["created_at"], where, "created_at")
        _register(usernames, item.get("id"), item.get("username"), f"users[{index}]")
        users.append(row)

    api_keys = []
    for index, item in _entries(data, "api_keys"):
        where = f'api_keys[{index}] ("{item.get("name")}", {item.get("key_prefix")}…)'
        key_hash = item.get("key_hash")
        if not isinstance(key_hash, str):
            raise BackupError(f"{where}: key_hash is missing or not a text.")
        if item.get("user_id") not in usernames:
            raise BackupError(f"{where}: user_id: no user with id {item.get('user_id')!r}.")
        row = {
            "digest": key_hash.strip().lower(),
            "owner": usernames[item["user_id"]],
            **_copy(item, {"key_prefix": "prefix", "name": "name", "is_active": "is_active"}),
            **_copy(item, {"log_content": "log_content"}),
        }
        if "rate_limit_model" in item:
            row["rate_limit"] = item["rate_limit_model"] or ""
        if "allowed_capabilities" in item:
            row["allowed_capabilities"] = item["allowed_capabilities"] or []
        if "created_at" in item:
            row["created_at"] = _legacy_time(item["created_at"], where, "created_at")
        api_keys.append(row)

    document = {"endpoints": endpoints, "models": models, "users": users, "api_keys": api_keys}
    return document, warnings
