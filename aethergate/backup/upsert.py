"""Saving one backup row idempotently: matched by natural key, validated, saved if it differs.

Validation is the admin's and the API's (`full_clean`); an object is saved
with `.save()` only when one of its values changes, so importing the same
file again writes nothing.
"""

from datetime import UTC, datetime

from django.core.exceptions import ValidationError
from django.db import models as db_models
from django.utils import timezone

from aethergate.backup.schema import SCHEMA, Row
from aethergate.lib.commands import describe


def state(obj: db_models.Model) -> dict:
    """The row's stored values, to tell whether an import changes it (updated_at aside)."""
    return {
        f.attname: getattr(obj, f.attname)
        for f in obj._meta.concrete_fields
        if not getattr(f, "auto_now", False)
    }


def clean(row: Row, obj: db_models.Model) -> None:
    """Validate as the admin and API do (`full_clean`); a failure names the row."""
    try:
        obj.full_clean()
    except ValidationError as error:
        raise row.error(describe(error)) from None
    for f in obj._meta.concrete_fields:
        value = getattr(obj, f.attname)
        if isinstance(value, datetime) and timezone.is_naive(value):
            setattr(obj, f.attname, value.replace(tzinfo=UTC))


def upsert(row: Row, known: dict, model, values: dict, prepare=None) -> tuple:
    """Create or update the row's object; save it only if a value differs.

    `known` maps natural keys to objects and gets this one; `prepare(obj, created)`
    sets what `values` cannot. Returns the object and "created", "updated" or
    "unchanged".
    """
    obj = known.get(row.natural)
    created = obj is None
    if created:
        obj = model(**{SCHEMA[row.kind].key: row.natural})
    before = None if created else state(obj)
    for name, value in values.items():
        setattr(obj, name, value)
    if prepare is not None:
        prepare(obj, created)
    clean(row, obj)
    # auto_now_add fields take "now" on insert; the backup's value is put back after.
    kept = {
        f.attname: getattr(obj, f.attname)
        for f in obj._meta.concrete_fields
        if created and getattr(f, "auto_now_add", False) and f.name in values
    }
    if created or state(obj) != before:
        obj.save()  # .save(), not .update(): post_save reaches the proxy catalog
        if kept:
            model.objects.filter(pk=obj.pk).update(**kept)
            for name, value in kept.items():
                setattr(obj, name, value)
    known[row.natural] = obj
    return obj, "created" if created else "unchanged" if state(obj) == before else "updated"


def named(row: Row, known: dict, what: str, name, label: str):
    """The object of `known` the row names in `label` (None for null); else the row's error."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise row.error(f"{label}: expected a name or null, not {type(name).__name__}.")
    if name not in known:
        raise row.error(f'{label}: no {what} named "{name}" in the backup or the database.')
    return known[name]
