"""The errors `/v1` answers, and the exceptions its steps raise (the bottom of `proxy/`).

Every answer is OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`, with a status, and names the `Outcome` the request log records.
"""

import json

from logs.models import Outcome


class APIError(Exception):
    """An error answered to the client; `outcome` is what the request log records."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        outcome: Outcome = Outcome.INVALID_REQUEST,
        headers: dict[str, str] | None = None,
        log_message: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.outcome = outcome
        self.headers = headers or {}
        # What the request log records instead of `message`, when that may hold content.
        self.log_message = log_message

    def body(self) -> bytes:
        return json.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        ).encode()


def data_event(error: APIError) -> bytes:
    """`error` as the SSE event that ends a started OpenAI stream."""
    return b"data: " + error.body() + b"\n\n"


class Retryable(Exception):
    """An attempt failed before any byte reached the client: another candidate may be tried."""

    def __init__(self, reason: str, error: APIError, *, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.error = error
        # Seconds the upstream asked to be left alone (a 429's Retry-After).
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def invalid_key() -> APIError:
    # One answer for a missing, malformed or unknown key: nothing to probe.
    return APIError(
        401,
        "Incorrect API key provided. Pass a key issued by this gateway as "
        "'Authorization: Bearer <key>' (or, on the Anthropic API, 'x-api-key: <key>').",
        code="invalid_api_key",
        outcome=Outcome.UNAUTHENTICATED,
    )


def cannot_verify_keys() -> APIError:
    # The database is down and this key is not in the cache: it may be valid, so not a 401.
    return APIError(
        503,
        "The gateway cannot verify this API key right now; retry shortly.",
        type="api_error",
        code="service_unavailable",
        outcome=Outcome.UNAVAILABLE,
        headers={"retry-after": "5"},
    )


def too_many_invalid_keys(wait: float) -> APIError:
    # Before any key is looked at: the address is throttled, whatever it sends.
    retry = max(1, int(wait + 0.999))
    return APIError(
        429,
        f"Too many requests with invalid API keys from this address. Retry in {retry} s.",
        code="too_many_invalid_keys",
        outcome=Outcome.UNAUTHENTICATED,
        headers={"retry-after": str(retry)},
    )


def store_unavailable() -> APIError:
    # The database behind stored responses is down: the request may well succeed later.
    return APIError(
        503,
        "Stored responses cannot be read right now; retry shortly.",
        type="api_error",
        code="service_unavailable",
        outcome=Outcome.UNAVAILABLE,
        headers={"retry-after": "5"},
    )


def overloaded() -> APIError:
    return APIError(
        503,
        "The gateway is handling as many requests as it can; retry shortly.",
        type="api_error",
        code="overloaded",
        outcome=Outcome.UNAVAILABLE,
        headers={"retry-after": "1"},
    )


def unknown_url(method: str, path: str) -> APIError:
    return APIError(404, f"Unknown request URL: {method} {path}.", code="unknown_url")


def method_not_allowed(method: str, path: str, allowed: list[str]) -> APIError:
    methods = ", ".join(allowed)
    return APIError(
        405,
        f"{method} is not allowed on {path}; use {methods}.",
        code="method_not_allowed",
        headers={"allow": methods},
    )


def internal() -> APIError:
    return APIError(
        500,
        "The gateway failed to handle this request.",
        type="api_error",
        outcome=Outcome.GATEWAY_ERROR,
        log_message="internal error",
    )


def not_json() -> APIError:
    return unsupported_media("JSON, sent with 'Content-Type: application/json'")


def not_form() -> APIError:
    return unsupported_media("multipart/form-data, with the audio in the field 'file'")


def unsupported_media(what: str) -> APIError:
    return APIError(415, f"The request body must be {what}.", code="unsupported_media_type")


def too_large(limit: int) -> APIError:
    return APIError(
        413, f"The request body is larger than {limit} bytes.", code="request_too_large"
    )


def forbidden(message: str, code: str) -> APIError:
    return APIError(403, message, type="permission_error", code=code, outcome=Outcome.FORBIDDEN)


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"The model '{name}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
        outcome=Outcome.MODEL_NOT_FOUND,
    )


def bad_request(message: str, *, code: str = "invalid_request", param: str | None = None):
    return APIError(400, message, code=code, param=param)


def upstream_error(
    status: int, message: str, *, code: str, outcome: Outcome = Outcome.UPSTREAM_ERROR
) -> APIError:
    return APIError(status, message, type="upstream_error", code=code, outcome=outcome)


def upstream_timeout(model_name: str) -> APIError:
    return upstream_error(
        504,
        f"The upstream for model '{model_name}' did not answer in time.",
        code="upstream_timeout",
        outcome=Outcome.UPSTREAM_TIMEOUT,
    )


def invalid_response(model_name: str, *, mid_stream: bool = False) -> APIError:
    where = "broke off mid-stream" if mid_stream else "returned an invalid response"
    return upstream_error(
        502, f"The upstream for model '{model_name}' {where}.", code="upstream_error"
    )
