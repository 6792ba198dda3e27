"""`POST /v1/messages/count_tokens`: the tokens a Messages request would take as input.

An Anthropic upstream counts them itself; for any other the gateway
estimates (`proxy.formats.messages.estimate_input_tokens`) and says so in
the `x-aethergate-estimated` header. Counting is free: nothing is billed,
and no limit is spent on it.
"""

import asyncio
import logging

from proxy import admission, bridges, forwarding, upstream
from proxy.accounting import Exchange
from proxy.asgi_io import Receive, Responder, Scope
from proxy.codec import dumps, loads
from proxy.formats import messages
from proxy.pipeline import request_uuid

log = logging.getLogger(__name__)


async def count_tokens(
    runtime, op, ex: Exchange, scope: Scope, receive: Receive, responder: Responder
) -> None:
    payload = await op.read(scope, receive, op.schema)
    ex.model_name = payload["model"]
    model = admission.find_model(runtime.catalog.snapshot, ex.model_name)
    admission.admit(ex.key, model, op.capability)
    forwarded = bridges.MessagesBridge.forwarded_headers(scope)
    for deployment in model.deployments:
        endpoint = deployment.endpoint
        if endpoint.kind != bridges.ANTHROPIC or not endpoint.usable:
            continue
        counted = await upstream_count(runtime, payload, deployment, forwarded)
        if counted is not None:
            ex.endpoint = endpoint.name
            await responder.json(200, dumps({"input_tokens": counted}))
            return
    estimate = messages.estimate_input_tokens(payload)
    await responder.json(200, dumps({"input_tokens": estimate}), {"x-aethergate-estimated": "true"})


async def upstream_count(runtime, payload: dict, deployment, forwarded: dict) -> int | None:
    """An Anthropic server's count of `payload`'s input tokens; None if it gave none."""
    endpoint = deployment.endpoint
    body = dumps({**payload, "model": deployment.upstream_name})
    try:
        async with asyncio.timeout(endpoint.first_byte_timeout):
            response = await runtime.upstream.post(
                endpoint,
                "/messages/count_tokens",
                body,
                stream=False,
                request_id=request_uuid(),
                headers=forwarded,
            )
            async with response:
                data = loads(await upstream.read_body(response, limit=64 * 1024))
                status = response.status
    except (*forwarding.CONNECTION_ERRORS, ValueError) as exc:
        log.warning("Endpoint %s did not count tokens: %s", endpoint.name, type(exc).__name__)
        return None
    counted = data.get("input_tokens") if isinstance(data, dict) else None
    if status != 200 or type(counted) is not int or counted < 0:
        log.warning("Endpoint %s did not count tokens (HTTP %s)", endpoint.name, status)
        return None
    return counted
