"""The `/v1` ASGI application: a plain ASGI callable, without Django's request cycle.

Per request: authenticate → admit (model, capability, limits, balance) →
forward with fallback → relay → hand one record to the log writer. Django is
used only off the request path (settings, and the ORM in the catalog and the
log writer, each in a worker thread).
"""

import asyncio
import base64
import itertools
import logging
import secrets
import signal
import struct
import threading
import time
from dataclasses import dataclass, field

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.utils import timezone

from aethergate.lib import metrics
from aethergate.lib.ratelimit import Decision, LocalLimiter, make_limiter
from keys.models import digest
from logs.writer import LogWriter
from models_registry.models import MAX_FALLBACK_DEPTH
from proxy import broadcast, errors, upstream, usage
from proxy.catalog import Catalog, KeyInfo, ModelInfo
from proxy.codec import dumps, loads, loads_client
from proxy.errors import APIError
from proxy.faults import FaultReporter
from proxy.streaming import KEEPALIVE, UpstreamStreamError, sse_events
from proxy.throttle import InvalidKeyThrottle
from proxy.validation import check_body

log = logging.getLogger(__name__)
access_log = logging.getLogger("aethergate.requests")


@dataclass(slots=True)
class Exchange:
    """What one request did, accumulated for its log record."""

    request_id: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    created_at: object = field(default_factory=timezone.now)
    key: KeyInfo | None = None
    model_name: str = ""
    model: ModelInfo | None = None  # the model that answered (a fallback, maybe)
    endpoint: str = ""
    status: int = 200
    outcome: str = "ok"
    stream: bool = False
    ttft: float | None = None
    input_units: int = 0
    output_units: int = 0
    estimated: bool = False
    prompt: str = ""
    completion: list = field(default_factory=list)
    error: str = ""
    attempts: list = field(default_factory=list)
    answered: bool = False  # the last byte of the answer is being sent
    responded: bool = False  # the response has started: no other status can follow


class ProxyApp:
    """Holds the per-process runtime: catalog, limiter, log writer, upstream session."""

    def __init__(self):
        self.catalog = Catalog()
        self.limiter = LocalLimiter()
        self.writer: LogWriter | None = None
        self.draining = False
        self.faults = FaultReporter()
        self.active = 0  # /v1 requests in progress in this process
        self.key_throttle = InvalidKeyThrottle(0)
        self._tasks: list[asyncio.Task] = []
        self._routes = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.list_models,
        }

    def invalidate(self, **_signal) -> None:
        """Signal receiver: a key, user, model or endpoint changed in this process."""
        self.catalog.invalidate()

    # Lifespan -----------------------------------------------------------------
    async def startup(self) -> None:
        if self.writer is not None:
            return
        # Loop-bound state is made here, so a new server (or test) starts clean.
        self.catalog = Catalog()
        self.limiter = make_limiter(settings.REDIS_URL, settings.AETHERGATE_REDIS_PREFIX)
        self.key_throttle = InvalidKeyThrottle(settings.AETHERGATE_INVALID_KEY_LIMIT)
        self.writer = LogWriter(on_settled=self.catalog.settled, on_rejected=self.catalog.released)
        self.writer.start()
        self.draining = False
        await upstream.start()
        await self.catalog.refresh()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.catalog.watch())]
        if settings.REDIS_URL:
            self._tasks.append(loop.create_task(broadcast.listen(self.catalog.invalidate)))
        self._drain_on_sigterm(loop)

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self.writer is not None:
            await self.writer.close()
            self.writer = None
        await self.limiter.close()
        await upstream.close()
        # The worker thread's database connection would otherwise outlive us.
        await sync_to_async(connections.close_all)()

    def _drain_on_sigterm(self, loop) -> None:
        """On SIGTERM, report not ready for AETHERGATE_DRAIN_SECONDS, then let the server stop.

        The server's own handler (uvicorn's, installed before lifespan
        startup) then stops accepting, lets in-flight requests and streams
        finish within its graceful timeout, and runs `shutdown`.
        """
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread (tests serve from others)
        server_handler = signal.getsignal(signal.SIGTERM)
        if not callable(server_handler):
            return

        def on_sigterm(signum, frame):
            if self.draining:
                server_handler(signum, frame)  # a second SIGTERM: stop now
                return
            self.draining = True
            delay = settings.AETHERGATE_DRAIN_SECONDS
            log.warning("SIGTERM: draining; stopping in %s s", delay)
            loop.call_soon_threadsafe(loop.call_later, delay, server_handler, signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("AetherGate failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # HTTP -----------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        await self.startup()
        ex = Exchange(request_id=next_request_id(), path=scope["path"])
        limit = settings.AETHERGATE_MAX_CONCURRENT_REQUESTS
        if limit and self.active >= limit:
            # Shed load at once rather than queue: a fast 503 lets the client
            # or the load balancer go elsewhere while this process catches up.
            metrics.SHED.inc()
            error = errors.overloaded()
            await send_json(send, ex, error.status, error.body(), error.headers)
            return
        self.active += 1
        try:
            handler = self._route(scope["method"], scope["path"].rstrip("/"))
            ex.key = await self._authenticate(scope)
            await handler(ex, scope, receive, send)
        except APIError as error:
            ex.status, ex.outcome = error.status, error.outcome
            ex.error = error.log_message or error.message
            await send_error(send, ex, error)
        except ClientGone:
            ex.status, ex.outcome = 499, "client_disconnected"
        except asyncio.CancelledError:
            # The server cut the request: its shutdown grace period ran out.
            ex.status, ex.outcome = 503, "gateway_error"
            ex.error = "cut off: the gateway shut down before the answer was complete"
            raise
        except Exception:
            log.exception("Unhandled error in %s %s [%s]", scope["method"], ex.path, ex.request_id)
            ex.status, ex.outcome, ex.error = 500, "gateway_error", "internal error"
            await send_error(
                send,
                ex,
                APIError(500, "The gateway failed to handle this request.", type="api_error"),
            )
        finally:
            self.active -= 1
            self._record(ex)

    def _route(self, method: str, path: str):
        handler = self._routes.get((method, path))
        if handler is None and method == "GET" and path.startswith("/v1/models/"):
            handler = self.retrieve_model
        if handler is None:
            raise APIError(
                404, f"Unknown request URL: {method} {path}.", code="unknown_url", outcome=""
            )
        return handler

    async def _authenticate(self, scope) -> KeyInfo:
        client = scope.get("client")
        address = client[0] if client else ""
        wait = self.key_throttle.retry_after(address)
        if wait:
            raise errors.too_many_invalid_keys(wait)
        tokens = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(tokens) > 1:
            # Servers and proxies disagree on which of two would count.
            raise errors.bad_request(
                "The request has more than one Authorization header.",
                code="duplicate_authorization",
            )
        scheme, _, secret = (tokens[0] if tokens else b"").decode("latin-1").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            self.key_throttle.failed(address)
            raise errors.invalid_key()
        try:
            snapshot = await self.catalog.get()
        except RuntimeError:
            raise errors.cannot_verify_keys() from None
        key = snapshot.keys.get(digest(secret))
        if key is None:
            if not self.catalog.available:
                raise errors.cannot_verify_keys()
            self.key_throttle.failed(address)
            raise errors.invalid_key()
        if not key.is_active:
            raise errors.forbidden("This API key has been deactivated.", "key_inactive")
        if key.expires_at is not None and key.expires_at <= timezone.now():
            raise errors.forbidden("This API key has expired.", "key_expired")
        if not key.user_active:
            raise errors.forbidden(
                "The account this API key belongs to is inactive.", "user_inactive"
            )
        return key

    # Models ---------------------------------------------------------------------
    def _visible_models(self, key: KeyInfo) -> list[ModelInfo]:
        return [
            m
            for m in self.catalog.snapshot.models.values()
            if m.endpoint is not None
            and (not key.models or m.name in key.models)
            and (not key.capabilities or m.capability in key.capabilities)
        ]

    @staticmethod
    def _model_object(model: ModelInfo) -> dict:
        return {
            "id": model.name,
            "object": "model",
            "created": model.created,
            "owned_by": "aethergate",
        }

    async def list_models(self, ex, scope, receive, send) -> None:
        data = [self._model_object(m) for m in self._visible_models(ex.key)]
        await send_json(send, ex, 200, dumps({"object": "list", "data": data}))

    async def retrieve_model(self, ex, scope, receive, send) -> None:
        ex.model_name = scope["path"].rstrip("/")[len("/v1/models/") :]
        for model in self._visible_models(ex.key):
            if model.name == ex.model_name:
                await send_json(send, ex, 200, dumps(self._model_object(model)))
                return
        raise errors.model_not_found(ex.model_name)

    # Inference ------------------------------------------------------------------
    async def chat_completions(self, ex, scope, receive, send) -> None:
        await self._infer(ex, scope, receive, send, "/chat/completions", "TEXT")

    async def completions(self, ex, scope, receive, send) -> None:
        await self._infer(ex, scope, receive, send, "/completions", "TEXT")

    async def embeddings(self, ex, scope, receive, send) -> None:
        await self._infer(ex, scope, receive, send, "/embeddings", "EMBEDDING")

    async def _infer(self, ex, scope, receive, send, path, capability) -> None:
        payload = await read_json(scope, receive)
        check_body(payload, stream_allowed=path != "/embeddings")
        ex.model_name = name = payload["model"]
        ex.stream = path != "/embeddings" and payload.get("stream") is True
        if ex.key.log_content:
            ex.prompt = dumps(
                payload.get("messages", payload.get("prompt", payload.get("input")))
            ).decode()
        model = self._admit(ex, name, capability)
        decision = await self._limit(ex.key, model)
        balance = self.catalog.balance(ex.key.user_id)
        if balance is not None and balance <= 0:
            raise APIError(
                402,
                "Your balance is exhausted; add credit to continue.",
                type="insufficient_quota",
                code="insufficient_balance",
                outcome="insufficient_balance",
            )
        headers = ratelimit_headers(decision)
        # The client going away cancels this task, and with it the upstream call.
        task = asyncio.current_task()
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))

        def on_disconnect(_watcher) -> None:
            # The server also reports the end of a connection once the whole
            # answer is sent: only a client leaving before that counts.
            if not ex.answered:
                ex.outcome, ex.status = "client_disconnected", 499
                task.cancel()

        watcher.add_done_callback(on_disconnect)
        try:
            await self._forward(ex, payload, model, path, send, headers)
        except asyncio.CancelledError:
            if ex.outcome != "client_disconnected":
                raise
            task.uncancel()
        finally:
            ex.answered = True
            watcher.cancel()

    def _admit(self, ex, name: str, capability: str) -> ModelInfo:
        key = ex.key
        model = self.catalog.snapshot.models.get(name)
        if model is None:
            raise errors.model_not_found(name)
        ex.model = model
        if key.models and name not in key.models:
            raise errors.forbidden(
                f"This API key is not allowed to use the model '{name}'.", "model_not_allowed"
            )
        if model.capability != capability:
            raise errors.bad_request(
                f"The model '{name}' does not support this endpoint "
                f"(its capability is {model.capability}).",
                code="unsupported_capability",
                param="model",
            )
        if key.capabilities and capability not in key.capabilities:
            raise errors.forbidden(
                f"This API key is not allowed the {capability} capability.",
                "capability_not_allowed",
            )
        return model

    async def _limit(self, key: KeyInfo | None, model: ModelInfo) -> Decision:
        checks = [(f"k{key.id}", r) for r in key.rates] if key else []
        checks += [(f"m{model.id}", r) for r in model.rates]
        if model.endpoint:
            checks += [(f"e{model.endpoint.id}", r) for r in model.endpoint.rates]
        decision = await self.limiter.hit(checks)
        if not decision.allowed:
            tier = {"k": "this API key", "m": "this model", "e": "this model's endpoint"}
            retry = min(120, max(1, int(decision.retry_after + 0.999)))
            raise APIError(
                429,
                f"Rate limit reached for {tier[decision.scope[0]]}: {decision.limit} requests "
                f"per window. Retry in {retry} s.",
                type="requests",
                code="rate_limit_exceeded",
                outcome="rate_limited",
                headers={"retry-after": str(retry), **ratelimit_headers(decision)},
            )
        return decision

    async def _forward(self, ex, payload, model, path, send, headers) -> None:
        """Try the model, then its fallbacks, until one answers; relay that answer."""
        tried = set()
        candidate: ModelInfo | None = model
        last_error = None
        while candidate is not None and len(tried) <= MAX_FALLBACK_DEPTH:
            tried.add(candidate.name)
            attempt = {"model": candidate.name, "endpoint": ""}
            ex.attempts.append(attempt)
            if candidate is not model:
                try:
                    await self._limit(None, candidate)
                except APIError as limited:
                    attempt["error"] = "rate_limited"
                    last_error = limited
                    candidate = self._fallback(candidate, tried)
                    continue
            try:
                await self._attempt(ex, payload, candidate, path, send, headers, attempt)
                return
            except Retryable as failure:
                attempt["error"] = failure.reason
                metrics.UPSTREAM_ERRORS.labels(attempt["endpoint"], failure.reason).inc()
                last_error = failure.error
                candidate = self._fallback(candidate, tried)
        raise last_error

    def _fallback(self, model: ModelInfo, tried: set) -> ModelInfo | None:
        if model.fallback is None or model.fallback in tried:
            return None
        fallback = self.catalog.snapshot.models.get(model.fallback)
        if fallback is not None:
            metrics.FALLBACKS.labels(model.name).inc()
        return fallback

    async def _attempt(self, ex, payload, model, path, send, headers, attempt) -> None:
        endpoint = model.endpoint
        if endpoint is None or not endpoint.usable:
            raise Retryable(
                "no endpoint",
                errors.upstream_error(
                    503,
                    f"The model '{ex.model_name}' has no usable upstream endpoint.",
                    code="model_unavailable",
                ),
            )
        attempt["endpoint"] = ex.endpoint = endpoint.name
        ex.model = model
        body = upstream_body(payload, model, path, ex.stream)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + endpoint.first_byte_timeout
        try:
            async with asyncio.timeout_at(deadline):
                response = await upstream.post(
                    endpoint, path, body, stream=ex.stream, request_id=ex.request_id
                )
        except TimeoutError:
            raise Retryable("timeout", timeout_error(ex)) from None
        except upstream.AddressRefused as exc:
            log.warning("Upstream %s refused by the address policy: %s", endpoint.name, exc)
            raise Retryable(
                "address refused",
                errors.upstream_error(
                    503,
                    f"The upstream for model '{ex.model_name}' is at an address the gateway "
                    "does not connect to.",
                    code="upstream_address_refused",
                ),
            ) from None
        except aiohttp.ClientError as exc:
            log.warning("Upstream %s unreachable: %s", endpoint.name, type(exc).__name__)
            raise Retryable(
                "connection failed",
                errors.upstream_error(
                    503,
                    f"The upstream for model '{ex.model_name}' could not be reached.",
                    code="upstream_unavailable",
                ),
            ) from None
        async with response:
            attempt["status"] = response.status
            if not 200 <= response.status < 300:
                await self._upstream_failure(ex, endpoint, response)
            if ex.stream:
                await self._relay_stream(ex, payload, model, response, deadline, send, headers)
            else:
                await self._relay_json(ex, payload, model, response, deadline, send, headers)

    async def _upstream_failure(self, ex, endpoint, response) -> None:
        status = response.status
        if status < 400:
            # Redirects are never followed (the client must not steer the
            # gateway), and a redirect is no answer either.
            raise Retryable(f"HTTP {status}", invalid_response(ex))
        if status == 429 or status >= 500:
            code = "upstream_rate_limited" if status == 429 else "upstream_error"
            raise Retryable(
                f"HTTP {status}",
                errors.upstream_error(
                    503 if status == 429 else 502,
                    f"The upstream for model '{ex.model_name}' failed (HTTP {status}).",
                    code=code,
                ),
            )
        if status in (401, 403):
            raise errors.upstream_error(
                502,
                f"The upstream for model '{ex.model_name}' refused the gateway's credentials.",
                code="upstream_auth_failed",
            )
        try:
            async with asyncio.timeout(5):
                body = await upstream.read_body(response, limit=UPSTREAM_ERROR_BYTES)
            error = loads(body)["error"]
            detail, code = str(error["message"]), error.get("code")
        except Exception:
            detail, code = f"HTTP {status}", None
        # Upstreams quote the prompt in their messages ("Your prompt was
        # flagged: ..."): the client may see it, the log only when content is.
        logged = f"The upstream rejected the request (HTTP {status}"
        logged += f", code {str(code)[:100]})." if code else ")."
        raise APIError(
            400,
            f"The upstream rejected the request: {upstream.scrub(detail, endpoint)}",
            code="upstream_rejected",
            outcome="invalid_request",
            log_message=None if ex.key.log_content else logged,
        )

    async def _relay_json(self, ex, payload, model, response, deadline, send, headers) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                data = loads(await upstream.read_body(response))
            items = data.get(ANSWER_ITEMS[model.capability])
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise ValueError("not shaped like the operation's answer")
            data["model"] = ex.model_name
            counted = usage.from_upstream(data.get("usage"))
            text = completion_text(data)
            if payload.get("encoding_format") == "base64":
                encode_embeddings(data)
            body = dumps(data)
        except TimeoutError:
            raise Retryable("timeout", timeout_error(ex)) from None
        except (ValueError, TypeError, AttributeError, struct.error, aiohttp.ClientError):
            # Not JSON, too large, or not shaped like an OpenAI answer.
            raise Retryable("invalid response", invalid_response(ex)) from None
        if ex.key.log_content:
            ex.completion.append(text)
        ex.input_units, ex.output_units, ex.estimated = count_usage(counted, payload, text)
        ex.ttft = time.perf_counter() - ex.started
        ex.answered = True
        await send_json(send, ex, 200, body, headers)

    async def _relay_stream(self, ex, payload, model, response, deadline, send, headers) -> None:
        options = payload.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        events = sse_events(
            response,
            first_deadline=deadline,
            idle=model.endpoint.idle_timeout,
            keepalive=settings.AETHERGATE_SSE_KEEPALIVE_SECONDS,
            max_line=settings.AETHERGATE_MAX_SSE_LINE_BYTES,
        )
        started = False
        done = False
        counted = None
        try:
            async for event in events:
                if event is KEEPALIVE:
                    if not started:
                        await start_sse(send, ex, headers)
                        started = True
                    await send_body(send, b": keep-alive\n\n")
                    continue
                if event == b"[DONE]":
                    done = True
                    break
                chunk = loads(event)
                if not isinstance(chunk, dict) or not isinstance(chunk.get("choices", []), list):
                    raise UpstreamStreamError("invalid chunk")
                if "error" in chunk:
                    raise UpstreamStreamError("the upstream reported an error")
                counted = usage.from_upstream(chunk.get("usage")) or counted
                if not wants_usage and "usage" in chunk:
                    if not chunk.get("choices"):
                        continue
                    del chunk["usage"]
                chunk["model"] = ex.model_name
                for choice in chunk.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content") or choice.get("text")
                    if piece and isinstance(piece, str):
                        ex.completion.append(piece)
                        if ex.ttft is None:
                            ex.ttft = time.perf_counter() - ex.started
                if not started:
                    await start_sse(send, ex, headers)
                    started = True
                await send_body(send, b"data: " + dumps(chunk) + b"\n\n")
            if not done:
                raise UpstreamStreamError("the upstream ended the stream early")
        except Exception as exc:  # a broken stream or a chunk not shaped like OpenAI's
            timed_out = isinstance(exc, TimeoutError)
            error = timeout_error(ex) if timed_out else invalid_response(ex, mid_stream=started)
            if not started:
                raise Retryable("timeout" if timed_out else "stream failed", error) from None
            # Headers are out: the failure becomes an SSE error event, never a fake [DONE].
            ex.status, ex.outcome, ex.error = error.status, error.outcome, error.message
            await send_body(send, b"data: " + error.body() + b"\n\n")
        else:
            if not started:
                await start_sse(send, ex, headers)
            await send_body(send, b"data: [DONE]\n\n")
        finally:
            await events.aclose()
            if started:
                # Billed only for what reached the client: an attempt that failed
                # before its first byte is an upstream error, charged nothing.
                text = "".join(ex.completion)
                ex.input_units, ex.output_units, ex.estimated = count_usage(counted, payload, text)
            if not ex.key.log_content:
                ex.completion.clear()
        ex.answered = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # Logging --------------------------------------------------------------------
    def _record(self, ex: Exchange) -> None:
        """Count the request in the metrics, log it, and hand its record to the log writer."""
        key, model = ex.key, ex.model
        charge = usage.cost(model, ex.input_units, ex.output_units) if model else 0
        if not (ex.input_units or ex.output_units) and ex.outcome != "ok":
            charge = 0
        elapsed = time.perf_counter() - ex.started
        outcome = ex.outcome or "invalid_request"
        try:
            self._observe(ex, outcome, elapsed, charge)
        except Exception:
            # A metric or the access log failing must not cost the request its
            # log row and charge (a negative count once did, in Counter.inc).
            self.faults.report(ex.request_id)
        if key is None:
            return  # no key, no account to log it under
        self.catalog.charge(key.user_id, charge)
        self.writer.submit(
            {
                "created_at": ex.created_at,
                "request_id": ex.request_id,
                "user_id": key.user_id,
                "username": key.username,
                "api_key_id": key.id,
                "key_prefix": key.prefix,
                "model": ex.model_name,
                "endpoint": ex.endpoint,
                "path": ex.path[:100],
                "status": ex.status,
                "outcome": outcome,
                "stream": ex.stream,
                "latency_ms": usage.milliseconds(elapsed),
                "ttft_ms": None if ex.ttft is None else usage.milliseconds(ex.ttft),
                "input_units": ex.input_units,
                "output_units": ex.output_units,
                "usage_estimated": ex.estimated,
                "cost": charge,
                "prompt_text": ex.prompt if key.log_content else "",
                "completion_text": "".join(ex.completion) if key.log_content else "",
                "error": ex.error,
                "attempts": ex.attempts,
            }
        )

    @staticmethod
    def _observe(ex: Exchange, outcome: str, elapsed: float, charge) -> None:
        # Labelled by model only once it is known to exist: client input
        # must not create label values (unbounded series).
        label = ex.model_name if ex.model is not None else ""
        metrics.series(metrics.REQUESTS, label, ex.status, outcome).inc()
        if ex.model is not None:
            metrics.series(metrics.LATENCY, label).observe(elapsed)
            if ex.ttft is not None:
                metrics.series(metrics.TTFT, label).observe(ex.ttft)
            if ex.input_units:
                metrics.series(metrics.TOKENS, label, "input").inc(ex.input_units)
            if ex.output_units:
                metrics.series(metrics.TOKENS, label, "output").inc(ex.output_units)
            if charge:
                metrics.series(metrics.COST, label).inc(float(charge))
        if settings.AETHERGATE_ACCESS_LOG:
            access_log.info(
                "%s %s %s %s",
                ex.path,
                ex.status,
                outcome,
                ex.request_id,
                extra={
                    "request_id": ex.request_id,
                    "path": ex.path,
                    "status": ex.status,
                    "outcome": outcome,
                    "model": ex.model_name if ex.model is not None else "",
                    "endpoint": ex.endpoint,
                    "stream": ex.stream,
                    "latency_ms": int(elapsed * 1000),
                    "ttft_ms": None if ex.ttft is None else int(ex.ttft * 1000),
                    "input_units": ex.input_units,
                    "output_units": ex.output_units,
                    "cost": str(charge),
                    "key_prefix": ex.key.prefix if ex.key else "",
                    "user": ex.key.username if ex.key else "",
                },
            )


# Unique per process by a random prefix, then a counter: no system call per
# request (os.urandom stood out in profiles). Ids identify; they are not secrets.
_REQUEST_ID_PREFIX = "req_" + secrets.token_hex(6)
_request_ids = itertools.count()


# Where each capability's answer keeps its list: a 2xx without it is no answer.
ANSWER_ITEMS = {"TEXT": "choices", "EMBEDDING": "data"}
# How much of an upstream's error body is read for its message.
UPSTREAM_ERROR_BYTES = 64 * 1024


def next_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}{next(_request_ids):012x}"


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class Retryable(Exception):
    """An attempt failed before any byte reached the client: a fallback may be tried."""

    def __init__(self, reason: str, error: APIError):
        super().__init__(reason)
        self.reason = reason
        self.error = error


def timeout_error(ex) -> APIError:
    return errors.upstream_error(
        504,
        f"The upstream for model '{ex.model_name}' did not answer in time.",
        code="upstream_timeout",
        outcome="upstream_timeout",
    )


def invalid_response(ex, *, mid_stream=False) -> APIError:
    where = "broke off mid-stream" if mid_stream else "returned an invalid response"
    return errors.upstream_error(
        502, f"The upstream for model '{ex.model_name}' {where}.", code="upstream_error"
    )


# Request and response helpers ---------------------------------------------------
def count_usage(counted, payload: dict, completion: str) -> tuple[int, int, bool]:
    """(input, output, estimated): the upstream's counts, or estimates from the text."""
    if counted:
        return *counted, False
    prompt = usage.estimate_tokens(usage.prompt_text(payload))
    return prompt, usage.estimate_tokens(completion), True


async def read_json(scope, receive) -> dict:
    limit = settings.AETHERGATE_MAX_BODY_BYTES
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise too_large(limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    try:
        payload = loads_client(b"".join(chunks))
    except ValueError as error:
        # orjson's reason names the place ("line 1 column 7"), never the content.
        raise errors.bad_request(
            f"The request body is not valid JSON: {error}.", code="invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise errors.bad_request("The request body must be a JSON object.", code="invalid_json")
    return payload


def too_large(limit: int) -> APIError:
    return APIError(
        413, f"The request body is larger than {limit} bytes.", code="request_too_large"
    )


def upstream_body(payload: dict, model: ModelInfo, path: str, stream: bool) -> bytes:
    """The client's body with what the gateway owns set: model, usage reporting, encoding."""
    body = dict(payload)
    body["model"] = model.upstream_name
    if stream:
        options = body.get("stream_options")
        body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    if path == "/embeddings":
        # Floats are what every upstream speaks; base64 is made here if asked for.
        body["encoding_format"] = "float"
    return dumps(body)


def completion_text(data: dict) -> str:
    parts = []
    for choice in data.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message") or {}
            parts.append(message.get("content") or choice.get("text") or "")
    return "".join(p for p in parts if isinstance(p, str))


def encode_embeddings(data: dict) -> None:
    """Turn float vectors into base64 of little-endian float32, as OpenAI sends them."""
    for item in data.get("data") or ():
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vector, list):
            packed = struct.pack(f"<{len(vector)}f", *vector)
            item["embedding"] = base64.b64encode(packed).decode()


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    if not decision.limit:
        return {}
    return {
        "x-ratelimit-limit-requests": str(decision.limit),
        "x-ratelimit-remaining-requests": str(decision.remaining),
        "x-ratelimit-reset-requests": f"{max(decision.reset, 0):.3f}s",
    }


async def wait_for_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _headers(request_id: str, content_type: bytes, extra: dict) -> list:
    headers = [(b"content-type", content_type), (b"x-request-id", request_id.encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    return headers


async def send_json(send, ex: Exchange, status: int, body: bytes, extra=None) -> None:
    headers = _headers(ex.request_id, b"application/json", extra or {})
    headers.append((b"content-length", str(len(body)).encode()))
    ex.responded = True
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def start_sse(send, ex: Exchange, extra: dict) -> None:
    headers = _headers(ex.request_id, b"text/event-stream; charset=utf-8", extra)
    headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
    ex.responded = True
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def send_error(send, ex: Exchange, error: APIError) -> None:
    """Answer `error`; once a response has started, only a stream can still carry it.

    A started stream ends with the documented SSE error event (never a fake
    [DONE]); a started JSON answer can take nothing more.
    """
    if not ex.responded:
        await send_json(send, ex, error.status, error.body(), error.headers)
    elif ex.stream and not ex.answered:
        ex.answered = True
        await send_body(send, b"data: " + error.body() + b"\n\n")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def send_body(send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


proxy = ProxyApp()
