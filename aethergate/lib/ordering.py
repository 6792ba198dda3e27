"""The management API's `?ordering=` filter (named in settings.REST_FRAMEWORK).

A module of its own: DRF's generic views read the filter setting when they
are imported, so this must not import them.
"""

from rest_framework import filters


class StableOrderingFilter(filters.OrderingFilter):
    """`?ordering=` that breaks ties with the view's default ordering, then the primary key.

    Without a total order, rows with equal sort values can repeat or vanish
    between pages.
    """

    def get_ordering(self, request, queryset, view):
        ordering = list(super().get_ordering(request, queryset, view) or ())
        for tiebreak in (*(getattr(view, "ordering", None) or ()), "-pk"):
            bare = tiebreak.lstrip("-")
            if not any(field.lstrip("-") in (bare, "pk", "id") for field in ordering):
                ordering.append(tiebreak)
                if bare in ("pk", "id"):
                    break
        return ordering
