"""Which upstream answers: the model, then its fallbacks; and what each upstream failure means.

`forward` tries candidates with an `attempt` passed in (it knows nothing of
HTTP or formats); the classifiers turn what an upstream did into a
`Retryable` (another candidate may answer) or a final APIError.
"""

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from http import HTTPStatus

import aiohttp

from aethergate.lib import metrics
from logs.models import Outcome
from models_registry.models import MAX_FALLBACK_DEPTH
from proxy import dialects, errors, upstream
from proxy.codec import loads
from proxy.errors import APIError, Retryable
from proxy.snapshot import DeploymentInfo, EndpointInfo, ModelInfo

log = logging.getLogger(__name__)

# How much of an upstream's error body is read for its message, and for how long.
UPSTREAM_ERROR_BYTES = 64 * 1024
UPSTREAM_ERROR_SECONDS = 5
MAX_RETRY_AFTER = 3600.0
UNAVAILABLE = "no deployment available"  # none usable, or every one's circuit open


async def forward(
    ex,
    model: ModelInfo,
    models: dict[str, ModelInfo],
    *,
    router,
    session: tuple | None,
    attempt: Callable[[ModelInfo, DeploymentInfo, dict], Awaitable[None]],
    admit_fallback: Callable[[ModelInfo], Awaitable[object]],
) -> None:
    """`attempt(candidate, deployment, record)` until one answers: the model's deployments,
    then its fallbacks'.

    `router` picks each deployment and hears how it went. A Retryable failure
    moves to another deployment (after a jittered backoff, while the model's
    retry budget and the per-request cap allow), then to the next model. A
    refusal the upstream gives as too long for its context goes to the
    model's context fallback, if it has one. Each attempt appends its `record`
    (model, endpoint, deployment, status, error) to `ex.attempts`. Raises the
    last failure's error when none answered.
    """
    router.requested(model)
    tried: set[str] = set()
    candidate: ModelInfo | None = model
    last_error = None
    failures = 0  # failed upstream attempts of this request: any further one is a retry
    while candidate is not None and len(tried) <= MAX_FALLBACK_DEPTH:
        if candidate is not model:
            # Counted here, where it is tried: past the depth cap, none is.
            metrics.FALLBACKS.labels(ex.attempts[-1]["model"] if ex.attempts else model.name).inc()
            try:
                await admit_fallback(candidate)
            except APIError as limited:
                ex.attempts.append(
                    {"model": candidate.name, "endpoint": "", "error": "rate_limited"}
                )
                tried.add(candidate.name)
                last_error = limited
                candidate = next_fallback(models, candidate, tried)
                continue
        tried.add(candidate.name)
        excluded: set[int] = set()
        failed_here = 0  # of this model's deployments: at most AETHERGATE_MAX_RETRIES retried
        try:
            while (deployment := router.pick(candidate, excluded, session)) is not None:
                if failed_here > router.max_retries:
                    break
                if failures:
                    if not router.may_retry(model):
                        raise last_error
                    metrics.series(metrics.RETRIES, model.name, ex.attempts[-1]["error"]).inc()
                    await router.backoff(failures)
                excluded.add(deployment.id)
                record = {"model": candidate.name, "endpoint": deployment.endpoint.name}
                ex.attempts.append(record)
                try:
                    await _attempt(ex, router, candidate, deployment, record, attempt, session)
                    return
                except Retryable as failure:
                    record["error"] = failure.reason
                    last_error = failure.error
                    if failure.reason != "rate_limited":  # a local refusal: no upstream call
                        failures += 1
                        failed_here += 1
                        metrics.UPSTREAM_ERRORS.labels(record["endpoint"], failure.reason).inc()
        except APIError as error:
            longer = candidate.context_fallback
            if error.code != "context_length_exceeded" or longer is None or longer in tried:
                raise
            candidate = models.get(longer)
            if candidate is None:
                raise
            continue
        if not excluded:  # none of its deployments could be tried: say so in the log
            ex.attempts.append({"model": candidate.name, "endpoint": "", "error": UNAVAILABLE})
        if last_error is None:
            last_error = errors.upstream_error(
                503,
                f"The model '{model.name}' has no available upstream: every deployment "
                "is unreachable or paused after failing.",
                code="model_unavailable",
            )
        candidate = next_fallback(models, candidate, tried)
    raise last_error


async def _attempt(ex, router, model, deployment, record, attempt, session) -> None:
    """One attempt, its outcome told to the router: Retryable failures, mid-stream
    failures and timeouts count against the deployment; any upstream answer for it."""
    router.taken(model, deployment)
    try:
        await attempt(model, deployment, record)
    except Retryable as failure:
        if failure.reason == "rate_limited":
            router.abandoned(deployment)
        else:
            router.failed(deployment, retry_after=failure.retry_after)
        raise
    except APIError:
        if "status" in record:  # the upstream answered (it refused the request): it is up
            router.succeeded(deployment, record.get("ttfb"))
        else:
            router.abandoned(deployment)
        raise
    except BaseException:  # the client left, or the server is stopping
        router.abandoned(deployment)
        raise
    if ex.status >= 500:  # it broke off after the first byte: too late to retry, not to count
        router.failed(deployment)
        return
    router.succeeded(deployment, record.get("ttfb"))
    if session is not None:
        router.remember(session, deployment)


def next_fallback(
    models: dict[str, ModelInfo], model: ModelInfo, tried: set[str]
) -> ModelInfo | None:
    if model.fallback is None or model.fallback in tried:
        return None
    return models.get(model.fallback)


def retry_after(value: str | None) -> float | None:
    """Seconds a 429's Retry-After asks for (a number, or an HTTP date), at most an hour."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def connection_failure(exc: Exception, endpoint: EndpointInfo, model_name: str) -> Retryable:
    """What a failure to get response headers means (a timeout or an aiohttp.ClientError)."""
    if isinstance(exc, TimeoutError):
        return Retryable("timeout", errors.upstream_timeout(model_name))
    if isinstance(exc, upstream.AddressRefused):
        log.warning("Upstream %s refused by the address policy: %s", endpoint.name, exc)
        return Retryable(
            "address refused",
            errors.upstream_error(
                503,
                f"The upstream for model '{model_name}' is at an address the gateway "
                "does not connect to.",
                code="upstream_address_refused",
            ),
        )
    log.warning("Upstream %s unreachable: %s", endpoint.name, type(exc).__name__)
    return Retryable(
        "connection failed",
        errors.upstream_error(
            503,
            f"The upstream for model '{model_name}' could not be reached.",
            code="upstream_unavailable",
        ),
    )


CONNECTION_ERRORS = (TimeoutError, aiohttp.ClientError)


def status_failure(status: int, model_name: str) -> Exception | None:
    """What a non-2xx status means when its body need not be read; None for a rejection (4xx)."""
    if status < 400:
        # Redirects are never followed (the client must not steer the
        # gateway), and a redirect is no answer either.
        return Retryable(f"HTTP {status}", errors.invalid_response(model_name))
    if status == 429 or status >= 500:
        code = "upstream_rate_limited" if status == 429 else "upstream_error"
        return Retryable(
            f"HTTP {status}",
            errors.upstream_error(
                503 if status == 429 else 502,
                f"The upstream for model '{model_name}' failed (HTTP {status}).",
                code=code,
            ),
        )
    if status in (401, 403):
        return errors.upstream_error(
            502,
            f"The upstream for model '{model_name}' refused the gateway's credentials.",
            code="upstream_auth_failed",
        )
    return None


async def failure(
    response, endpoint: EndpointInfo, model_name: str, *, log_content: bool, verbatim=False
):
    """What a non-2xx upstream response means, reading its body only for a rejection.

    A server whose dialect answers malformed requests with 500 (llama.cpp) is
    taken at its word when its 500 carries an error message: a rejection,
    neither retried nor a reason to fall back. A bare 500 is still a failure.
    `verbatim`: a rejection keeps the upstream's status and words (`rejection`).
    """
    status = response.status
    found = status_failure(status, model_name)
    if status == 429:
        found.retry_after = retry_after(response.headers.get("Retry-After"))
    suspect = status == 500 and dialects.of(endpoint).faults_as_500
    if found is not None and not suspect:
        return found
    try:
        async with asyncio.timeout(UPSTREAM_ERROR_SECONDS):
            body = await upstream.read_body(response, limit=UPSTREAM_ERROR_BYTES)
    except Exception:
        body = None
    if suspect and not has_message(body):
        return found
    return rejection(status, body, endpoint, log_content=log_content, verbatim=verbatim)


def has_message(body: bytes | None) -> bool:
    """Whether an error body is JSON with an error message in it."""
    try:
        error = loads(body).get("error")
    except Exception:
        return False
    return isinstance(error, dict) and isinstance(error.get("message"), str)


def rejection(
    status: int, body: bytes | None, endpoint: EndpointInfo, *, log_content: bool, verbatim=False
):
    """The 400 for an upstream that rejected the request, with its (scrubbed) reason.

    Upstreams quote the prompt in their messages ("Your prompt was flagged:
    ..."): the client may see it, the log only when the key logs content.
    `verbatim` (a request passed through in the upstream's own API: Messages to
    Anthropic) keeps the upstream's 4xx status and its words unprefixed, as
    Claude Code's recovery matches on them ("prompt is too long").
    """
    detail, code = upstream_reason(status, body)
    logged = f"The upstream rejected the request (HTTP {status}"
    logged += f", code {str(code)[:100]})." if code else ")."
    too_long = code == "context_length_exceeded" or _CONTEXT_OVERFLOW.search(detail)
    reason = upstream.scrub(detail, endpoint)
    return APIError(
        status if verbatim and 400 <= status < 500 else 400,
        reason if verbatim else f"The upstream rejected the request: {reason}",
        code="context_length_exceeded" if too_long else "upstream_rejected",
        outcome=Outcome.INVALID_REQUEST,
        log_message=None if log_content else logged,
    )


_TAGS = re.compile(r"<[^>]*>")
# How servers say a request does not fit the model's context: OpenAI and vLLM ("This
# model's maximum context length is …"), vLLM's "longer than the maximum model length",
# llama.cpp's server ("exceeds the available context size"), llama-cpp-python
# ("Requested tokens (…) exceed context window of …"), Anthropic ("prompt is too long").
_CONTEXT_OVERFLOW = re.compile(
    r"maximum context length|longer than the maximum model length|exceeds? the available "
    r"context size|exceed context window|prompt is too long",
    re.IGNORECASE,
)


def upstream_reason(status: int, body: bytes | None) -> tuple[str, object]:
    """(message, code) of an upstream's error body, in whichever shape its server uses.

    OpenAI, Ollama and llama.cpp nest `{"error": {"message", "code"}}`; LM Studio
    sends `{"error": "text"}`, vLLM before 0.10.1 a flat `{"object": "error",
    "message"}`, FastAPI servers (llama-cpp-python) `{"detail": ...}`. Anything
    else is named by its status, with its first line of text if it has one.
    """
    try:
        phrase = f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        phrase = f"HTTP {status}"
    if body is None:
        return phrase, None
    try:
        data = loads(body)
    except ValueError:
        text = _TAGS.sub(" ", body.decode("utf-8", "replace")).strip()
        first = text.splitlines()[0].strip()[:200] if text else ""
        return (f"{phrase}: {first}" if first else f"{phrase}, with an empty body"), None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
            return error["message"], error.get("code")
        if isinstance(error, str) and error:
            return error, None
        if isinstance(data.get("message"), str):
            return data["message"], data.get("code")
        detail = data.get("detail")
        if isinstance(detail, str) and detail:
            return detail, None
        if isinstance(detail, list):  # FastAPI's validation errors: [{"loc", "msg"}, ...]
            found = [_field_error(item) for item in detail if isinstance(item, dict)]
            if found:
                return "; ".join(found), None
    return phrase, None


def _field_error(item: dict) -> str:
    place = ".".join(str(part) for part in item.get("loc") or () if part != "body")
    message = str(item.get("msg", "invalid"))
    return f"{place}: {message}" if place else message
