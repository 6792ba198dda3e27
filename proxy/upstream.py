"""The only outbound HTTP in AetherGate: a pooled aiohttp client and its policy.

Only what the gateway configures reaches the upstream: the endpoint's URL and
credential, a JSON body or a form the gateway wrote, the request id, and, to an
Anthropic server, the Anthropic headers the gateway chose to pass on (checked
against an allow-list here). No other client header is forwarded.
aiohttp was chosen over httpx by measurement: about 2-3x less CPU per
proxied request on this hot path (see README, "Why aiohttp"). Every address
dialled passes the address policy (`aethergate.lib.addresses`) first.
"""

import functools
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from django.conf import settings

from aethergate.lib import addresses
from proxy.snapshot import EndpointInfo

# Endpoint.Kind.ANTHROPIC, not imported: the proxy reads the catalog through its snapshot.
ANTHROPIC = "anthropic"
# The Messages API version the gateway's own requests are written for: the one whose
# fields (temperature, top_p, …) proxy.formats.anthropic sends.
ANTHROPIC_VERSION = "2023-06-01"
# The only request headers a caller may add (`post(headers=…)`): Anthropic's version and
# beta flags, passed on from a Messages client. Anything else could let a client set
# the credential, the host or the framing of the gateway's request.
ANTHROPIC_HEADERS = frozenset({"anthropic-version", "anthropic-beta"})
# Printable ASCII only (no CR or LF: no header injection), and short.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,1000}")


class AddressRefused(aiohttp.ClientConnectionError):
    """The endpoint's host, or every address it resolves to, is refused by the address policy.

    `str()` names the host and the reason: for the server log, never for the client.
    """


class PolicyResolver(AbstractResolver):
    """aiohttp's default resolver, keeping only the addresses the policy allows.

    The connector dials only what a resolver returns, so the check is on the
    address actually connected to: a name cannot be re-pointed by DNS later.
    """

    def __init__(self) -> None:
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        _check_host(host)
        results = await self._resolver.resolve(host, port, family)
        allowed, refusals = [], []
        for result in results:
            try:
                addresses.check_address(result["host"])
            except addresses.AddressRefused as refusal:
                refusals.append(str(refusal))
            else:
                allowed.append(result)
        if not allowed:
            raise AddressRefused(f"{host}: {refusals[0]}")
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


class Upload(Protocol):
    """A body sent as it is read (a form, proxy.forms.FormBody), its length known."""

    content_type: str
    length: int

    def chunks(self) -> AsyncIterator[bytes]: ...


class Client:
    """One pooled session per process (made in a running loop, by the Runtime), and `post`."""

    def __init__(self, *, max_connections: int):
        self._resolver = PolicyResolver()
        self._session = aiohttp.ClientSession(
            # Per upstream host: past the cap, requests wait for a connection
            # (within their first-byte timeout) instead of opening more.
            connector=aiohttp.TCPConnector(
                limit=0,
                limit_per_host=max_connections,
                ttl_dns_cache=300,
                # Below the 5 s after which uvicorn (llama-cpp-python, vLLM) and
                # llama.cpp's server drop an idle connection: reusing one as it is
                # closed fails the request (ClientOSError) with nothing to retry.
                keepalive_timeout=4,
                resolver=self._resolver,
            ),
            # Timeouts are applied per request from the endpoint's settings.
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        await self._session.close()
        await self._resolver.close()  # a resolver passed in is not closed by its connector

    async def post(
        self,
        endpoint: EndpointInfo,
        path: str,
        body: bytes | Upload,
        *,
        stream: bool,
        request_id: str,
        accept: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """POST `body` (JSON, or a form) to `endpoint` + `path`; returns once response
        headers arrived.

        The credential goes as the endpoint's kind wants it: `x-api-key` (and an
        `anthropic-version`) to an Anthropic server, `Authorization: Bearer` to the
        others. `headers` are extra headers the gateway chose, sent to an Anthropic
        server only: of them, just `anthropic-version` and `anthropic-beta` with a
        printable-ASCII value of at most 1000 characters; the rest are dropped.

        Raises aiohttp.ClientError on connection failure (AddressRefused when
        the address policy refuses the host); the caller bounds the wait for
        the first byte and closes the response.
        """
        # aiohttp dials an IP address in the URL without asking the resolver.
        _check_host(_host(endpoint.base_url))
        sent = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else accept,
            "User-Agent": "AetherGate",
            "X-Request-ID": request_id,
        }
        data = body
        if type(body) is not bytes:
            # A form goes as it is read from its spool, with its length announced.
            sent["Content-Type"] = body.content_type
            sent["Content-Length"] = str(body.length)
            data = body.chunks()
        if endpoint.kind == ANTHROPIC:
            _anthropic_credential(sent, endpoint, headers)
        elif endpoint.api_key:
            sent["Authorization"] = f"Bearer {endpoint.api_key}"
        return await self._session.post(
            endpoint.base_url + path,
            data=data,
            headers=sent,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(
                total=endpoint.total_timeout, sock_connect=endpoint.connect_timeout
            ),
        )

    async def check(self, endpoint: EndpointInfo, path: str, *, seconds: float) -> bool:
        """Whether GET {base_url}{path} answers 2xx within `seconds` (a health check).

        A GET only: it never runs (or pays for) a completion. Any failure is False.
        """
        wait = aiohttp.ClientTimeout(
            total=seconds, sock_connect=min(seconds, endpoint.connect_timeout)
        )
        try:
            _check_host(_host(endpoint.base_url))
            async with self._session.get(
                endpoint.base_url + path,
                headers=_get_headers(endpoint),
                allow_redirects=False,
                timeout=wait,
            ) as response:
                return 200 <= response.status < 300
        except (AddressRefused, TimeoutError, aiohttp.ClientError):
            return False

    async def list_models(self, endpoint: EndpointInfo, *, seconds: float) -> list[str]:
        """The model ids `endpoint` lists at GET {base_url}/models (OpenAI's listModels;
        Anthropic's has the same `data[].id`), waiting at most `seconds` in all.

        A GET only: it never runs (or pays for) a completion. Raises ModelListFailed,
        whose message is for staff and names no credential.
        """
        wait = aiohttp.ClientTimeout(
            total=seconds, sock_connect=min(seconds, endpoint.connect_timeout)
        )
        try:
            _check_host(_host(endpoint.base_url))
            async with self._session.get(
                endpoint.base_url + _models_path(endpoint),
                headers=_get_headers(endpoint),
                allow_redirects=False,
                timeout=wait,
            ) as response:
                body = await read_body(response, limit=MODEL_LIST_MAX_BYTES)
                status = response.status
        except AddressRefused as refusal:
            raise ModelListFailed(f"The address policy refuses it: {refusal}") from None
        except TimeoutError:
            raise ModelListFailed(f"It did not answer within {seconds:g} s.") from None
        except aiohttp.ClientConnectorError as error:
            reason = error.os_error.strerror or type(error.os_error).__name__
            raise ModelListFailed(f"Could not connect to it: {reason}.") from None
        except aiohttp.ClientError as error:
            raise ModelListFailed(f"The connection failed ({type(error).__name__}).") from None
        except ResponseTooLarge:
            raise ModelListFailed(
                f"Its model list is larger than {MODEL_LIST_MAX_BYTES} bytes."
            ) from None
        return _model_ids(status, body, endpoint)


def _anthropic_credential(
    sent: dict[str, str], endpoint: EndpointInfo, extra: dict[str, str] | None
) -> None:
    """Add to `sent` what an Anthropic server wants: the credential as `x-api-key` (never
    `Authorization`), the allowed ones of `extra`, and `anthropic-version` if none."""
    if endpoint.api_key:
        sent["x-api-key"] = endpoint.api_key
    sent["anthropic-version"] = ANTHROPIC_VERSION
    for name, value in (extra or {}).items():
        key = name.lower()  # header names are case-insensitive
        if key in ANTHROPIC_HEADERS and isinstance(value, str) and _HEADER_VALUE.fullmatch(value):
            sent[key] = value


def _get_headers(endpoint: EndpointInfo) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "AetherGate"}
    if endpoint.kind == ANTHROPIC:
        _anthropic_credential(headers, endpoint, None)
    elif endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    return headers


def _models_path(endpoint: EndpointInfo) -> str:
    # Anthropic's list is paged, 20 models by default; 1000 is its largest page.
    return "/models?limit=1000" if endpoint.kind == ANTHROPIC else "/models"


# An upstream's model list is small; this bounds what an admin page reads.
MODEL_LIST_MAX_BYTES = 4 * 1024 * 1024
MODEL_LIST_TIMEOUT = 10.0  # seconds: a short wait for a page staff are looking at


class ModelListFailed(Exception):
    """GET {base_url}/models gave no model list; `str()` says why, for staff (no credential)."""


async def list_models(endpoint: EndpointInfo, *, seconds: float) -> list[str]:
    """`Client.list_models` on a client of its own, for a caller outside the /v1 runtime
    (the admin's "Test connection"), closed before it returns."""
    client = Client(max_connections=1)
    try:
        return await client.list_models(endpoint, seconds=seconds)
    finally:
        await client.close()


def _model_ids(status: int, body: bytes, endpoint: EndpointInfo) -> list[str]:
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if status != 200:
        error = answer.get("error") if isinstance(answer, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        detail = f": {scrub(message, endpoint)[:300]}" if isinstance(message, str) else "."
        raise ModelListFailed(f"It answered HTTP {status}{detail}")
    listed = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(listed, list):
        raise ModelListFailed('Its answer is not a model list (JSON with a "data" list).')
    ids = (item.get("id") for item in listed if isinstance(item, dict))
    return list(dict.fromkeys(i for i in ids if isinstance(i, str) and i.strip()))


@functools.lru_cache(maxsize=256)
def _host(base_url: str) -> str:
    return urlsplit(base_url).hostname or ""


def _check_host(host: str) -> None:
    try:
        addresses.check_host(host)
    except addresses.AddressRefused as refusal:
        raise AddressRefused(f"{host}: {refusal}") from None


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


# URLs, IPv4 addresses, bearer-like tokens and absolute file paths in an upstream's message.
_INTERNALS = re.compile(
    r"[a-z][a-z0-9+.-]*://\S+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\b(?:sk|key|tok)-[\w-]{6,}"
    r"|(?<![\w/])/(?:[\w.-]+/)+[\w.-]+",
    re.IGNORECASE,
)


def scrub(text: str, endpoint: EndpointInfo) -> str:
    """An upstream's message made fit for a client: no URL, address, credential, file path
    or traceback in it (llama-cpp-python puts its traceback in its 500s)."""
    text = text.split("Traceback (most recent call last)", 1)[0].rstrip()
    for secret in filter(None, (endpoint.api_key, endpoint.base_url)):
        text = text.replace(secret, "[redacted]")
    return _INTERNALS.sub("[redacted]", text)[:1000]
