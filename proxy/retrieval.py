"""`GET` and `DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`: a key's
stored responses (`proxy.stored`), seen only by keys of the same owner."""

from asgiref.sync import sync_to_async
from django.db import DatabaseError

from proxy import errors, stored
from proxy.accounting import Exchange
from proxy.asgi_io import Receive, Responder, Scope
from proxy.codec import dumps

PREFIX = "/v1/responses/"
ITEMS = "/input_items"


def not_found(response_id: str) -> errors.APIError:
    return errors.APIError(
        404,
        f"Response with id '{response_id}' not found.",
        code="response_not_found",
        param="response_id",
    )


def target(scope: Scope) -> tuple[str, bool]:
    """(the response id in the path, whether it asks for its input items)."""
    rest = scope["path"].rstrip("/")[len(PREFIX) :]
    items = rest.endswith(ITEMS)
    return rest.removesuffix(ITEMS), items


def query(scope: Scope) -> dict[str, str]:
    """The query string's parameters (the last of each name)."""
    found = {}
    for pair in scope.get("query_string", b"").decode("latin-1").split("&"):
        name, _, value = pair.partition("=")
        if name:
            found[name] = value
    return found


async def _call(function, **arguments):
    try:
        return await sync_to_async(function)(**arguments)
    except stored.NotFound:
        raise not_found(arguments["response_id"]) from None
    except DatabaseError:
        raise errors.store_unavailable() from None


async def retrieve(
    runtime, op, ex: Exchange, scope: Scope, receive: Receive, responder: Responder
) -> None:
    response_id, items = target(scope)
    owner = ex.key.user_id
    if not items:
        found = await _call(stored.get, owner_id=owner, response_id=response_id)
        await responder.json(200, dumps(found))
        return
    options = query(scope)
    limit = options.get("limit", "20")
    if not limit.isdigit():
        raise errors.bad_request("limit must be an integer from 1 to 100.", param="limit")
    try:
        page = await _call(
            stored.input_items,
            owner_id=owner,
            response_id=response_id,
            limit=int(limit),
            order=options.get("order", "desc"),
            after=options.get("after") or None,
        )
    except ValueError as invalid:
        raise errors.bad_request(str(invalid)) from None
    await responder.json(200, dumps(page))


async def delete(
    runtime, op, ex: Exchange, scope: Scope, receive: Receive, responder: Responder
) -> None:
    response_id, items = target(scope)
    if items:
        raise errors.method_not_allowed("DELETE", scope["path"], ["GET"])
    await _call(stored.delete, owner_id=ex.key.user_id, response_id=response_id)
    await responder.json(200, dumps({"id": response_id, "object": "response", "deleted": True}))
