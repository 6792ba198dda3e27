"""Settling request logs: rows, balance charges and key last-use, in one transaction."""

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import F, Q

from accounts.models import User
from keys.models import APIKey
from logs.models import RequestLog

LAST_USED_RESOLUTION = timedelta(minutes=1)


def write_batch(records: list[dict]) -> dict[int, Decimal]:
    """Store `records` (RequestLog fields) and charge their cost; return the charges per user.

    All or nothing. A user or key deleted since the request keeps its log row
    (link cleared, snapshot names kept) instead of failing the batch.
    """
    user_ids = {r["user_id"] for r in records if r.get("user_id")}
    key_ids = {r["api_key_id"] for r in records if r.get("api_key_id")}
    charges: dict[int, Decimal] = defaultdict(Decimal)
    last_used = {}
    with transaction.atomic():
        users = set(User.objects.filter(pk__in=user_ids).values_list("pk", flat=True))
        keys = set(APIKey.objects.filter(pk__in=key_ids).values_list("pk", flat=True))
        rows = []
        for record in records:
            row = RequestLog(**record)
            if row.user_id not in users:
                row.user_id = None
            if row.api_key_id not in keys:
                row.api_key_id = None
            if row.user_id and row.cost:
                charges[row.user_id] += row.cost
            if row.api_key_id:
                last_used[row.api_key_id] = max(
                    row.created_at, last_used.get(row.api_key_id, row.created_at)
                )
            rows.append(row)
        RequestLog.objects.bulk_create(rows)
        for user_id, cost in charges.items():
            # One atomic UPDATE per user: concurrent batches and admin edits
            # cannot lose a charge. Users without a balance are not debited.
            User.objects.filter(pk=user_id, balance__isnull=False).update(
                balance=F("balance") - cost
            )
        for key_id, used in last_used.items():
            APIKey.objects.filter(pk=key_id).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=used - LAST_USED_RESOLUTION)
            ).update(last_used_at=used)
    return dict(charges)
