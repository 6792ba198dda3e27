"""The import of a backup, AetherGate's own or the earlier version's (legacy.py): all or nothing.

The file's format is recognised, brought to the current version (upgrade.py,
or legacy.py for the earlier product) and its shape checked (schema.py) before
any database access; then endpoints, models with their deployments, fallbacks,
users and keys are applied in that order in one transaction, each row saved only
when a value differs (upsert.py; deployments through models_registry.services),
so the same file imported twice changes nothing the second time.
"""

from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import transaction

from accounts.models import User
from aethergate.backup import legacy, privileges, upgrade
from aethergate.backup.schema import EARLIER, KINDS, Row, recognise, rows_of
from aethergate.backup.upsert import clean, named, upsert
from aethergate.lib.commands import describe
from endpoints.models import Endpoint
from keys.models import APIKey
from models_registry import services as catalog
from models_registry.models import Model

FALLBACKS = ("fallback", "context_fallback")


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


class _Importer:
    """Applies rows in dependency order inside the caller's transaction; raises on a bad row."""

    def __init__(self, rows: dict[str, list[Row]], warnings: list[str], *, grant_privileges: bool):
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

    def _upsert(self, row: Row, known: dict, model, values: dict, prepare=None):
        obj, self.status[(row.kind, row.index)] = upsert(row, known, model, values, prepare)
        return obj

    def _mark_updated(self, row: Row) -> None:
        if self.status[(row.kind, row.index)] == "unchanged":
            self.status[(row.kind, row.index)] = "updated"

    # --- kinds

    def _endpoint(self, row: Row) -> None:
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

    def _model(self, row: Row) -> None:
        """The model's own fields, then (if the row has them) its deployment set, replaced."""
        deployments = None
        if "deployments" in row.data:
            deployments = [
                {
                    **item,
                    "endpoint": named(
                        row,
                        self.endpoints,
                        "endpoint",
                        item["endpoint"],
                        f"deployments[{index}]: endpoint",
                    ),
                }
                for index, item in enumerate(row.data["deployments"])
            ]
        model = self._upsert(row, self.models, Model, row.fields())
        if deployments is None:
            return
        try:
            written = catalog.set_deployments(model, deployments)
        except ValidationError as error:
            raise row.error(describe(error)) from None
        if written:
            self._mark_updated(row)

    def _fallbacks(self) -> None:
        """Point models at their fallbacks (both kinds) once every model exists, then check
        the chains."""
        rows = [row for row in self.rows["models"] if any(f in row.data for f in FALLBACKS)]
        by_pk = {m.pk: m for m in self.models.values()}

        def links(model) -> tuple:
            return tuple(getattr(model, f"{f}_id") for f in FALLBACKS)

        before = {row.natural: links(self.models[row.natural]) for row in rows}
        # Link everything first, to these very objects, so loops are judged on the
        # chains as the backup leaves them rather than on half-updated ones.
        for model in self.models.values():
            for f in FALLBACKS:
                if getattr(model, f"{f}_id") in by_pk:
                    setattr(model, f, by_pk[getattr(model, f"{f}_id")])
        for row in rows:
            for f in FALLBACKS:
                if f in row.data:
                    target = named(row, self.models, "model", row.data[f], f)
                    setattr(self.models[row.natural], f, target)
        changed = [row for row in rows if links(self.models[row.natural]) != before[row.natural]]
        for row in changed:
            clean(row, self.models[row.natural])
        for row in changed:
            self.models[row.natural].save()
            self._mark_updated(row)

    def _user(self, row: Row) -> None:
        password = row.data.get("password")
        if "password" in row.data and not isinstance(password, str):
            raise row.error("password: expected a password hash.")
        values = row.fields()
        existing = self.users.get(row.natural)
        # Read now: _upsert sets the file's values on this very object before prepare().
        before = privileges.held(existing)
        if not self.grant_privileges:
            withheld = privileges.withhold(values, password, existing)
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
            granted = privileges.granted(user, before, password)
            if granted:
                self.granted.append(f"{row.label}: {', '.join(granted)}")

        self._upsert(row, self.users, User, values, prepare)

    def _key(self, row: Row) -> None:
        values = row.fields()
        if "owner" in row.data:
            values["owner"] = named(row, self.users, "user", row.data["owner"], "owner")
        wanted = None
        if "allowed_models" in row.data:
            names = row.data["allowed_models"]
            if not isinstance(names, list):
                raise row.error("allowed_models: expected a list of model names.")
            if not all(isinstance(name, str) for name in names):
                raise row.error("allowed_models: expected a list of model names.")
            wanted = {named(row, self.models, "model", name, "allowed_models").pk for name in names}
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
    source = recognise(document)
    converted, warnings = (
        legacy.translate(document["data"]) if source == EARLIER else upgrade.current(document)
    )
    rows = rows_of(converted)
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
