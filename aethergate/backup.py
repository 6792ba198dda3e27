"""Backup and restore: a JSON export, and an all-or-nothing import of it or of an earlier backup."""

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models as db_models
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import User
from aethergate.lib.commands import describe
from endpoints.models import Endpoint
from keys.models import APIKey
from models_registry.models import Model

FORMAT = "aethergate-backup"
VERSION = 1
LEGACY_VERSION = 1
KINDS = ("users", "endpoints", "models", "api_keys")
LABELS = {"users": "users", "endpoints": "endpoints", "models": "models", "api_keys": "API keys"}
DIGEST = re.compile(r"[0-9a-f]{64}")
MONEY_STEP = Decimal(10) ** -User._meta.get_field("balance").decimal_places


class BackupError(Exception):
    """A backup that cannot be read or imported; the message names the row and the rule."""


# --------------------------------------------------------------------------- export


def _decimal(value: Decimal | None) -> str | None:
    # Plain notation without trailing zeros, whatever the database returned.
    return None if value is None else format(value.normalize(), "f")


def _moment(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _plain(obj, kind) -> dict:
    """`obj`'s natural key and plain fields (SCHEMA, which import reads too) as written."""
    row = {}
    for name in (kind.key, *kind.fields):
        value = getattr(obj, name)
        if isinstance(value, Decimal):
            value = _decimal(value)
        elif isinstance(value, datetime):
            value = _moment(value)
        row[name] = value
    return row


def export_backup(*, include_secrets: bool = False) -> dict:
    """The whole configuration as a JSON-ready document; lists sorted by natural key.

    Without `include_secrets` it holds no password hash and no upstream
    credential (`has_credential` says whether there is one). With it, both
    are in it, the credentials in clear: treat such a document as a secret.
    Key digests are always in it: they are not secrets, and they are what
    keeps consumer keys working after a restore.
    """
    # Referrers are read before what they refer to, so a row created while
    # this runs may be exported unreferenced but never referenced and missing.
    # (No transaction: on SQLite it would take the write lock the log writer needs.)
    all_keys = list(APIKey.objects.select_related("owner").prefetch_related("allowed_models"))
    all_models = list(Model.objects.select_related("endpoint", "fallback"))
    all_endpoints = list(Endpoint.objects.all())
    all_users = list(User.objects.all())

    users = []
    for user in sorted(all_users, key=lambda u: u.username):
        row = _plain(user, SCHEMA["users"])
        if include_secrets:
            row["password"] = user.password
        users.append(row)

    endpoints = []
    for endpoint in sorted(all_endpoints, key=lambda e: e.name):
        row = _plain(endpoint, SCHEMA["endpoints"])
        if include_secrets:
            try:
                row["api_key"] = endpoint.api_key
            except ImproperlyConfigured as error:
                raise BackupError(f'Endpoint "{endpoint.name}": {error}') from None
        else:
            row["has_credential"] = endpoint.has_credential
        endpoints.append(row)

    models = [
        {
            **_plain(model, SCHEMA["models"]),
            "endpoint": model.endpoint.name if model.endpoint else None,
            "fallback": model.fallback.name if model.fallback else None,
        }
        for model in sorted(all_models, key=lambda m: m.name)
    ]

    api_keys = [
        {
            **_plain(key, SCHEMA["api_keys"]),
            "owner": key.owner.username,
            "allowed_models": sorted(m.name for m in key.allowed_models.all()),
        }
        for key in sorted(all_keys, key=lambda k: k.digest)
    ]

    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": _moment(timezone.now()),
        "users": users,
        "endpoints": endpoints,
        "models": models,
        "api_keys": api_keys,
    }


def dumps(document: dict) -> str:
    """The document as indented JSON text with a final newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_private_file(path: str, text: str, *, overwrite: bool = False) -> None:
    """Write `text` to a new file that only its owner can read (mode 0600 from creation).

    Raises FileExistsError when `path` exists, unless `overwrite`: then the text
    goes to a new 0600 file beside it that replaces `path` in one rename, so the
    old file's permissions never apply and a failed write leaves it intact.
    """
    data = text.encode()
    target = path
    if overwrite:
        directory, name = os.path.split(os.path.abspath(path))
        target = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(target, path)
    except BaseException:
        os.unlink(target)
        raise


# --------------------------------------------------------------------------- reading


def max_bytes() -> int:
    """The largest backup read (AETHERGATE_BACKUP_MAX_BYTES): a bigger file is refused unread."""
    return settings.AETHERGATE_BACKUP_MAX_BYTES


# A backup nests five deep (document, kind, row, list, value); anything far deeper is
# not a backup, and would only cost recursion further on.
MAX_DEPTH = 32
TOO_DEEP = f"Nested more than {MAX_DEPTH} levels deep: not a backup."


def _too_deep(document: Any) -> bool:
    stack = [(document, 1)]
    while stack:  # iterative: the point is not to recurse on the file's nesting
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    return False


def loads(text: str | bytes) -> Any:
    """Parse backup text; malformed, oversized or absurdly nested input raises BackupError."""
    if len(text) > max_bytes():
        raise BackupError(f"Too large: a backup is at most {max_bytes()} bytes here.")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise BackupError(
            f"Not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})."
        ) from None
    except (UnicodeDecodeError, TypeError):
        raise BackupError("Not valid JSON text (expected UTF-8).") from None
    except RecursionError:  # deeper than the parser goes
        raise BackupError(TOO_DEEP) from None
    if _too_deep(document):
        raise BackupError(TOO_DEEP)
    return document


@dataclass(frozen=True)
class _Kind:
    key: str  # the natural key, by which rows are matched ("upserted")
    fields: tuple[str, ...]  # model fields copied as given (absent: kept, or default)
    extra: tuple[str, ...]  # fields handled by the importer itself


SCHEMA = {
    "endpoints": _Kind(
        "name",
        (
            "base_url",
            "rpm_limit",
            "day_limit",
            "connect_timeout",
            "first_byte_timeout",
            "idle_timeout",
            "total_timeout",
            "is_active",
        ),
        ("api_key", "has_credential"),
    ),
    "models": _Kind(
        "name",
        (
            "upstream_name",
            "capability",
            "billing_unit",
            "price_in",
            "price_out",
            "rpm_limit",
            "day_limit",
            "is_active",
        ),
        ("endpoint", "fallback"),
    ),
    "users": _Kind(
        "username",
        (
            "email",
            "first_name",
            "last_name",
            "organization",
            "balance",
            "is_active",
            "is_staff",
            "is_superuser",
            "date_joined",
        ),
        ("password",),
    ),
    "api_keys": _Kind(
        "digest",
        (
            "prefix",
            "name",
            "is_active",
            "log_content",
            "rate_limit",
            "allowed_capabilities",
            "expires_at",
            "created_at",
            "rotated_at",
        ),
        ("owner", "allowed_models"),
    ),
}


@dataclass
class _Row:
    kind: str
    index: int
    data: dict

    @property
    def natural(self) -> str:
        return self.data[SCHEMA[self.kind].key]

    @property
    def label(self) -> str:
        if self.kind == "api_keys":
            # Named by name and prefix: messages never carry a digest.
            return f'api_keys[{self.index}] ("{self.data.get("name")}", {self.data.get("prefix")}…)'
        return f'{self.kind}[{self.index}] ("{self.natural}")'

    def error(self, message: str) -> BackupError:
        return BackupError(f"{self.label}: {message}")

    def fields(self) -> dict:
        return {name: self.data[name] for name in SCHEMA[self.kind].fields if name in self.data}


def _rows(document: dict) -> dict[str, list[_Row]]:
    """Check the document's shape and return its rows per kind (before any database access)."""
    rows: dict[str, list[_Row]] = {}
    for kind, spec in SCHEMA.items():
        items = document.get(kind, [])
        if not isinstance(items, list):
            raise BackupError(f'"{kind}" must be a list, not {type(items).__name__}.')
        rows[kind] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise BackupError(
                    f"{kind}[{index}]: expected an object, not {type(item).__name__}."
                )
            natural = item.get(spec.key)
            if not isinstance(natural, str) or not natural.strip():
                raise BackupError(f"{kind}[{index}]: {spec.key} is missing or not a text.")
            row = _Row(kind, index, item)
            unknown = sorted(set(item) - {spec.key, *spec.fields, *spec.extra})
            if unknown:
                raise row.error(f"unknown field(s): {', '.join(unknown)}.")
            if natural in seen:
                raise row.error(f"the same {spec.key} as {kind}[{seen[natural]}].")
            seen[natural] = index
            if kind == "api_keys" and not DIGEST.fullmatch(natural):
                raise row.error("digest: must be the 64 lowercase hex digits of a SHA-256 digest.")
            rows[kind].append(row)
    return rows


# --------------------------------------------------------------------------- the earlier version


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
        warnings.append(f"{where}: {name} {value} rounded to {_decimal(rounded)} (10 decimals).")
    return _decimal(rounded)


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


def _from_legacy(data: dict) -> tuple[dict, list[str]]:
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
    for index, item in _entries(data, "models"):
        name = item.get("id")
        where = f'models[{index}] ("{name}")'
        litellm = item.get("litellm_name")
        if not isinstance(litellm, str) or not litellm.strip():
            raise BackupError(f"{where}: litellm_name is missing or not a text.")
        provider, _, upstream = litellm.strip().partition("/")
        if not upstream:  # A bare name: LiteLLM sends it to OpenAI.
            provider, upstream = "openai", provider
        row = {
            "name": name,
            "upstream_name": upstream,
            **_copy(item, {"capability": "capability", "billing_unit": "billing_unit"}),
            **_copy(item, {"is_active": "is_active", "fallback_model_id": "fallback"}),
        }
        for price in ("price_in", "price_out"):
            if price in item:
                row[price] = _legacy_money(item[price], where, price, warnings)
        for limit in ("rpm_limit", "day_limit"):
            if limit in item:
                row[limit] = _legacy_limit(item[limit])
        endpoint_id = item.get("endpoint_id")
        if endpoint_id is None:
            row["endpoint"] = None
            warnings.append(
                f"{where}: has no endpoint (the earlier version used its default Ollama URL); "
                "imported without one: choose its endpoint before using it."
            )
        elif endpoint_id not in endpoint_rows:
            raise BackupError(f"{where}: endpoint_id: no endpoint with id {endpoint_id!r}.")
        else:
            row["endpoint"] = endpoint_rows[endpoint_id]["name"]
            if provider in OLLAMA:
                ollama_endpoints.append(endpoint_rows[endpoint_id])
        if provider not in OLLAMA | OPENAI_COMPATIBLE:
            row["is_active"] = False
            warnings.append(
                f'{where}: "{litellm}" is not served by an OpenAI-compatible API; imported '
                f'inactive with upstream name "{upstream}": point it at an OpenAI-compatible '
                "endpoint (a proxy or the provider's compatibility URL), then activate it."
            )
        models.append(row)

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


def _recognise(document: Any) -> tuple[str, dict, list[str]]:
    """`(source, rows in this format, warnings)` for either kind of backup."""
    if not isinstance(document, dict):
        raise BackupError(
            f"A backup is a JSON object; this file holds a {type(document).__name__}."
        )
    if "format" in document:
        if document["format"] != FORMAT:
            raise BackupError(f'Unknown backup format "{document["format"]}".')
        if document.get("version") != VERSION:
            raise BackupError(
                f"This is a version {document.get('version')!r} AetherGate backup; "
                f"this AetherGate reads version {VERSION}."
            )
        return "AetherGate backup", document, []
    if "data" in document:
        if document.get("version") != LEGACY_VERSION:
            raise BackupError(
                f"Earlier-version backup of version {document.get('version')!r}; "
                f"only version {LEGACY_VERSION} is supported."
            )
        if not isinstance(document["data"], dict):
            raise BackupError('"data" must be an object.')
        converted, warnings = _from_legacy(document["data"])
        return "earlier-version backup", converted, warnings
    raise BackupError(
        'Not a backup: neither an AetherGate export (no "format") nor an earlier-version '
        'backup (no "data").'
    )


# --------------------------------------------------------------------------- import


@dataclass
class Tally:
    """How many rows of one kind an import created, updated or left as they were."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass
class ImportReport:
    """What an import did (or, for a dry run, would have done), per kind, and its warnings."""

    source: str
    dry_run: bool
    tallies: dict[str, Tally] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Privileges the import gave (grant_privileges only): 'users[0] ("root"): staff, …'.
    granted: list[str] = field(default_factory=list)


def _state(obj: db_models.Model) -> dict:
    """The row's stored values, to tell whether an import changes it (updated_at aside)."""
    return {
        f.attname: getattr(obj, f.attname)
        for f in obj._meta.concrete_fields
        if not getattr(f, "auto_now", False)
    }


# What a backup may grant a user, by the word the reports use.
PRIVILEGES = {"is_staff": "staff", "is_superuser": "superuser"}
PRIVILEGE_FIELDS = {label: name for name, label in PRIVILEGES.items()}


class _Importer:
    """Applies rows in dependency order inside the caller's transaction; raises on a bad row."""

    def __init__(self, rows: dict[str, list[_Row]], warnings: list[str], *, grant_privileges: bool):
        self.rows = rows
        self.warnings = warnings
        self.grant_privileges = grant_privileges
        self.granted: list[str] = []
        self.status: dict[tuple[str, int], str] = {}
        self.endpoints = {e.name: e for e in Endpoint.objects.all()}
        self.models = {m.name: m for m in Model.objects.all()}
        self.users = {u.username: u for u in User.objects.all()}
        self.keys = {k.digest: k for k in APIKey.objects.prefetch_related("allowed_models")}

    def run(self) -> dict[str, Tally]:
        for row in self.rows["endpoints"]:
            self._endpoint(row)
        for row in self.rows["models"]:
            self._model(row)
        self._fallbacks()
        for row in self.rows["users"]:
            self._user(row)
        for row in self.rows["api_keys"]:
            self._key(row)
        tallies = {kind: Tally() for kind in KINDS}
        for (kind, _), status in self.status.items():
            setattr(tallies[kind], status, getattr(tallies[kind], status) + 1)
        return tallies

    # --- shared steps

    def _clean(self, row: _Row, obj: db_models.Model) -> None:
        """Validate as the admin and API do (`full_clean`); a failure names the row."""
        try:
            obj.full_clean()
        except ValidationError as error:
            raise row.error(describe(error)) from None
        for f in obj._meta.concrete_fields:
            value = getattr(obj, f.attname)
            if isinstance(value, datetime) and timezone.is_naive(value):
                setattr(obj, f.attname, value.replace(tzinfo=UTC))

    def _upsert(self, row: _Row, known: dict, model, values: dict, prepare=None):
        """Create or update the row's object; save it only if a value differs."""
        obj = known.get(row.natural)
        created = obj is None
        if created:
            obj = model(**{SCHEMA[row.kind].key: row.natural})
        before = None if created else _state(obj)
        for name, value in values.items():
            setattr(obj, name, value)
        if prepare is not None:
            prepare(obj, created)
        self._clean(row, obj)
        # auto_now_add fields take "now" on insert; the backup's value is put back after.
        kept = {
            f.attname: getattr(obj, f.attname)
            for f in obj._meta.concrete_fields
            if created and getattr(f, "auto_now_add", False) and f.name in values
        }
        if created or _state(obj) != before:
            obj.save()  # .save(), not .update(): post_save reaches the proxy catalog
            if kept:
                model.objects.filter(pk=obj.pk).update(**kept)
                for name, value in kept.items():
                    setattr(obj, name, value)
        known[row.natural] = obj
        self.status[(row.kind, row.index)] = (
            "created" if created else "unchanged" if _state(obj) == before else "updated"
        )
        return obj

    def _mark_updated(self, row: _Row) -> None:
        if self.status[(row.kind, row.index)] == "unchanged":
            self.status[(row.kind, row.index)] = "updated"

    def _named(self, row: _Row, known: dict, what: str, name, label: str):
        if name is None:
            return None
        if not isinstance(name, str):
            raise row.error(f"{label}: expected a name or null, not {type(name).__name__}.")
        if name not in known:
            raise row.error(f'{label}: no {what} named "{name}" in the backup or the database.')
        return known[name]

    # --- kinds

    def _endpoint(self, row: _Row) -> None:
        credential = row.data.get("api_key")
        if "api_key" in row.data and not isinstance(credential, str | None):
            raise row.error("api_key: expected a text.")

        def prepare(endpoint, created):
            if "api_key" in row.data:
                try:
                    current = endpoint.api_key
                except ImproperlyConfigured:
                    current = None  # unreadable here: replace it with the backup's
                # Compared in clear: every encryption of the same value differs.
                if current != (credential or ""):
                    endpoint.set_api_key(credential or "")
            elif created and row.data.get("has_credential"):
                self.warnings.append(
                    f"{row.label}: created without its upstream credential (the backup was "
                    "made without --include-secrets): set it in the admin."
                )

        self._upsert(row, self.endpoints, Endpoint, row.fields(), prepare)

    def _model(self, row: _Row) -> None:
        values = row.fields()
        if "endpoint" in row.data:
            values["endpoint"] = self._named(
                row, self.endpoints, "endpoint", row.data["endpoint"], "endpoint"
            )
        self._upsert(row, self.models, Model, values)

    def _fallbacks(self) -> None:
        """Point models at their fallbacks once every model exists, then check the chains."""
        rows = [row for row in self.rows["models"] if "fallback" in row.data]
        by_pk = {m.pk: m for m in self.models.values()}
        before = {row.natural: self.models[row.natural].fallback_id for row in rows}
        # Link everything first, to these very objects, so loops are judged on the
        # chains as the backup leaves them rather than on half-updated ones.
        for model in self.models.values():
            if model.fallback_id in by_pk:
                model.fallback = by_pk[model.fallback_id]
        for row in rows:
            target = self._named(row, self.models, "model", row.data["fallback"], "fallback")
            self.models[row.natural].fallback = target
        for row in rows:
            model = self.models[row.natural]
            if model.fallback_id != before[row.natural]:
                self._clean(row, model)
        for row in rows:
            model = self.models[row.natural]
            if model.fallback_id != before[row.natural]:
                model.save()
                self._mark_updated(row)

    def _user(self, row: _Row) -> None:
        password = row.data.get("password")
        if "password" in row.data and not isinstance(password, str):
            raise row.error("password: expected a password hash.")
        values = row.fields()
        existing = self.users.get(row.natural)
        # Read now: _upsert sets the file's values on this very object before prepare().
        before = (
            (False, False, None)
            if existing is None
            else (existing.is_staff, existing.is_superuser, existing.password)
        )
        if not self.grant_privileges:
            # Staff, superuser and password come from the file only on request:
            # new users get none, existing ones keep what they have.
            asked = [PRIVILEGES[name] for name in PRIVILEGES if values.pop(name, False)]
            withheld = [
                label
                for label in asked
                if existing is None or not getattr(existing, PRIVILEGE_FIELDS[label])
            ]
            if password is not None and (existing is None or existing.password != password):
                withheld.append("password")
            password = None
            if withheld:
                self.warnings.append(
                    f"{row.label}: not imported without --grant-privileges: {', '.join(withheld)}."
                )

        def prepare(user, created):
            if password is not None:
                user.password = password
            elif created:
                user.set_unusable_password()
                if user.is_staff or user.is_superuser:
                    self.warnings.append(
                        f"{row.label}: created without a password (the backup has none): "
                        f"set one with `manage.py changepassword {user.username}`."
                    )
            granted = [
                label
                for label, now, then in (
                    ("staff", user.is_staff, before[0]),
                    ("superuser", user.is_superuser, before[1]),
                )
                if now and not then
            ]
            if (
                password is not None
                and password != before[2]
                and not password.startswith(UNUSABLE_PASSWORD_PREFIX)
            ):
                granted.append("password")
            if granted:
                self.granted.append(f"{row.label}: {', '.join(granted)}")

        self._upsert(row, self.users, User, values, prepare)

    def _key(self, row: _Row) -> None:
        values = row.fields()
        if "owner" in row.data:
            values["owner"] = self._named(row, self.users, "user", row.data["owner"], "owner")
        wanted = None
        if "allowed_models" in row.data:
            names = row.data["allowed_models"]
            if not isinstance(names, list):
                raise row.error("allowed_models: expected a list of model names.")
            if not all(isinstance(name, str) for name in names):
                raise row.error("allowed_models: expected a list of model names.")
            wanted = {
                self._named(row, self.models, "model", name, "allowed_models").pk for name in names
            }
        key = self._upsert(row, self.keys, APIKey, values)
        if wanted is not None and wanted != {m.pk for m in key.allowed_models.all()}:
            key.allowed_models.set(wanted)
            self._mark_updated(row)


def import_backup(
    document: Any, *, dry_run: bool = False, grant_privileges: bool = False
) -> ImportReport:
    """Import an AetherGate export or an earlier-version backup, all or nothing.

    Rows are matched by natural key (username, endpoint name, model name, key
    digest), validated as the admin and API validate them, and saved only
    when something differs, so a second import of the same file changes
    nothing. Any bad row raises BackupError naming it, and nothing is kept.
    `dry_run` does all of it and then rolls back.

    Privileges are never imported silently: without `grant_privileges`, a
    user's `is_staff`, `is_superuser` and password hash are left out (new
    users get none and an unusable password, existing users keep theirs) and
    a warning names what was withheld; with it they are imported and
    `report.granted` lists each one given. Consumer keys are digests and
    work either way.
    """
    source, converted, warnings = _recognise(document)
    rows = _rows(converted)
    importer = _Importer(rows, warnings, grant_privileges=grant_privileges)
    with transaction.atomic():
        tallies = importer.run()
        if dry_run:
            transaction.set_rollback(True)
    return ImportReport(
        source=source,
        dry_run=dry_run,
        tallies=tallies,
        warnings=warnings,
        granted=importer.granted,
    )
