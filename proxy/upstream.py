"""The only outbound HTTP in AetherGate: one pooled aiohttp session and its policy.

Only what the gateway configures reaches the upstream: the endpoint's URL and
credential, a JSON body, the request id. No client header is forwarded.
aiohttp was chosen over httpx by measurement: about 2-3x less CPU per
proxied request on this hot path (see README, "Why aiohttp").
"""

import re

import aiohttp
from django.conf import settings

from proxy.catalog import EndpointInfo

_session: aiohttp.ClientSession | None = None


async def start() -> None:
    # One pooled session per process, by design.
    global _session
    if _session is None or _session.closed:
        _session = aiohttp.ClientSession(
            # Per upstream host: past the cap, requests wait for a connection
            # (within their first-byte timeout) instead of opening more.
            connector=aiohttp.TCPConnector(
                limit=0,
                limit_per_host=settings.AETHERGATE_UPSTREAM_MAX_CONNECTIONS,
                ttl_dns_cache=300,
                keepalive_timeout=30,
            ),
            # Timeouts are applied per request from the endpoint's settings.
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )


async def close() -> None:
    global _session
    if _session is not None:
        await _session.close()
        _session = None


async def post(
    endpoint: EndpointInfo, path: str, body: bytes, *, stream: bool, request_id: str
) -> aiohttp.ClientResponse:
    """POST `body` to `endpoint` + `path`; returns once response headers arrived.

    Raises aiohttp.ClientError on connection failure; the caller bounds the
    wait for the first byte and closes the response.
    """
    if _session is None:
        await start()
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if stream else "application/json",
        "User-Agent": "AetherGate",
        "X-Request-ID": request_id,
    }
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    return await _session.post(
        endpoint.base_url + path,
        data=body,
        headers=headers,
        allow_redirects=False,
        timeout=aiohttp.ClientTimeout(
            total=endpoint.total_timeout, sock_connect=endpoint.connect_timeout
        ),
    )


class ResponseTooLarge(ValueError):
    """An upstream's answer is larger than the gateway reads."""


async def read_body(response: aiohttp.ClientResponse, *, limit: int | None = None) -> bytes:
    """The whole (decompressed) body, refusing one over `limit` bytes as it arrives.

    `limit` defaults to AETHERGATE_MAX_RESPONSE_BYTES. Decompression happens
    chunk by chunk, so a small compressed body that inflates past the limit
    is refused without being inflated whole.
    """
    if limit is None:
        limit = settings.AETHERGATE_MAX_RESPONSE_BYTES
    if response.content_length is not None and response.content_length > limit:
        # A compressed body's length says nothing of its size once inflated,
        # but one already over the limit will not shrink.
        raise ResponseTooLarge(f"{response.content_length} bytes announced")
    chunks, size = [], 0
    while chunk := await response.content.readany():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(f"over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# URLs, IPv4 addresses and bearer-like tokens in an upstream's message.
_INTERNALS = re.compile(
    r"[a-z][a-z0-9+.-]*://\S+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\b(?:sk|key|tok)-[\w-]{6,}",
    re.IGNORECASE,
)


def scrub(text: str, endpoint: EndpointInfo) -> str:
    """An upstream's message made fit for a client: no URL, address or credential in it."""
    for secret in filter(None, (endpoint.api_key, endpoint.base_url)):
        text = text.replace(secret, "[redacted]")
    return _INTERNALS.sub("[redacted]", text)[:1000]
