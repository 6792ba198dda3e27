"""The HTTP protocol AetherGate is served with: uvicorn's httptools protocol, with two limits.

- Request line and headers: at most AETHERGATE_MAX_HEADER_BYTES are read
  (431, then the connection is closed). uvicorn's httptools protocol has no
  such limit, so a 16 MB header was held whole before any route saw it.
- A request body that stalls for AETHERGATE_BODY_READ_TIMEOUT_SECONDS (no
  byte arrives while the server is reading) gets 408 and the connection is
  closed; without it a body shorter than its Content-Length held the
  connection forever.

Every route is served through it: `make run` and the tests pass
`--http aethergate.server:HttpProtocol`, gunicorn's worker sets it in
gunicorn.conf.py.
"""

import asyncio

from django.conf import settings
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


class HeadersTooLarge(Exception):
    """The request line and headers are over AETHERGATE_MAX_HEADER_BYTES."""


# What uvicorn's `--http` (and its Config's `http`) take to serve with it.
HTTP = "aethergate.server:HttpProtocol"


class HttpProtocol(HttpToolsProtocol):
    """httptools with a header-size limit and a body-read timeout."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_header = settings.AETHERGATE_MAX_HEADER_BYTES
        self._body_timeout = settings.AETHERGATE_BODY_READ_TIMEOUT_SECONDS
        self._in_headers = True  # reading a request line and headers (or between requests)
        self._header_bytes = 0  # bytes read while in headers (a body sent with them too)
        self._too_large = False
        self._stall: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            # Counted until the headers end (on_headers_complete resets it),
            # so a body arriving with them is not counted; checked after
            # parsing, so at most one read past the limit is ever held.
            self._header_bytes += len(data)
        super().data_received(data)
        if self._in_headers and self._header_bytes > self._max_header:
            self._refuse(431, b"Request header fields too large.")
            return
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        cycle = self.cycle
        if not self._in_headers and cycle is not None and cycle.more_body:
            if not cycle.response_complete and self.transport and not self.transport.is_closing():
                self._stall = self.loop.call_later(self._body_timeout, self._body_stalled)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        if len(self.url) + sum(len(n) + len(v) for n, v in self.headers) > self._max_header:
            # Headers that arrived in one read: refused before any route runs.
            # Raising stops the parser, and uvicorn answers through send_400_response.
            self._too_large = True
            raise HeadersTooLarge
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse(431, b"Request header fields too large.")
        else:
            super().send_400_response(msg)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # What follows on this connection is the next request's line and headers.
        self._in_headers = True

    def connection_lost(self, exc) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        super().connection_lost(exc)

    def _body_stalled(self) -> None:
        self._stall = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The application is behind, not the client: wait for it.
            self._stall = self.loop.call_later(self._body_timeout, self._body_stalled)
            return
        if cycle.response_started:
            self.transport.close()
        else:
            self._refuse(408, b"The request body stopped arriving.")

    def _refuse(self, status: int, message: bytes) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(
            b"".join(
                (
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(message),
                    b"connection: close\r\n\r\n",
                    message,
                )
            )
        )
        self.transport.close()
