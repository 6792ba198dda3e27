"""`GET /v1/models` and `GET /v1/models/{model}`: the models a key may use, from the snapshot.

One list, in OpenAI's shape, or in Anthropic's for a client that sends
`anthropic-version` (the Anthropic SDKs always do; Claude Code discovers a
gateway's models so).
"""

from datetime import UTC, datetime

from proxy import errors
from proxy.accounting import Exchange
from proxy.asgi_io import Receive, Responder, Scope, headers_named
from proxy.codec import dumps
from proxy.snapshot import KeyInfo, ModelInfo, Snapshot

PREFIX = "/v1/models/"


def visible_models(snapshot: Snapshot, key: KeyInfo) -> list[ModelInfo]:
    """The served models `key` may use: deployed, allowed to it, of its capabilities."""
    return [
        m
        for m in snapshot.models.values()
        if m.deployments
        and (not key.models or m.name in key.models)
        and (not key.capabilities or m.capability in key.capabilities)
    ]


def model_object(model: ModelInfo) -> dict:
    return {"id": model.name, "object": "model", "created": model.created, "owned_by": "aethergate"}


def anthropic_model_object(model: ModelInfo) -> dict:
    """Anthropic's ModelInfo: `created_at` as RFC 3339 text."""
    created = datetime.fromtimestamp(model.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": model.name, "display_name": model.name, "created_at": created}


def wants_anthropic(scope: Scope) -> bool:
    return bool(headers_named(scope, b"anthropic-version"))


async def list_models(
    runtime, op, ex: Exchange, scope: Scope, receive: Receive, responder: Responder
) -> None:
    models = visible_models(runtime.catalog.snapshot, ex.key)
    if wants_anthropic(scope):
        data = [anthropic_model_object(m) for m in models]
        ids = [m["id"] for m in data]
        page = {"data": data, "has_more": False}
        page["first_id"], page["last_id"] = (ids[0], ids[-1]) if ids else (None, None)
        await responder.json(200, dumps(page))
        return
    data = [model_object(m) for m in models]
    await responder.json(200, dumps({"object": "list", "data": data}))


async def retrieve_model(
    runtime, op, ex: Exchange, scope: Scope, receive: Receive, responder: Responder
) -> None:
    ex.model_name = scope["path"].rstrip("/")[len(PREFIX) :]
    for model in visible_models(runtime.catalog.snapshot, ex.key):
        if model.name == ex.model_name:
            shape = anthropic_model_object if wants_anthropic(scope) else model_object
            await responder.json(200, dumps(shape(model)))
            return
    raise errors.model_not_found(ex.model_name)
