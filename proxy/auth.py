"""Who is calling: the Authorization header, checked against the snapshot (pure), then throttled.

`identify` is the rule and touches nothing else; `authenticate` adds what
needs the runtime: the invalid-key throttle per client address and a
current snapshot.
"""

from datetime import datetime

from keys.models import digest, refusal
from proxy import errors
from proxy.asgi_io import Scope, client_address, headers_named
from proxy.snapshot import KeyInfo, Snapshot


def presented_secret(authorization: list[bytes]) -> str:
    """The secret `authorization` (every Authorization header sent) presents as a bearer.

    400 for two headers; 401 for a missing or malformed one.
    """
    if len(authorization) > 1:
        # Servers and proxies disagree on which of two would count.
        raise errors.bad_request(
            "The request has more than one Authorization header.",
            code="duplicate_authorization",
        )
    header = authorization[0] if authorization else b""
    scheme, _, secret = header.decode("latin-1").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise errors.invalid_key()
    return secret


def presented_secrets(authorization: list[bytes], api_key: list[bytes]) -> list[str]:
    """The secrets a request presents: its bearer, and its `x-api-key` (as the Anthropic
    SDKs send a key; Claude Code sends both when both its variables are set, the other
    often a real Anthropic key). 400 for two headers of a kind; 401 when neither
    presents one."""
    if len(api_key) > 1:
        raise errors.bad_request(
            "The request has more than one x-api-key header.", code="duplicate_authorization"
        )
    found = [api_key[0].decode("latin-1").strip()] if api_key else []
    if authorization or not found:
        found.insert(0, presented_secret(authorization))
    if not all(found):
        raise errors.invalid_key()
    return found


def identify(secret: str, snapshot: Snapshot, *, now: datetime, available: bool = True) -> KeyInfo:
    """The key whose whole secret is `secret`, or an APIError.

    401 for an unknown key (the same answer as for a malformed one); 503 for
    an unknown key while the database cannot be read (`available` False: it
    may be valid); 403 for a key `keys.models.refusal` refuses at `now`.
    """
    key = snapshot.keys.get(digest(secret))
    if key is None:
        raise errors.invalid_key() if available else errors.cannot_verify_keys()
    refused = refusal(
        is_active=key.is_active,
        user_active=key.user_active,
        expires_at=key.expires_at,
        now=now,
    )
    if refused is not None:
        code, message = refused
        raise errors.forbidden(message, code)
    return key


async def authenticate(runtime, scope: Scope, *, now: datetime) -> KeyInfo:
    """The caller's key, counting invalid keys against the client address."""
    address = client_address(scope)
    throttle = runtime.key_throttle
    wait = throttle.retry_after(address)
    if wait:
        raise errors.too_many_invalid_keys(wait)
    try:
        found = presented_secrets(
            headers_named(scope, b"authorization"), headers_named(scope, b"x-api-key")
        )
        try:
            snapshot = await runtime.catalog.get()
        except RuntimeError:  # no snapshot was ever read: the database was down from the start
            raise errors.cannot_verify_keys() from None
        secret = found[0]
        if len(found) > 1:  # of two secrets, the one this gateway issued is the caller's key
            secret = next((s for s in found if digest(s) in snapshot.keys), found[-1])
        return identify(secret, snapshot, now=now, available=runtime.catalog.available)
    except errors.APIError as error:
        if error.code == "invalid_api_key":
            throttle.failed(address)
        raise
