"""Stored responses: save, read, list and delete them, walk a `previous_response_id` chain,
prune them. Sync functions over the ORM (the `/v1` pipeline calls them through
`sync_to_async`); every read is scoped to the owner, as keys see only their owner's."""

from collections.abc import Callable
from datetime import datetime, timedelta

from django.utils import timezone

from logs.services import PRUNE_BATCH_SIZE, prune_rows
from proxy.models import StoredResponse

# Links of a `previous_response_id` chain walked at most (one query each): a longer
# conversation keeps its newest MAX_CHAIN responses as context.
MAX_CHAIN = 500
LIST_LIMIT_MAX = 100
ORDERS = ("asc", "desc")


class NotFound(Exception):
    """No such response for this owner: it never existed, was deleted or pruned, or is
    another owner's (one error for all, so ids cannot be probed)."""


def save(
    *,
    response: dict,
    input_items: list[dict],
    owner_id: int,
    key_id: int | None,
    log_content: bool,
    created_at: datetime,
) -> None:
    """Store `response` (the whole Response object as returned) with this request's own
    `input_items`, each with a string `id`. Its `id`, `model`, `status` and
    `previous_response_id` are read from `response`. Raises ValueError for an item
    without an id (`input_items` pages by them)."""
    for index, item in enumerate(input_items):
        if not isinstance(item.get("id"), str) or not item["id"]:
            raise ValueError(f"input item {index} has no id")
    StoredResponse.objects.create(
        id=response["id"],
        owner_id=owner_id,
        api_key_id=key_id,
        model=response["model"],
        previous_id=response.get("previous_response_id") or "",
        created_at=created_at,
        status=response["status"],
        input_items=input_items,
        response=response,
        log_content=log_content,
    )


def _owned(owner_id: int, response_id: str):
    return StoredResponse.objects.filter(pk=response_id, owner_id=owner_id)


def get(*, owner_id: int, response_id: str) -> dict:
    """The stored Response object. Raises NotFound."""
    found = _owned(owner_id, response_id).values_list("response", flat=True).first()
    if found is None:
        raise NotFound(response_id)
    return found


def delete(*, owner_id: int, response_id: str) -> None:
    """Delete the response (one query). Raises NotFound. Responses that continued it keep
    their own items; their chains end at it from now on."""
    deleted, _ = _owned(owner_id, response_id).delete()
    if not deleted:
        raise NotFound(response_id)


def history(*, owner_id: int, response_id: str) -> list[dict]:
    """The context `previous_response_id=response_id` stands for: for each response of
    the chain that ends at it, oldest first, its input items and then its output items.

    One query per link, following `previous_id` back; a link missing (deleted, pruned,
    another owner's) ends the walk there, as does the MAX_CHAIN-th. Raises NotFound if
    `response_id` itself is not this owner's.
    """
    chain = []
    seen = set()
    wanted = response_id
    while wanted and wanted not in seen and len(chain) < MAX_CHAIN:
        row = (
            _owned(owner_id, wanted)
            .values_list("previous_id", "input_items", "response__output")
            .first()
        )
        if row is None:
            break
        seen.add(wanted)
        chain.append(row)
        wanted = row[0]
    if not chain:
        raise NotFound(response_id)
    items = []
    for _, inputs, output in reversed(chain):
        items.extend(inputs)
        items.extend(output or [])
    return items


def input_items(
    *,
    owner_id: int,
    response_id: str,
    limit: int = 20,
    order: str = "desc",
    after: str | None = None,
) -> dict:
    """One page of the response's own input items (OAS `ResponseItemList`): `limit` of
    them (1 to 100) in `order` ("desc": newest first), those after the item `after` if
    given. Raises ValueError, with a message for the client, for a bad `limit` or
    `order` or an `after` that is not one of the response's items; NotFound."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_LIMIT_MAX:
        raise ValueError(f"limit must be an integer from 1 to {LIST_LIMIT_MAX}.")
    if order not in ORDERS:
        raise ValueError("order must be 'asc' or 'desc'.")
    items = _owned(owner_id, response_id).values_list("input_items", flat=True).first()
    if items is None:
        raise NotFound(response_id)
    if order == "desc":
        items = items[::-1]
    start = 0
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise ValueError(f"after: no input item {after!r} in this response.")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": start + limit < len(items),
    }


def prune(
    *,
    days: int,
    now: datetime | None = None,
    batch_size: int = PRUNE_BATCH_SIZE,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete responses created more than `days` days before `now` (default: the time),
    a batch at a time (logs.services.prune_rows); return how many. `days` 0 keeps them
    forever (nothing deleted); `dry_run` only counts."""
    if days < 0:
        raise ValueError("days must be 0 (keep forever) or more")
    if days == 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    old = StoredResponse.objects.filter(created_at__lt=cutoff)
    return prune_rows(old, batch_size=batch_size, dry_run=dry_run, progress=progress)
