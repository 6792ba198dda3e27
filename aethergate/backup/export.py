"""The export: every user, endpoint, model and key as a JSON-ready document, and its file."""

import json
import os
import secrets
from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Prefetch
from django.utils import timezone

from accounts.models import User
from aethergate.backup.schema import (
    DEPLOYMENT_FIELDS,
    FORMAT,
    SCHEMA,
    VERSION,
    BackupError,
    decimal_text,
    moment_text,
)
from endpoints.models import Endpoint
from keys.models import APIKey
from models_registry.models import Deployment, Model


def _plain(obj, kind) -> dict:
    """`obj`'s natural key and plain fields (SCHEMA, which import reads too) as written."""
    row = {}
    for name in (kind.key, *kind.fields):
        value = getattr(obj, name)
        if isinstance(value, Decimal):
            value = decimal_text(value)
        elif isinstance(value, datetime):
            value = moment_text(value)
        row[name] = value
    return row


def _name(obj) -> str | None:
    return obj.name if obj is not None else None


def _deployments(model) -> list[dict]:
    """The model's deployments as rows (DEPLOYMENT_FIELDS, the endpoint by name):
    by priority, heaviest first, then by endpoint and upstream name."""
    rows = [
        {
            **{name: getattr(d, name) for name in DEPLOYMENT_FIELDS},
            "endpoint": d.endpoint.name,
        }
        for d in model.deployments.all()
    ]
    # By value, not id: the same catalog exports the same whatever order it was made in.
    rows.sort(key=lambda r: (r["priority"], -r["weight"], r["endpoint"], r["upstream_name"]))
    return rows


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
    all_models = list(
        Model.objects.select_related("fallback", "context_fallback").prefetch_related(
            Prefetch("deployments", queryset=Deployment.objects.select_related("endpoint"))
        )
    )
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
            "deployments": _deployments(model),
            "fallback": _name(model.fallback),
            "context_fallback": _name(model.context_fallback),
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
        "exported_at": moment_text(timezone.now()),
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
