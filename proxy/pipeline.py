"""One inference request's flow: read, validate, admit, forward, relay.

The route table (`proxy.routes`) calls `infer` with the operation; what is
specific to an operation (capability, streaming, body adapters) comes from
it. Accounting happens after, in the ASGI entry's `finally`.
"""

import asyncio
import random

from django.conf import settings

from logs.models import Outcome
from proxy import admission, bridges, errors, forms, forwarding, meter, routing
from proxy.accounting import Exchange
from proxy.asgi_io import Receive, Responder, Scope, read_body, sends_json, wait_for_disconnect
from proxy.codec import dumps, loads_client
from proxy.errors import bad_request
from proxy.snapshot import DeploymentInfo, ModelInfo
from proxy.validation import check_body


async def infer(
    runtime, op, ex: Exchange, scope: Scope, receive: Receive, responder: Responder
) -> None:
    """Answer one inference call of operation `op` for the authenticated `ex.key`."""
    payload = await op.read(scope, receive, op.schema)
    try:
        await _infer(runtime, op, ex, scope, payload, receive, responder)
    finally:
        if isinstance(payload, forms.FormPayload) and payload.form.upload is not None:
            payload.form.upload.close()


async def read_json(scope: Scope, receive: Receive, schema) -> dict:
    """The client's JSON body, checked against `schema`."""
    if not sends_json(scope):
        raise errors.not_json()
    payload = parse(await read_body(scope, receive, settings.AETHERGATE_MAX_BODY_BYTES))
    check_body(payload, schema)
    return payload


async def read_form(scope: Scope, receive: Receive, schema) -> forms.FormPayload:
    """The client's multipart form (an upload), read as a JSON body checked against `schema`."""
    form = await forms.read_form(scope, receive, limit=settings.AETHERGATE_MAX_UPLOAD_BYTES)
    payload = form.payload()
    try:
        check_body(payload, schema)
    except BaseException:
        if form.upload is not None:
            form.upload.close()
        raise
    return payload


async def _infer(
    runtime, op, ex: Exchange, scope: Scope, payload: dict, receive: Receive, responder
) -> None:
    ex.model_name = name = payload["model"]
    ex.stream = op.streams and payload.get("stream") is True
    if ex.key.log_content:
        ex.prompt = logged_prompt(payload)
    snapshot = runtime.catalog.snapshot
    ex.model = model = admission.find_model(snapshot, name)
    admission.admit(ex.key, model, op.capability)
    counted = payload  # what the request's tokens are estimated from
    if op.bridge is not None:  # an agent API: translated once, here
        ex.bridge = await op.bridge(runtime, ex, payload, scope)
        counted = ex.bridge.chat
    # Held from here to the end of the request, whatever ends it (meter.settle).
    held = None
    if meter.needs_holding(ex.key, model, snapshot.models):
        ex.held = held = meter.Held()
        held.tokens, held.cost = meter.reserve(model, counted)
    decision = await admission.limit(runtime.limiter, ex.key, model, held.tokens if held else 0)
    if held is not None:
        if decision.held:
            held.decisions.append((decision, None))
        await meter.take(runtime, ex.key, model, held, ex.created_at)
    balance = runtime.catalog.balance(ex.key.user_id)
    admission.check_balance(balance)
    admission.check_priced(model, metered=balance is not None or bool(ex.key.budgets))
    headers = admission.ratelimit_headers(decision)
    # Only a choice between deployments needs the session; most models have one.
    session = None
    if len(model.deployments) > 1 or model.fallback is not None:
        named = routing.session_of(scope["headers"], payload)
        session = None if named is None else (ex.key.id, name, named)

    async def attempt(candidate: ModelInfo, deployment: DeploymentInfo, record: dict) -> None:
        await call_upstream(
            runtime, op, ex, payload, candidate, deployment, record, responder, headers
        )

    async def admit_fallback(candidate: ModelInfo) -> None:
        found = await admission.limit(runtime.limiter, None, candidate, held.tokens if held else 0)
        if held is not None:
            if found.held:
                held.decisions.append((found, None))
            await meter.take_fallback(runtime, candidate, held)

    # The client going away cancels this task, and with it the upstream call.
    task = asyncio.current_task()
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))

    def on_disconnect(_watcher) -> None:
        # The server also reports the end of a connection once the whole
        # answer is sent: only a client leaving before that counts.
        if not responder.finished:
            ex.failed(499, Outcome.CLIENT_DISCONNECTED)
            task.cancel()

    watcher.add_done_callback(on_disconnect)
    try:
        await forwarding.forward(
            ex,
            model,
            snapshot.models,
            router=runtime.router,
            session=session,
            attempt=attempt,
            admit_fallback=admit_fallback,
        )
    except asyncio.CancelledError:
        if ex.outcome != Outcome.CLIENT_DISCONNECTED:
            raise
        task.uncancel()
    finally:
        responder.finished = True
        watcher.cancel()


# The version (4) and variant (RFC 9562) bits of a random UUID.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def request_uuid() -> str:
    """A random version-4 UUID, as text: an id, not a secret, so not from os.urandom,
    whose system call made str(uuid.uuid4()) about 5x slower here."""
    h = f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def logged_prompt(payload: dict) -> str:
    """What a log keeps of the request: its messages, prompt or input; for an upload,
    the file's name and size too."""
    prompt = dumps(payload.get("messages", payload.get("prompt", payload.get("input")))).decode()
    upload = payload.get(forms.FILE_FIELD)
    if isinstance(upload, forms.Upload):
        return f"[{upload.filename}, {upload.size} bytes] {prompt}"
    return prompt


def parse(body: bytes) -> dict:
    """The client's JSON object, or a 400 saying where it is not one."""
    try:
        payload = loads_client(body)
    except ValueError as error:
        # orjson's reason names the place ("line 1 column 7"), never the content.
        raise bad_request(
            f"The request body is not valid JSON: {error}.", code="invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    return payload


async def call_upstream(
    runtime,
    op,
    ex: Exchange,
    payload: dict,
    model: ModelInfo,
    deployment: DeploymentInfo,
    record: dict,
    responder,
    headers,
) -> None:
    """One attempt: `deployment` called, its failure classified, or its answer relayed."""
    endpoint = deployment.endpoint
    record["deployment"] = deployment.label
    if endpoint.rates:
        held = ex.held
        try:
            found = await admission.limit_endpoint(
                runtime.limiter, endpoint, headers, held.tokens if held else 0
            )
        except errors.APIError as limited:
            raise errors.Retryable("rate_limited", limited) from None
        if found.held:
            held.decisions.append((found, endpoint.id))
    ex.endpoint = endpoint.name
    # Upstreams parse this header: llama-cpp-python refuses anything but a UUID
    # (400, empty body) and vLLM makes it the engine's request id, which must be
    # unique in flight. A fresh UUID per attempt, kept in the log's attempts,
    # correlates both logs; the client's own id never goes upstream.
    record["upstream_request_id"] = upstream_id = request_uuid()
    ex.model, ex.deployment = model, deployment
    bridge = ex.bridge
    if bridge is None and endpoint.kind == bridges.ANTHROPIC:
        ex.bridge = bridge = bridges.bridge_for(op, endpoint)
    if bridge is None:
        path, relay, extra, verbatim = op.upstream_path, op.relay, None, False
        body = op.prepare(payload, model, deployment, ex.stream)
    else:
        path, body, extra, relay, verbatim = bridge.prepare(
            op, payload, model, deployment, ex.stream
        )
    loop = asyncio.get_running_loop()
    sent = loop.time()
    deadline = sent + endpoint.first_byte_timeout
    try:
        async with asyncio.timeout_at(deadline):
            response = await runtime.upstream.post(
                endpoint,
                path,
                body,
                stream=ex.stream,
                request_id=upstream_id,
                accept=op.accept,
                headers=extra,
            )
    except forwarding.CONNECTION_ERRORS as exc:
        raise forwarding.connection_failure(exc, endpoint, ex.model_name) from None
    async with response:
        record["status"] = response.status
        record["ttfb"] = round(loop.time() - sent, 4)  # seconds to the answer's headers
        if not 200 <= response.status < 300:
            raise await forwarding.failure(
                response, endpoint, ex.model_name, log_content=ex.key.log_content, verbatim=verbatim
            )
        await relay(ex, op, payload, response, deadline, responder, headers)
