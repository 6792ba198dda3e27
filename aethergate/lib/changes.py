"""Writes to rows that caches hold (the `/v1` catalog), announced whatever path they take.

Django's signals see `save()` and `delete()`; `QuerySet.update()`, `bulk_create()` and
`bulk_update()` send none. A model whose rows a cache holds uses `ChangeQuerySet` for
its manager and its base manager (the one Django's own deletes and related managers
write through): those writes are then announced too, and stamp the model's `auto_now`
columns as `save()` does, so that a process polling `max(updated_at)` sees them. The
cache's owner connects the model's save and delete signals to `announce`, and `changed`
to whatever rebuilds the cache. This module imports no app.
"""

from django.db import models, transaction
from django.dispatch import Signal
from django.utils import timezone

# Sent after a commit that wrote rows of `sender` (a model class).
changed = Signal()


def announce(model: type[models.Model], *, using: str | None = None) -> None:
    """Send `changed` for `model` once the current transaction on `using` commits.

    At once outside a transaction; never if it rolls back. After the commit, not at
    the write: a cache rebuilt meanwhile from another connection would read the old
    rows and take them as current. A receiver that fails is logged (`send_robust`), and
    neither the other receivers nor the transaction's other on-commit work are stopped.
    """
    transaction.on_commit(lambda: changed.send_robust(sender=model), using=using, robust=True)


class ChangeQuerySet(models.QuerySet):
    """A QuerySet whose writes that send no signal are stamped and announced on commit.

    `bulk_update()` writes through `update()`; `update_or_create()` and
    `get_or_create()` through `save()`, whose signals the cache's owner hears, as it
    hears `delete()`'s unless no receiver is connected (then `_raw_delete` announces).
    """

    def update(self, **kwargs) -> int:
        """UPDATE the rows, setting `auto_now` columns to now unless given; announce it."""
        stamps = dict.fromkeys(_auto_now_fields(self.model), timezone.now())
        rows = super().update(**{**stamps, **kwargs})
        if rows:
            announce(self.model, using=self.db)
        return rows

    update.alters_data = True

    def update_unannounced(self, **kwargs) -> int:
        """A plain UPDATE: no stamp, no announcement.

        Only for columns no cache serves (a key's last use) or that every cache
        accounts for itself (the log writer's charges: each process counts its own and
        re-reads balances at every poll); announcing those would rebuild every
        process's cache after every batch of requests.
        """
        return super().update(**kwargs)

    update_unannounced.alters_data = True

    def bulk_create(
        self,
        objs,
        batch_size=None,
        ignore_conflicts=False,
        update_conflicts=False,
        update_fields=None,
        unique_fields=None,
    ):
        """INSERT the objects (`auto_now` columns are stamped on insert); announce it.

        With `update_conflicts`, the rows updated in place are stamped too.
        """
        if update_conflicts and update_fields:
            update_fields = [*update_fields, *_auto_now_fields(self.model) - set(update_fields)]
        created = super().bulk_create(
            objs, batch_size, ignore_conflicts, update_conflicts, update_fields, unique_fields
        )
        if created:
            announce(self.model, using=self.db)
        return created

    bulk_create.alters_data = True

    def _raw_delete(self, using):
        # Django's deletion takes this signal-free path when no delete receiver is
        # connected for the model; the row count still moves every polled marker.
        rows = super()._raw_delete(using)
        if rows:
            announce(self.model, using=using)
        return rows

    _raw_delete.alters_data = True


def _auto_now_fields(model: type[models.Model]) -> set[str]:
    return {f.name for f in model._meta.concrete_fields if getattr(f, "auto_now", False)}
