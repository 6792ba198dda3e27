"""The backup format: its name and version, the fields of each kind, and the checks on a file.

Each kind carries its model's `shared_fields`, the list the management API's
serializers use too, so a field added there reaches both; a model row nests its
deployments (`Deployment.shared_fields`). Nothing here touches the database: a
document is parsed, bounded and checked for shape before the importer reads or
writes a row. Older versions of the format are brought to this one by upgrade.py.
"""

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings

from accounts.models import User
from endpoints.models import Endpoint
from keys.models import APIKey
from models_registry.models import Deployment, Model

FORMAT = "aethergate-backup"
# 2: a model's deployments (a list) instead of its endpoint and upstream name.
# A field added to a kind needs no new version: every plain field is optional
# (absent: the default for a new row, kept for a known one), so this importer reads
# an older file as it was meant, and an older one refuses a newer file's field by
# name (rows_of). Budgets, token limits and cache prices came so, within version 2.
VERSION = 2
READABLE = (1, 2)  # the versions import reads; upgrade.py brings 1 to 2
LEGACY_VERSION = 1
KINDS = ("users", "endpoints", "models", "api_keys")
LABELS = {"users": "users", "endpoints": "endpoints", "models": "models", "api_keys": "API keys"}
DIGEST = re.compile(r"[0-9a-f]{64}")


class BackupError(Exception):
    """A backup that cannot be read or imported; the message names the row and the rule."""


# --------------------------------------------------------------------------- values


def decimal_text(value: Decimal | None) -> str | None:
    """An amount as the format writes it."""
    # Plain notation without trailing zeros, whatever the database returned.
    return None if value is None else format(value.normalize(), "f")


def moment_text(value: datetime | None) -> str | None:
    """A date and time as the format writes it: ISO 8601 in UTC."""
    return None if value is None else value.astimezone(UTC).isoformat()


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


OWN = "AetherGate backup"
EARLIER = "earlier-version backup"


def recognise(document: Any) -> str:
    """Which backup `document` is, `OWN` or `EARLIER` (legacy.py translates it), version checked.

    Anything else, or another version, raises BackupError.
    """
    if not isinstance(document, dict):
        raise BackupError(
            f"A backup is a JSON object; this file holds a {type(document).__name__}."
        )
    if "format" in document:
        if document["format"] != FORMAT:
            raise BackupError(f'Unknown backup format "{document["format"]}".')
        version = document.get("version")
        if isinstance(version, bool) or version not in READABLE:
            readable = " and ".join(str(v) for v in READABLE)
            raise BackupError(
                f"This is a version {version!r} AetherGate backup; "
                f"this AetherGate reads versions {readable}."
            )
        return OWN
    if "data" in document:
        if document.get("version") != LEGACY_VERSION:
            raise BackupError(
                f"Earlier-version backup of version {document.get('version')!r}; "
                f"only version {LEGACY_VERSION} is supported."
            )
        if not isinstance(document["data"], dict):
            raise BackupError('"data" must be an object.')
        return EARLIER
    raise BackupError(
        'Not a backup: neither an AetherGate export (no "format") nor an earlier-version '
        'backup (no "data").'
    )


# --------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Kind:
    """How one kind is written: its natural key, the fields copied as given, the rest."""

    key: str  # the natural key, by which rows are matched ("upserted")
    fields: tuple[str, ...]  # model fields copied as given (absent: kept, or default)
    extra: tuple[str, ...]  # fields handled by the importer itself


def _kind(model, key: str, extra: tuple[str, ...]) -> Kind:
    """`model`'s rows: its `shared_fields` (the API's too) copied as given, but for `key`
    and the `extra` fields the importer handles itself (relations by name, secrets).
    """
    fields = tuple(name for name in model.shared_fields if name != key and name not in extra)
    return Kind(key, fields, extra)


SCHEMA = {
    "endpoints": _kind(Endpoint, "name", ("api_key", "has_credential")),
    "models": _kind(Model, "name", ("deployments", "fallback", "context_fallback")),
    "users": _kind(User, "username", ("password",)),
    "api_keys": _kind(APIKey, "digest", ("owner", "allowed_models")),
}


# The fields of each deployment a model row nests (its endpoint by name).
DEPLOYMENT_FIELDS = Deployment.shared_fields


@dataclass
class Row:
    """One entry of a kind, with what error messages call it (never by its digest)."""

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


def rows_of(document: dict) -> dict[str, list[Row]]:
    """Check the document's shape and return its rows per kind (before any database access)."""
    rows: dict[str, list[Row]] = {}
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
            row = Row(kind, index, item)
            unknown = sorted(set(item) - {spec.key, *spec.fields, *spec.extra})
            if unknown:
                raise row.error(f"unknown field(s): {', '.join(unknown)}.")
            if natural in seen:
                raise row.error(f"the same {spec.key} as {kind}[{seen[natural]}].")
            seen[natural] = index
            if kind == "api_keys" and not DIGEST.fullmatch(natural):
                raise row.error("digest: must be the 64 lowercase hex digits of a SHA-256 digest.")
            if kind == "models" and "deployments" in item:
                _check_deployments(row, item["deployments"])
            rows[kind].append(row)
    return rows


def _check_deployments(row: Row, deployments: Any) -> None:
    """A model row's `deployments`: a list of objects of DEPLOYMENT_FIELDS, the
    endpoint (by name) and upstream name texts, weight and priority whole numbers."""
    if not isinstance(deployments, list):
        raise row.error(f"deployments: expected a list, not {type(deployments).__name__}.")
    for index, item in enumerate(deployments):
        where = f"deployments[{index}]"
        if not isinstance(item, dict):
            raise row.error(f"{where}: expected an object, not {type(item).__name__}.")
        unknown = sorted(set(item) - set(DEPLOYMENT_FIELDS))
        if unknown:
            raise row.error(f"{where}: unknown field(s): {', '.join(unknown)}.")
        for name in ("endpoint", "upstream_name"):
            if not isinstance(item.get(name), str):
                raise row.error(f"{where}: {name} is missing or not a text.")
        for name in ("weight", "priority"):
            value = item.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int):
                raise row.error(f"{where}: {name}: expected a whole number.")
