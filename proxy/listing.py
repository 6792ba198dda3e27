"""`GET /v1/models` and `GET /v1/models/{model}`: the models a key may use, from the snapshot."""

from proxy import errors
from proxy.accounting import Exchange
from proxy.asgi_io import Receive, Responder, Scope
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


async def list_models(
    runtime, op, ex: Exchange, scope: Scope, receive: Receive, responder: Responder
) -> None:
    data = [model_object(m) for m in visible_models(runtime.catalog.snapshot, ex.key)]
    await responder.json(200, dumps({"object": "list", "data": data}))


async def retrieve_model(
    runtime, op, ex: Exchange, scope: Scope, receive: Receive, responder: Responder
) -> None:
    ex.model_name = scope["path"].rstrip("/")[len(PREFIX) :]
    for model in visible_models(runtime.catalog.snapshot, ex.key):
        if model.name == ex.model_name:
            await responder.json(200, dumps(model_object(model)))
            return
    raise errors.model_not_found(ex.model_name)
