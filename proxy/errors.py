"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with a status."""

import json


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
        outcome: str = "invalid_request",
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


def invalid_key() -> APIError:
    # One answer for a missing, malformed or unknown key: nothing to probe.
    return APIError(
        401,
        "Incorrect API key provided. Pass a key issued by this gateway as "
        "'Authorization: Bearer <key>'.",
        code="invalid_api_key",
        outcome="unauthenticated",
    )


def cannot_verify_keys() -> APIError:
    # The database is down and this key is not in the cache: it may be valid, so not a 401.
    return APIError(
        503,
        "The gateway cannot verify this API key right now; retry shortly.",
        type="api_error",
        code="service_unavailable",
        outcome="",
        headers={"retry-after": "5"},
    )


def too_many_invalid_keys(wait: float) -> APIError:
    # Before any key is looked at: the address is throttled, whatever it sends.
    retry = max(1, int(wait + 0.999))
    return APIError(
        429,
        f"Too many requests with invalid API keys from this address. Retry in {retry} s.",
        code="too_many_invalid_keys",
        outcome="unauthenticated",
        headers={"retry-after": str(retry)},
    )


def overloaded() -> APIError:
    return APIError(
        503,
        "The gateway is handling as many requests as it can; retry shortly.",
        type="api_error",
        code="overloaded",
        outcome="",
        headers={"retry-after": "1"},
    )


def forbidden(message: str, code: str) -> APIError:
    return APIError(403, message, type="permission_error", code=code, outcome="forbidden")


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"The model '{name}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
        outcome="model_not_found",
    )


def bad_request(message: str, *, code: str = "invalid_request", param: str | None = None):
    return APIError(400, message, code=code, param=param)


def upstream_error(status: int, message: str, *, code: str, outcome="upstream_error"):
    return APIError(status, message, type="upstream_error", code=code, outcome=outcome)
